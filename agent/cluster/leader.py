"""Which replica of the cluster service leads: the one holding a PostgreSQL advisory lock.

The lock is taken with ``pg_try_advisory_lock`` on a session of its own, held while
leading and never released by hand: it ends with the session. A leader that is killed
(SIGKILL included) has its socket closed by the kernel, the server ends the session and
releases the lock, and the next follower to try (every ``evaluate_s``) leads. A leader
whose machine vanishes is found out by the server's TCP keepalives on that session
(set here to a few evaluation intervals). A leader that cannot reach its session any
more stops leading at once.

Deliveries are fenced on the lock itself (:meth:`Leadership.fence_pid`): a delivery is
claimed only in a statement that checks this replica's session still holds it, so a
replica that lost the lock without knowing yet sends nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg

__all__ = ["LOCK_KEY", "Leadership", "holds_lock_sql"]

log = logging.getLogger(__name__)

# The cluster service's advisory lock key: "flclustr".
LOCK_KEY = 0x666C636C75737472
# pg_locks shows a bigint key as its high half in classid, its low half in objid and
# objsubid 1.
_CLASSID, _OBJID = LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF


def holds_lock_sql() -> str:
    """A condition true while the session of backend ``%(leader_pid)s`` holds the lock."""
    return ("EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            f" AND pid = %(leader_pid)s AND classid::bigint = {_CLASSID}"
            f" AND objid::bigint = {_OBJID} AND objsubid = 1)")


class Leadership:
    """This replica's claim to lead, on a session of its own.

    Args:
        connect: opens a new autocommit connection to the store.
        keepalive_s: how long the server waits on a silent session before probing it.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]],
                 keepalive_s: float) -> None:
        self._connect = connect
        self._keepalive_s = max(1, round(keepalive_s))
        self._conn: psycopg.Connection[Any] | None = None
        self._pid: int | None = None

    @property
    def leading(self) -> bool:
        return self._pid is not None

    def fence_pid(self) -> int | None:
        """The backend of the session holding the lock while this replica leads."""
        return self._pid

    def check(self) -> bool:
        """Lead if the lock is free; whether this replica leads now.

        Raises:
            PgError: the store cannot be reached (this replica does not lead then).
            psycopg.Error: the session failed (idem).
        """
        if self._pid is not None and self._conn is not None:
            try:
                self._conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                # The session is gone, and the lock with it: try again as a follower.
                self.release()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
                # The server finds a leader whose machine vanished after about
                # idle + 3 x interval seconds, and releases the lock.
                interval = max(1, self._keepalive_s // 3)
                self._conn.execute(f"SET tcp_keepalives_idle = {self._keepalive_s}")
                self._conn.execute(f"SET tcp_keepalives_interval = {interval}")
                self._conn.execute("SET tcp_keepalives_count = 3")
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            if row is not None and row[0]:
                self._pid = self._conn.info.backend_pid
                log.info("leading the cluster: evaluating and notifying")
            return self._pid is not None
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Stop leading: end the session (the server releases the lock)."""
        if self._pid is not None:
            log.info("no longer leading the cluster")
        self._pid = None
        conn, self._conn = self._conn, None
        if conn is not None:
            # A session already gone releases the lock all the same.
            with contextlib.suppress(psycopg.Error):
                conn.close()
