"""The cluster's notification outbox, in the store (``fl_notifications``,
``fl_deliveries``), with the agent's outbox's rules (:mod:`agent.notify.outbox`).

One row per idempotency key, enqueued with ``INSERT ... ON CONFLICT DO NOTHING``: the
evaluation re-derives every due notification at every pass, on whichever replica leads,
and each key is stored once. A delivery row per (key, channel) carries its state:
``pending`` (due at ``next_attempt_ns``), ``active`` (delivered; an active channel
re-sends it then until it is resolved), ``done`` or ``dead``; failed sends back off
exponentially with jitter, forever; a send no retry can cure makes the delivery dead.

A delivery is claimed, sent and marked in one transaction of the sender's
(:meth:`ClusterOutbox.claim`, :meth:`ClusterOutbox.mark_delivered`): the row is locked
(``FOR UPDATE SKIP LOCKED``) only while this leader's lock is held, so no two replicas
send it at once and a replica that lost the lead sends nothing. A leader killed between
the send and the commit leaves the row pending: the next leader sends it once more,
with the same key (receivers dedupe on it: the webhook's ``X-Flopledger-Key``, the
Alertmanager alert's labels, the command's ``FLOPLEDGER_KEY``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from agent.cluster.leader import holds_lock_sql
from agent.notify.message import HOLD_RESENDS, Notification
from agent.notify.outbox import BACKOFF_BASE_S, BACKOFF_CAP_S, JITTER, MAX_ERROR_CHARS
from agent.notify.status import ChannelStatus

__all__ = ["Claim", "ClusterOutbox"]

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery locked for sending in the caller's open transaction."""

    notification: Notification
    channel: str
    attempts: int
    streak: int


class ClusterOutbox:
    """The outbox's statements; each method runs on the caller's connection.

    Args:
        channels: the configured channels' names; each enqueued notification gets a
            delivery for each.
    """

    def __init__(self, channels: Iterable[str], *, backoff_base_s: float = BACKOFF_BASE_S,
                 backoff_cap_s: float = BACKOFF_CAP_S, rng: random.Random | None = None) -> None:
        self.channels = tuple(dict.fromkeys(channels))
        self.backoff_base_ns = round(backoff_base_s * 1e9)
        self.backoff_cap_ns = round(backoff_cap_s * 1e9)
        self._rng = rng or random.Random()

    def backoff_ns(self, streak: int) -> int:
        """Delay before the next try after ``streak`` consecutive failures (ns), as the
        agent's outbox computes it."""
        exponent = min(max(streak - 1, 0), 62)
        full = min(self.backoff_cap_ns, self.backoff_base_ns << exponent)
        return round(full * (1.0 - JITTER * self._rng.random()))

    # ------------------------------------------------------------------ enqueue

    def enqueue(self, conn: Conn, n: Notification, now_ns: int) -> bool:
        """Store ``n`` with a due delivery per channel, in a transaction of its own; a
        "resolved" notification also resolves the one it names (and a notification whose
        "resolved" is stored already is stored resolved).

        Returns:
            True if stored now; False if the key was stored before (nothing changes).

        Raises:
            psycopg.Error: the transaction failed (nothing stored).
            ValueError, TypeError: the payload is not JSON.
        """
        body = replace(n, resolved_ns=None).to_json()
        with conn.transaction():
            cur = conn.execute(
                "INSERT INTO fl_notifications (key, kind, payload, created_ns, enqueued_ns)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING",
                (n.key, n.kind, body, n.created_ns, now_ns))
            if cur.rowcount == 0:
                return False
            if self.channels:
                with conn.cursor() as c:
                    c.executemany(
                        "INSERT INTO fl_deliveries (key, channel, state, next_attempt_ns)"
                        " VALUES (%s, %s, 'pending', 0) ON CONFLICT DO NOTHING",
                        [(n.key, channel) for channel in self.channels])
            if n.resolves is not None:
                _resolve(conn, n.resolves, now_ns)
            elif conn.execute(
                    "SELECT 1 FROM fl_notifications WHERE kind = 'resolved'"
                    " AND (payload::jsonb -> 'payload' ->> 'resolves') = %s LIMIT 1",
                    (n.key,)).fetchone() is not None:
                _resolve(conn, n.key, now_ns)
        return True

    # ------------------------------------------------------------------ delivery

    def claim(self, conn: Conn, channel: str, now_ns: int, leader_pid: int) -> Claim | None:
        """Lock the most overdue delivery of ``channel`` in the caller's transaction, if
        the session ``leader_pid`` still holds the leader's lock; None if none is due
        (or this replica no longer leads). A stored body that no longer parses is made
        a dead letter here.

        Raises:
            psycopg.Error: the statement failed.
        """
        while True:
            row = conn.execute(
                "SELECT d.key, n.payload, n.resolved_ns, d.attempts, d.streak"
                " FROM fl_deliveries d JOIN fl_notifications n ON n.key = d.key"
                " WHERE d.channel = %(channel)s AND d.state IN ('pending', 'active')"
                " AND d.next_attempt_ns <= %(now)s AND " + holds_lock_sql() +
                " ORDER BY d.next_attempt_ns, n.created_ns, d.key"
                " LIMIT 1 FOR UPDATE OF d SKIP LOCKED",
                {"channel": channel, "now": now_ns, "leader_pid": leader_pid}).fetchone()
            if row is None:
                return None
            key, body, resolved_ns, attempts, streak = row
            try:
                n = Notification.from_json(str(body))
            except (ValueError, KeyError) as e:
                log.error("stored notification %r is unreadable: %s; kept as a dead letter",
                          key, e)
                self.mark_dead(conn, str(key), channel, now_ns,
                               f"unreadable stored body: {e}")
                continue
            if resolved_ns is not None:
                n = n.resolved(int(resolved_ns))
            return Claim(n, channel, int(attempts), int(streak))

    def mark_delivered(self, conn: Conn, claim: Claim, now_ns: int,
                       resend_ns: int | None) -> None:
        """Record a successful send of a claimed delivery (see
        :meth:`agent.notify.outbox.Outbox.mark_delivered` for the states).

        Raises:
            psycopg.Error: the statement failed.
        """
        n = claim.notification
        row = conn.execute("SELECT resolved_ns FROM fl_notifications WHERE key = %s",
                           (n.key,)).fetchone()
        resolved_ns = None if row is None else row[0]
        active_until: int | None
        if resend_ns is None or n.kind == "resolved":
            state, due, active_until = "done", now_ns, None
        elif resolved_ns is None:
            state, due = "active", now_ns + resend_ns
            active_until = now_ns + HOLD_RESENDS * resend_ns
        elif n.resolved_ns is not None:
            state, due, active_until = "done", now_ns, now_ns
        else:  # resolved while the send was in flight: the end is still due
            state, due = "pending", now_ns
            active_until = now_ns + HOLD_RESENDS * resend_ns
        conn.execute(
            "UPDATE fl_deliveries SET state = %s, next_attempt_ns = %s, active_until_ns = %s,"
            " attempts = attempts + 1, streak = 0, last_attempt_ns = %s,"
            " first_delivered_ns = COALESCE(first_delivered_ns, %s),"
            " last_delivered_ns = %s WHERE key = %s AND channel = %s",
            (state, due, active_until, now_ns, now_ns, now_ns, n.key, claim.channel))

    def mark_failed(self, conn: Conn, claim: Claim, now_ns: int, error: str) -> int:
        """Record a failed send and schedule the next try; returns its time (ns).

        Raises:
            psycopg.Error: the statement failed.
        """
        streak = claim.streak + 1
        due = now_ns + self.backoff_ns(streak)
        conn.execute(
            "UPDATE fl_deliveries SET attempts = attempts + 1, failures = failures + 1,"
            " streak = %s, next_attempt_ns = %s, last_attempt_ns = %s, last_error = %s"
            " WHERE key = %s AND channel = %s",
            (streak, due, now_ns, error[-MAX_ERROR_CHARS:], claim.notification.key,
             claim.channel))
        return due

    def mark_dead(self, conn: Conn, key: str, channel: str, now_ns: int, reason: str) -> None:
        """Keep a delivery no retry can cure as a dead letter with ``reason``.

        Raises:
            psycopg.Error: the statement failed.
        """
        conn.execute(
            "UPDATE fl_deliveries SET state = 'dead', attempts = attempts + 1,"
            " failures = failures + 1, streak = streak + 1, last_attempt_ns = %s,"
            " last_error = %s WHERE key = %s AND channel = %s AND state <> 'dead'",
            (now_ns, reason[-MAX_ERROR_CHARS:], key, channel))

    # ------------------------------------------------------------------ reading

    def status(self, conn: Conn) -> dict[str, ChannelStatus]:
        """Counts per channel: every configured channel, plus any other with rows.

        Raises:
            psycopg.Error: the statements failed.
        """
        rows = conn.execute(
            "SELECT d.channel, count(*) FILTER (WHERE d.state = 'pending'),"
            " count(*) FILTER (WHERE d.state = 'active'),"
            " count(*) FILTER (WHERE d.state = 'dead'),"
            " count(*) FILTER (WHERE d.first_delivered_ns IS NOT NULL),"
            " COALESCE(sum(d.failures), 0),"
            " count(*) FILTER (WHERE d.state = 'pending' AND d.streak > 0),"
            " min(n.enqueued_ns) FILTER (WHERE d.state = 'pending')"
            " FROM fl_deliveries d JOIN fl_notifications n ON n.key = d.key"
            " GROUP BY d.channel").fetchall()
        errors = {str(channel): str(error) for channel, error in conn.execute(
            "SELECT DISTINCT ON (channel) channel, last_error FROM fl_deliveries"
            " WHERE last_error IS NOT NULL ORDER BY channel, last_attempt_ns DESC")}
        out = {c: ChannelStatus() for c in self.channels}
        for channel, pending, active, dead, delivered, failed, retrying, oldest in rows:
            out[str(channel)] = ChannelStatus(
                pending=int(pending), active=int(active), dead=int(dead),
                delivered=int(delivered), failed_attempts=int(failed),
                retrying=int(retrying),
                oldest_pending_ns=None if oldest is None else int(oldest),
                last_error=errors.get(str(channel)))
        return out


def _resolve(conn: Conn, key: str, at_ns: int) -> None:
    """Mark ``key`` resolved and make its active deliveries due (to send the end)."""
    cur = conn.execute("UPDATE fl_notifications SET resolved_ns = %s"
                       " WHERE key = %s AND resolved_ns IS NULL", (at_ns, key))
    if cur.rowcount:
        conn.execute("UPDATE fl_deliveries SET state = 'pending', next_attempt_ns = %s"
                     " WHERE key = %s AND state = 'active'", (at_ns, key))
