"""The leader's delivery of the cluster's notifications, channel by channel.

As the agent's dispatcher (:mod:`agent.notify.dispatcher`): one thread per channel, so
a receiver that hangs until its timeout never delays another channel; the most overdue
first; the first retryable failure ends the channel's pass (its receiver is probably
down); a failure no retry can cure makes that delivery a dead letter, logged once.
Each thread has its own connection to the store and sends only while this replica
leads (:meth:`agent.cluster.outbox.ClusterOutbox.claim` checks the lock in the same
statement). A store that cannot be reached is said once per outage, per channel.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from agent.cluster.outbox import ClusterOutbox
from agent.ledger.errors import LedgerError
from agent.notify.deadletter import printable
from agent.notify.message import Channel, DeliveryError

__all__ = ["ClusterDispatcher"]

log = logging.getLogger(__name__)

BATCH = 100


class ClusterDispatcher:
    """Delivers the store's due notifications on ``channels`` while this replica leads.

    Args:
        outbox: the outbox's statements.
        channels: channel name -> channel.
        connect: opens a new autocommit connection to the store.
        leader_pid: the backend of this replica's lock session while it leads, else None.
        poll_s: how often each channel looks for due work without a wake (s).
    """

    def __init__(self, outbox: ClusterOutbox, channels: Mapping[str, Channel],
                 connect: Callable[[], psycopg.Connection[Any]],
                 leader_pid: Callable[[], int | None], *, poll_s: float = 1.0,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.outbox = outbox
        self.channels = dict(channels)
        self._connect = connect
        self._leader_pid = leader_pid
        self.poll_s = poll_s
        self.clock_ns = clock_ns
        self._stop = threading.Event()
        self._wakes = {name: threading.Event() for name in self.channels}
        self._threads: list[threading.Thread] = []

    def run_channel(self, name: str, conn: psycopg.Connection[Any]) -> int:
        """Deliver what is due on one channel; returns how many were delivered.

        Raises:
            psycopg.Error: the store failed (what was claimed stays due).
        """
        channel = self.channels[name]
        delivered = 0
        while delivered < BATCH and not self._stop.is_set():
            pid = self._leader_pid()
            if pid is None:
                break
            with conn.transaction():
                claim = self.outbox.claim(conn, name, self.clock_ns(), pid)
                if claim is None:
                    break
                n = claim.notification
                try:
                    channel.deliver(n)
                except Exception as e:  # a channel's bug must not stop the deliveries
                    error = (str(e) if isinstance(e, DeliveryError)
                             else f"{type(e).__name__}: {e}")
                    if not isinstance(e, DeliveryError):
                        log.exception("channel %s raised on %s", name, printable(n.key))
                    now = self.clock_ns()
                    if isinstance(e, DeliveryError) and not e.retryable:
                        self.outbox.mark_dead(conn, n.key, name, now, error)
                        log.error("%s: %s cannot be delivered as things stand (attempt %d): "
                                  "%s; kept as a dead letter and not retried: fix the "
                                  "receiver or the channel's configuration", name,
                                  printable(n.key), claim.attempts + 1, printable(error))
                        continue
                    retry_ns = self.outbox.mark_failed(conn, claim, now, error)
                    log.warning("%s: %s not delivered (attempt %d): %s; retrying in %.0f s",
                                name, printable(n.key), claim.attempts + 1,
                                printable(error), max(retry_ns - now, 0) / 1e9)
                    break
                self.outbox.mark_delivered(conn, claim, self.clock_ns(), channel.resend_ns)
            delivered += 1
            if claim.attempts:
                log.info("%s: delivered %s after %d attempt(s)", name, printable(n.key),
                         claim.attempts)
        return delivered

    def wake(self) -> None:
        """Look for due work now (after an evaluation enqueued some)."""
        for event in self._wakes.values():
            event.set()

    def start(self) -> None:
        for name in self.channels:
            thread = threading.Thread(target=self._loop, args=(name,),
                                      name=f"cluster-notify-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the deliveries in flight (each ends by its channel's timeout)."""
        self._stop.set()
        self.wake()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        self._threads = [t for t in self._threads if t.is_alive()]

    def _loop(self, name: str) -> None:
        wake = self._wakes[name]
        conn: psycopg.Connection[Any] | None = None
        failing = False
        while not self._stop.is_set():
            wake.clear()
            delivered = 0
            if self._leader_pid() is not None:
                try:
                    if conn is None or conn.closed:
                        conn = self._connect()
                    delivered = self.run_channel(name, conn)
                    if failing:
                        log.info("%s: the store is reachable again; delivering", name)
                    failing = False
                except (psycopg.Error, LedgerError) as e:
                    if not failing:
                        log.warning("%s: cannot deliver, the store failed (%s); what is due "
                                    "stays due", name, printable(str(e).splitlines()[0]
                                                                 if str(e) else repr(e)))
                    failing = True
                    _close(conn)
                    conn = None
                except Exception:  # the thread must outlive a bad pass: retried next poll
                    log.exception("%s: dispatch pass failed", name)
                    _close(conn)
                    conn = None
            if delivered < BATCH:
                wake.wait(self.poll_s)
        _close(conn)


def _close(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        # A connection that is already gone.
        with contextlib.suppress(psycopg.Error):
            conn.close()
