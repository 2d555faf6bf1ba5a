"""Time sources for the sampling loop.

The real clock reads ``time.monotonic_ns`` for intervals and ``time.time_ns`` for
display; the virtual clock advances by exactly the requested amount on every sleep,
which makes a simulated run reproducible to the nanosecond (tests, recordings,
``sim.virtual_time``).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Where the sampler gets its time from. All values are integer nanoseconds."""

    def monotonic_ns(self) -> int:
        """Nanoseconds on a clock that never goes backwards."""
        ...

    def wall_ns(self) -> int:
        """Nanoseconds since the Unix epoch."""
        ...

    def sleep_until(self, monotonic_deadline_ns: int, stop: threading.Event) -> bool:
        """Wait until the deadline; return False if ``stop`` was set first."""
        ...


class RealClock:
    """The machine's clocks."""

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        return time.time_ns()

    def sleep_until(self, monotonic_deadline_ns: int, stop: threading.Event) -> bool:
        remaining_s = (monotonic_deadline_ns - time.monotonic_ns()) / 1e9
        if remaining_s > 0:
            return not stop.wait(remaining_s)
        return not stop.is_set()


class VirtualClock:
    """A clock that only moves when the sampler sleeps.

    ``time_scale`` virtual seconds pass per real second of waiting, so a scaled run
    still lets an HTTP scraper see the totals grow; ``time_scale=0`` never waits.
    """

    def __init__(
        self, start_monotonic_ns: int = 0, start_wall_ns: int | None = None, time_scale: float = 0.0
    ) -> None:
        self._now_ns = start_monotonic_ns
        self._wall_offset_ns = (time.time_ns() if start_wall_ns is None else start_wall_ns) - (
            start_monotonic_ns
        )
        self._time_scale = time_scale
        self._lock = threading.Lock()

    def monotonic_ns(self) -> int:
        with self._lock:
            return self._now_ns

    def wall_ns(self) -> int:
        with self._lock:
            return self._now_ns + self._wall_offset_ns

    def advance_ns(self, delta_ns: int) -> None:
        """Move the clock forward without waiting."""
        if delta_ns < 0:
            raise ValueError(f"a virtual clock cannot go backwards (delta {delta_ns} ns)")
        with self._lock:
            self._now_ns += delta_ns

    def sleep_until(self, monotonic_deadline_ns: int, stop: threading.Event) -> bool:
        with self._lock:
            delta_ns = max(0, monotonic_deadline_ns - self._now_ns)
        if self._time_scale > 0 and delta_ns > 0 and stop.wait(delta_ns / 1e9 / self._time_scale):
            return False
        if stop.is_set():
            return False
        with self._lock:
            self._now_ns = max(self._now_ns, monotonic_deadline_ns)
        return True
