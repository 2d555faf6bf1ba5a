"""The /metrics exposition: one collector per concern, each isolated, as node_exporter
runs them.

:class:`Exposition` runs each named collector, buffers its families, and reports
``flopledger_collector_success{collector}`` (1, or 0 when it raised: its series are
then all left out, the others still served) and
``flopledger_collector_duration_seconds{collector}``. :class:`FlopledgerCollector` is
the agent's: ``gpu``, ``runs``, ``declared`` and ``agent`` from one accounting
snapshot per scrape,
``thresholds`` from the watcher's published state, ``notifications`` from the
dispatcher's published status. Every input is an immutable value read by reference:
a scrape runs no SQL and takes no lock a writer holds.

Metric names and labels are a contract (see the README's metric table). Base units
only; no hostname label (the scrape target adds ``instance``); a value that is unknown
is left out, never exported as NaN.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.accounting.snapshot import Snapshot
from agent.compliance.state import ThresholdState
from agent.ledger.replication_status import ReplicationStatus
from agent.notify.status import NotifyStatus
from exporters.agent_self import AgentCollector
from exporters.declared import DeclaredCollector
from exporters.gpu import GpuCollector
from exporters.notifications import NotificationCollector
from exporters.replication import ReplicationCollector
from exporters.runs import RunCollector
from exporters.thresholds import ThresholdCollector

__all__ = ["Exposition", "FlopledgerCollector", "Part"]

log = logging.getLogger(__name__)

T = TypeVar("T")
# A collector and the name it is reported under (the ``collector`` label).
Part = tuple[str, Collector]


class Exposition(Collector):
    """Runs named collectors in order; a collector that raises loses only its own
    series and reports success 0.

    Args:
        parts: (name, collector) pairs, or a function returning them afresh for each
            scrape (collectors that must share one snapshot are built per scrape).
    """

    def __init__(self, parts: Sequence[Part] | Callable[[], Iterable[Part]]) -> None:
        self._parts = parts
        self._failing: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        success = GaugeMetricFamily(
            "flopledger_collector_success",
            "1 if the collector built its series at this scrape, else 0 (they are then "
            "left out).", labels=["collector"])
        duration = GaugeMetricFamily(
            "flopledger_collector_duration_seconds",
            "Time the collector took to build its series at this scrape, in seconds.",
            labels=["collector"])
        parts = self._parts() if callable(self._parts) else self._parts
        for name, collector in parts:
            started = time.perf_counter()
            families = self._run(name, collector)
            duration.add_metric([name], time.perf_counter() - started)
            success.add_metric([name], 0.0 if families is None else 1.0)
            yield from families or ()
        yield success
        yield duration

    def _run(self, name: str, collector: Collector) -> list[Metric] | None:
        """All of the collector's families, or None if it raised (logged with its
        traceback when it starts failing, then quietly until it recovers)."""
        try:
            families = list(collector.collect())
        except Exception:
            if name in self._failing:
                log.debug("collector %s failed again", name, exc_info=True)
            else:
                self._failing.add(name)
                log.exception("collector %s failed: its series are left out until it "
                              "recovers", name)
            return None
        if name in self._failing:
            self._failing.discard(name)
            log.info("collector %s recovered", name)
        return families


class _Once(Generic[T]):
    """A reader that reads at most once: one snapshot for every collector of a scrape
    (so the GPU and run totals of one scrape always agree)."""

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._value: tuple[T] | None = None

    def __call__(self) -> T:
        if self._value is None:
            self._value = (self._read(),)
        return self._value[0]


class FlopledgerCollector(Exposition):
    """The agent's /metrics.

    Args:
        get_snapshot: the sampler's latest snapshot (None before the first).
        get_thresholds: the threshold watcher's latest state; None: no ``thresholds``
            collector.
        get_notify_status: the dispatcher's latest status; None: no ``notifications``
            collector.
        get_replication: the replication thread's latest status; None: no
            ``replication`` collector (no ``[cluster] url``).
    """

    def __init__(self, get_snapshot: Callable[[], Snapshot | None],
                 get_thresholds: Callable[[], ThresholdState | None] | None = None,
                 get_notify_status: Callable[[], NotifyStatus | None] | None = None,
                 get_replication: Callable[[], ReplicationStatus | None] | None = None,
                 ) -> None:
        super().__init__(self._scrape_parts)
        self._get_replication = get_replication
        self._get_snapshot = get_snapshot
        self._get_thresholds = get_thresholds
        self._get_notify_status = get_notify_status

    def _scrape_parts(self) -> list[Part]:
        snapshot = _Once(self._get_snapshot)
        parts: list[Part] = [("gpu", GpuCollector(snapshot)), ("runs", RunCollector(snapshot)),
                             ("declared", DeclaredCollector(snapshot)),
                             ("agent", AgentCollector(snapshot))]
        if self._get_thresholds is not None:
            parts.append(("thresholds", ThresholdCollector(self._get_thresholds)))
        if self._get_notify_status is not None:
            parts.append(("notifications", NotificationCollector(self._get_notify_status)))
        if self._get_replication is not None:
            parts.append(("replication", ReplicationCollector(self._get_replication)))
        return parts
