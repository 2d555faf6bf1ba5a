"""The accounting core: sample batches in, ledger records and committed totals out.

One :class:`Accountant` is driven by one thread (the sampler, or a replay): it turns
each batch into rates, buffers them, and folds the buffer through the integration
kernels every few ticks, or earlier when a GPU changes hands (so every chunk has one
set of runs per GPU). A chunk's integer totals per GPU are split among the GPU's runs
by their average weights and collected into pending records, one per (GPU, run) and
checkpoint window. :meth:`take_records` hands them to the ledger; only what the ledger
committed (:meth:`commit`) reaches the exported totals, so a counter never shows FLOP
a crash could take back.

It has no threads, sockets or files of its own: the live agent, replays and tests
drive exactly the same code.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from agent.accounting.estimate import (
    Coefficients,
    Estimator,
    EstimatorSettings,
    GpuAssumptions,
    Rates,
    build_coefficients,
    estimate_rates,
)
from agent.accounting.integrate import FLOP_UNIT, group_by_gpu, integrate_energy, integrate_flop
from agent.accounting.runs import UNATTRIBUTED, GpuAttribution, GpuShare, RunMeta
from agent.accounting.snapshot import GpuSnapshot, RunSnapshot, Snapshot
from agent.ledger.records import LedgerRecord
from agent.ledger.store import Totals
from agent.sources.base import (
    FLOAT_FIELDS,
    ActivityKind,
    DeviceInfo,
    FloatArray,
    IntArray,
    SampleBatch,
)
from agent.sources.specs import GpuSpec

_UNATTRIBUTED_GPU = GpuAttribution((GpuShare(UNATTRIBUTED, 1.0),), "none")


@dataclass(slots=True)
class _Pending:
    """What one GPU did for one run since the last checkpoint, in FLOP units."""

    low: int = 0
    central: int = 0
    high: int = 0
    energy_mj: int = 0
    samples: int = 0
    covered_ns: int = 0
    gap_ns: int = 0
    weight_ns: float = 0.0  # the run's share summed over integrations, for the average
    estimators: Counter[str] = field(default_factory=Counter)
    splits: Counter[str] = field(default_factory=Counter)


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


def _run_key(a: GpuAttribution) -> tuple[tuple[str, str | None, float], ...]:
    """What decides a GPU's records and assumptions: its runs and what they declare."""
    return tuple(sorted((s.run.run_id, s.run.precision, s.run.recompute_factor)
                        for s in a.shares))


class Accountant:
    """Turns sample batches into ledger records and totals.

    Args:
        devices: the GPUs, in batch order.
        specs: spec-table row per GPU (None: not in the table).
        settings: the estimator's settings.
        started_wall_ns: when this agent started (the GPU counters' ``_created``).
        source_kind: ``nvml``, ``simulated`` or ``replay``, for the snapshot.
        node: this node's name, written into every record.
        gpu_totals: committed totals per GPU UUID to resume from (from the ledger).
        run_totals: committed totals per run id to resume from.
        known_runs: metadata of runs already in the ledger.
    """

    def __init__(
        self,
        devices: Sequence[DeviceInfo],
        specs: Sequence[GpuSpec | None],
        settings: EstimatorSettings,
        started_wall_ns: int,
        source_kind: str,
        node: str = "",
        gpu_totals: Mapping[str, Totals] | None = None,
        run_totals: Mapping[str, Totals] | None = None,
        known_runs: Mapping[str, RunMeta] | None = None,
    ) -> None:
        if len(devices) != len(specs):
            raise ValueError("devices and specs must have one entry per GPU")
        self.devices = tuple(devices)
        self._specs = tuple(specs)
        self.settings = settings
        self.node = node
        n = len(devices)
        self._positions = np.arange(n, dtype=np.int64)
        self._max_gap_ns = round(settings.max_gap_s * 1e9)
        self._measured_over_gaps = np.array(
            [d.activity_kind == ActivityKind.GPM for d in devices], dtype=np.bool_
        )
        self._attributions: list[GpuAttribution] = [_UNATTRIBUTED_GPU] * n
        self._assumptions = [self._assume(i, _UNATTRIBUTED_GPU) for i in range(n)]
        self.coeffs: Coefficients = build_coefficients(self._assumptions, settings)
        self._last_clock_mhz = np.full(n, np.nan)
        self._last_util_pct = np.full(n, np.nan)
        self._last_flop_ts = np.full(n, -1, dtype=np.int64)
        self._last_energy_ts = np.full(n, -1, dtype=np.int64)
        self._last_energy_mj = np.full(n, np.nan)
        self._buffer = _Buffer()
        # Per GPU, the share weights summed over the buffered ticks, and estimator use.
        self._weights: list[dict[str, float]] = [{} for _ in range(n)]
        self._ticks_buffered = np.zeros(n, dtype=np.int64)
        self._estimators: list[Counter[str]] = [Counter() for _ in range(n)]
        self._last_wall_ns = np.zeros(n, dtype=np.int64)
        # Record windows are contiguous per GPU: each starts where the last one ended.
        self._window_start_ns: list[int | None] = [None] * n
        self._pending: list[dict[str, _Pending]] = [{} for _ in range(n)]
        self._pending_gaps: list[LedgerRecord] = []
        self._closed: list[LedgerRecord] = []
        self._open_committed: list[LedgerRecord] = []
        self._unsaved: list[LedgerRecord] = []
        self.runs: dict[str, RunMeta] = dict(known_runs or {})
        self.runs.setdefault(UNATTRIBUTED.run_id, UNATTRIBUTED)
        self.gpu_totals: dict[str, Totals] = {k: replace(v) for k, v in (gpu_totals or {}).items()}
        self.run_totals: dict[str, Totals] = {k: replace(v) for k, v in (run_totals or {}).items()}
        self._active_runs: set[str] = set()
        self.started_wall_ns = started_wall_ns
        self.source_kind = source_kind
        self.errors: Counter[tuple[int, str]] = Counter()
        self.ticks = 0
        self.integrations = 0
        self.rejected = 0
        self.last_batch: SampleBatch | None = None
        self.last_rates: Rates | None = None
        # The simulator's ground truth as of the last integrated, taken and committed
        # sample, so that the exported truth lines up with the exported totals.
        self.sim_true_flop: FloatArray | None = None
        self._truth_integrated: FloatArray | None = None
        self._truth_taken: FloatArray | None = None
        self._up = np.ones(n, dtype=np.bool_)

    @property
    def n_gpus(self) -> int:
        return len(self.devices)

    def _assume(self, i: int, attribution: GpuAttribution) -> GpuAssumptions:
        runs = [s.run for s in attribution.shares]
        dominant = max(attribution.shares, key=lambda s: s.weight).run
        precisions = {r.precision for r in runs}
        # Runs sharing a GPU that declare different precisions leave it undeclared:
        # the band then spans the candidates instead of trusting one of them.
        precision = precisions.pop() if len(precisions) == 1 else None
        d = self.devices[i]
        return GpuAssumptions(self._specs[i], d.activity_kind, precision,
                              dominant.recompute_factor, d.max_sm_clock_mhz)

    def _set_attributions(self, attributions: Sequence[GpuAttribution]) -> None:
        changed = [i for i, a in enumerate(attributions)
                   if a is not self._attributions[i]
                   and _run_key(a) != _run_key(self._attributions[i])]
        if changed:
            # Fold what was sampled under the old runs before charging anything to the
            # new ones.
            self.integrate()
            for i in changed:
                # A record holds one set of runs: close the window at the change.
                self._close_window(i)
                self._assumptions[i] = self._assume(i, attributions[i])
            self.coeffs = build_coefficients(self._assumptions, self.settings)
        self._attributions = list(attributions)
        for a in attributions:
            for s in a.shares:
                self.runs[s.run.run_id] = s.run

    def add_batch(self, batch: SampleBatch,
                  attributions: Sequence[GpuAttribution] | None = None) -> Rates:
        """Estimate the rates of one tick and buffer them for the next integration."""
        if attributions is not None:
            self._set_attributions(attributions)
        g = self._positions
        rates = estimate_rates(
            g, batch.sm_clock_mhz, self._last_clock_mhz, batch.gpu_util_pct,
            self._last_util_pct, batch.tensor_any_pct, batch.tensor_hmma_pct,
            batch.tensor_imma_pct, batch.tensor_dmma_pct, batch.tensor_dfma_pct,
            batch.fp16_pct, batch.fp32_pct, batch.fp64_pct, self.coeffs, self.settings,
        )
        up = batch.up
        self._last_clock_mhz = np.where(up, batch.sm_clock_mhz, self._last_clock_mhz)
        self._last_util_pct = np.where(up, batch.gpu_util_pct, self._last_util_pct)
        self._up = up.copy()
        # A GPU that is down contributes no samples; if it comes back, the time in
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
        for i in np.flatnonzero(up):
            if self._window_start_ns[i] is None:
                self._window_start_ns[i] = batch.wall_time_ns
            self._last_wall_ns[i] = batch.wall_time_ns
            self._ticks_buffered[i] += 1
            weights = self._weights[i]
            for share in self._attributions[i].shares:
                weights[share.run.run_id] = weights.get(share.run.run_id, 0.0) + share.weight
            self._estimators[i][Estimator(int(rates.estimator[i])).name.lower()] += 1
        for position, field_name in batch.errors:
            self.errors[(position, field_name)] += 1
        self.ticks += 1
        self.last_batch = batch
        self.last_rates = rates
        return rates

    @property
    def buffered(self) -> int:
        return len(self._buffer.gpu)

    def integrate(self) -> None:
        """Fold the buffered samples into the pending records."""
        b = self._buffer
        if not b.gpu:
            return
        order, offsets = group_by_gpu(np.concatenate(b.gpu), self.n_gpus)

        def grouped(parts: list[FloatArray]) -> FloatArray:
            return np.concatenate(parts)[order]

        self._fold(offsets, np.concatenate(b.timestamp_ns)[order], grouped(b.low),
                   grouped(b.central), grouped(b.high), grouped(b.energy_mj),
                   grouped(b.power_mw))
        if b.sim_truth is not None:
            self._truth_integrated = b.sim_truth
        b.clear()
        b.sim_truth = None

    def _fold(self, offsets: IntArray, ts: IntArray, low: FloatArray, central: FloatArray,
              high: FloatArray, energy_mj: FloatArray, power_mw: FloatArray) -> None:
        """Integrate samples grouped by GPU (``offsets``, as :func:`group_by_gpu` gives)
        and charge each GPU's totals to its runs by the weights collected since the last
        fold. The one integration path of ticks and of replayed chunks."""
        flop = integrate_flop(
            offsets, ts, low, central, high, self.coeffs.gap_rate_flops,
            self._measured_over_gaps, self._last_flop_ts, self._max_gap_ns,
        )
        energy = integrate_energy(offsets, ts, energy_mj, power_mw, self._last_energy_ts,
                                  self._last_energy_mj)
        self._last_flop_ts = flop.last_timestamp_ns
        self._last_energy_ts = energy.last_timestamp_ns
        self._last_energy_mj = energy.last_energy_mj
        for i in range(self.n_gpus):
            samples = int(offsets[i + 1] - offsets[i])
            if samples == 0:
                continue
            weights = self._weights[i]
            run_ids = list(weights)
            w = [weights[r] for r in run_ids]
            # GPU time is split like compute, so a shared GPU's records add up to its
            # time once, not once per run.
            totals = (flop.low_units[i], flop.central_units[i], flop.high_units[i],
                      energy.energy_mj[i], flop.covered_ns[i], flop.gap_ns[i])
            parts = ([[int(x)] for x in totals] if len(w) == 1
                     else [split_units(int(x), w) for x in totals])
            ticks = max(1, int(self._ticks_buffered[i]))
            split = self._attributions[i].split
            for k, run_id in enumerate(run_ids):
                p = self._pending[i].setdefault(run_id, _Pending())
                p.low += parts[0][k]
                p.central += parts[1][k]
                p.high += parts[2][k]
                p.energy_mj += parts[3][k]
                p.samples += samples
                p.covered_ns += parts[4][k]
                p.gap_ns += parts[5][k]
                p.weight_ns += w[k] / ticks
                p.estimators.update(self._estimators[i])
                p.splits[split] += 1
            weights.clear()
            self._estimators[i].clear()
            self._ticks_buffered[i] = 0
        self.rejected += int(flop.rejected.sum())
        self.integrations += 1

    def add_samples(
        self, gpu: IntArray, timestamp_ns: IntArray, wall_ns: IntArray,
        fields: Mapping[str, FloatArray], *,
        attributions: Sequence[GpuAttribution] | None = None,
        run_index: IntArray | None = None, run_table: Sequence[GpuAttribution] = (),
        sim_true_flop_total: FloatArray | None = None,
    ) -> None:
        """Estimate and integrate a chunk of many samples at once (replay).

        Gives the totals feeding the same samples one tick at a time through
        :meth:`add_batch` and :meth:`integrate` would, bit for bit, however the samples
        are chunked: each sample's previous clock and utilization come from the previous
        sample of its GPU (carried across chunks), and the integer totals are folded by
        the same kernels into the same pending records.

        Args:
            gpu: position of each sample's GPU in ``devices`` (int64); samples of one
                GPU in time order, GPUs interleaved in any way.
            timestamp_ns: monotonic (or wall) time of each sample, for integration.
            wall_ns: wall-clock time of each sample (ns since the epoch), for windows.
            fields: SampleBatch float fields by name (vendor units), one entry per
                sample; a missing field is unknown (NaN).
            attributions: one per GPU, for the whole chunk (as for :meth:`add_batch`).
            run_index: per sample, an index into ``run_table``; where a GPU's runs
                change, the chunk is split so that a record holds one set of runs.
            run_table: the attributions ``run_index`` points into.
            sim_true_flop_total: per GPU, the simulator's ground truth at the chunk's end.
        """
        self.integrate()  # ticks buffered by add_batch are older: fold them first
        if attributions is not None:
            self._set_attributions(attributions)
        n = int(gpu.shape[0])
        start = 0
        if run_index is not None and n:
            for row, g, attribution in self._run_changes(gpu, run_index, run_table):
                self._add_segment(gpu, timestamp_ns, wall_ns, fields, start, row,
                                  run_index, run_table)
                new = list(self._attributions)
                new[g] = attribution
                self._set_attributions(new)
                start = row
        self._add_segment(gpu, timestamp_ns, wall_ns, fields, start, n, run_index, run_table)
        if sim_true_flop_total is not None:
            self._truth_integrated = sim_true_flop_total

    def _run_changes(self, gpu: IntArray, run_index: IntArray,
                     run_table: Sequence[GpuAttribution]) -> list[tuple[int, int, GpuAttribution]]:
        """(row, GPU, new attribution) at every sample where a GPU's runs change."""
        order, offsets = group_by_gpu(gpu, self.n_gpus)
        r = run_index[order]
        candidate = np.ones(r.shape[0], dtype=np.bool_)
        candidate[1:] = r[1:] != r[:-1]
        # Each GPU's first sample is compared with the GPU's current runs.
        candidate[offsets[:-1][np.diff(offsets) > 0]] = True
        current = list(self._attributions)
        out = []
        for row in np.sort(order[candidate]):
            g = int(gpu[row])
            a = run_table[int(run_index[row])]
            if a is not current[g] and _run_key(a) != _run_key(current[g]):
                current[g] = a
                out.append((int(row), g, a))
        return out

    def _add_segment(self, gpu_all: IntArray, ts_all: IntArray, wall_all: IntArray,
                     fields: Mapping[str, FloatArray], a: int, b: int,
                     run_index: IntArray | None, run_table: Sequence[GpuAttribution]) -> None:
        """Rows ``[a, b)`` of a chunk, all under the current attributions."""
        if b <= a:
            return
        gpu = gpu_all[a:b]
        nan = np.full(b - a, np.nan)
        f = {name: (fields[name][a:b] if name in fields else nan) for name in FLOAT_FIELDS}
        order, offsets = group_by_gpu(gpu, self.n_gpus)
        counts = np.diff(offsets)
        present = np.flatnonzero(counts)
        firsts, lasts = offsets[present], offsets[present + 1] - 1

        def previous(values: FloatArray, carried: FloatArray) -> tuple[FloatArray, FloatArray]:
            grouped = values[order]
            shifted = np.empty_like(grouped)
            shifted[1:] = grouped[:-1]
            shifted[firsts] = carried[present]
            out = np.empty_like(grouped)
            out[order] = shifted
            last = carried.copy()
            last[present] = grouped[lasts]
            return out, last

        clock_prev, self._last_clock_mhz = previous(f["sm_clock_mhz"], self._last_clock_mhz)
        util_prev, self._last_util_pct = previous(f["gpu_util_pct"], self._last_util_pct)
        rates = estimate_rates(
            gpu, f["sm_clock_mhz"], clock_prev, f["gpu_util_pct"], util_prev,
            f["tensor_any_pct"], f["tensor_hmma_pct"], f["tensor_imma_pct"],
            f["tensor_dmma_pct"], f["tensor_dfma_pct"], f["fp16_pct"], f["fp32_pct"],
            f["fp64_pct"], self.coeffs, self.settings,
        )
        wall = wall_all[a:b]
        kinds = len(Estimator)
        used = np.bincount(gpu * kinds + rates.estimator,
                           minlength=self.n_gpus * kinds).reshape(self.n_gpus, kinds)
        rows_of = (np.bincount(gpu * len(run_table) + run_index[a:b],
                               minlength=self.n_gpus * len(run_table)).reshape(self.n_gpus, -1)
                   if run_index is not None and run_table else None)
        for i, first, last in zip(present.tolist(), firsts.tolist(), lasts.tolist(),
                                  strict=True):
            if self._window_start_ns[i] is None:
                self._window_start_ns[i] = int(wall[order[first]])
            self._last_wall_ns[i] = wall[order[last]]
            self._ticks_buffered[i] += counts[i]
            weights = self._weights[i]
            # Per sample, each of its runs' shares, as add_batch sums them per tick.
            per_entry = ([(run_table[k], int(c)) for k, c in enumerate(rows_of[i]) if c]
                         if rows_of is not None else [(self._attributions[i], int(counts[i]))])
            for attribution, c in per_entry:
                for share in attribution.shares:
                    weights[share.run.run_id] = (weights.get(share.run.run_id, 0.0)
                                                 + share.weight * c)
                    self.runs[share.run.run_id] = share.run
            for k in np.flatnonzero(used[i]):
                self._estimators[i][Estimator(int(k)).name.lower()] += int(used[i, k])
        self._fold(offsets, ts_all[a:b][order], rates.low[order], rates.central[order],
                   rates.high[order], f["energy_mj"][order], f["power_mw"][order])

    def add_gap(self, position: int, start_ns: int, end_ns: int, runs: Sequence[str]) -> None:
        """Charge time nobody sampled (the agent was down) to the runs the GPU last
        worked for: nothing to low and central, the highest possible rate to high."""
        if end_ns <= start_ns:
            return
        d = self.devices[position]
        gap_flop = math.ceil(float(self.coeffs.gap_rate_flops[position]) * (end_ns - start_ns)
                             / 1e9)
        run_ids = list(runs) or [UNATTRIBUTED.run_id]
        for run_id, high in zip(run_ids, split_units(gap_flop, [1.0] * len(run_ids)),
                                strict=True):
            meta = self.runs.get(run_id, RunMeta(run_id))
            self._pending_gaps.append(LedgerRecord(
                seq=-1, kind="gap", node=self.node, run=run_id, model=meta.model,
                category=meta.category, gpu_uuid=d.uuid, gpu_index=d.index,
                start_ns=start_ns, end_ns=end_ns, flop_low=0, flop_central=0, flop_high=high,
                energy_mj=0, samples=0, covered_ns=0, gap_ns=end_ns - start_ns,
                estimator="none",
                assumptions={"reason": "agent not running", "split": "even",
                             "gap_rate_flops": float(self.coeffs.gap_rate_flops[position])},
            ))
        self._window_start_ns[position] = end_ns

    def _records_of(self, i: int) -> list[LedgerRecord]:
        """GPU ``i``'s pending figures as records of its current window."""
        pending = self._pending[i]
        start = self._window_start_ns[i]
        if not pending or start is None:
            return []
        end = int(self._last_wall_ns[i])
        d = self.devices[i]
        a = self._assumptions[i]
        out = []
        for run_id, p in pending.items():
            meta = self.runs.get(run_id, RunMeta(run_id))
            integrations = sum(p.splits.values())
            out.append(LedgerRecord(
                seq=-1, kind="interval", node=self.node, run=run_id, model=meta.model,
                category=meta.category, gpu_uuid=d.uuid, gpu_index=d.index,
                start_ns=start, end_ns=max(end, start), flop_low=p.low * FLOP_UNIT,
                flop_central=p.central * FLOP_UNIT, flop_high=p.high * FLOP_UNIT,
                energy_mj=p.energy_mj, samples=p.samples, covered_ns=p.covered_ns,
                gap_ns=p.gap_ns, estimator=p.estimators.most_common(1)[0][0],
                assumptions={
                    "spec": a.spec.key if a.spec else None,
                    "precision": a.precision,
                    "undeclared_precisions": None if a.precision else list(
                        self.settings.undeclared_precisions),
                    "recompute_factor": a.recompute_factor,
                    "split": p.splits.most_common(1)[0][0],
                    "share": round(p.weight_ns / integrations, 6) if integrations else 1.0,
                    "estimators": dict(p.estimators),
                    "tensor_activity_uncertainty": self.settings.tensor_activity_uncertainty,
                    "max_gap_s": self.settings.max_gap_s,
                    "via": meta.via,
                },
            ))
        return out

    def _close_window(self, i: int) -> None:
        """Close GPU ``i``'s window at its last sample; the next one starts there."""
        records = self._records_of(i)
        if not records:
            return
        self._closed.extend(records)
        self._pending[i].clear()
        self._window_start_ns[i] = records[0].end_ns

    def take_records(self, now_wall_ns: int | None = None,
                     record_ns: int = 0) -> tuple[list[LedgerRecord], list[LedgerRecord]]:
        """What the ledger must store now: closed records (``seq`` assigned by the
        ledger; on failure they come back with :meth:`requeue`) and the still-open
        records of windows younger than ``record_ns`` (stored durably but unsealed,
        replaced at every checkpoint). Without ``now_wall_ns`` every window closes."""
        for i in range(self.n_gpus):
            start = self._window_start_ns[i]
            if now_wall_ns is None or (start is not None and now_wall_ns - start >= record_ns):
                self._close_window(i)
        closed = self._unsaved + self._pending_gaps + self._closed
        self._unsaved, self._pending_gaps, self._closed = [], [], []
        still_open = [r for i in range(self.n_gpus) for r in self._records_of(i)]
        self._truth_taken = self._truth_integrated
        return closed, still_open

    def requeue(self, records: Iterable[LedgerRecord]) -> None:
        """Records the ledger could not store: they go out again with the next take."""
        self._unsaved = list(records) + self._unsaved

    def commit(self, records: Iterable[LedgerRecord],
               still_open: Sequence[LedgerRecord] = ()) -> None:
        """The ledger stored these: closed records count in the totals from now on, and
        the open ones (durable, to be sealed later) count until they are replaced."""
        if self._truth_taken is not None:
            self.sim_true_flop = self._truth_taken
        for r in records:
            self.gpu_totals.setdefault(r.gpu_uuid, Totals()).add(r)
            self.run_totals.setdefault(r.run, Totals()).add(r)
            self._active_runs.add(r.run)
        self._open_committed = list(still_open)
        for r in still_open:
            self._active_runs.add(r.run)

    def _with_open(self, scope: str, key: str) -> Totals:
        base = (self.gpu_totals if scope == "gpu" else self.run_totals).get(key)
        t = replace(base) if base is not None else Totals()
        for r in self._open_committed:
            if (r.gpu_uuid if scope == "gpu" else r.run) == key:
                t.add(r)
        return t

    def run_shares(self) -> list[GpuAttribution]:
        return list(self._attributions)

    def snapshot(self, overruns: int = 0, last_tick_duration_s: float = 0.0,
                 runs_since_ns: int = 0) -> Snapshot:
        """An immutable view of the committed totals, in base units.

        Runs are exported if they are on a GPU now, committed anything since this agent
        started, or ended after ``runs_since_ns``.
        """
        batch = self.last_batch
        rates = self.last_rates
        gpus = []
        for i, d in enumerate(self.devices):
            t = self._with_open("gpu", d.uuid)

            def reading(arr: FloatArray | None, scale: float, i: int = i) -> float | None:
                if arr is None or np.isnan(arr[i]):
                    return None
                return float(arr[i]) * scale

            up = bool(self._up[i])
            gpus.append(GpuSnapshot(
                index=d.index, uuid=d.uuid, name=d.name, spec_key=d.spec_key or "",
                source=d.source, up=up, flop_low=float(t.flop_low),
                flop_central=float(t.flop_central), flop_high=float(t.flop_high),
                energy_joules=t.energy_mj / 1e3, covered_seconds=t.covered_ns / 1e9,
                gap_seconds=t.gap_ns / 1e9,
                rate_flops=float(rates.central[i]) if rates is not None and up else 0.0,
                estimator=(Estimator(int(rates.estimator[i])).name.lower()
                           if rates is not None else "none"),
                sm_clock_hz=reading(batch.sm_clock_mhz if batch else None, 1e6),
                utilization_ratio=reading(batch.gpu_util_pct if batch else None, 0.01),
                tensor_activity_ratio=reading(batch.tensor_any_pct if batch else None, 0.01),
                power_watts=reading(batch.power_mw if batch else None, 1e-3),
                sim_true_flop=reading(self.sim_true_flop, 1.0),
            ))
        current = Counter(s.run.run_id for a in self._attributions for s in a.shares)
        exported = []
        run_ids = dict.fromkeys([*self.run_totals, *(r.run for r in self._open_committed)])
        for run_id in run_ids:
            t = self._with_open("run", run_id)
            if run_id not in current and run_id not in self._active_runs and (
                t.last_ns < runs_since_ns
            ):
                continue
            meta = self.runs.get(run_id, RunMeta(run_id))
            exported.append(RunSnapshot(
                run_id=run_id, model=meta.model, category=meta.category,
                flop_low=float(t.flop_low), flop_central=float(t.flop_central),
                flop_high=float(t.flop_high), energy_joules=t.energy_mj / 1e3,
                gpus=current.get(run_id, 0), created_wall_seconds=t.first_ns / 1e9,
            ))
        errors = tuple(
            (self.devices[pos].index, self.devices[pos].uuid, name, count)
            for (pos, name), count in sorted(self.errors.items())
        )
        return Snapshot(
            source_kind=self.source_kind,
            started_wall_seconds=self.started_wall_ns / 1e9,
            gpus=tuple(gpus),
            runs=tuple(exported),
            sample_errors=errors,
            last_sample_wall_seconds=batch.wall_time_ns / 1e9 if batch else None,
            ticks=self.ticks,
            overruns=overruns,
            integrations=self.integrations,
            rejected_samples=self.rejected,
            last_tick_duration_seconds=last_tick_duration_s,
        )


