"""Dead letters: deliveries that can never succeed as things stand, kept with the reason.

A delivery becomes dead when its channel says no retry can help (HTTP 4xx other than
408 and 429, a request that cannot be encoded, a program that cannot be executed, a
stored body that no longer parses). It stays in the outbox's ``deliveries`` table in
state ``dead`` with ``last_error`` as its reason, across restarts, is counted in the
published status (``flopledger_notifications_dead``) and is never tried again until
an operator requeues it (:meth:`agent.notify.outbox.Outbox.requeue_dead`).

:func:`read_dead_letters` reads them from a ledger file read-only, for commands that
must not write to it (``flopledger status``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.notify.message import rfc3339

__all__ = ["DEAD", "DeadLetter", "describe", "printable", "query_dead_letters",
           "read_dead_letters", "status_lines"]

DEAD = "dead"

_QUERY = ("SELECT d.key, d.channel, COALESCE(d.last_error, ''), COALESCE(d.last_attempt_ns, 0),"
          " d.attempts FROM deliveries d WHERE d.state = 'dead'"
          " ORDER BY d.last_attempt_ns DESC, d.channel, d.key LIMIT ?")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead delivery.

    Attributes:
        key: the notification's idempotency key.
        channel: the channel that cannot deliver it.
        reason: the error that made it dead.
        dead_ns: when it became dead, ns since the Unix epoch.
        attempts: sends tried in all.
    """

    key: str
    channel: str
    reason: str
    dead_ns: int
    attempts: int


def query_dead_letters(db: sqlite3.Connection, limit: int) -> list[DeadLetter]:
    """The ``limit`` most recent dead letters on an open connection, newest first.

    Raises:
        sqlite3.Error: if the tables cannot be read.
    """
    return [_dead(row) for row in db.execute(_QUERY, (limit,))]


def read_dead_letters(path: Path, limit: int = 20) -> tuple[int, list[DeadLetter]]:
    """(how many, the ``limit`` most recent) dead letters in the ledger file at
    ``path``, opened read-only; (0, []) if it has no outbox tables (or no file).

    Raises:
        sqlite3.Error: if the file is not a readable SQLite database.
    """
    if not path.is_file():
        return 0, []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                      " AND name = 'deliveries'").fetchone() is None:
            return 0, []
        (count,) = db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'dead'").fetchone()
        return int(count), query_dead_letters(db, limit)
    finally:
        db.close()


def describe(count: int, letters: Iterable[DeadLetter]) -> list[str]:
    """Lines for an operator: a heading, then one line per dead letter (no lines when
    there are none). Control characters in keys and reasons are escaped, so a name
    holding a newline stays on its line."""
    if count == 0:
        return []
    shown = list(letters)
    lines = [f"notifications: {count} dead letter(s), never delivered and not retried "
             "until requeued:"]
    lines += [f"  {printable(d.channel)} {printable(d.key)}: {printable(d.reason)} "
              f"(at {rfc3339(d.dead_ns)}, {d.attempts} attempt(s))" for d in shown]
    if count > len(shown):
        lines.append(f"  ... and {count - len(shown)} more")
    return lines


def status_lines(path: Path, limit: int = 20) -> list[str]:
    """:func:`describe` of the dead letters in the ledger file at ``path`` (read-only),
    or one line saying they could not be read; never raises for a bad file."""
    try:
        return describe(*read_dead_letters(path, limit))
    except sqlite3.Error as e:
        return [f"notifications: dead letters unreadable in {path}: {e}"]


def printable(text: str) -> str:
    """``text`` with control characters escaped (a newline becomes ``\\n``): one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _dead(row: Any) -> DeadLetter:
    key, channel, reason, at_ns, attempts = row
    return DeadLetter(str(key), str(channel), str(reason), int(at_ns), int(attempts))

