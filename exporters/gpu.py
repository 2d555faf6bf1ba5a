"""GPU series: FLOP, energy and coverage counters, rate and readings, identity.

Built from one accounting snapshot per scrape. A reading that is unknown (the field is
unsupported, or the GPU did not answer) is left out, never exported as NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.accounting.snapshot import GpuSnapshot, Snapshot

__all__ = ["GPU_LABELS", "GpuCollector", "gpu_labels"]

GPU_LABELS = ("gpu", "uuid")

# (metric name without _total, help, GpuSnapshot attribute)
_COUNTERS = (
    ("flopledger_gpu_flop", "Estimated FLOP executed by the GPU, central estimate.",
     "flop_central"),
    ("flopledger_gpu_flop_low", "Lower bound of the FLOP executed by the GPU.", "flop_low"),
    ("flopledger_gpu_flop_high", "Upper bound of the FLOP executed by the GPU.", "flop_high"),
    ("flopledger_gpu_energy_joules", "Energy used by the GPU, in joules.", "energy_joules"),
    ("flopledger_gpu_covered_seconds",
     "Time covered by samples no further apart than the maximum gap, in seconds.",
     "covered_seconds"),
    ("flopledger_gpu_gap_seconds",
     "Time in sampling gaps, counted in the high bound only, in seconds.", "gap_seconds"),
)
# Readings of the last sample: left out while the GPU is down or the field unknown.
_READINGS = (
    ("flopledger_gpu_sm_clock_hertz", "SM clock at the last sample, in hertz.", "sm_clock_hz"),
    ("flopledger_gpu_utilization_ratio",
     "Fraction of time a kernel ran (utilization.gpu), 0 to 1.", "utilization_ratio"),
    ("flopledger_gpu_tensor_activity_ratio",
     "Fraction of cycles the tensor pipes were active over the last interval, 0 to 1.",
     "tensor_activity_ratio"),
    ("flopledger_gpu_power_watts", "Power draw at the last sample, in watts.", "power_watts"),
)


def gpu_labels(g: GpuSnapshot) -> list[str]:
    """The values of :data:`GPU_LABELS` for one GPU."""
    return [str(g.index), g.uuid]


class GpuCollector(Collector):
    """Per-GPU series from the snapshot ``get_snapshot`` returns (nothing before the
    first one)."""

    def __init__(self, get_snapshot: Callable[[], Snapshot | None]) -> None:
        self._get_snapshot = get_snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._get_snapshot()
        if snap is None:
            return
        created = snap.started_wall_seconds
        for name, doc, attr in _COUNTERS:
            family = CounterMetricFamily(name, doc, labels=GPU_LABELS)
            for g in snap.gpus:
                family.add_metric(gpu_labels(g), getattr(g, attr), created=created)
            yield family
        yield from _truth(snap)
        yield from _state(snap)
        for name, doc, attr in _READINGS:
            gauge = GaugeMetricFamily(name, doc, labels=GPU_LABELS)
            for g in snap.gpus:
                value = getattr(g, attr)
                if value is not None and g.up:
                    gauge.add_metric(gpu_labels(g), value)
            yield gauge
        errors = CounterMetricFamily(
            "flopledger_sample_errors",
            "Failed reads of a GPU field (unsupported fields are not errors).",
            labels=["gpu", "field"],
        )
        for index, _uuid, field_name, count in snap.sample_errors:
            errors.add_metric([str(index), field_name], float(count), created=created)
        yield errors


def _truth(snap: Snapshot) -> Iterator[Metric]:
    """The simulator's ground truth, for simulated GPUs only."""
    truth = [(g, g.sim_true_flop) for g in snap.gpus if g.sim_true_flop is not None]
    if not truth:
        return
    family = CounterMetricFamily(
        "flopledger_sim_true_flop",
        "FLOP the simulated GPU really executed (ground truth; simulated GPUs only).",
        labels=GPU_LABELS,
    )
    for g, flop in truth:
        family.add_metric(gpu_labels(g), flop, created=snap.started_wall_seconds)
    yield family


def _state(snap: Snapshot) -> Iterator[Metric]:
    """Current rate, up, and identity of each GPU."""
    rate = GaugeMetricFamily(
        "flopledger_gpu_flop_per_second",
        "Current estimated FLOP rate of the GPU, central estimate, in FLOP/s.",
        labels=GPU_LABELS,
    )
    up = GaugeMetricFamily(
        "flopledger_gpu_up", "1 if the GPU answered at the last sample, else 0.",
        labels=GPU_LABELS,
    )
    # ``spec``: where the GPU's peak comes from (table, derived or ceiling: anything
    # but table means no row of the spec table matched and the band is wider);
    # ``spec_key``: the spec used.
    info = GaugeMetricFamily(
        "flopledger_gpu_info",
        "Identity of the GPU and the basis of its peak (spec: table, derived or ceiling); "
        "always 1.",
        labels=[*GPU_LABELS, "name", "source", "spec", "spec_key", "estimator"],
    )
    for g in snap.gpus:
        rate.add_metric(gpu_labels(g), g.rate_flops)
        up.add_metric(gpu_labels(g), 1.0 if g.up else 0.0)
        info.add_metric([*gpu_labels(g), g.name, g.source, g.spec_basis, g.spec_key,
                         g.estimator], 1.0)
    yield rate
    yield up
    yield info
