"""The durable outbox: notifications and their per-channel deliveries in SQLite.

The tables live beside the ledger's in the same file (``CREATE TABLE IF NOT EXISTS``),
through a connection of their own, with the ledger's durability settings (WAL,
``synchronous=FULL``): an enqueue that returned survives a crash or power loss, and so
does every delivery's state.

- ``notifications``: one row per idempotency key. Enqueueing a key again is a no-op,
  across restarts, so an evaluator that re-derives "level 0.8 reached" on every pass
  never fires it twice.
- ``deliveries``: one row per (key, channel), created at enqueue for every configured
  channel. States: ``pending`` (a send is due at ``next_attempt_ns``), ``active``
  (delivered; an active channel re-sends it at ``next_attempt_ns`` until resolved),
  ``done``, ``dead``. A failed send is retried with exponential backoff and jitter,
  forever: a compliance notification is never dropped because its receiver was down
  for a day. A send that cannot succeed however often it is tried (the channel said
  so: an HTTP 4xx, a program that cannot be executed) makes the delivery ``dead``: kept
  with its reason and counted (see :mod:`agent.notify.deadletter`), not retried until
  :meth:`Outbox.requeue_dead`.

Delivery is at-least-once: a row is marked delivered only after the channel returned,
so a crash between the send and the mark sends the same key again.

A notification is resolved (:meth:`Outbox.resolve`) when its condition clears: the
caller enqueues a "resolved" notification naming it (``payload["resolves"]``), which
resolves it in the same transaction, so an active channel sends its alert once more as
ended. Either may be enqueued first: a notification whose "resolved" is already stored
is stored resolved.

Every method is safe to call from several threads (one connection behind a lock), and
several processes may share the file (SQLite's own locking, with a busy timeout).
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.notify.deadletter import DEAD, DeadLetter, query_dead_letters
from agent.notify.message import HOLD_RESENDS, Notification
from agent.notify.status import ChannelStatus

__all__ = ["BACKOFF_BASE_S", "BACKOFF_CAP_S", "ChannelStatus", "DeadLetter", "DeliveryState",
           "HistoryEntry", "Outbox"]

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 600.0
# Each delay is drawn from [(1 - JITTER) x d, d]: agents whose shared receiver comes
# back do not retry in lockstep, and a delay is never longer than the schedule says.
JITTER = 0.25
MAX_ERROR_CHARS = 2000
# Other writers (the ledger's checkpoint, another process) hold the write lock for
# milliseconds; waiting this long means something is wrong, and sqlite3 raises.
BUSY_TIMEOUT_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    enqueued_ns INTEGER NOT NULL,
    resolved_ns INTEGER
);
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT NOT NULL,
    channel TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    streak INTEGER NOT NULL DEFAULT 0,
    next_attempt_ns INTEGER NOT NULL,
    first_delivered_ns INTEGER,
    last_delivered_ns INTEGER,
    last_attempt_ns INTEGER,
    last_error TEXT,
    active_until_ns INTEGER,
    PRIMARY KEY (key, channel)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (channel, state, next_attempt_ns);
"""

_DELIVERY_COLUMNS = ("channel, state, attempts, failures, streak, next_attempt_ns,"
                     " first_delivered_ns, last_delivered_ns, last_attempt_ns, last_error,"
                     " active_until_ns")


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """One (notification, channel) row. Times in ns since the Unix epoch.

    ``attempts`` counts every send tried, ``failures`` the failed ones, ``streak`` the
    failures since the last success (what the backoff is computed from); ``last_error``
    is kept after a success, for the record.
    """

    channel: str
    state: str
    attempts: int
    failures: int
    streak: int
    next_attempt_ns: int
    first_delivered_ns: int | None
    last_delivered_ns: int | None
    last_attempt_ns: int | None
    last_error: str | None
    active_until_ns: int | None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A notification with when it was enqueued, resolved, and its deliveries."""

    notification: Notification
    enqueued_ns: int
    resolved_ns: int | None
    deliveries: tuple[DeliveryState, ...]


class Outbox:
    """Durable, idempotent notification queue with per-channel delivery state.

    Args:
        path: the SQLite file (usually the ledger's; created with its directory).
        channels: names of the configured channels; every enqueued notification gets a
            delivery row for each. Deliveries of channels no longer configured stay in
            the file and are simply not asked for.
        backoff_base_s: delay after the first failure, doubled at each further one (s).
        backoff_cap_s: the longest delay between retries (s).
        rng: the jitter's random source (seed it in tests).

    Raises:
        sqlite3.DatabaseError: if the file is not a usable SQLite database.
        ValueError: for a non-positive backoff.
    """

    def __init__(self, path: Path, channels: Iterable[str] = (), *,
                 backoff_base_s: float = BACKOFF_BASE_S, backoff_cap_s: float = BACKOFF_CAP_S,
                 rng: random.Random | None = None) -> None:
        if not 0 < backoff_base_s <= backoff_cap_s:
            raise ValueError("backoff: expected 0 < base <= cap")
        self.path = path
        self.channels = tuple(dict.fromkeys(channels))
        self.backoff_base_ns = round(backoff_base_s * 1e9)
        self.backoff_cap_ns = round(backoff_cap_s * 1e9)
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_S)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL, as the ledger: an enqueue or a delivery mark that returned is on disk.
        self._db.execute("PRAGMA synchronous=FULL")
        with self._write():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; rolled back on any error."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        with self._lock:
            return list(self._db.execute(sql, args))

    def backoff_ns(self, streak: int) -> int:
        """Delay before the next try after ``streak`` consecutive failures (ns):
        base x 2^(streak-1), capped, minus up to 25 % jitter."""
        exponent = min(max(streak - 1, 0), 62)
        full = min(self.backoff_cap_ns, self.backoff_base_ns << exponent)
        return round(full * (1.0 - JITTER * self._rng.random()))

    # ------------------------------------------------------------------ writing

    def enqueue(self, n: Notification, now_ns: int | None = None) -> bool:
        """Store a notification and a due delivery for every configured channel.

        A "resolved" notification also resolves the one it names (see the module
        docstring).

        Args:
            n: the notification; its ``resolved_ns`` is ignored.
            now_ns: enqueue time (ns since the Unix epoch), the wall clock by default.

        Returns:
            True if stored; False if its key was enqueued before (nothing changes).

        Raises:
            ValueError, TypeError: if the payload is not JSON-serialisable.
            sqlite3.Error: if the transaction could not be committed.
        """
        body = replace(n, resolved_ns=None).to_json()
        enqueued = time.time_ns() if now_ns is None else now_ns
        with self._write() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO notifications (key, kind, body, created_ns, enqueued_ns)"
                " VALUES (?, ?, ?, ?, ?)", (n.key, n.kind, body, n.created_ns, enqueued))
            if cursor.rowcount == 0:
                return False
            # Due at once (0): the dispatcher's clock may lag the producer's.
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (key, channel, state, next_attempt_ns)"
                " VALUES (?, ?, 'pending', 0)", [(n.key, c) for c in self.channels])
            if n.resolves is not None:
                _resolve(db, n.resolves, enqueued)
            elif db.execute(
                    "SELECT 1 FROM notifications WHERE kind = 'resolved'"
                    " AND json_extract(body, '$.payload.resolves') = ? LIMIT 1",
                    (n.key,)).fetchone() is not None:
                _resolve(db, n.key, enqueued)
        return True

    def mark_delivered(self, key: str, channel: str, now_ns: int, *,
                       resend_ns: int | None = None, sent_resolved: bool = False) -> None:
        """Record a successful send.

        Args:
            key, channel: the delivery.
            now_ns: when the channel returned (ns since the Unix epoch).
            resend_ns: the channel's re-send period if it is an active channel (ns): an
                unresolved notification then stays ``active`` and is due again then.
            sent_resolved: whether what was sent carried the resolved mark; if the
                notification was resolved while the send was in flight, the resolve
                is still due and the row stays ``pending``.

        Raises:
            sqlite3.Error: if the transaction could not be committed.
        """
        with self._write() as db:
            row = db.execute(
                "SELECT n.kind, n.resolved_ns FROM deliveries d JOIN notifications n"
                " ON n.key = d.key WHERE d.key = ? AND d.channel = ?", (key, channel)).fetchone()
            if row is None:
                log.warning("delivered %r on %r, which the outbox does not hold", key, channel)
                return
            kind, resolved_ns = row
            active_until: int | None
            if resend_ns is None or kind == "resolved":
                state, due, active_until = "done", now_ns, None
            elif resolved_ns is None:
                state, due = "active", now_ns + resend_ns
                active_until = now_ns + HOLD_RESENDS * resend_ns
            elif sent_resolved:
                state, due, active_until = "done", now_ns, now_ns
            else:
                state, due = "pending", now_ns
                active_until = now_ns + HOLD_RESENDS * resend_ns
            db.execute(
                "UPDATE deliveries SET state = ?, next_attempt_ns = ?, active_until_ns = ?,"
                " attempts = attempts + 1, streak = 0, last_attempt_ns = ?,"
                " first_delivered_ns = COALESCE(first_delivered_ns, ?),"
                " last_delivered_ns = ? WHERE key = ? AND channel = ?",
                (state, due, active_until, now_ns, now_ns, now_ns, key, channel))

    def mark_failed(self, key: str, channel: str, now_ns: int, error: str) -> int:
        """Record a failed send and schedule the next try (never gives up).

        Returns:
            the time of the next try (ns since the Unix epoch); 0 if unknown delivery.

        Raises:
            sqlite3.Error: if the transaction could not be committed.
        """
        with self._write() as db:
            row = db.execute("SELECT streak FROM deliveries WHERE key = ? AND channel = ?",
                             (key, channel)).fetchone()
            if row is None:
                log.warning("failed %r on %r, which the outbox does not hold", key, channel)
                return 0
            streak = int(row[0]) + 1
            due = now_ns + self.backoff_ns(streak)
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, failures = failures + 1,"
                " streak = ?, next_attempt_ns = ?, last_attempt_ns = ?, last_error = ?"
                " WHERE key = ? AND channel = ?",
                (streak, due, now_ns, error[-MAX_ERROR_CHARS:], key, channel))
        return due

    def mark_dead(self, key: str, channel: str, now_ns: int, reason: str) -> bool:
        """Record a send that failed in a way no retry can cure: the delivery is kept
        as a dead letter with ``reason`` and is not due again until requeued.

        Returns:
            True if it became dead now; False if unknown, or dead already.

        Raises:
            sqlite3.Error: if the transaction could not be committed.
        """
        with self._write() as db:
            cursor = db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1,"
                " failures = failures + 1, streak = streak + 1, last_attempt_ns = ?,"
                " last_error = ? WHERE key = ? AND channel = ? AND state != ?",
                (DEAD, now_ns, reason[-MAX_ERROR_CHARS:], key, channel, DEAD))
        if cursor.rowcount == 0:
            log.warning("dead %r on %r, which the outbox does not hold (or dead already)",
                        key, channel)
        return cursor.rowcount > 0

    def requeue_dead(self, channel: str | None = None, now_ns: int | None = None) -> int:
        """Make dead letters (of ``channel``, or all) due again, once the receiver or
        the channel's configuration is fixed; their reason stays as the last error.

        Returns:
            how many were requeued.

        Raises:
            sqlite3.Error: if the transaction could not be committed.
        """
        at = time.time_ns() if now_ns is None else now_ns
        with self._write() as db:
            cursor = db.execute(
                "UPDATE deliveries SET state = 'pending', next_attempt_ns = ?, streak = 0"
                " WHERE state = ? AND (? IS NULL OR channel = ?)", (at, DEAD, channel, channel))
        return cursor.rowcount

    def resolve(self, key: str, now_ns: int | None = None) -> bool:
        """Mark a notification resolved: active channels send it once more as ended and
        then stop re-sending it; one-shot channels are not affected.

        Returns:
            True if it was newly resolved; False if unknown or already resolved.

        Raises:
            sqlite3.Error: if the transaction could not be committed.
        """
        at = time.time_ns() if now_ns is None else now_ns
        with self._write() as db:
            return _resolve(db, key, at)

    # ------------------------------------------------------------------ reading

    def pending(self, channel: str, now_ns: int, limit: int = 100
                ) -> list[tuple[Notification, int]]:
        """Deliveries of ``channel`` due at ``now_ns`` (ns since the Unix epoch), the
        most overdue first, as (notification, attempts so far).

        A resolved notification comes with its ``resolved_ns`` set.

        Raises:
            sqlite3.Error: if the file cannot be read.
        """
        rows = self._read(
            "SELECT n.key, n.body, n.resolved_ns, d.attempts FROM deliveries d"
            " JOIN notifications n ON n.key = d.key"
            " WHERE d.channel = ? AND d.state IN ('pending', 'active')"
            " AND d.next_attempt_ns <= ?"
            " ORDER BY d.next_attempt_ns, n.created_ns, n.key LIMIT ?",
            (channel, now_ns, limit))
        out = []
        for key, body, resolved_ns, attempts in rows:
            try:
                n = Notification.from_json(str(body))
            except (ValueError, KeyError) as e:
                # Only a damaged file gets here, and no retry can repair it.
                log.error("stored notification %r is unreadable: %s; kept as a dead letter",
                          key, e)
                self.mark_dead(str(key), channel, now_ns, f"unreadable stored body: {e}")
                continue
            if resolved_ns is not None:
                n = n.resolved(int(resolved_ns))
            out.append((n, int(attempts)))
        return out

    def get(self, key: str) -> Notification | None:
        """The stored notification (with ``resolved_ns`` if resolved), or None."""
        rows = self._read("SELECT body, resolved_ns FROM notifications WHERE key = ?", (key,))
        if not rows:
            return None
        n = Notification.from_json(str(rows[0][0]))
        return n if rows[0][1] is None else n.resolved(int(rows[0][1]))

    def delivery(self, key: str, channel: str) -> DeliveryState | None:
        """One delivery's state, or None."""
        rows = self._read(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries"
                          " WHERE key = ? AND channel = ?", (key, channel))
        return _delivery(rows[0]) if rows else None

    def unresolved(self, prefix: str = "") -> list[str]:
        """Keys not yet resolved (those starting with ``prefix``), oldest first."""
        rows = self._read(
            "SELECT key FROM notifications WHERE resolved_ns IS NULL"
            " AND substr(key, 1, ?) = ? ORDER BY created_ns, key", (len(prefix), prefix))
        return [str(k) for (k,) in rows]

    def status(self) -> dict[str, ChannelStatus]:
        """Counts per channel: every configured channel, plus any other with rows."""
        rows = self._read(
            "SELECT d.channel,"
            " SUM(d.state = 'pending'), SUM(d.state = 'active'), SUM(d.state = 'dead'),"
            " SUM(d.first_delivered_ns IS NOT NULL), SUM(d.failures),"
            " SUM(d.state = 'pending' AND d.streak > 0),"
            " MIN(CASE WHEN d.state = 'pending' THEN n.enqueued_ns END)"
            " FROM deliveries d JOIN notifications n ON n.key = d.key GROUP BY d.channel")
        # SQLite takes the bare column (last_error) from the row holding the MAX.
        errors = {str(channel): str(error) for channel, error, _ in self._read(
            "SELECT channel, last_error, MAX(last_attempt_ns) FROM deliveries"
            " WHERE last_error IS NOT NULL GROUP BY channel")}
        out = {c: ChannelStatus() for c in self.channels}
        for channel, pending, active, dead, delivered, failed, retrying, oldest in rows:
            out[str(channel)] = ChannelStatus(
                pending=int(pending), active=int(active), dead=int(dead),
                delivered=int(delivered),
                failed_attempts=int(failed), retrying=int(retrying),
                oldest_pending_ns=_opt_int(oldest), last_error=errors.get(str(channel)))
        return out

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The ``limit`` most recent dead letters, newest first."""
        with self._lock:
            return query_dead_letters(self._db, limit)

    def history(self, limit: int = 50) -> list[HistoryEntry]:
        """The most recently enqueued notifications, newest first, with deliveries."""
        heads = self._read("SELECT key, body, enqueued_ns, resolved_ns FROM notifications"
                           " ORDER BY enqueued_ns DESC, key LIMIT ?", (limit,))
        out = []
        for key, body, enqueued_ns, resolved_ns in heads:
            rows = self._read(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE key = ?"
                              " ORDER BY channel", (key,))
            n = Notification.from_json(str(body))
            resolved = _opt_int(resolved_ns)
            if resolved is not None:
                n = n.resolved(resolved)
            out.append(HistoryEntry(n, int(enqueued_ns), resolved,
                                    tuple(_delivery(r) for r in rows)))
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _resolve(db: sqlite3.Connection, key: str, at_ns: int) -> bool:
    """Mark ``key`` resolved at ``at_ns`` and make its active deliveries due (to send
    the end); False if unknown or resolved already. Inside the caller's transaction."""
    cursor = db.execute("UPDATE notifications SET resolved_ns = ?"
                        " WHERE key = ? AND resolved_ns IS NULL", (at_ns, key))
    if cursor.rowcount == 0:
        return False
    db.execute("UPDATE deliveries SET state = 'pending', next_attempt_ns = ?"
               " WHERE key = ? AND state = 'active'", (at_ns, key))
    return True


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _delivery(row: Any) -> DeliveryState:
    (channel, state, attempts, failures, streak, next_ns, first_ns, last_ns, attempt_ns,
     error, active_until) = row
    return DeliveryState(
        channel=str(channel), state=str(state), attempts=int(attempts),
        failures=int(failures), streak=int(streak), next_attempt_ns=int(next_ns),
        first_delivered_ns=_opt_int(first_ns), last_delivered_ns=_opt_int(last_ns),
        last_attempt_ns=_opt_int(attempt_ns),
        last_error=None if error is None else str(error),
        active_until_ns=_opt_int(active_until))
