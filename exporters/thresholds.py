"""Threshold series: how far each run or model is toward each regime's threshold.

Built from the threshold watcher's latest published :class:`ThresholdState` (an
immutable value swapped by reference): a scrape never evaluates and never reads the
ledger. Nothing is exported before the first evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.compliance.state import ThresholdState

__all__ = ["THRESHOLD_LABELS", "ThresholdCollector"]

THRESHOLD_LABELS = ("subject_type", "subject", "regime", "estimate")


class ThresholdCollector(Collector):
    """Threshold series from the state ``get_state`` returns."""

    def __init__(self, get_state: Callable[[], ThresholdState | None]) -> None:
        self._get_state = get_state

    def collect(self) -> Iterator[Metric]:
        state = self._get_state()
        if state is None:
            return
        fraction = GaugeMetricFamily(
            "flopledger_threshold_fraction_ratio",
            "Fraction of a regime's threshold reached by a run or model on this node's "
            "ledger (the estimate named in the label).", labels=THRESHOLD_LABELS)
        eta = GaugeMetricFamily(
            "flopledger_threshold_eta_seconds",
            "Seconds until the threshold is reached at the current rate (absent: not "
            "moving toward it).", labels=THRESHOLD_LABELS)
        will = GaugeMetricFamily(
            "flopledger_threshold_will_be_met",
            "1 if the projection to the run's planned end crosses the threshold.",
            labels=THRESHOLD_LABELS)
        for row in state.rows:
            values = [row.subject_type, row.subject, row.regime, row.estimate]
            fraction.add_metric(values, row.fraction)
            will.add_metric(values, 1.0 if row.will_be_met else 0.0)
            if row.eta_seconds is not None:
                eta.add_metric(values, row.eta_seconds)
        yield fraction
        yield eta
        yield will
        last = GaugeMetricFamily("flopledger_threshold_last_evaluation_timestamp_seconds",
                                 "When the thresholds were last evaluated.")
        last.add_metric([], state.evaluated_wall_seconds)
        yield last
