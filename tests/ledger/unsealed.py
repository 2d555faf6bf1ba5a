"""A ledger with records under its signed head and records not yet sealed, for the
tests that hold every read command to the same figures; and a reading connection that
lets the agent commit between a reader's statements."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agent.ledger.schema import connect_read_only
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from tests.ledger_helpers import SECOND, T0, record

# Sealed: pt 1e15 on GPU 0 and ft 1e14 on GPU 1 (head of 2 records). Open: pt 3e14 on
# GPU 0, and the first record of run ``new`` (1e13) on GPU 2.
SEALED_PT_CENTRAL = 10**15
UNSEALED_PT_CENTRAL = 3 * 10**14
UNSEALED_NEW_CENTRAL = 10**13
META = {"pt": RunRow("pt", "base", "pre-training", {}),
        "ft": RunRow("ft", "chat", "fine-tuning", {"base_models": ["base"]}),
        "new": RunRow("new", "base", "pre-training", {})}


def open_writer(directory: Path) -> Ledger:
    """The agent's handle on ``directory/ledger.sqlite`` after one checkpoint: two
    records sealed under a head, two open."""
    ledger = Ledger(directory / "ledger.sqlite", "node-1",
                    load_or_create_key(directory / "node.key"))
    ledger.append([record(0, 0, 5, run="pt", model="base"),
                   record(1, 0, 5, run="ft", model="chat", central=10**14)],
                  T0 + 5 * SECOND, META,
                  still_open=[record(0, 5, 7, run="pt", model="base",
                                     central=UNSEALED_PT_CENTRAL),
                              record(2, 5, 7, run="new", model="base",
                                     central=UNSEALED_NEW_CENTRAL)])
    return ledger


def sealed_and_open(directory: Path) -> Path:
    """The same ledger, closed; returns its path."""
    ledger = open_writer(directory)
    ledger.close()
    return ledger.path


def next_checkpoint(ledger: Ledger, k: int) -> None:
    """The agent's checkpoint ``k`` (from 1): the open records' windows close (sealed),
    and new ones open."""
    t = 5.0 * k
    ledger.append([record(0, t, t + 5, run="pt", model="base", central=UNSEALED_PT_CENTRAL),
                   record(2, t, t + 5, run="new", model="base",
                          central=UNSEALED_NEW_CENTRAL)],
                  T0 + round((t + 5) * SECOND), META,
                  still_open=[record(0, t + 5, t + 7, run="pt", model="base",
                                     central=UNSEALED_PT_CENTRAL),
                              record(2, t + 5, t + 7, run="new", model="base",
                                     central=UNSEALED_NEW_CENTRAL)])


class Interleaved:
    """A reader's connection after each of whose SELECTs ``between`` runs (the agent
    committing a checkpoint), as a busy writer could."""

    def __init__(self, db: sqlite3.Connection, between: Callable[[], None]) -> None:
        self._db = db
        self._between = between

    def execute(self, statement: str, *args: Any) -> sqlite3.Cursor:
        cursor = self._db.execute(statement, *args)
        if statement.lstrip().upper().startswith("SELECT"):
            self._between()
        return cursor

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def close(self) -> None:
        self._db.close()


def interleave_checkpoints(monkeypatch: pytest.MonkeyPatch, module: ModuleType,
                           writer: Ledger) -> list[int]:
    """Make every read-only connection ``module`` opens commit ``writer``'s next
    checkpoint after each of its SELECTs; element 0 of the list returned counts them."""
    done = [0]

    def checkpoint() -> None:
        done[0] += 1
        next_checkpoint(writer, done[0])

    monkeypatch.setattr(module, "connect_read_only",
                        lambda path: Interleaved(connect_read_only(path), checkpoint))
    return done
