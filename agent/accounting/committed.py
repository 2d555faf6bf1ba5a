"""What the ledger has stored, and the snapshot rows readers see of it.

Only committed records reach the exported totals, so a counter never shows FLOP a
crash could take back: the sealed records' running sums per GPU and per run, plus the
still-open records of the current windows, which are durable too and count until the
next checkpoint replaces them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from agent.accounting.records import LedgerRecord, Totals
from agent.accounting.runs import RunMeta
from agent.accounting.snapshot import GpuSnapshot, RunSnapshot
from agent.sources.base import DeviceInfo, FloatArray, SampleBatch
from agent.sources.specs import ResolvedSpec


class CommittedTotals:
    """Running sums of the committed records per GPU UUID and per run id.

    Args:
        gpu_totals: totals per GPU UUID to resume from (from the ledger).
        run_totals: totals per run id to resume from.
    """

    def __init__(self, gpu_totals: Mapping[str, Totals] | None = None,
                 run_totals: Mapping[str, Totals] | None = None) -> None:
        self.gpu: dict[str, Totals] = {k: replace(v) for k, v in (gpu_totals or {}).items()}
        self.run: dict[str, Totals] = {k: replace(v) for k, v in (run_totals or {}).items()}
        self._open: list[LedgerRecord] = []
        self._active_runs: set[str] = set()

    def commit(self, records: Iterable[LedgerRecord],
               still_open: Sequence[LedgerRecord] = ()) -> None:
        """The ledger stored these: closed records count from now on, the open ones
        until they are replaced."""
        for r in records:
            self.gpu.setdefault(r.gpu_uuid, Totals()).add(r)
            self.run.setdefault(r.run, Totals()).add(r)
            self._active_runs.add(r.run)
        self._open = list(still_open)
        for r in still_open:
            self._active_runs.add(r.run)

    def of_gpu(self, uuid: str) -> Totals:
        """A GPU's totals, open records included."""
        return self._with_open(self.gpu.get(uuid), lambda r: r.gpu_uuid == uuid)

    def of_run(self, run_id: str) -> Totals:
        """A run's totals on this node, open records included."""
        return self._with_open(self.run.get(run_id), lambda r: r.run == run_id)

    def _with_open(self, base: Totals | None, mine: Callable[[LedgerRecord], bool]) -> Totals:
        t = replace(base) if base is not None else Totals()
        for r in self._open:
            if mine(r):
                t.add(r)
        return t

    def run_snapshots(self, runs: Mapping[str, RunMeta], gpus_now: Mapping[str, int],
                      since_ns: int) -> list[RunSnapshot]:
        """Rows of the runs that are on a GPU now (``gpus_now``: GPUs per run id),
        committed anything since this agent started, or ended after ``since_ns``."""
        out = []
        for run_id in dict.fromkeys([*self.run, *(r.run for r in self._open)]):
            t = self.of_run(run_id)
            if (run_id not in gpus_now and run_id not in self._active_runs
                    and t.last_ns < since_ns):
                continue
            meta = runs.get(run_id, RunMeta(run_id))
            low, central, high = t.flop.map(float)
            out.append(RunSnapshot(
                run_id=run_id, model=meta.model, category=meta.category, flop_low=low,
                flop_central=central, flop_high=high, energy_joules=t.energy_mj / 1e3,
                gpus=gpus_now.get(run_id, 0), created_wall_seconds=t.first_ns / 1e9,
            ))
        return out


def gpu_snapshot(i: int, d: DeviceInfo, spec: ResolvedSpec, t: Totals, up: bool,
                 rate_flops: float, estimator: str, batch: SampleBatch | None,
                 sim_true_flop: FloatArray | None) -> GpuSnapshot:
    """GPU ``i``'s row: its peak model ``spec``, its committed totals ``t`` in base units,
    its current rate and estimator, and the latest readings of ``batch`` (None where
    unknown)."""

    def reading(arr: FloatArray | None, scale: float) -> float | None:
        # A Python float and math.isnan: a NumPy ufunc on one scalar costs several
        # times more, and a snapshot makes five per GPU every second.
        if arr is None:
            return None
        value = float(arr[i])
        return None if math.isnan(value) else value * scale

    low, central, high = t.flop.map(float)
    return GpuSnapshot(
        index=d.index, uuid=d.uuid, name=d.name, spec_key=spec.spec.key, source=d.source,
        spec_basis=str(spec.basis), spec_reason=spec.reason, up=up, flop_low=low,
        flop_central=central, flop_high=high,
        energy_joules=t.energy_mj / 1e3, covered_seconds=t.covered_ns / 1e9,
        gap_seconds=t.gap_ns / 1e9, rate_flops=rate_flops, estimator=estimator,
        sm_clock_hz=reading(batch.sm_clock_mhz if batch else None, 1e6),
        utilization_ratio=reading(batch.gpu_util_pct if batch else None, 0.01),
        tensor_activity_ratio=reading(batch.tensor_any_pct if batch else None, 0.01),
        power_watts=reading(batch.power_mw if batch else None, 1e-3),
        sim_true_flop=reading(sim_true_flop, 1.0),
    )
