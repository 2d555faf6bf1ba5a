"""Record windows: what each GPU did for each run since its last checkpoint, and the
ledger records it becomes.

Windows are contiguous per GPU: each starts where the last one ended (at the GPU's
first sample, or at the end of a gap nobody sampled). A window holds one set of runs:
it closes when the GPU's runs change, or when the ledger takes it at a checkpoint.
Integrations charge it in :data:`FLOP_UNIT` units, split among the GPU's runs so that
the parts always add up to the whole; a record states its figures in whole FLOP.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.accounting.band import Band
from agent.accounting.estimate import EstimatorSettings, GpuAssumptions
from agent.accounting.integrate import FLOP_UNIT
from agent.accounting.records import NO_FLOP, LedgerRecord
from agent.accounting.runs import UNATTRIBUTED, RunMeta
from agent.sources.base import DeviceInfo


@dataclass(slots=True)
class Pending:
    """What one GPU did for one run since the last checkpoint."""

    flop_units: Band[int] = NO_FLOP  # in FLOP_UNIT
    energy_mj: int = 0
    samples: int = 0
    covered_ns: int = 0
    gap_ns: int = 0
    weight_ns: float = 0.0  # the run's share summed over integrations, for the average
    estimators: Counter[str] = field(default_factory=Counter)
    splits: Counter[str] = field(default_factory=Counter)
    lost_ns: int = 0  # time the GPU did not answer (part of gap_ns)


@dataclass(frozen=True, slots=True)
class Charge:
    """One GPU's integer totals of one integration, to be split among its runs.

    Attributes:
        weights: each run's share summed over the integrated ticks, in run order.
        ticks: how many ticks (or samples) the weights were summed over.
        samples: samples integrated.
        flop_units: FLOP in :data:`FLOP_UNIT` units.
        estimators: samples per estimator name.
        split: how the GPU's time was split among its runs (the attribution's word).
        lost_ns: of ``gap_ns``, the time the GPU itself did not answer.
    """

    weights: Mapping[str, float]
    ticks: int
    samples: int
    flop_units: Band[int]
    energy_mj: int
    covered_ns: int
    gap_ns: int
    estimators: Counter[str]
    split: str
    lost_ns: int = 0


def split_units(total: int, weights: Sequence[float]) -> list[int]:
    """Split an integer among shares by weight, exactly (largest remainder, ties to
    the earlier share), so the parts always add up to the whole."""
    weight_sum = sum(weights)
    if weight_sum <= 0:
        parts = [0] * len(weights)
        if parts:
            parts[0] = total
        return parts
    exact = [total * w / weight_sum for w in weights]
    parts = [math.floor(x) for x in exact]
    left = total - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[:left]:
        parts[i] += 1
    return parts


class RecordWindows:
    """The open window of every GPU, and the records waiting for the ledger.

    Args:
        devices: the GPUs, by position.
        settings: the estimator's settings, stated in every record.
        node: this node's name, written into every record.
        runs: run metadata by id, read whenever a record is written (the accountant's
            table, kept current as runs appear).
    """

    def __init__(self, devices: Sequence[DeviceInfo], settings: EstimatorSettings, node: str,
                 runs: Mapping[str, RunMeta]) -> None:
        n = len(devices)
        self._devices = tuple(devices)
        self._settings = settings
        self._node = node
        self._runs = runs
        self._start_ns: list[int | None] = [None] * n
        self._last_wall_ns = [0] * n
        self._pending: list[dict[str, Pending]] = [{} for _ in range(n)]
        self._gaps: list[LedgerRecord] = []
        self._closed: list[LedgerRecord] = []
        self._unsaved: list[LedgerRecord] = []

    def saw(self, i: int, first_wall_ns: int, last_wall_ns: int) -> None:
        """GPU ``i`` was sampled from ``first_wall_ns`` to ``last_wall_ns``: its window
        opens at the first sample if none is open, and reaches to the last."""
        if self._start_ns[i] is None:
            self._start_ns[i] = first_wall_ns
        self._last_wall_ns[i] = last_wall_ns

    def charge(self, i: int, c: Charge) -> None:
        """Add an integration's totals to GPU ``i``'s window, split among its runs by
        weight. GPU time is split like compute, so a shared GPU's records add up to
        its time once, not once per run."""
        run_ids = list(c.weights)
        w = [c.weights[r] for r in run_ids]
        totals = (c.flop_units.low, c.flop_units.central, c.flop_units.high, c.energy_mj,
                  c.covered_ns, c.gap_ns, c.lost_ns)
        parts = ([[x] for x in totals] if len(w) == 1
                 else [split_units(x, w) for x in totals])
        ticks = max(1, c.ticks)
        for k, run_id in enumerate(run_ids):
            p = self._pending[i].setdefault(run_id, Pending())
            p.flop_units += Band(parts[0][k], parts[1][k], parts[2][k])
            p.energy_mj += parts[3][k]
            p.samples += c.samples
            p.covered_ns += parts[4][k]
            p.gap_ns += parts[5][k]
            p.lost_ns += parts[6][k]
            p.weight_ns += w[k] / ticks
            p.estimators.update(c.estimators)
            p.splits[c.split] += 1

    def add_gap(self, i: int, start_ns: int, end_ns: int, runs: Sequence[str],
                gap_rate_flops: float) -> None:
        """Charge time nobody sampled (the agent was down) to the runs GPU ``i`` last
        worked for: nothing to low and central, ``gap_rate_flops`` to high. The GPU's
        next window starts at ``end_ns``."""
        if end_ns <= start_ns:
            return
        d = self._devices[i]
        gap_flop = math.ceil(gap_rate_flops * (end_ns - start_ns) / 1e9)
        run_ids = list(runs) or [UNATTRIBUTED.run_id]
        for run_id, high in zip(run_ids, split_units(gap_flop, [1.0] * len(run_ids)),
                                strict=True):
            meta = self._runs.get(run_id, RunMeta(run_id))
            self._gaps.append(LedgerRecord(
                seq=-1, kind="gap", node=self._node, run=run_id, model=meta.model,
                category=meta.category, gpu_uuid=d.uuid, gpu_index=d.index,
                start_ns=start_ns, end_ns=end_ns, flop_low=0, flop_central=0, flop_high=high,
                energy_mj=0, samples=0, covered_ns=0, gap_ns=end_ns - start_ns,
                estimator="none",
                assumptions={"reason": "agent not running", "split": "even",
                             "gap_rate_flops": gap_rate_flops},
            ))
        self._start_ns[i] = end_ns

    def starts(self) -> list[tuple[int | None, bool]]:
        """Per GPU, when its window started (None before its first sample) and whether
        it holds anything: :meth:`take` closes a window that holds something once it is
        ``record_ns`` old, and nothing else."""
        return [(start, bool(p)) for start, p in zip(self._start_ns, self._pending,
                                                     strict=True)]

    def records_of(self, i: int, a: GpuAssumptions) -> list[LedgerRecord]:
        """GPU ``i``'s pending figures as records of its current window, under the
        assumptions ``a`` its rates were estimated with."""
        pending = self._pending[i]
        start = self._start_ns[i]
        if not pending or start is None:
            return []
        end = self._last_wall_ns[i]
        d = self._devices[i]
        s = self._settings
        out = []
        for run_id, p in pending.items():
            meta = self._runs.get(run_id, RunMeta(run_id))
            integrations = sum(p.splits.values())
            flop = p.flop_units.map(lambda units: units * FLOP_UNIT)
            assumptions: dict[str, object] = {
                "spec": a.spec.key if a.spec else None,
                "precision": a.precision,
                "undeclared_precisions": None if a.precision else list(
                    s.undeclared_precisions),
                "recompute_factor": a.recompute_factor,
                "split": p.splits.most_common(1)[0][0],
                "share": round(p.weight_ns / integrations, 6) if integrations else 1.0,
                "estimators": dict(p.estimators),
                "tensor_activity_uncertainty": s.tensor_activity_uncertainty,
                "max_gap_s": s.max_gap_s,
                "via": meta.via,
            }
            if p.lost_ns:
                assumptions["gpu_lost_ns"] = p.lost_ns
            out.append(LedgerRecord(
                seq=-1, kind="interval", node=self._node, run=run_id, model=meta.model,
                category=meta.category, gpu_uuid=d.uuid, gpu_index=d.index,
                start_ns=start, end_ns=max(end, start), flop_low=flop.low,
                flop_central=flop.central, flop_high=flop.high,
                energy_mj=p.energy_mj, samples=p.samples, covered_ns=p.covered_ns,
                gap_ns=p.gap_ns,
                # A window the GPU spent lost has no sample, and so no estimator.
                estimator=p.estimators.most_common(1)[0][0] if p.estimators else "none",
                assumptions=assumptions,
            ))
        return out

    def close(self, i: int, a: GpuAssumptions) -> None:
        """Close GPU ``i``'s window at its last sample; the next one starts there."""
        records = self.records_of(i, a)
        if not records:
            return
        self._closed.extend(records)
        self._pending[i].clear()
        self._start_ns[i] = records[0].end_ns

    def take(self, now_wall_ns: int | None, record_ns: int,
             assumptions: Sequence[GpuAssumptions]) -> tuple[list[LedgerRecord],
                                                             list[LedgerRecord]]:
        """Close the windows at least ``record_ns`` old (all of them without
        ``now_wall_ns``) and hand over every closed record, with the still-open
        records of the windows left open."""
        for i, a in enumerate(assumptions):
            start = self._start_ns[i]
            if now_wall_ns is None or (start is not None and now_wall_ns - start >= record_ns):
                self.close(i, a)
        closed = self._unsaved + self._gaps + self._closed
        self._unsaved, self._gaps, self._closed = [], [], []
        still_open = [r for i, a in enumerate(assumptions) for r in self.records_of(i, a)]
        return closed, still_open

    def requeue(self, records: Iterable[LedgerRecord]) -> None:
        """Records the ledger could not store: they go out again with the next take."""
        self._unsaved = list(records) + self._unsaved
