"""The accounting core: sample batches in, ledger records and committed totals out.

One :class:`Accountant` is driven by one thread (the sampler, or a replay). Samples come
in as columns, one row per sample: a live tick is a chunk of one row per GPU that is
up, a replayed chunk has many rows per GPU. Every chunk takes the same path: each
sample's previous clock and utilization come from the previous sample of its GPU
(carried across chunks), the estimator turns the rows into rates, and the rates wait
in a buffer. The buffer is folded through the integration kernels every few ticks, at
the end of every replayed chunk, and whenever a GPU changes hands (so every fold has
one set of runs per GPU). A fold's integer totals per GPU are split among the GPU's
runs by their average weights into the GPU's record window (:mod:`windows`).
:meth:`take_records` hands the records to the ledger; only what the ledger committed
(:meth:`commit`) reaches the exported totals (:mod:`committed`).

A GPU that stops answering (``up=False``) keeps the runs it last had, and its high
bound grows at its peak rate while it stays silent (:mod:`silence`), so neither a
checkpoint nor the agent stopping leaves that time unbounded.

Every GPU has a peak model (a :class:`ResolvedSpec`): a spec-table row, or one derived
from the driver's facts, or its era's ceiling. The records of a GPU whose peak is not a
table row say so in their assumptions (``spec_basis``, ``spec_reason``,
``peak_factors``), so that every reader of the ledger can flag the figures resting on
it; a table row's records carry no such keys.

It has no threads, sockets or files of its own: the live agent, replays and tests
drive exactly the same code.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from agent.accounting.band import Band
from agent.accounting.chunks import GpuGroups, RateBuffer
from agent.accounting.committed import CommittedTotals, gpu_snapshot
from agent.accounting.estimate import (
    Coefficients,
    Estimator,
    EstimatorSettings,
    GpuAssumptions,
    Rates,
    Readings,
    build_coefficients,
    estimate_rates,
)
from agent.accounting.integrate import group_by_gpu, integrate_energy, integrate_flop
from agent.accounting.records import LedgerRecord, Totals
from agent.accounting.runs import UNATTRIBUTED, GpuAttribution, GpuShare, RunMeta
from agent.accounting.silence import Silences
from agent.accounting.snapshot import Snapshot
from agent.accounting.windows import Charge, RecordWindows
from agent.sources.base import (
    FLOAT_FIELDS,
    ActivityKind,
    DeviceInfo,
    FloatArray,
    IntArray,
    SampleBatch,
)
from agent.sources.specs import GpuSpec, ResolvedSpec, SpecBasis

_UNATTRIBUTED_GPU = GpuAttribution((GpuShare(UNATTRIBUTED, 1.0),), "none")
# Kept-back chunks of up to this many ticks keep their GPUs and groups for reuse (a
# flush comes at least once a second, so at 10 Hz a chunk holds at most about 10).
_CACHED_TICK_CHUNKS = 64
_ESTIMATOR_NAMES = tuple(e.name.lower() for e in sorted(Estimator))
_KINDS = len(_ESTIMATOR_NAMES)


def _joined_fields(batches: Sequence[SampleBatch]) -> dict[str, FloatArray]:
    """Each float field of the batches end to end: one copy of their float blocks where
    every batch has one, else one per field."""
    blocks = [block for b in batches if (block := b.float_rows()) is not None]
    if len(blocks) == len(batches):
        return dict(zip(FLOAT_FIELDS, np.concatenate(blocks, axis=1), strict=True))
    return {name: np.concatenate([getattr(b, name) for b in batches])
            for name in FLOAT_FIELDS}


def _run_key(a: GpuAttribution) -> tuple[tuple[str, str | None, float, bool], ...]:
    """What decides a GPU's records and assumptions: its runs and what they declare."""
    return tuple(sorted((s.run.run_id, s.run.precision, s.run.recompute_factor,
                         s.run.recompute_declared) for s in a.shares))


class Accountant:
    """Turns sample batches into ledger records and totals.

    Args:
        devices: the GPUs, in batch order.
        specs: the peak model of each GPU (a bare GpuSpec is a table row).
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
        specs: Sequence[ResolvedSpec | GpuSpec],
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
        self.specs: tuple[ResolvedSpec, ...] = tuple(
            s if isinstance(s, ResolvedSpec) else ResolvedSpec(s, SpecBasis.TABLE) for s in specs)
        # What a record of a GPU without a table row adds to its assumptions.
        self._spec_notes: dict[str, dict[str, object]] = {
            d.uuid: {"spec_basis": str(r.basis), "spec_reason": r.reason,
                     "peak_factors": [r.low_factor, r.high_factor]}
            for d, r in zip(self.devices, self.specs, strict=True)
            if r.basis != SpecBasis.TABLE}
        self.settings = settings
        self.node = node
        n = len(devices)
        self._positions = np.arange(n, dtype=np.int64)
        self._all_up = np.ones(n, dtype=np.bool_).tobytes()
        self._every_gpu = GpuGroups.one_per_gpu(self._positions, n)
        # Per count of kept-back ticks, their rows' GPUs and groups (shared, never written).
        self._tick_chunks: dict[int, tuple[IntArray, GpuGroups]] = {}
        self._max_gap_ns = round(settings.max_gap_s * 1e9)
        self._measured_over_gaps = np.array(
            [d.activity_kind == ActivityKind.GPM for d in devices], dtype=np.bool_
        )
        self._attributions: list[GpuAttribution] = [_UNATTRIBUTED_GPU] * n
        self._assumptions = [self._assume(i, _UNATTRIBUTED_GPU) for i in range(n)]
        self.coeffs: Coefficients = build_coefficients(self._assumptions, settings)
        # Carried per GPU from its last sample to its next one.
        self._last_clock_mhz = np.full(n, np.nan)
        self._last_util_pct = np.full(n, np.nan)
        self._last_flop_ts = np.full(n, -1, dtype=np.int64)
        self._last_energy_ts = np.full(n, -1, dtype=np.int64)
        self._last_energy_mj = np.full(n, np.nan)
        self._buffer = RateBuffer()
        # Per GPU, the share weights summed over the buffered samples, and estimator use.
        self._weights: list[dict[str, float]] = [{} for _ in range(n)]
        self._ticks_buffered = np.zeros(n, dtype=np.int64)
        self._estimators: list[Counter[str]] = [Counter() for _ in range(n)]
        self.runs: dict[str, RunMeta] = dict(known_runs or {})
        self.runs.setdefault(UNATTRIBUTED.run_id, UNATTRIBUTED)
        self._windows = RecordWindows(self.devices, settings, node, self.runs)
        self._committed = CommittedTotals(gpu_totals, run_totals)
        self.started_wall_ns = started_wall_ns
        self.source_kind = source_kind
        self.errors: Counter[tuple[int, str]] = Counter()
        self.ticks = 0
        self.integrations = 0
        self.rejected = 0
        # The last tick: its readings, and per GPU its rate and estimator.
        self.last_batch: SampleBatch | None = None
        self._pending: list[SampleBatch] = []  # ticks add_batch has not estimated yet
        self._merged = 0  # ticks buffered in a chunk with the tick before them
        self._up = np.ones(n, dtype=np.bool_)
        self._rate_flops = np.zeros(n)
        self._estimator = np.full(n, int(Estimator.NONE), dtype=np.int64)
        # The simulator's ground truth as of the last integrated, taken and committed
        # sample, so that the exported truth lines up with the exported totals.
        self.sim_true_flop: FloatArray | None = None
        self._truth_integrated: FloatArray | None = None
        self._truth_taken: FloatArray | None = None
        self._silences = Silences(n, self._max_gap_ns)

    @property
    def n_gpus(self) -> int:
        return len(self.devices)

    @property
    def assumptions(self) -> tuple[GpuAssumptions, ...]:
        """What the estimator assumes for each GPU now (spec, peak factors, runs'
        declarations)."""
        return tuple(self._assumptions)

    @property
    def gpu_totals(self) -> dict[str, Totals]:
        """Committed totals per GPU UUID (sealed records only)."""
        return self._committed.gpu

    @property
    def run_totals(self) -> dict[str, Totals]:
        """Committed totals per run id (sealed records only)."""
        return self._committed.run

    def _assume(self, i: int, attribution: GpuAttribution) -> GpuAssumptions:
        runs = [s.run for s in attribution.shares]
        dominant = max(attribution.shares, key=lambda s: s.weight).run
        precisions = {r.precision for r in runs}
        # Runs sharing a GPU that declare different precisions leave it undeclared:
        # the band then spans the candidates instead of trusting one of them.
        precision = precisions.pop() if len(precisions) == 1 else None
        d = self.devices[i]
        r = self.specs[i]
        return GpuAssumptions(r.spec, d.activity_kind, precision, dominant.recompute_factor,
                              d.max_sm_clock_mhz, peak_low_factor=r.low_factor,
                              peak_high_factor=r.high_factor,
                              # Low may drop the undeclared-recomputation allowance only
                              # when every run on the GPU said how it recomputes.
                              recompute_declared=all(run.recompute_declared for run in runs))

    def current_runs(self) -> set[str]:
        """The runs that hold a share of any GPU at the latest tick."""
        return {s.run.run_id for a in self._attributions for s in a.shares}

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
                self._windows.close(i, self._assumptions[i])
                self._assumptions[i] = self._assume(i, attributions[i])
            self.coeffs = build_coefficients(self._assumptions, self.settings)
        self._attributions = list(attributions)
        for a in attributions:
            for s in a.shares:
                self.runs[s.run.run_id] = s.run

    def add_batch(self, batch: SampleBatch,
                  attributions: Sequence[GpuAttribution] | None = None) -> None:
        """Estimate the rates of one tick and buffer them for the next integration.

        The tick is a chunk of one row per GPU that is up: a GPU that is down
        contributes no sample, and if it comes back, the time in between is a gap,
        bounded in the high estimate. The batch's arrays are read, not copied (a
        source hands over a new batch every tick).
        """
        up = batch.up
        # ``up`` compared as bytes: at 10 Hz a NumPy reduction is a cold code path at
        # every tick, several times the cost of the copy (anything else: the long way).
        if (not self._silences.active and up.tobytes() == self._all_up and (
                attributions is None or all(
                    a is b for a, b in zip(attributions, self._attributions, strict=True)))):
            # The usual tick: every GPU up, the very attributions of the last one. It
            # waits for the next integration (or anything that reads the rates) and is
            # estimated with the ticks before it as one chunk, which gives the totals
            # tick by tick would, bit for bit (the chunking contract of add_samples):
            # the per-tick work of an estimate is most of the agent's, at 10 Hz.
            self._pending.append(batch)
            self._up = up
            self._note_tick(batch)
            return
        self._flush_pending()
        if attributions is not None:
            if not up.all():
                # A lost GPU lists no processes, which says nothing about who runs on
                # it: the runs it last had keep it.
                attributions = [a if up[i] else self._attributions[i]
                                for i, a in enumerate(attributions)]
            self._set_attributions(attributions)
        if self._silences.active or not up.all():
            self._charge_silences(batch)
        self._up = up.copy()
        if up.all():
            # Every GPU up, after a silence or under new attributions: estimated now,
            # alone, on the path of the kept-back ticks.
            self._pending.append(batch)
            self._flush_pending()
        else:
            gpu = np.flatnonzero(up)
            fields = {name: getattr(batch, name)[gpu] for name in FLOAT_FIELDS}
            wall = np.full(gpu.shape[0], batch.wall_time_ns, dtype=np.int64)
            rates = self._ingest(gpu, GpuGroups.one_per_gpu(gpu, self.n_gpus),
                                 batch.timestamp_ns[gpu], wall, fields)
            self._rate_flops = np.zeros(self.n_gpus)
            self._rate_flops[gpu] = rates.flops.central
            self._estimator = np.full(self.n_gpus, int(Estimator.NONE), dtype=np.int64)
            self._estimator[gpu] = rates.estimator
            if batch.sim_true_flop_total is not None:
                self._buffer.sim_truth = batch.sim_true_flop_total
        self._note_tick(batch)

    def _note_tick(self, batch: SampleBatch) -> None:
        for position, field_name in batch.errors:
            self.errors[(position, field_name)] += 1
        self.ticks += 1
        self.last_batch = batch

    def _flush_pending(self) -> None:
        """Estimate and buffer the ticks :meth:`add_batch` kept back, as one chunk."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._merged += len(pending) - 1  # buffered counts ticks, as before
        n = self.n_gpus
        if len(pending) == 1:
            gpu, groups = self._positions, self._every_gpu
            fields = {name: getattr(pending[0], name) for name in FLOAT_FIELDS}
            ts = pending[0].timestamp_ns
        else:
            gpu, groups = self._tick_chunk(len(pending))
            fields = _joined_fields(pending)
            ts = np.concatenate([b.timestamp_ns for b in pending])
        wall = np.repeat(np.array([b.wall_time_ns for b in pending], dtype=np.int64), n)
        rates = self._ingest(gpu, groups, ts, wall, fields)
        # The last tick's rows are the chunk's last n, in GPU order.
        self._rate_flops, self._estimator = rates.flops.central[-n:], rates.estimator[-n:]
        truth = pending[-1].sim_true_flop_total
        if truth is not None:
            self._buffer.sim_truth = truth

    def _tick_chunk(self, ticks: int) -> tuple[IntArray, GpuGroups]:
        """The GPUs and groups of ``ticks`` kept-back ticks: the same at every flush of
        that many, and building them (a sort) cost half the flush."""
        chunk = self._tick_chunks.get(ticks)
        if chunk is None:
            gpu = np.tile(self._positions, ticks)
            chunk = gpu, GpuGroups.of_ticks(self.n_gpus, ticks)
            if ticks <= _CACHED_TICK_CHUNKS:
                self._tick_chunks[ticks] = chunk
        return chunk

    def _charge_silences(self, batch: SampleBatch) -> None:
        """Charge the GPUs silent in ``batch`` (see :mod:`silence`) to the runs they last
        had, in their current windows."""
        for c in self._silences.observe(batch, self.last_batch, self._last_flop_ts,
                                        self.coeffs.gap_rate_flops):
            a = self._attributions[c.gpu]
            self._windows.saw(c.gpu, c.since_wall_ns, batch.wall_time_ns)
            self._windows.charge(c.gpu, Charge(
                weights={s.run.run_id: s.weight for s in a.shares}, ticks=1, samples=0,
                flop_units=Band(0, 0, c.high_units), energy_mj=0, covered_ns=0,
                gap_ns=c.gap_ns, estimators=Counter(), split=a.split, lost_ns=c.gap_ns,
            ))

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
        are chunked: both take the same path, and integer totals do not depend on
        where integrations fall.

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
        nan = np.full(n, np.nan)
        columns = {name: fields.get(name, nan) for name in FLOAT_FIELDS}
        cuts = [0]
        if run_index is not None and n:
            for row, g, attribution in self._run_changes(gpu, run_index, run_table):
                self._add_segment(gpu, timestamp_ns, wall_ns, columns, cuts[-1], row,
                                  run_index, run_table)
                new = list(self._attributions)
                new[g] = attribution
                self._set_attributions(new)
                cuts.append(row)
        self._add_segment(gpu, timestamp_ns, wall_ns, columns, cuts[-1], n, run_index,
                          run_table)
        if sim_true_flop_total is not None:
            self._truth_integrated = sim_true_flop_total

    def _add_segment(self, gpu: IntArray, ts: IntArray, wall: IntArray,
                     fields: Mapping[str, FloatArray], a: int, b: int,
                     run_index: IntArray | None, run_table: Sequence[GpuAttribution]) -> None:
        """Rows ``[a, b)`` of a chunk, all under the current attributions."""
        if b <= a:
            return
        self._ingest(gpu[a:b], GpuGroups.of(gpu[a:b], self.n_gpus), ts[a:b], wall[a:b],
                     {k: v[a:b] for k, v in fields.items()},
                     None if run_index is None else run_index[a:b], run_table)
        self.integrate()

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

    def _ingest(self, gpu: IntArray, groups: GpuGroups, ts: IntArray, wall: IntArray,
                fields: Mapping[str, FloatArray], run_index: IntArray | None = None,
                run_table: Sequence[GpuAttribution] = ()) -> Rates:
        """The one ingest path: estimate a chunk's rates, tally its samples against
        the GPUs' windows, runs and estimators, and buffer it for integration.

        Args:
            gpu: each row's GPU position; a GPU's rows in time order.
            groups: the rows grouped by GPU.
            ts: each row's monotonic time; ``wall``: its wall-clock time.
            fields: every SampleBatch float field, one entry per row.
            run_index: per row, an index into ``run_table`` (the row's runs); None:
                every row is under its GPU's current attributions.
        """
        clock_prev, self._last_clock_mhz = groups.previous(gpu, fields["sm_clock_mhz"],
                                                           self._last_clock_mhz)
        util_prev, self._last_util_pct = groups.previous(gpu, fields["gpu_util_pct"],
                                                         self._last_util_pct)
        rates = estimate_rates(Readings.of(gpu, fields, clock_prev, util_prev), self.coeffs,
                               self.settings)
        self._tally(gpu, wall, rates.estimator, groups, run_index, run_table)
        self._buffer.append(gpu, groups, ts, rates.flops, fields["energy_mj"],
                            fields["power_mw"])
        return rates

    def _tally(self, gpu: IntArray, wall: IntArray, estimator: IntArray, groups: GpuGroups,
               run_index: IntArray | None, run_table: Sequence[GpuAttribution]) -> None:
        """Per GPU with rows: open its window, and add each row's run shares and
        estimator to what the next integration charges."""
        rows_of = (np.bincount(gpu * len(run_table) + run_index,
                               minlength=self.n_gpus * len(run_table)).reshape(self.n_gpus, -1)
                   if run_index is not None and run_table else None)
        self._ticks_buffered += groups.counts
        present = groups.present.tolist()
        counts = groups.counts[groups.present].tolist()
        first_wall, last_wall = groups.ends(wall)
        for i, count, first, last in zip(present, counts, first_wall, last_wall, strict=True):
            self._windows.saw(i, first, last)
            weights = self._weights[i]
            if rows_of is not None:
                # Per row, each of its runs' shares; they are new to the run table.
                per_entry = [(run_table[k], int(c)) for k, c in enumerate(rows_of[i]) if c]
                for attribution, _ in per_entry:
                    for share in attribution.shares:
                        self.runs[share.run.run_id] = share.run
            else:
                per_entry = [(self._attributions[i], count)]
            for attribution, c in per_entry:
                for share in attribution.shares:
                    weights[share.run.run_id] = (weights.get(share.run.run_id, 0.0)
                                                 + share.weight * c)
        if groups.one_row_each:
            used = zip(present, estimator[groups.order].tolist(), counts, strict=True)
        else:
            by_kind = np.bincount(gpu * _KINDS + estimator,
                                  minlength=self.n_gpus * _KINDS).reshape(self.n_gpus, _KINDS)
            at_gpu, of_kind = np.nonzero(by_kind)
            used = zip(at_gpu.tolist(), of_kind.tolist(), by_kind[at_gpu, of_kind].tolist(),
                       strict=True)
        for i, kind, c in used:
            self._estimators[i][_ESTIMATOR_NAMES[kind]] += c

    @property
    def buffered(self) -> int:
        """Ticks (or chunks) waiting for the next :meth:`integrate`."""
        return len(self._buffer) + self._merged + len(self._pending)

    def integrate(self) -> None:
        """Fold the buffered samples into the GPUs' record windows, each GPU's integer
        totals charged to its runs by the weights collected since the last fold."""
        self._flush_pending()
        b = self._buffer
        if not b:
            return
        g = b.grouped(self.n_gpus)
        flop = integrate_flop(
            g.offsets, g.timestamp_ns, g.flops.low, g.flops.central, g.flops.high,
            self.coeffs.gap_rate_flops, self._measured_over_gaps, self._last_flop_ts,
            self._max_gap_ns,
        )
        energy = integrate_energy(g.offsets, g.timestamp_ns, g.energy_mj, g.power_mw,
                                  self._last_energy_ts, self._last_energy_mj)
        self._last_flop_ts = flop.last_timestamp_ns
        self._last_energy_ts = energy.last_timestamp_ns
        self._last_energy_mj = energy.last_energy_mj
        units = flop.units.map(np.ndarray.tolist)
        energy_mj, covered_ns, gap_ns = (a.tolist() for a in (energy.energy_mj, flop.covered_ns,
                                                               flop.gap_ns))
        for i in range(self.n_gpus):
            samples = int(g.offsets[i + 1] - g.offsets[i])
            if samples == 0:
                continue
            if self._silences.active:
                # The first sample after a silence ends an interval that is the whole
                # silence: what its ticks charged for it is in already.
                credit_units, credit_ns = self._silences.credit(i)
                units.high[i] = max(0, units.high[i] - credit_units)
                gap_ns[i] = max(0, gap_ns[i] - credit_ns)
            self._windows.charge(i, Charge(
                weights=self._weights[i], ticks=int(self._ticks_buffered[i]),
                samples=samples, flop_units=Band(units.low[i], units.central[i],
                                                 units.high[i]),
                energy_mj=energy_mj[i], covered_ns=covered_ns[i], gap_ns=gap_ns[i],
                estimators=self._estimators[i], split=self._attributions[i].split,
            ))
            self._weights[i] = {}
            self._estimators[i] = Counter()
            self._ticks_buffered[i] = 0
        if b.sim_truth is not None:
            self._truth_integrated = b.sim_truth
        b.clear()
        self._merged = 0
        self.rejected += int(flop.rejected.sum())
        self.integrations += 1

    def add_gap(self, position: int, start_ns: int, end_ns: int, runs: Sequence[str]) -> None:
        """Charge time nobody sampled (the agent was down) to the runs the GPU last
        worked for: nothing to low and central, the highest possible rate to high."""
        self._flush_pending()
        self._windows.add_gap(position, start_ns, end_ns, runs,
                              float(self.coeffs.gap_rate_flops[position]))

    def take_records(self, now_wall_ns: int | None = None,
                     record_ns: int = 0) -> tuple[list[LedgerRecord], list[LedgerRecord]]:
        """What the ledger must store now: closed records (``seq`` assigned by the
        ledger; on failure they come back with :meth:`requeue`) and the still-open
        records of windows younger than ``record_ns`` (stored durably but unsealed,
        replaced at every checkpoint). Without ``now_wall_ns`` every window closes."""
        self._flush_pending()
        closed, still_open = self._windows.take(now_wall_ns, record_ns, self._assumptions)
        self._truth_taken = self._truth_integrated
        if self._spec_notes:
            closed, still_open = self._noted(closed), self._noted(still_open)
        return closed, still_open

    def _noted(self, records: list[LedgerRecord]) -> list[LedgerRecord]:
        """The records, those of GPUs without a table row stating their peak's basis."""
        out = []
        for r in records:
            note = self._spec_notes.get(r.gpu_uuid)
            out.append(r if note is None else dataclasses.replace(
                r, assumptions={**r.assumptions, **note}))
        return out

    def window_starts(self) -> list[tuple[int | None, bool]]:
        """Per GPU, when its record window started (None before its first sample) and
        whether it holds anything: :meth:`take_records` closes such a window once it is
        ``record_ns`` old (a replay takes records only where one would close)."""
        self._flush_pending()
        return self._windows.starts()

    def requeue(self, records: Iterable[LedgerRecord]) -> None:
        """Records the ledger could not store: they go out again with the next take."""
        self._windows.requeue(records)

    def commit(self, records: Iterable[LedgerRecord],
               still_open: Sequence[LedgerRecord] = ()) -> None:
        """The ledger stored these: closed records count in the totals from now on, and
        the open ones (durable, to be sealed later) count until they are replaced."""
        if self._truth_taken is not None:
            self.sim_true_flop = self._truth_taken
        self._committed.commit(records, still_open)

    def snapshot(self, overruns: int = 0, last_tick_duration_s: float = 0.0,
                 runs_since_ns: int = 0) -> Snapshot:
        """An immutable view of the committed totals, in base units.

        Runs are exported if they are on a GPU now, committed anything since this agent
        started, or ended after ``runs_since_ns``.
        """
        self._flush_pending()
        batch = self.last_batch
        gpus = tuple(
            gpu_snapshot(i, d, self.specs[i], self._committed.of_gpu(d.uuid), bool(self._up[i]),
                         float(self._rate_flops[i]) if self._up[i] else 0.0,
                         _ESTIMATOR_NAMES[int(self._estimator[i])], batch, self.sim_true_flop)
            for i, d in enumerate(self.devices)
        )
        current = Counter(s.run.run_id for a in self._attributions for s in a.shares)
        errors = tuple(
            (self.devices[pos].index, self.devices[pos].uuid, name, count)
            for (pos, name), count in sorted(self.errors.items())
        )
        return Snapshot(
            source_kind=self.source_kind,
            started_wall_seconds=self.started_wall_ns / 1e9,
            gpus=gpus,
            runs=tuple(self._committed.run_snapshots(self.runs, current, runs_since_ns)),
            sample_errors=errors,
            last_sample_wall_seconds=batch.wall_time_ns / 1e9 if batch else None,
            ticks=self.ticks,
            overruns=overruns,
            integrations=self.integrations,
            rejected_samples=self.rejected,
            last_tick_duration_seconds=last_tick_duration_s,
        )
