"""The accounting core: sample batches in, integer totals per GPU and per run out.

One :class:`Accountant` is driven by one thread (the sampler, or a replay): it turns
each batch into rates, buffers them, and every few ticks folds the buffer through the
integration kernels. It has no threads, sockets or files of its own, so the live agent,
replays and tests drive exactly the same code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.estimate import (
    Coefficients,
    Estimator,
    EstimatorSettings,
    GpuAssumptions,
    Rates,
    build_coefficients,
    estimate_rates,
)
from agent.integrate import FLOP_UNIT, group_by_gpu, integrate_energy, integrate_flop
from agent.snapshot import GpuSnapshot, RunSnapshot, Snapshot
from agent.sources.base import ActivityKind, DeviceInfo, FloatArray, IntArray, SampleBatch


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Metadata of a run, as it appears on the run series."""

    run_id: str
    model: str = ""
    category: str = "unknown"


@dataclass(slots=True)
class _Totals:
    low_units: int = 0
    central_units: int = 0
    high_units: int = 0
    energy_mj: int = 0
    covered_ns: int = 0
    gap_ns: int = 0

    def add(self, low: int, central: int, high: int, energy_mj: int) -> None:
        self.low_units += low
        self.central_units += central
        self.high_units += high
        self.energy_mj += energy_mj


@dataclass(slots=True)
class _Buffer:
    gpu: list[IntArray] = field(default_factory=list)
    timestamp_ns: list[IntArray] = field(default_factory=list)
    low: list[FloatArray] = field(default_factory=list)
    central: list[FloatArray] = field(default_factory=list)
    high: list[FloatArray] = field(default_factory=list)
    energy_mj: list[FloatArray] = field(default_factory=list)
    power_mw: list[FloatArray] = field(default_factory=list)
    sim_truth: FloatArray | None = None

    def clear(self) -> None:
        for name in ("gpu", "timestamp_ns", "low", "central", "high", "energy_mj", "power_mw"):
            getattr(self, name).clear()


class Accountant:
    """Turns sample batches into totals.

    Args:
        devices: the GPUs, in batch order.
        assumptions: what the estimator assumes per GPU (spec, declared precision...).
        settings: the estimator's settings.
        runs: the run each GPU works for, in device order.
        started_wall_ns: when accounting started (the counters' ``_created``).
        source_kind: ``nvml``, ``simulated`` or ``replay``, for the snapshot.
    """

    def __init__(
        self,
        devices: Sequence[DeviceInfo],
        assumptions: Sequence[GpuAssumptions],
        settings: EstimatorSettings,
        runs: Sequence[RunInfo],
        started_wall_ns: int,
        source_kind: str,
    ) -> None:
        if not len(devices) == len(assumptions) == len(runs):
            raise ValueError("devices, assumptions and runs must have one entry per GPU")
        self.devices = tuple(devices)
        self.settings = settings
        self.coeffs: Coefficients = build_coefficients(assumptions, settings)
        self.runs = tuple(runs)
        n = len(devices)
        self._positions = np.arange(n, dtype=np.int64)
        self._max_gap_ns = round(settings.max_gap_s * 1e9)
        self._measured_over_gaps = np.array(
            [d.activity_kind == ActivityKind.GPM for d in devices], dtype=np.bool_
        )
        self._last_clock_mhz = np.full(n, np.nan)
        self._last_util_pct = np.full(n, np.nan)
        self._last_flop_ts = np.full(n, -1, dtype=np.int64)
        self._last_energy_ts = np.full(n, -1, dtype=np.int64)
        self._last_energy_mj = np.full(n, np.nan)
        self._buffer = _Buffer()
        self.gpu_totals = [_Totals() for _ in range(n)]
        self.run_totals: dict[str, _Totals] = {r.run_id: _Totals() for r in runs}
        self._run_info = {r.run_id: r for r in runs}
        self._run_created_ns: dict[str, int] = {r.run_id: started_wall_ns for r in runs}
        self.started_wall_ns = started_wall_ns
        self.source_kind = source_kind
        self.errors: Counter[tuple[int, str]] = Counter()
        self.ticks = 0
        self.integrations = 0
        self.rejected = 0
        self.last_batch: SampleBatch | None = None
        self.last_rates: Rates | None = None
        self.sim_true_flop: FloatArray | None = None
        self._up = np.ones(n, dtype=np.bool_)

    @property
    def n_gpus(self) -> int:
        return len(self.devices)

    def add_batch(self, batch: SampleBatch) -> Rates:
        """Estimate the rates of one tick and buffer them for the next integration."""
        g = self._positions
        rates = estimate_rates(
            g, batch.sm_clock_mhz, self._last_clock_mhz, batch.gpu_util_pct, self._last_util_pct,
            batch.tensor_any_pct, batch.tensor_hmma_pct, batch.tensor_imma_pct,
            batch.tensor_dmma_pct, batch.tensor_dfma_pct, batch.fp16_pct, batch.fp32_pct,
            batch.fp64_pct, self.coeffs, self.settings,
        )
        up = batch.up
        self._last_clock_mhz = np.where(up, batch.sm_clock_mhz, self._last_clock_mhz)
        self._last_util_pct = np.where(up, batch.gpu_util_pct, self._last_util_pct)
        self._up = up.copy()
        # A GPU that is down contributes no samples; if it ever comes back the time in
        # between is a gap, bounded in the high estimate.
        b = self._buffer
        b.gpu.append(g[up])
        b.timestamp_ns.append(batch.timestamp_ns[up])
        b.low.append(rates.low[up])
        b.central.append(rates.central[up])
        b.high.append(rates.high[up])
        b.energy_mj.append(batch.energy_mj[up])
        b.power_mw.append(batch.power_mw[up])
        if batch.sim_true_flop_total is not None:
            b.sim_truth = batch.sim_true_flop_total
        for position, field_name in batch.errors:
            self.errors[(position, field_name)] += 1
        self.ticks += 1
        self.last_batch = batch
        self.last_rates = rates
        return rates

    def integrate(self) -> None:
        """Fold the buffered samples into the totals."""
        b = self._buffer
        if not b.gpu:
            return
        order, offsets = group_by_gpu(np.concatenate(b.gpu), self.n_gpus)
        ts = np.concatenate(b.timestamp_ns)[order]
        flop = integrate_flop(
            offsets, ts, np.concatenate(b.low)[order], np.concatenate(b.central)[order],
            np.concatenate(b.high)[order], self.coeffs.gap_rate_flops,
            self._measured_over_gaps, self._last_flop_ts, self._max_gap_ns,
        )
        energy = integrate_energy(
            offsets, ts, np.concatenate(b.energy_mj)[order], np.concatenate(b.power_mw)[order],
            self._last_energy_ts, self._last_energy_mj,
        )
        self._last_flop_ts = flop.last_timestamp_ns
        self._last_energy_ts = energy.last_timestamp_ns
        self._last_energy_mj = energy.last_energy_mj
        for i in range(self.n_gpus):
            low, central, high = (int(flop.low_units[i]), int(flop.central_units[i]),
                                  int(flop.high_units[i]))
            energy_mj = int(energy.energy_mj[i])
            t = self.gpu_totals[i]
            t.add(low, central, high, energy_mj)
            t.covered_ns += int(flop.covered_ns[i])
            t.gap_ns += int(flop.gap_ns[i])
            self.run_totals[self.runs[i].run_id].add(low, central, high, energy_mj)
        self.rejected += int(flop.rejected.sum())
        if b.sim_truth is not None:
            self.sim_true_flop = b.sim_truth
        b.clear()
        b.sim_truth = None
        self.integrations += 1

    @property
    def buffered(self) -> int:
        return len(self._buffer.gpu)

    def snapshot(self, overruns: int = 0, last_tick_duration_s: float = 0.0) -> Snapshot:
        """An immutable view of the totals, in base units."""
        batch = self.last_batch
        rates = self.last_rates
        gpus = []
        for i, d in enumerate(self.devices):
            t = self.gpu_totals[i]

            def reading(arr: FloatArray | None, scale: float, i: int = i) -> float | None:
                if arr is None or np.isnan(arr[i]):
                    return None
                return float(arr[i]) * scale

            gpus.append(
                GpuSnapshot(
                    index=d.index,
                    uuid=d.uuid,
                    name=d.name,
                    spec_key=d.spec_key or "",
                    source=d.source,
                    up=bool(self._up[i]),
                    flop_low=float(t.low_units * FLOP_UNIT),
                    flop_central=float(t.central_units * FLOP_UNIT),
                    flop_high=float(t.high_units * FLOP_UNIT),
                    energy_joules=t.energy_mj / 1e3,
                    covered_seconds=t.covered_ns / 1e9,
                    gap_seconds=t.gap_ns / 1e9,
                    rate_flops=(
                        float(rates.central[i]) if rates is not None and self._up[i] else 0.0
                    ),
                    estimator=Estimator(int(rates.estimator[i])).name.lower()
                    if rates is not None else "none",
                    sm_clock_hz=reading(batch.sm_clock_mhz if batch else None, 1e6),
                    utilization_ratio=reading(batch.gpu_util_pct if batch else None, 0.01),
                    tensor_activity_ratio=reading(batch.tensor_any_pct if batch else None, 0.01),
                    power_watts=reading(batch.power_mw if batch else None, 1e-3),
                    sim_true_flop=reading(self.sim_true_flop, 1.0),
                )
            )
        gpus_per_run = Counter(r.run_id for r in self.runs)
        runs = tuple(
            RunSnapshot(
                run_id=run_id,
                model=self._run_info[run_id].model,
                category=self._run_info[run_id].category,
                flop_low=float(t.low_units * FLOP_UNIT),
                flop_central=float(t.central_units * FLOP_UNIT),
                flop_high=float(t.high_units * FLOP_UNIT),
                energy_joules=t.energy_mj / 1e3,
                gpus=gpus_per_run[run_id],
                created_wall_seconds=self._run_created_ns[run_id] / 1e9,
            )
            for run_id, t in self.run_totals.items()
        )
        errors = tuple(
            (self.devices[pos].index, self.devices[pos].uuid, name, count)
            for (pos, name), count in sorted(self.errors.items())
        )
        return Snapshot(
            source_kind=self.source_kind,
            started_wall_seconds=self.started_wall_ns / 1e9,
            gpus=tuple(gpus),
            runs=runs,
            sample_errors=errors,
            last_sample_wall_seconds=batch.wall_time_ns / 1e9 if batch else None,
            ticks=self.ticks,
            overruns=overruns,
            integrations=self.integrations,
            rejected_samples=self.rejected,
            last_tick_duration_seconds=last_tick_duration_s,
        )
