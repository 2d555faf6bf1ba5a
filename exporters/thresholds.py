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
from agent.compliance.thresholds import ESTIMATES

__all__ = ["THRESHOLD_LABELS", "ThresholdCollector", "threshold_families"]

THRESHOLD_LABELS = ("subject_type", "subject", "regime", "estimate")


class ThresholdCollector(Collector):
    """Threshold series from the state ``get_state`` returns."""

    def __init__(self, get_state: Callable[[], ThresholdState | None]) -> None:
        self._get_state = get_state

    def collect(self) -> Iterator[Metric]:
        state = self._get_state()
        if state is None:
            return
        yield from threshold_families(state, "flopledger_threshold", "on this node's ledger",
                                      "at the current rate", "When the thresholds were last "
                                      "evaluated.")


def threshold_families(state: ThresholdState, prefix: str, where: str, rate: str,
                       last_help: str) -> Iterator[Metric]:
    """The threshold series of ``state``, named ``<prefix>_...``; ``where`` and ``rate``
    say whose totals and rate they are (the agent's node, or the whole cluster)."""
    fraction = GaugeMetricFamily(
        f"{prefix}_fraction_ratio",
        f"Fraction of a regime's threshold reached by a run or model {where} (the "
        "estimate named in the label).", labels=THRESHOLD_LABELS)
    eta = GaugeMetricFamily(
        f"{prefix}_eta_seconds",
        f"Seconds until the threshold is reached {rate} (absent: not moving toward it).",
        labels=THRESHOLD_LABELS)
    will = GaugeMetricFamily(
        f"{prefix}_will_be_met",
        "1 if it is known that the threshold will be met: a declared plan projected at the "
        "central rate crosses it, after the minimum observation window.",
        labels=THRESHOLD_LABELS)
    band = GaugeMetricFamily(
        f"{prefix}_fraction_band_ratio",
        "Fraction of a regime's FLOP threshold reached by the low, central and high FLOP "
        f"estimates (the label estimate), {where}.", labels=THRESHOLD_LABELS)
    deadline = GaugeMetricFamily(
        f"{prefix}_deadline_timestamp_seconds",
        "The legal deadline (seconds since the epoch), counted from the stored time the "
        "threshold was met or first known to be met (absent: none is fixed).",
        labels=THRESHOLD_LABELS)
    for row in state.rows:
        values = [row.subject_type, row.subject, row.regime, row.estimate]
        fraction.add_metric(values, row.fraction)
        will.add_metric(values, 1.0 if row.will_be_met else 0.0)
        if row.eta_seconds is not None:
            eta.add_metric(values, row.eta_seconds)
        if row.fraction_band is not None:
            for estimate, value in zip(ESTIMATES, row.fraction_band, strict=True):
                band.add_metric([*values[:3], estimate], value)
        if row.deadline_wall_seconds is not None:
            deadline.add_metric(values, row.deadline_wall_seconds)
    yield fraction
    yield eta
    yield will
    yield band
    yield deadline
    last = GaugeMetricFamily(f"{prefix}_last_evaluation_timestamp_seconds", last_help)
    last.add_metric([], state.evaluated_wall_seconds)
    yield last
