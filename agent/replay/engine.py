"""The replay engine: recorded files -> the live agent's accountant -> a signed ledger.

Each file is read chunk by chunk by its reader; every chunk's samples go through
:meth:`Accountant.add_samples` (the live estimator and integration kernels, so the
totals are bit-identical to the live accounting of the same samples however the file
is chunked) and the records it closes are appended to the ledger, sealed in windows of
``record_s`` of *recorded* time like the live agent's.

On several cores (``jobs``) the blocks of nvidia-smi logs are parsed by workers ahead
of the accounting (:mod:`agent.replay.parallel`); everything after the parse runs here,
in file order, on exactly the chunks one worker gives, so totals and records are the
same, bit for bit, for any number of workers.

GPUs are registered as they appear. An accountant is built for the GPUs of the first
chunk, and another for the GPUs of each later chunk that brings new ones (a GPU that
appears mid-file), so a sample never waits for the file's end.

Two judgements a replay makes that the live agent does not:

* the gap threshold: logs are often sampled every 10 s or more, which the live
  ``max_gap_s`` (5 s) would count as nothing but gaps; the replay uses
  ``max(max_gap_s, 2.5 x interval)``, the interval from ``--interval-hint`` or else the
  median spacing of each GPU's samples in the first chunk;
* resumption: samples of a GPU not later than the end of its last record already in
  the ledger are skipped (counted), so replaying a file twice, or a log and then its
  continuation, never counts a sample twice.

Every sample first passes :mod:`agent.replay.plausible` (physically impossible values,
times that cannot be true): a bad one is reported with its line and never counts.

All or nothing: records are appended at the end, and only if the replay succeeded:
every file read, some sample valid, bad rows no more than ``max_bad_share`` of the
rows. A failed replay writes nothing (a later, fixed replay would otherwise skip the
samples the failed one left out, as already in the ledger). Only a replay too long to
hold its records (more than :data:`_HELD_RECORDS`) appends some before its end. A replay
fed slice by slice from a server (:meth:`ReplayEngine.open_stream`, used by
:mod:`agent.replay.remote`) is written at each :meth:`ReplayEngine.seal` instead, with a
checkpoint in the same transaction, and continued after it.

The ledger's signing key is ``<ledger>.key`` (created with the ledger, on the first
append), not the node key of a live agent: a replayed ledger is attested by whoever
replayed it.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.accounting.accountant import Accountant
from agent.accounting.estimate import EstimatorSettings
from agent.accounting.integrate import group_by_gpu, warm_up
from agent.accounting.records import LedgerRecord, Totals
from agent.accounting.runs import UNATTRIBUTED, GpuAttribution, GpuShare
from agent.ledger.store import GpuState, RunRow
from agent.replay.formats import FORMATS, detect_format, open_reader
from agent.replay.mapping import RunMapping
from agent.replay.output import LazyLedger
from agent.replay.parallel import ParallelBlocks, usable_cores
from agent.replay.plausible import Plausibility, clock_max_mhz
from agent.replay.readers.base import (
    BadRow,
    ColumnChunk,
    GpuKey,
    Reader,
    ReplayError,
    select,
)
from agent.replay.readers.lines import DEFAULT_BLOCK_BYTES, file_size
from agent.replay.readers.nvidia_smi import LogPlan, NvidiaSmiReader, plan_log
from agent.replay.summary import GpuLine, Progress, ReplaySummary
from agent.sources.base import DeviceInfo, FloatArray, IntArray
from agent.sources.specs import ResolvedSpec, SpecBasis, SpecTable, load_spec_table

_UNATTRIBUTED = GpuAttribution((GpuShare(UNATTRIBUTED, 1.0),), "none")
_MIG_SLICES = re.compile(r"(\d+)g\.")
_MIG_IN_NAME = re.compile(r"\bMIG (\d+)g\.", re.IGNORECASE)
# A MIG instance of g slices has about g/7 of the GPU's SMs, but not exactly: NVIDIA's
# published counts (nvidia-smi mig -lgip) run from 0.84x that share (A100 3g.20gb: 42
# SMs, not 46) to 1.7x it (RTX PRO 6000 1g.24gb on a 4-slice GPU: 46 SMs, not 27;
# H100 1g.20gb: 26, not 19). The replay knows only the profile, so its band spans that.
MIG_SHARE_LOW = 0.84
MIG_SHARE_HIGH = 1.75
_HELD_RECORDS = 20000
__all__ = ["FORMATS", "ReplayEngine", "ReplayOptions", "detect_format", "open_reader",
           "prefetch"]


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How to replay.

    Attributes:
        node: node name written into every record (and checked against the ledger's).
        format: one of :data:`FORMATS`.
        mapping: a run mapping file (:mod:`agent.replay.mapping`).
        spec_file: the GPU spec table (default: the packaged ``gpus.toml``).
        gpu_model: spec key for GPUs the recording does not name.
        interval_hint_s: the recording's sampling interval (s).
        utc_offset_s: UTC offset of nvidia-smi's local-time stamps (s).
        record_s: length of a sealed record window, in recorded time (s).
        settings: the estimator's settings.
        block_bytes: read size of the text readers; nvidia-smi logs are cut into blocks
            of this size, parsed on their own.
        max_bad_share: the replay fails (writing nothing) if more than this share of
            the rows it judged (bad rows and samples) are bad.
        now_ns: wall-clock time samples may not be later than (plus a margin); None
            for the time the replay starts.
        jobs: cores to use: nvidia-smi logs are parsed by this many workers ahead of
            the accounting (:mod:`agent.replay.parallel`), other formats read ahead by
            one thread; 1 reads and accounts in the calling thread alone. None: the
            cores this process may use. Totals and records do not depend on it.
    """

    node: str = "replay"
    format: str = "auto"
    mapping: Path | None = None
    spec_file: Path | None = None
    gpu_model: str | None = None
    interval_hint_s: float | None = None
    utc_offset_s: float = 0.0
    record_s: float = 3600.0
    settings: EstimatorSettings = field(default_factory=EstimatorSettings)
    block_bytes: int = DEFAULT_BLOCK_BYTES
    max_bad_share: float = 0.01
    now_ns: int | None = None
    jobs: int | None = None


@dataclass(slots=True)
class _Stream:
    """A replay fed chunk by chunk by its caller (a server's responses), not read from
    files: its name, and what a file's loop keeps per file."""

    source: str
    started: float
    labels: dict[int, int] = field(default_factory=dict)
    local_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Group:
    """One accountant and the global ids of its GPUs."""

    accountant: Accountant
    gids: list[int]
    truth: FloatArray | None = None


def _mig_share(resolved: ResolvedSpec, slices: int) -> ResolvedSpec:
    """The peak model of a MIG instance known only by its profile ("3g.40gb"): central
    at ``slices``/7 of the GPU's SMs, the band over the spread NVIDIA's real counts show,
    never above the whole GPU."""
    spec = resolved.spec
    sm_central = max(1, round(spec.sm_count * min(slices, 7) / 7))
    high = min(MIG_SHARE_HIGH, spec.sm_count / sm_central)
    reason = (f"MIG {slices}g instance: {sm_central} of the GPU's {spec.sm_count} SMs assumed, "
              f"band x{MIG_SHARE_LOW}..x{high:.2f} (the replay has no SM count)")
    return dataclasses.replace(
        resolved, spec=dataclasses.replace(spec, key=f"{spec.key}/{slices}g",
                                           sm_count=sm_central),
        low_factor=resolved.low_factor * MIG_SHARE_LOW,
        high_factor=resolved.high_factor * high,
        reason="; ".join(r for r in (resolved.reason, reason) if r))


class ReplayEngine:
    """Drives readers -> accountants -> ledger.

    Raises (from :meth:`run`):
        ConfigError: for a bad mapping file or spec table.
        LedgerError: for a ledger of another node or key.
        sqlite3.Error: if the ledger cannot be written.
    """

    def __init__(self, ledger_path: Path, options: ReplayOptions,
                 progress: Progress | None = None) -> None:
        self.options = options
        self.progress = progress
        self.specs: SpecTable = load_spec_table(options.spec_file)
        self.mapping = RunMapping(options.mapping) if options.mapping else None
        if options.gpu_model is not None and options.gpu_model not in self.specs:
            raise ReplayError(self.specs.path, f"no GPU model {options.gpu_model!r}; one of "
                                               f"{', '.join(sorted(self.specs.keys()))}")
        self.ledger = LazyLedger(ledger_path, options.node)
        self.summary = ReplaySummary(ledger=str(ledger_path))
        self._check = Plausibility(options.now_ns or time.time_ns(),
                                   round(options.settings.max_gap_s * 1e9))
        self._rows_prior = 0
        self._resume: dict[int, GpuState] = {}
        self._checkpoint_ns = max(1, round(options.record_s * 1e9 / 4))
        self._mark = -1
        self._gap_added = False  # a gap charged since the last take
        self._specs_of: list[ResolvedSpec] = []
        self._by_uuid: dict[str, DeviceInfo] = {}
        self._ids: dict[str, int] = {}
        self._keys: list[GpuKey] = []
        self._devices: list[DeviceInfo] = []
        self._group_of = np.zeros(0, dtype=np.int64)
        self._local_of = np.zeros(0, dtype=np.int64)
        self._resume_ns = np.zeros(0, dtype=np.int64)
        self._groups: list[_Group] = []
        self._table: list[GpuAttribution] = [_UNATTRIBUTED]
        self._rule_attr = np.array([self._attr(r.attribution) for r in self.mapping.rules]
                                   if self.mapping else [], dtype=np.int64)
        self._applies: list[list[bool]] = [[] for _ in (self.mapping.rules if self.mapping
                                                        else [])]
        self._settings: EstimatorSettings | None = None
        self._unsaved: list[LedgerRecord] = []
        self._states = self.ledger.states
        self._decided = 0  # rows the plausibility check handed over, good or bad
        self._stream: _Stream | None = None

    def _attr(self, a: GpuAttribution) -> int:
        self._table.append(a)
        return len(self._table) - 1

    def run(self, files: Sequence[Path]) -> ReplaySummary:
        """Replay every file in order; the summary of it all. If the replay failed
        (``summary.failure``), nothing was written."""
        started = time.perf_counter()
        warm_up()
        total = sum(file_size(p) for p in files)
        done_before = 0
        jobs = self.options.jobs or usable_cores()
        blocks = ParallelBlocks(len(files), lambda i: self._plan(files[i]), jobs) \
            if jobs > 1 else None
        try:
            for i, path in enumerate(files):
                self.summary.files.append(str(path))
                labels: dict[int, int] = {}
                try:
                    reader = self._reader(path, blocks.plan(i) if blocks else self._plan(path),
                                          blocks)
                    chunks = reader.chunks()
                    if jobs > 1 and not isinstance(reader, NvidiaSmiReader):
                        chunks = prefetch(chunks)
                    local_ids: list[int] = []
                    for chunk in chunks:
                        self._chunk(str(path), chunk, labels, local_ids)
                        if self.progress is not None:
                            self.progress.update(self.summary.rows, len(self._devices),
                                                 done_before + chunk.bytes_done)
                except ReplayError as e:
                    self.summary.errors.append(str(e))
                self._judged(str(path), *self._check.finish(), labels)
                done_before += file_size(path)
                self._rows_prior = self.summary.rows
            self._finish()
        except BaseException:
            self.ledger.discard()
            raise
        finally:
            if blocks is not None:
                blocks.close()
            self.ledger.close()
            if self.progress is not None:
                self.progress.update(self.summary.rows, len(self._devices), total, force=True)
                self.progress.done()
        self.summary.elapsed_s = time.perf_counter() - started
        return self.summary

    def _plan(self, path: Path) -> LogPlan | None:
        """The blocks of ``path`` if it is an nvidia-smi log (None if it is not).

        Raises:
            ReplayError: if the file cannot be read or has no nvidia-smi header.
        """
        o = self.options
        fmt = detect_format(path) if o.format == "auto" else o.format
        if fmt != "nvidia-smi":
            return None
        return plan_log(path, o.utc_offset_s, o.interval_hint_s, o.block_bytes)

    def _reader(self, path: Path, plan: LogPlan | None,
                blocks: ParallelBlocks | None) -> Reader:
        o = self.options
        if plan is not None:
            return NvidiaSmiReader(path, o.utc_offset_s, o.interval_hint_s, o.block_bytes,
                                   plan=plan, blocks=blocks)
        return open_reader(path, o.format, o.utc_offset_s, o.interval_hint_s, o.block_bytes)

    # -- per chunk ---------------------------------------------------------------------

    def _chunk(self, path: str, chunk: ColumnChunk, labels: dict[int, int],
               local_ids: list[int]) -> None:
        s = self.summary
        s.rows = max(s.rows, self._rows_prior + chunk.rows_done)
        s.add_bad(path, chunk.bad)
        for key in chunk.gpus[len(local_ids):]:
            local_ids.append(self._register(key))
        if chunk.rows == 0:
            return
        gid = np.asarray(local_ids, dtype=np.int64)[chunk.gpu]
        if self._settings is None:
            self._settings = self._infer_settings(chunk, gid)
            s.max_gap_s = self._settings.max_gap_s
            self._check.jump_ns = round(self._settings.max_gap_s * 1e9)
        self._judged(path, *self._check.take(chunk, gid), labels)

    def _judged(self, path: str, pieces: list[tuple[ColumnChunk, IntArray]],
                bad: list[BadRow], labels: dict[int, int]) -> None:
        self.summary.add_bad(path, bad)
        self._decided += len(bad) + sum(chunk.rows for chunk, _ in pieces)
        for chunk, gid in pieces:
            self._account(chunk, gid, labels)

    def _account(self, chunk: ColumnChunk, gid: IntArray, labels: dict[int, int]) -> None:
        """Account plausible samples, in file order."""
        s = self.summary
        # Only GPUs with records in the ledger have samples to skip.
        keep = chunk.wall_ns > self._resume_ns[gid] if self._states else None
        if keep is not None and not keep.all():
            s.skipped_in_ledger += int((~keep).sum())
            chunk = select(chunk, keep)
            gid = gid[keep]
            if chunk.rows == 0:
                return
        run_index = self._attributions(chunk, gid, labels)
        seen = np.flatnonzero(np.bincount(gid, minlength=len(self._devices)))
        new = [g for g in seen.tolist() if self._group_of[g] < 0]
        if new:
            self._new_group(new, chunk, gid)
        self._resume_gaps(seen.tolist(), chunk, gid)
        # Checkpoints at fixed multiples of record_s / 4 of recorded time, in file order,
        # as the live agent's every checkpoint_s: a window closes at the first one at
        # least record_s after it opened. Fixed marks keep the records independent of
        # how the file was chunked. Records are taken only at the marks where a window
        # would close (a take at the others closes nothing), so that the rows between
        # them are accounted in one piece.
        mark = np.maximum(np.maximum.accumulate(chunk.wall_ns // self._checkpoint_ns),
                          self._mark)
        if self._mark >= 0 and mark[0] > self._mark and self._closes(
                int(mark[0]) * self._checkpoint_ns, chunk, gid, 0, 0):
            self._take(int(mark[0]) * self._checkpoint_ns)
        start = 0
        for end in [*(np.flatnonzero(np.diff(mark)) + 1).tolist(), chunk.rows]:
            if end < chunk.rows and not self._closes(int(mark[end]) * self._checkpoint_ns,
                                                     chunk, gid, start, end):
                continue
            self._feed_rows(chunk, gid, run_index, start, end)
            if end < chunk.rows:
                self._take(int(mark[end]) * self._checkpoint_ns)
            start = end
        self._mark = int(mark[-1])
        s.samples += chunk.rows
        s.first_ns = int(chunk.wall_ns.min()) if not s.first_ns else min(
            s.first_ns, int(chunk.wall_ns.min()))
        s.last_ns = max(s.last_ns, int(chunk.wall_ns.max()))

    def _feed_rows(self, chunk: ColumnChunk, gid: IntArray, run_index: IntArray, a: int,
                   b: int) -> None:
        if len(self._groups) == 1:
            self._feed(self._groups[0], chunk, gid, run_index, slice(a, b))
            return
        part = self._group_of[gid[a:b]]
        for gi in np.unique(part).tolist():
            self._feed(self._groups[gi], chunk, gid, run_index, a + np.flatnonzero(part == gi))

    def _closes(self, now_ns: int, chunk: ColumnChunk, gid: IntArray, a: int, b: int) -> bool:
        """Whether a take at ``now_ns`` would close a record window once rows ``a:b`` of
        the chunk are accounted (a gap charged since the last take is handed over at the
        next mark, as it would be by a take at every mark)."""
        if self._gap_added:
            return True
        oldest = now_ns - round(self.options.record_s * 1e9)
        fed = np.bincount(gid[a:b], minlength=len(self._devices)) > 0 if b > a else None
        for group in self._groups:
            for g, (since, holds) in zip(group.gids, group.accountant.window_starts(),
                                         strict=True):
                will_hold = holds or (fed is not None and bool(fed[g]))
                # A window not open yet opens at the GPU's first sample, which may be
                # older than any: it closes at the next mark.
                if will_hold and (since is None or since <= oldest):
                    return True
        return fed is not None and bool((fed & (self._group_of < 0)).any())

    def _resume_gaps(self, seen: list[int], chunk: ColumnChunk, gid: IntArray) -> None:
        """The time between a GPU's last record in the ledger and its first sample now
        was seen by nobody: a gap, charged to the runs it last had (high bound only)."""
        for g in seen:
            state = self._resume.pop(g, None)
            if state is None:
                continue
            first = int(chunk.wall_ns[int(np.argmax(gid == g))])
            group = self._groups[int(self._group_of[g])]
            group.accountant.add_gap(int(self._local_of[g]), state.last_end_ns, first,
                                     state.last_runs)
            self._gap_added = True

    def _register(self, key: GpuKey) -> int:
        known = self._ids.get(key.key)
        if known is not None:
            return known
        gid = len(self._devices)
        self._ids[key.key] = gid
        spec = self._spec_of(key)
        table = spec.basis == SpecBasis.TABLE
        self._keys.append(key)
        self._devices.append(DeviceInfo(
            index=key.index if key.index is not None else gid, uuid=key.key,
            name=key.name or "unknown", spec_key=spec.spec.key if table else None,
            max_sm_clock_mhz=key.max_sm_clock_mhz, activity_kind=key.activity_kind,
            source="replay", pci_device_id=key.pci_device_id,
            compute_capability=key.compute_capability, sm_count=key.sm_count))
        self._specs_of.append(spec)
        # Only a table row's clock is the GPU's own: a ceiling's could reject a real one.
        self._check.add_gpu(clock_max_mhz(spec.spec.max_sm_clock_mhz if table else None,
                                          key.max_sm_clock_mhz))
        self._by_uuid[self._devices[gid].uuid] = self._devices[gid]
        self._group_of = np.append(self._group_of, -1)
        self._local_of = np.append(self._local_of, -1)
        state = self._states.get(self._devices[gid].uuid)
        self._resume_ns = np.append(self._resume_ns, state.last_end_ns if state else -1)
        if state is not None:
            self._resume[gid] = state
        for r, rule in enumerate(self.mapping.rules if self.mapping else []):
            self._applies[r].append(rule.matches(key))
        return gid

    def _spec_of(self, key: GpuKey) -> ResolvedSpec:
        """The peak model of a recorded GPU: the row the recording names, else the one
        ``--gpu-model`` gives, else what its name and recorded facts resolve to (a table
        row, a derived spec or its era's ceiling, never nothing)."""
        if key.spec_key and key.spec_key in self.specs:
            resolved = ResolvedSpec(self.specs[key.spec_key], SpecBasis.TABLE)
        elif self.options.gpu_model:
            resolved = ResolvedSpec(self.specs[self.options.gpu_model], SpecBasis.TABLE)
        else:
            resolved = self.specs.resolve(
                key.name or "", pci_device_id=key.pci_device_id,
                compute_capability=key.compute_capability, sm_count=key.sm_count,
                max_sm_clock_mhz=key.max_sm_clock_mhz)
        m = _MIG_SLICES.match(key.mig_profile or "") or _MIG_IN_NAME.search(key.name or "")
        if m is not None and key.sm_count is None:
            resolved = _mig_share(resolved, int(m.group(1)))
        return resolved

    def _attributions(self, chunk: ColumnChunk, gid: IntArray,
                      labels: dict[int, int]) -> IntArray:
        """Per sample, an index into the engine's attribution table."""
        out = np.zeros(chunk.rows, dtype=np.int64)
        if chunk.attribution is not None:
            for i, a in enumerate(chunk.attribution_table):
                if i not in labels:
                    run = a.shares[0].run
                    if len(a.shares) == 1 and self.mapping and run.run_id in self.mapping.runs:
                        a = GpuAttribution((GpuShare(self.mapping.runs[run.run_id], 1.0),),
                                           a.split)
                    labels[i] = self._attr(a)
            conv = np.array([labels[i] for i in range(len(chunk.attribution_table))] or [0],
                            dtype=np.int64)
            named = chunk.attribution >= 0
            out[named] = conv[chunk.attribution[named]]
        if self.mapping and self.mapping.rules:
            applies = [np.array(a, dtype=np.bool_) for a in self._applies]
            rule = self.mapping.assign(gid, chunk.wall_ns, applies)
            hit = rule >= 0
            out[hit] = self._rule_attr[rule[hit]]
        return out

    def _new_group(self, new: list[int], chunk: ColumnChunk, gid: IntArray) -> None:
        if self._settings is None:
            self._settings = self._infer_settings(chunk, gid)
            self.summary.max_gap_s = self._settings.max_gap_s
        accountant = Accountant([self._devices[g] for g in new], [self._specs_of[g] for g in new],
                                self._settings, time.time_ns(), "replay", node=self.options.node)
        for local, g in enumerate(new):
            self._group_of[g] = len(self._groups)
            self._local_of[g] = local
        self._groups.append(_Group(accountant, new))

    def _infer_settings(self, chunk: ColumnChunk, gid: IntArray) -> EstimatorSettings:
        base = self.options.settings
        interval = self.options.interval_hint_s
        if interval is None:
            order, _ = group_by_gpu(gid, len(self._devices))
            ts, g = chunk.timestamp_ns[order], gid[order]
            d = np.diff(ts)
            d = d[(g[1:] == g[:-1]) & (d > 0)]
            interval = float(np.median(d)) / 1e9 if d.size else None
        if interval is None:
            return base
        return dataclasses.replace(base, max_gap_s=max(base.max_gap_s, 2.5 * interval))

    def _feed(self, group: _Group, chunk: ColumnChunk, gid: IntArray, run_index: IntArray,
              rows: slice | np.ndarray) -> None:
        local = self._local_of[gid[rows]]
        fields = {k: v[rows] for k, v in chunk.fields.items()}
        if chunk.sim_true_flop is not None:
            # The ground truth as of each GPU's last sample so far.
            if group.truth is None:
                group.truth = np.zeros(group.accountant.n_gpus)
            last = np.unique(local[::-1], return_index=True)
            group.truth[last[0]] = chunk.sim_true_flop[rows][::-1][last[1]]
        group.accountant.add_samples(
            local, chunk.timestamp_ns[rows], chunk.wall_ns[rows], fields,
            run_index=run_index[rows], run_table=self._table,
            sim_true_flop_total=None if group.truth is None else group.truth.copy())

    # -- records -----------------------------------------------------------------------

    def _take(self, now_wall_ns: int | None) -> None:
        self._gap_added = False
        record_ns = round(self.options.record_s * 1e9)
        for group in self._groups:
            closed, still_open = group.accountant.take_records(now_wall_ns, record_ns)
            group.accountant.commit(closed, still_open)
            self._unsaved.extend(closed)
            self._count(closed)
        if len(self._unsaved) >= _HELD_RECORDS:
            self._flush()

    def _flush(self, checkpoint: tuple[str, int] | None = None) -> None:
        records, self._unsaved = self._unsaved, []
        runs: dict[str, RunRow] = {}
        for r in records:
            if r.run not in runs:
                meta = next((g.accountant.runs[r.run] for g in self._groups
                             if r.run in g.accountant.runs), None)
                info: dict[str, object] = {}
                if meta is not None:
                    info = {"via": meta.via, "recompute": meta.recompute,
                            "recompute_factor": meta.recompute_factor}
                    if meta.precision:
                        info["precision"] = meta.precision
                    info.update({f"plan.{k}": v for k, v in meta.plan.items()})
                runs[r.run] = RunRow(r.run, r.model, r.category, info)
        self.ledger.append(records, time.time_ns(), runs, checkpoint)

    def _count(self, records: list[LedgerRecord]) -> None:
        s = self.summary
        for r in records:
            s.records += 1
            line = s.gpus.get(r.gpu_uuid)
            if line is None:
                d = self._by_uuid[r.gpu_uuid]
                spec = self._specs_of[self._ids[r.gpu_uuid]]
                line = s.gpus[r.gpu_uuid] = GpuLine(r.gpu_uuid, d.name, spec.spec.key,
                                                    r.estimator, basis=str(spec.basis),
                                                    reason=spec.reason)
            for totals in (line.totals, s.runs.setdefault(r.run, Totals()), s.total):
                totals.add(r)

    def _finish(self) -> None:
        self._take(None)
        s = self.summary
        s.rejected = sum(g.accountant.rejected for g in self._groups)
        s.failure = s.failure_reason(self.options.max_bad_share)
        if s.failure is None:
            if self._unsaved:
                self._flush()
        else:
            self._unsaved = []
            self.ledger.discard()
            if self.ledger.appended:
                s.failure += (f"; {self.ledger.appended:,} records of it were appended "
                              f"before the end (a replay longer than {_HELD_RECORDS:,} "
                              "records is not held back)")
        s.written = self.ledger.appended


    # -- fed slice by slice (a replay from a server: agent.replay.remote) ---------------

    def open_stream(self, source: str) -> None:
        """Start a replay fed by the caller instead of read from files: chunks of samples
        in time order (:meth:`feed`), written slice by slice (:meth:`seal`), ended by
        :meth:`close_stream` (or :meth:`abort`). ``source`` names it in the summary and
        in bad rows."""
        warm_up()
        self.summary.files.append(source)
        self._stream = _Stream(source, time.perf_counter())

    def feed(self, chunk: ColumnChunk) -> None:
        """Judge and account a chunk of the stream; nothing is written before
        :meth:`seal`."""
        st = self._stream
        assert st is not None, "open_stream first"
        self._chunk(st.source, chunk, st.labels, st.local_ids)

    def prime(self, chunk: ColumnChunk) -> None:
        """Samples already in the ledger, fed again only to restore what the accounting
        carries from a GPU's sample to its next (the previous sample's time, clock,
        utilization and energy reading, the plausibility check's state): a replay
        continued after its checkpoint then counts the interval up to its first new
        sample as an uninterrupted replay does, not as a gap. Only samples not later
        than their GPU's last record in the ledger are taken; they count nowhere, and
        :meth:`primed` drops the records they make."""
        st = self._stream
        assert st is not None, "open_stream first"
        for key in chunk.gpus[len(st.local_ids):]:
            st.local_ids.append(self._register(key))
        if chunk.rows == 0:
            return
        gid = np.asarray(st.local_ids, dtype=np.int64)[chunk.gpu]
        keep = chunk.wall_ns <= self._resume_ns[gid]
        if not keep.any():
            return
        chunk, gid = select(chunk, keep), gid[keep]
        if self._settings is None:
            self._settings = self._infer_settings(chunk, gid)
            self.summary.max_gap_s = self._settings.max_gap_s
            self._check.jump_ns = round(self._settings.max_gap_s * 1e9)
        # Its bad rows were reported when the samples were accounted.
        pieces, bad = self._check.take(chunk, gid)
        self._decided += len(bad) + sum(piece.rows for piece, _ in pieces)
        for piece, piece_gid in pieces:
            run_index = self._attributions(piece, piece_gid, st.labels)
            seen = np.flatnonzero(np.bincount(piece_gid, minlength=len(self._devices)))
            new = [g for g in seen.tolist() if self._group_of[g] < 0]
            if new:
                self._new_group(new, piece, piece_gid)
            for g in seen.tolist():
                self._resume.pop(g, None)  # continued, not resumed after a gap
            self._feed_rows(piece, piece_gid, run_index, 0, piece.rows)

    def primed(self) -> None:
        """End :meth:`prime`: drop the records the primed samples made (the ledger
        holds them); each GPU's next record starts at its last primed sample."""
        record_ns = round(self.options.record_s * 1e9)
        for group in self._groups:
            group.accountant.take_records(None, record_ns)

    def seal(self, source_key: str, last_ns: int) -> bool:
        """Write what the stream accounted so far: every record window closed, the
        records appended with the checkpoint (``source_key``, ``last_ns``) in one
        transaction (a ledger not created yet is not created for a checkpoint alone).
        While a sample waits for the plausibility check (its GPU's next sample, in the
        next slice), nothing is written and False returned: a checkpoint must not pass
        a sample not yet accounted.

        Raises:
            ReplayError: if more than ``max_bad_share`` of the rows so far were bad
                (nothing of this slice written).
            sqlite3.Error, OSError: if the ledger cannot be written.
        """
        st = self._stream
        assert st is not None, "open_stream first"
        if self._check.rows_judged > self._decided:
            return False
        s = self.summary
        if s.bad_count > self.options.max_bad_share * s.judged:
            raise ReplayError(st.source, s.failure_reason(self.options.max_bad_share)
                              or "too many bad rows")
        self._take(None)
        if self._unsaved or self.ledger.path.exists():
            self._flush((source_key, last_ns))
        return True

    def close_stream(self, source_key: str, last_ns: int) -> ReplaySummary:
        """End the stream: decide every sample still waiting, seal the rest with the
        checkpoint ``last_ns``, close the ledger; the summary of this run.

        Raises: as :meth:`seal`; the ledger is closed either way.
        """
        st = self._stream
        assert st is not None, "open_stream first"
        try:
            self._judged(st.source, *self._check.finish(), st.labels)
            self.seal(source_key, last_ns)
            s = self.summary
            s.rejected = sum(g.accountant.rejected for g in self._groups)
            s.written = self.ledger.appended
        finally:
            self.abort()
        return self.summary

    def abort(self) -> None:
        """Stop the stream: what was accounted after the last seal is dropped (the
        ledger keeps what was sealed, with its checkpoint)."""
        self._unsaved = []
        self.ledger.close()
        if self._stream is not None:
            self.summary.elapsed_s = time.perf_counter() - self._stream.started


def prefetch(chunks: Iterator[ColumnChunk], depth: int = 2) -> Iterator[ColumnChunk]:
    """The same chunks, read ahead by a thread: the readers' kernels release the GIL,
    so parsing the next block overlaps accounting this one. At most ``depth`` chunks
    wait, so memory stays flat; a reader's exception is raised here, in order."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put((kind, item), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for chunk in chunks:
                if not put("chunk", chunk):
                    return
            put("end", None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, who raises it
            put("error", e)

    worker = threading.Thread(target=work, name="replay-reader", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        worker.join()

