"""The dispatcher: deliver what the outbox says is due, channel by channel.

Each channel has a thread of its own in the background, so a channel whose receiver
hangs until its timeout never delays another. Within a channel notifications go one at
a time, the most overdue first; the first failure ends that channel's pass (the
receiver is probably down: the rest are tried at the next pass, and each failed one
backs off on its own schedule), so a dead receiver sees at most one attempt per poll.
A failure the channel marks not retryable (an HTTP 4xx, a program that cannot be
executed) instead makes that delivery a dead letter, logged once as an error, and the
pass goes on: it says nothing about the next notification.

Delivery is at-least-once: a delivery is marked only after the channel returned. A
crash between the send and the mark sends the same key again after the restart.

The outbox's counts are published as an immutable :class:`NotifyStatus` (``status``),
read by a status thread of the dispatcher's own on start, after every pass that tried
a delivery, at every wake and every ``status_every_s``: /metrics reads that reference
and never waits on the database. A read that fails (the file locked by another
writer) keeps the previous status.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.notify.deadletter import printable
from agent.notify.message import Channel, DeliveryError
from agent.notify.outbox import Outbox
from agent.notify.status import NotifyStatus

__all__ = ["ChannelStats", "Dispatcher"]

log = logging.getLogger(__name__)

BATCH = 100


@dataclass(slots=True)
class ChannelStats:
    """What one channel did since the dispatcher started (for self-metrics).

    Times in ns since the Unix epoch; durations in seconds.
    """

    sent: int = 0
    failed: int = 0
    dead: int = 0
    last_success_ns: int | None = None
    last_failure_ns: int | None = None
    last_error: str | None = None
    last_duration_s: float = 0.0


class Dispatcher:
    """Delivers due notifications from ``outbox`` on ``channels``.

    Args:
        outbox: the durable queue (its ``channels`` should be these names).
        channels: channel name -> channel.
        clock_ns: wall clock (ns since the Unix epoch) for due times and marks.
        poll_s: how often each channel thread looks for due work without a wake (s).
        status_every_s: how often the status is read from the outbox when nothing
            asked for it sooner (s): counts another process changed show after this.

    Raises:
        ValueError: for a non-positive ``poll_s`` or ``status_every_s``.
    """

    def __init__(self, outbox: Outbox, channels: Mapping[str, Channel],
                 clock_ns: Callable[[], int] = time.time_ns, *, poll_s: float = 1.0,
                 status_every_s: float = 15.0) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s: expected a number of seconds > 0")
        if status_every_s <= 0:
            raise ValueError("status_every_s: expected a number of seconds > 0")
        self.outbox = outbox
        self.channels = dict(channels)
        self.clock_ns = clock_ns
        self.poll_s = poll_s
        self.status_every_s = status_every_s
        self.stats = {name: ChannelStats() for name in self.channels}
        self._stop = threading.Event()
        self._wakes = {name: threading.Event() for name in self.channels}
        self._status_due = threading.Event()
        self._status: NotifyStatus | None = None
        self._status_failing = False
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ status

    @property
    def status(self) -> NotifyStatus | None:
        """The latest counts read from the outbox (None until the first read worked).

        Never touches the database: safe on the scrape path.
        """
        return self._status

    def refresh_status(self) -> bool:
        """Read the counts from the outbox and publish them (the status thread does
        this; tests may call it directly).

        Returns:
            False if the outbox could not be read: the previous status stays published.
        """
        try:
            channels = self.outbox.status()
        except sqlite3.Error as e:
            if not self._status_failing:
                log.warning("notification status unreadable (%s): /metrics keeps the "
                            "counts of the last read", e)
            self._status_failing = True
            return False
        if self._status_failing:
            log.info("notification status readable again")
            self._status_failing = False
        if self._status is None:
            # Dead letters from before this start are never sent again, so no send logs
            # them: say so once. Those made since were logged as they died.
            for name, counts in sorted(channels.items()):
                stats = self.stats.get(name)
                inherited = counts.dead - (stats.dead if stats is not None else 0)
                if inherited > 0:
                    log.error("%s: %d dead letter(s) in the outbox, not retried (their "
                              "reasons: `flopledger status`)", name, inherited)
        self._status = NotifyStatus.of(channels, self.clock_ns())
        return True

    # ------------------------------------------------------------------ one pass

    def run_channel(self, name: str, now_ns: int | None = None) -> int:
        """Deliver everything due on one channel at ``now_ns`` (default: the clock).

        Returns:
            how many notifications were delivered.

        Raises:
            KeyError: for an unknown channel name.
            sqlite3.Error: if the outbox cannot be read (a failed mark is only logged:
                the notification is then simply sent again).
        """
        channel = self.channels[name]
        stats = self.stats[name]
        due = self.outbox.pending(name, self.clock_ns() if now_ns is None else now_ns, BATCH)
        delivered = 0
        for n, attempts in due:
            if self._stop.is_set():
                break
            started = time.monotonic()
            try:
                channel.deliver(n)
            except Exception as e:  # a channel's bug must not stop the other deliveries
                stats.last_duration_s = time.monotonic() - started
                error = str(e) if isinstance(e, DeliveryError) else f"{type(e).__name__}: {e}"
                if not isinstance(e, DeliveryError):
                    log.exception("channel %s raised on %s", name, printable(n.key))
                # A bug may be fixed by an upgrade: retried, not dead.
                retryable = not isinstance(e, DeliveryError) or e.retryable
                self._failed(name, n.key, attempts, error, retryable=retryable)
                if retryable:
                    break
                continue
            stats.last_duration_s = time.monotonic() - started
            done_ns = self.clock_ns()
            stats.sent += 1
            stats.last_success_ns = done_ns
            delivered += 1
            try:
                self.outbox.mark_delivered(n.key, name, done_ns, resend_ns=channel.resend_ns,
                                           sent_resolved=n.resolved_ns is not None)
            except sqlite3.Error as e:
                log.error("%s: delivered %s but could not record it (%s); it will be sent "
                          "again", name, printable(n.key), e)
            if attempts:
                log.info("%s: delivered %s after %d failed attempt(s)", name, printable(n.key),
                         attempts)
        if due:
            self._status_due.set()
        return delivered

    def _failed(self, name: str, key: str, attempts: int, error: str, *,
                retryable: bool = True) -> None:
        stats = self.stats[name]
        now = self.clock_ns()
        stats.failed += 1
        stats.last_failure_ns = now
        stats.last_error = error
        if not retryable:
            try:
                if self.outbox.mark_dead(key, name, now, error):
                    stats.dead += 1
            except sqlite3.Error as e:
                # Not marked: it is simply tried (and found dead) again next poll.
                log.error("%s: could not record %s as a dead letter (%s)", name,
                          printable(key), e)
                return
            log.error("%s: %s cannot be delivered as things stand (attempt %d): %s; kept as "
                      "a dead letter and not retried: fix the receiver or the channel's "
                      "configuration", name, printable(key), attempts + 1, printable(error))
            return
        try:
            retry_ns = self.outbox.mark_failed(key, name, now, error)
        except sqlite3.Error as e:
            log.error("%s: could not record the failure of %s (%s)", name, printable(key), e)
            return
        # The backoff caps the rate of these lines: one per notification per retry.
        log.warning("%s: %s not delivered (attempt %d): %s; retrying in %.0f s",
                    name, printable(key), attempts + 1, printable(error),
                    max(retry_ns - now, 0) / 1e9)

    def run_once(self, now_ns: int | None = None) -> int:
        """One pass over every channel, in turn (tests; the threads use run_channel).

        Returns:
            how many deliveries succeeded, all channels together.
        """
        now = self.clock_ns() if now_ns is None else now_ns
        total = 0
        for name in self.channels:
            try:
                total += self.run_channel(name, now)
            except sqlite3.Error as e:
                log.error("%s: outbox unreadable: %s", name, e)
        self.refresh_status()
        return total

    # ------------------------------------------------------------------ background

    def wake(self) -> None:
        """Look for due work now (the sampler calls this after enqueueing)."""
        for event in self._wakes.values():
            event.set()
        self._status_due.set()

    def start(self) -> None:
        """Start one daemon thread per channel, and the status thread.

        Raises:
            RuntimeError: if already started.
        """
        if self._threads:
            raise RuntimeError("dispatcher already started")
        self._stop.clear()
        for name in self.channels:
            thread = threading.Thread(target=self._loop, args=(name,),
                                      name=f"notify-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        status = threading.Thread(target=self._status_loop, name="notify-status",
                                  daemon=True)
        self._threads.append(status)
        status.start()

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop the threads after their current delivery.

        Args:
            timeout: how long to wait for all of them together (s); None: forever.

        Returns:
            True if every thread ended (one stuck in a delivery ends by its channel's
            timeout; being daemon threads they never hold the process up).
        """
        self._stop.set()
        self.wake()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0))
        alive = [t for t in self._threads if t.is_alive()]
        self._threads = alive
        return not alive

    def _loop(self, name: str) -> None:
        wake = self._wakes[name]
        while not self._stop.is_set():
            wake.clear()
            try:
                delivered = self.run_channel(name)
            except Exception:  # the thread must outlive a bad pass: retried next poll
                log.exception("%s: dispatch pass failed", name)
                delivered = 0
            # A full batch means more may be due already: go again without waiting.
            if delivered < BATCH:
                wake.wait(self.poll_s)

    def _status_loop(self) -> None:
        while not self._stop.is_set():
            # Cleared before the read: a request arriving during it asks for another.
            self._status_due.clear()
            try:
                self.refresh_status()
            except Exception:  # a bug here must not end the thread: /metrics keeps the last
                log.exception("notification status refresh failed")
            self._status_due.wait(self.status_every_s)
