"""Run series: each run's FLOP band and energy on this node, and its GPUs.

Per node: the cluster total of a run is ``sum by (run)`` in PromQL. Built from one
accounting snapshot per scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.accounting.snapshot import RunSnapshot, Snapshot

__all__ = ["RUN_LABELS", "RunCollector", "run_labels"]

RUN_LABELS = ("run", "model", "category")

# (metric name without _total, help, RunSnapshot attribute)
_COUNTERS = (
    ("flopledger_run_flop", "Estimated FLOP of the run on this node, central estimate.",
     "flop_central"),
    ("flopledger_run_flop_low", "Lower bound of the run's FLOP on this node.", "flop_low"),
    ("flopledger_run_flop_high", "Upper bound of the run's FLOP on this node.", "flop_high"),
    ("flopledger_run_energy_joules", "Energy the run used on this node, in joules.",
     "energy_joules"),
)


def run_labels(r: RunSnapshot) -> list[str]:
    """The values of :data:`RUN_LABELS` for one run."""
    return [r.run_id, r.model, r.category]


class RunCollector(Collector):
    """Per-run series from the snapshot ``get_snapshot`` returns (nothing before the
    first one)."""

    def __init__(self, get_snapshot: Callable[[], Snapshot | None]) -> None:
        self._get_snapshot = get_snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._get_snapshot()
        if snap is None:
            return
        for name, doc, attr in _COUNTERS:
            family = CounterMetricFamily(name, doc, labels=RUN_LABELS)
            for r in snap.runs:
                family.add_metric(run_labels(r), getattr(r, attr),
                                  created=r.created_wall_seconds)
            yield family
        gpus = GaugeMetricFamily(
            "flopledger_run_gpus", "GPUs of this node the run is using.", labels=RUN_LABELS
        )
        for r in snap.runs:
            gpus.add_metric(run_labels(r), float(r.gpus))
        yield gpus
