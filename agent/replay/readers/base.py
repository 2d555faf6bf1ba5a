"""What every replay reader yields: column chunks of samples, and the GPUs they name.

A reader turns a recorded file into a stream of :class:`ColumnChunk` objects: NumPy
arrays with one entry per sample (one GPU at one time), in the vendor units of
:class:`~agent.sources.base.SampleBatch` (MHz, percent 0-100, millijoules, milliwatts),
NaN where the recording has no value. Samples of one GPU are in file order; GPUs are
interleaved as the file interleaves them. Each chunk also carries every GPU seen so far
(``gpus``, indexed by ``gpu``), the bad rows it skipped (line number or entry index
and reason) and how far into the file it got, for progress.

Readers stream: they hold one block of a few MB (or one response document) at a time,
so memory stays flat however large the file is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.accounting.integrate import group_by_gpu
from agent.accounting.runs import GpuAttribution
from agent.sources.base import ActivityKind, FloatArray, IntArray


class ReplayError(Exception):
    """A recorded file cannot be replayed at all (unreadable, unknown format, no header,
    no time base). The message names the file and what is wrong. Bad *rows* are never
    an error: they are skipped and reported."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class GpuKey:
    """A GPU as a recording names it.

    Attributes:
        key: identity, unique within a replay: the UUID (``GPU-...``), else ``pci:<bus
            id>`` or ``index:<n>`` (prefixed with the host when the recording has one),
            with ``/mig:<GPU_I_ID>`` appended for a MIG instance.
        uuid: the ``GPU-...`` UUID, None if the recording has none.
        index: the driver's index, None if unknown.
        name: the marketing name (``NVIDIA H100 80GB HBM3``), None if unknown.
        spec_key: spec-table key when the recording names it (traces, flopledger_gpu_info).
        max_sm_clock_mhz: the GPU's maximum SM clock, None if unrecorded.
        activity_kind: which tensor-activity counter the recording carries for it.
        mig_profile: ``GPU_I_PROFILE`` of a MIG instance (``1g.10gb``), else None.
        host: the host name the recording gives, "" if none.
        pci_device_id, compute_capability, sm_count: what the driver said of the GPU
            (as in DeviceInfo; traces), None where the recording does not say.
    """

    key: str
    uuid: str | None = None
    index: int | None = None
    name: str | None = None
    spec_key: str | None = None
    max_sm_clock_mhz: float | None = None
    activity_kind: ActivityKind = ActivityKind.NONE
    mig_profile: str | None = None
    host: str = ""
    pci_device_id: int | None = None
    compute_capability: str | None = None
    sm_count: int | None = None


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row (or entry) a reader skipped: 1-based line number (or entry index) and why."""

    line: int
    reason: str


@dataclass(slots=True)
class ColumnChunk:
    """A chunk of samples as column arrays.

    Attributes:
        gpu: per sample, an index into ``gpus`` (int64).
        timestamp_ns: per sample, the time used for integration (int64 ns): wall-clock
            ns since the epoch, or a monotonic clock where the recording has one.
        wall_ns: per sample, wall-clock ns since the epoch (the same array as
            ``timestamp_ns`` when the recording has only wall time).
        fields: SampleBatch float fields by name, per sample; absent = unknown.
        gpus: every GPU seen so far in the file (it only grows).
        bad: rows skipped in this chunk.
        bytes_done: bytes of the file consumed so far.
        rows_done: lines (or entries) consumed so far, good and bad.
        throttle_reasons: per sample, NVML clock-event bitmask, -1 unknown; None if the
            recording has none.
        attribution: per sample, an index into ``attribution_table``, -1 where the
            recording names no run; None if it never does.
        attribution_table: runs the recording names (labels, or a trace's attributions).
        sim_true_flop: per sample, the simulator's ground truth (traces of the simulator).
        line: per sample, the 1-based line (row of a trace) it came from, for naming it
            when it is bad; None where the reader cannot tell.
        field_lines: per field, the line each value came from, where a sample gathers
            fields from several lines (dcgm scrapes, Prometheus responses); a field
            absent here came from ``line``.
        wall_clock: False when the times are synthetic (``k x interval`` from zero, for
            recordings without timestamps), so they cannot be judged against the
            calendar.
    """

    gpu: IntArray
    timestamp_ns: IntArray
    wall_ns: IntArray
    fields: dict[str, FloatArray]
    gpus: tuple[GpuKey, ...]
    bad: list[BadRow] = field(default_factory=list)
    bytes_done: int = 0
    rows_done: int = 0
    throttle_reasons: IntArray | None = None
    attribution: IntArray | None = None
    attribution_table: tuple[GpuAttribution, ...] = ()
    sim_true_flop: FloatArray | None = None
    line: IntArray | None = None
    field_lines: dict[str, IntArray] = field(default_factory=dict)
    wall_clock: bool = True

    @property
    def rows(self) -> int:
        return int(self.gpu.shape[0])


class Reader(Protocol):
    """A recorded file opened for replay."""

    path: Path

    def chunks(self) -> Iterator[ColumnChunk]:
        """The file's samples, chunk by chunk.

        Raises:
            ReplayError: if the file as a whole cannot be read.
        """
        ...


def select(chunk: ColumnChunk, keep: npt.NDArray[Any]) -> ColumnChunk:
    """The chunk's samples where ``keep`` (a mask, or row indices in order)."""
    def part(a: npt.NDArray[Any] | None) -> Any:
        return None if a is None else a[keep]

    return dataclasses.replace(
        chunk, gpu=chunk.gpu[keep], timestamp_ns=chunk.timestamp_ns[keep],
        wall_ns=chunk.wall_ns[keep], fields={k: v[keep] for k, v in chunk.fields.items()},
        throttle_reasons=part(chunk.throttle_reasons), attribution=part(chunk.attribution),
        sim_true_flop=part(chunk.sim_true_flop), line=part(chunk.line),
        field_lines={k: v[keep] for k, v in chunk.field_lines.items()})


def empty_chunk(gpus: tuple[GpuKey, ...], bad: list[BadRow], bytes_done: int,
                rows_done: int) -> ColumnChunk:
    """A chunk without samples (all of its rows were bad, or none came yet)."""
    none = np.zeros(0, dtype=np.int64)
    return ColumnChunk(none, none, none, {}, gpus, bad, bytes_done, rows_done)


class SyntheticClock:
    """Timestamps for recordings without any: sample ``k`` of a GPU at ``k x interval``.

    Carries each GPU's sample count across chunks, so chunking does not change them.
    """

    def __init__(self, interval_ns: int) -> None:
        self.interval_ns = interval_ns
        self._count = np.zeros(0, dtype=np.int64)

    def stamp(self, gpu: IntArray, n_gpus: int) -> IntArray:
        if self._count.shape[0] < n_gpus:
            self._count = np.concatenate(
                [self._count, np.zeros(n_gpus - self._count.shape[0], dtype=np.int64)])
        order, offsets = group_by_gpu(gpu, n_gpus)
        rank_grouped = np.arange(gpu.shape[0], dtype=np.int64) - np.repeat(
            offsets[:-1], np.diff(offsets))
        rank = np.empty_like(rank_grouped)
        rank[order] = rank_grouped
        k = self._count[gpu] + rank
        self._count[: n_gpus] += np.diff(offsets)
        return k * self.interval_ns
