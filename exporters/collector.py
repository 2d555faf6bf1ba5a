"""The Prometheus collector: fresh metric families from one snapshot per scrape.

Metric names and labels are a contract (see the README's metric table). Base units
only; no hostname label (the scrape target adds ``instance``); a value that is unknown
is left out, never exported as NaN.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.accounting.snapshot import GpuSnapshot, Snapshot
from agent.compliance.watcher import ThresholdState

GPU_LABELS = ("gpu", "uuid")
RUN_LABELS = ("run", "model", "category")


def _gpu_labels(g: GpuSnapshot) -> list[str]:
    return [str(g.index), g.uuid]


class FlopledgerCollector(Collector):
    """Builds the exposition from whatever snapshot ``get_snapshot`` returns (and the
    threshold watcher's latest state, if there is one)."""

    def __init__(self, get_snapshot: Callable[[], Snapshot | None],
                 get_thresholds: Callable[[], ThresholdState | None] | None = None,
                 get_notify_status: Callable[[], Mapping[str, Mapping[str, float]]] | None = None,
                 ) -> None:
        self._get_snapshot = get_snapshot
        self._get_thresholds = get_thresholds
        self._get_notify_status = get_notify_status

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        snap = self._get_snapshot()
        build = GaugeMetricFamily(
            "flopledger_build_info", "Build of the agent; always 1.", labels=["version"]
        )
        build.add_metric([__version__], 1.0)
        yield build
        if snap is None:
            return
        yield from self._gpu_metrics(snap)
        yield from self._run_metrics(snap)
        yield from self._self_metrics(snap)
        if self._get_thresholds is not None:
            yield from self._threshold_metrics(self._get_thresholds())
        if self._get_notify_status is not None:
            yield from self._notify_metrics(self._get_notify_status())
        duration = GaugeMetricFamily(
            "flopledger_collector_duration_seconds",
            "Time this scrape took to build the metric families, in seconds.",
        )
        duration.add_metric([], time.perf_counter() - start)
        yield duration

    def _gpu_metrics(self, snap: Snapshot) -> Iterator[Metric]:
        created = snap.started_wall_seconds
        counters = (
            ("flopledger_gpu_flop", "Estimated FLOP executed by the GPU, central estimate.",
             "flop_central"),
            ("flopledger_gpu_flop_low", "Lower bound of the FLOP executed by the GPU.",
             "flop_low"),
            ("flopledger_gpu_flop_high", "Upper bound of the FLOP executed by the GPU.",
             "flop_high"),
            ("flopledger_gpu_energy_joules", "Energy used by the GPU, in joules.",
             "energy_joules"),
            ("flopledger_gpu_covered_seconds",
             "Time covered by samples no further apart than the maximum gap, in seconds.",
             "covered_seconds"),
            ("flopledger_gpu_gap_seconds",
             "Time in sampling gaps, counted in the high bound only, in seconds.",
             "gap_seconds"),
        )
        for name, doc, attr in counters:
            family = CounterMetricFamily(name, doc, labels=GPU_LABELS)
            for g in snap.gpus:
                family.add_metric(_gpu_labels(g), getattr(g, attr), created=created)
            yield family
        truth = [g for g in snap.gpus if g.sim_true_flop is not None]
        if truth:
            family = CounterMetricFamily(
                "flopledger_sim_true_flop",
                "FLOP the simulated GPU really executed (ground truth; simulated GPUs only).",
                labels=GPU_LABELS,
            )
            for g in truth:
                assert g.sim_true_flop is not None
                family.add_metric(_gpu_labels(g), g.sim_true_flop, created=created)
            yield family
        rate = GaugeMetricFamily(
            "flopledger_gpu_flop_per_second",
            "Current estimated FLOP rate of the GPU, central estimate, in FLOP/s.",
            labels=GPU_LABELS,
        )
        up = GaugeMetricFamily(
            "flopledger_gpu_up", "1 if the GPU answered at the last sample, else 0.",
            labels=GPU_LABELS,
        )
        info = GaugeMetricFamily(
            "flopledger_gpu_info", "Identity of the GPU; always 1.",
            labels=[*GPU_LABELS, "name", "source", "spec", "estimator"],
        )
        for g in snap.gpus:
            rate.add_metric(_gpu_labels(g), g.rate_flops)
            up.add_metric(_gpu_labels(g), 1.0 if g.up else 0.0)
            info.add_metric([*_gpu_labels(g), g.name, g.source, g.spec_key, g.estimator], 1.0)
        yield rate
        yield up
        yield info
        readings = (
            ("flopledger_gpu_sm_clock_hertz", "SM clock at the last sample, in hertz.",
             "sm_clock_hz"),
            ("flopledger_gpu_utilization_ratio",
             "Fraction of time a kernel ran (utilization.gpu), 0 to 1.", "utilization_ratio"),
            ("flopledger_gpu_tensor_activity_ratio",
             "Fraction of cycles the tensor pipes were active over the last interval, 0 to 1.",
             "tensor_activity_ratio"),
            ("flopledger_gpu_power_watts", "Power draw at the last sample, in watts.",
             "power_watts"),
        )
        for name, doc, attr in readings:
            gauge = GaugeMetricFamily(name, doc, labels=GPU_LABELS)
            for g in snap.gpus:
                value = getattr(g, attr)
                if value is not None and g.up:
                    gauge.add_metric(_gpu_labels(g), value)
            yield gauge
        error_family = CounterMetricFamily(
            "flopledger_sample_errors",
            "Failed reads of a GPU field (unsupported fields are not errors).",
            labels=["gpu", "field"],
        )
        for index, _uuid, field_name, count in snap.sample_errors:
            error_family.add_metric([str(index), field_name], float(count), created=created)
        yield error_family

    def _run_metrics(self, snap: Snapshot) -> Iterator[Metric]:
        counters = (
            ("flopledger_run_flop", "Estimated FLOP of the run on this node, central estimate.",
             "flop_central"),
            ("flopledger_run_flop_low", "Lower bound of the run's FLOP on this node.",
             "flop_low"),
            ("flopledger_run_flop_high", "Upper bound of the run's FLOP on this node.",
             "flop_high"),
            ("flopledger_run_energy_joules", "Energy the run used on this node, in joules.",
             "energy_joules"),
        )
        for name, doc, attr in counters:
            family = CounterMetricFamily(name, doc, labels=RUN_LABELS)
            for r in snap.runs:
                family.add_metric([r.run_id, r.model, r.category], getattr(r, attr),
                                  created=r.created_wall_seconds)
            yield family
        gpus = GaugeMetricFamily(
            "flopledger_run_gpus", "GPUs of this node the run is using.", labels=RUN_LABELS
        )
        for r in snap.runs:
            gpus.add_metric([r.run_id, r.model, r.category], float(r.gpus))
        yield gpus

    def _threshold_metrics(self, state: ThresholdState | None) -> Iterator[Metric]:
        if state is None:
            return
        labels = ["subject_type", "subject", "regime", "estimate"]
        fraction = GaugeMetricFamily(
            "flopledger_threshold_fraction_ratio",
            "Fraction of a regime's threshold reached by a run or model on this node's "
            "ledger (the estimate named in the label).", labels=labels)
        eta = GaugeMetricFamily(
            "flopledger_threshold_eta_seconds",
            "Seconds until the threshold is reached at the current rate (absent: not "
            "moving toward it).", labels=labels)
        will = GaugeMetricFamily(
            "flopledger_threshold_will_be_met",
            "1 if the projection to the run's planned end crosses the threshold.",
            labels=labels)
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

    def _notify_metrics(self, status: Mapping[str, Mapping[str, float]]) -> Iterator[Metric]:
        families = {
            name: GaugeMetricFamily(f"flopledger_notifications_{name}",
                                    f"Notifications {name.replace('_', ' ')}, per channel.",
                                    labels=["channel"])
            for name in ("pending", "delivered", "failed_attempts")
        }
        for channel, counts in sorted(status.items()):
            for name, family in families.items():
                if name in counts:
                    family.add_metric([channel], float(counts[name]))
        yield from families.values()

    def _self_metrics(self, snap: Snapshot) -> Iterator[Metric]:
        if snap.last_sample_wall_seconds is not None:
            last = GaugeMetricFamily(
                "flopledger_last_sample_timestamp_seconds",
                "Wall-clock time of the last sample, in seconds since the epoch.",
            )
            last.add_metric([], snap.last_sample_wall_seconds)
            yield last
        created = snap.started_wall_seconds
        for name, doc, value in (
            ("flopledger_sampler_ticks", "Sampling ticks completed.", snap.ticks),
            ("flopledger_sampler_overruns",
             "Ticks skipped because sampling took longer than the interval.", snap.overruns),
            ("flopledger_integrations", "Integration chunks folded into the totals.",
             snap.integrations),
            ("flopledger_rejected_samples",
             "Samples rejected because their timestamp did not advance.",
             snap.rejected_samples),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(value), created=created)
            yield family
        tick = GaugeMetricFamily(
            "flopledger_sampler_tick_duration_seconds",
            "Time the last sampling tick took, in seconds.",
        )
        tick.add_metric([], snap.last_tick_duration_seconds)
        yield tick
        start = GaugeMetricFamily(
            "flopledger_start_time_seconds",
            "When the agent started accounting, in seconds since the epoch.",
        )
        start.add_metric([], snap.started_wall_seconds)
        yield start
