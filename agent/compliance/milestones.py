"""When each threshold was met or first known to be met, stored once in the ledger file.

A legal deadline counts from the day a threshold is met or it becomes known that it
will be met (EU AI Act Art. 52(1): two weeks). That day must not move with the clock,
nor differ between ``status``, ``report``, a notification and /metrics, so the watcher
stores it the first time it finds it, in the table ``threshold_milestones`` of the
ledger's SQLite file, and never changes a stored row (``INSERT OR IGNORE``). Readers
(``status``, ``report``) open the file read-only and never write.

Keys are ``<subject_type>:<subject>|<regime>|<event>``, the event being

- ``met``: when the threshold was met (the end of the ledger record that crossed it);
- ``will-be-met``, ``will-be-met:2``, ...: when a "will be met" projection was first
  known, one per episode;
- ``will-be-met-resolved``, ``will-be-met-resolved:2``, ...: when that episode's
  projection fell back below the threshold and was resolved.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.ledger.schema import connect_read_only

__all__ = ["History", "MilestoneStore", "episode_key", "histories", "read_milestones",
           "resolved_key"]

SCHEMA = ("CREATE TABLE IF NOT EXISTS threshold_milestones"
          " (key TEXT PRIMARY KEY, at_ns INTEGER NOT NULL)")
BUSY_TIMEOUT_S = 10.0
WILL = "will-be-met"
RESOLVED = "will-be-met-resolved"


def episode_key(prefix: str, episode: int) -> str:
    """The key of the ``episode``-th "will be met" (1-based) of ``prefix``; the first
    keeps the plain ``|will-be-met`` key."""
    return f"{prefix}|{WILL}" if episode == 1 else f"{prefix}|{WILL}:{episode}"


def resolved_key(prefix: str, episode: int) -> str:
    return f"{prefix}|{RESOLVED}" if episode == 1 else f"{prefix}|{RESOLVED}:{episode}"


@dataclass(slots=True)
class History:
    """What is stored for one (subject, regime).

    Attributes:
        met_at_ns: when the threshold was met, None if not stored.
        known_at_ns: per episode, when "will be met" was first known.
        resolved_at_ns: per episode, when it was resolved (absent: not resolved).
    """

    met_at_ns: int | None = None
    known_at_ns: dict[int, int] = field(default_factory=dict)
    resolved_at_ns: dict[int, int] = field(default_factory=dict)

    @property
    def episodes(self) -> int:
        return max(self.known_at_ns, default=0)

    @property
    def active(self) -> int | None:
        """The episode known and not resolved, if any."""
        n = self.episodes
        return n if n and n not in self.resolved_at_ns else None


def _event(event: str) -> tuple[str, int]:
    name, _, number = event.partition(":")
    return name, int(number) if number.isdigit() else 1


def histories(milestones: Mapping[str, int]) -> dict[str, History]:
    """Stored milestones grouped by ``<subject_type>:<subject>|<regime>``."""
    out: dict[str, History] = {}
    for key, at_ns in milestones.items():
        prefix, _, event = key.rpartition("|")
        if not prefix:
            continue
        name, episode = _event(event)
        h = out.setdefault(prefix, History())
        if name == "met":
            h.met_at_ns = at_ns
        elif name == WILL:
            h.known_at_ns[episode] = at_ns
        elif name == RESOLVED:
            h.resolved_at_ns[episode] = at_ns
    return out


def read_milestones(ledger_path: Path) -> dict[str, int]:
    """Every stored milestone, read-only; empty if the file or table does not exist."""
    if not ledger_path.exists():
        return {}
    try:
        # Never creates -wal/-shm files beside a ledger it only reads.
        db = connect_read_only(ledger_path)
    except sqlite3.Error:
        return {}
    try:
        rows = db.execute("SELECT key, at_ns FROM threshold_milestones").fetchall()
    except sqlite3.OperationalError:  # no such table: no watcher has run on this ledger
        return {}
    finally:
        db.close()
    return {str(k): int(t) for k, t in rows}


class MilestoneStore:
    """The watcher's writer of ``threshold_milestones`` (its own connection)."""

    def __init__(self, ledger_path: Path) -> None:
        self.path = ledger_path

    def read(self) -> dict[str, int]:
        return read_milestones(self.path)

    def record(self, milestones: Mapping[str, int]) -> None:
        """Store the milestones not stored yet; a stored one never changes."""
        if not milestones:
            return
        db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        try:
            # FULL, as the ledger and the outbox: a milestone that returned is on disk
            # before its notification is enqueued.
            db.execute("PRAGMA synchronous=FULL")
            db.execute(SCHEMA)
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR IGNORE INTO threshold_milestones (key, at_ns)"
                           " VALUES (?, ?)", sorted(milestones.items()))
            db.execute("COMMIT")
        finally:
            db.close()
