"""Declared series: what each run's trainer reported through the client spool, and how
the compute that declaration implies compares with the compute measured on this node.

Built from one accounting snapshot per scrape (``Snapshot.declared`` and, for the ratio,
``Snapshot.runs``). The families are present only while some run has declared (as
``flopledger_sim_true_flop`` is present only for simulated GPUs); a value that is not
known is left out, never exported as NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.accounting.snapshot import DeclaredRunSnapshot, Snapshot

__all__ = ["DECLARED_LABELS", "DeclaredCollector", "declared_to_measured_ratio"]

DECLARED_LABELS = ("run", "model")


def declared_to_measured_ratio(declared: DeclaredRunSnapshot, snap: Snapshot) -> float | None:
    """The run's declared FLOP over its measured central FLOP on this node; None when the
    run declared no parameter count, or nothing of it has been measured here."""
    if declared.declared_flop is None:
        return None
    measured = next((r.flop_central for r in snap.runs if r.run_id == declared.run_id), None)
    if measured is None or measured <= 0:
        return None
    return declared.declared_flop / measured


class DeclaredCollector(Collector):
    """Per-run declared series from the snapshot ``get_snapshot`` returns (nothing
    before the first one, nor while no run has declared)."""

    def __init__(self, get_snapshot: Callable[[], Snapshot | None]) -> None:
        self._get_snapshot = get_snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._get_snapshot()
        if snap is None or not snap.declared:
            return
        flop = CounterMetricFamily(
            "flopledger_run_declared_flop",
            "Compute the run's declaration implies so far, as the trainer reported it: "
            "6 x parameters x tokens processed, plus 12 x layers x d_model x context x "
            "tokens when the architecture was declared, in FLOP (left out without a "
            "declared parameter count).", labels=DECLARED_LABELS)
        tokens = CounterMetricFamily(
            "flopledger_run_declared_tokens",
            "Tokens the run has processed, as the trainer reported it.",
            labels=DECLARED_LABELS)
        steps = CounterMetricFamily(
            "flopledger_run_declared_steps",
            "Optimizer steps the run has taken, as the trainer reported it.",
            labels=DECLARED_LABELS)
        ratio = GaugeMetricFamily(
            "flopledger_run_declared_to_measured_ratio",
            "The run's declared FLOP (as the trainer reported it) over its measured "
            "central FLOP on this node (left out until both are known).",
            labels=DECLARED_LABELS)
        for d in snap.declared:
            labels = [d.run_id, d.model]
            tokens.add_metric(labels, float(d.tokens))
            steps.add_metric(labels, float(d.steps))
            if d.declared_flop is not None:
                flop.add_metric(labels, d.declared_flop)
            value = declared_to_measured_ratio(d, snap)
            if value is not None:
                ratio.add_metric(labels, value)
        yield flop
        yield tokens
        yield steps
        yield ratio
