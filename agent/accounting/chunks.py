"""Columns of samples on their way through the accountant: grouped by GPU, and held
until the next integration.

A chunk is one row per sample (a live tick: one row per GPU that is up; a replayed
chunk: many rows per GPU, GPUs interleaved), a GPU's rows in time order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from agent.accounting.band import Band
from agent.accounting.integrate import group_by_gpu
from agent.sources.base import FloatArray, IntArray

_Array = TypeVar("_Array", FloatArray, IntArray)


def joined(parts: Sequence[_Array]) -> _Array:
    """The parts end to end (the part itself if there is one)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass(frozen=True, slots=True)
class GpuGroups:
    """A chunk's rows grouped by GPU: ``order`` lists the rows GPU by GPU (stable, as
    :func:`group_by_gpu` gives them), ``counts`` the rows per GPU, ``present`` the GPUs
    with rows, and ``firsts`` and ``lasts`` where their rows start and end in ``order``.
    """

    order: IntArray
    offsets: IntArray
    counts: IntArray
    present: IntArray
    firsts: IntArray
    lasts: IntArray
    one_row_each: bool = False

    @classmethod
    def of(cls, gpu: IntArray, n_gpus: int) -> GpuGroups:
        """Any chunk: ``gpu`` is each row's GPU position."""
        order, offsets = group_by_gpu(gpu, n_gpus)
        counts = offsets[1:] - offsets[:-1]
        present = np.flatnonzero(counts)
        firsts, lasts = offsets[present], offsets[present + 1] - 1
        return cls(order, offsets, counts, present, firsts, lasts,
                   bool((firsts == lasts).all()))

    @classmethod
    def of_ticks(cls, n_gpus: int, ticks: int) -> GpuGroups:
        """``ticks`` ticks of every GPU end to end, each in GPU order (the rows
        ``np.tile(np.arange(n_gpus), ticks)``): :meth:`of` them without sorting. One
        serves every chunk of that shape: nothing writes into a chunk's groups. (Not
        marked read-only: numba would compile each kernel again for such arrays.)"""
        rows = n_gpus * ticks
        order = np.arange(rows, dtype=np.int64).reshape(ticks, n_gpus).T.ravel()
        offsets = np.arange(0, rows + 1, ticks, dtype=np.int64)
        counts = np.full(n_gpus, ticks, dtype=np.int64)
        present = np.arange(n_gpus, dtype=np.int64)
        return cls(order, offsets, counts, present, offsets[:-1], offsets[1:] - 1,
                   ticks == 1)

    @classmethod
    def one_per_gpu(cls, gpu: IntArray, n_gpus: int) -> GpuGroups:
        """A tick: at most one row per GPU, in GPU order (``gpu`` increasing), so
        grouping is the identity."""
        same = np.arange(gpu.shape[0], dtype=np.int64)
        counts = np.zeros(n_gpus, dtype=np.int64)
        counts[gpu] = 1
        offsets = np.zeros(n_gpus + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(same, offsets, counts, gpu, same, same, True)

    def ends(self, values: IntArray) -> tuple[list[int], list[int]]:
        """Per GPU with rows (as ``present``), its first row's and last row's value."""
        if self.one_row_each:
            firsts = values[self.order].tolist()
            return firsts, firsts
        return values[self.order[self.firsts]].tolist(), values[self.order[self.lasts]].tolist()

    def previous(self, gpu: IntArray, values: FloatArray,
                 carried: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Each row's previous reading of its GPU (the one before it in the chunk, or
        ``carried`` for its first), and the readings to carry to the next chunk."""
        last = carried.copy()
        if self.one_row_each:
            last[gpu] = values
            return carried[gpu], last
        grouped = values[self.order]
        shifted = np.empty_like(grouped)
        shifted[1:] = grouped[:-1]
        shifted[self.firsts] = carried[self.present]
        out = np.empty_like(grouped)
        out[self.order] = shifted
        last[self.present] = grouped[self.lasts]
        return out, last


@dataclass(frozen=True, slots=True)
class Grouped:
    """Buffered samples joined and grouped by GPU, ready for the integration kernels."""

    offsets: IntArray
    timestamp_ns: IntArray
    flops: Band[FloatArray]
    energy_mj: FloatArray
    power_mw: FloatArray


@dataclass(slots=True)
class RateBuffer:
    """Estimated samples waiting for the next integration, in arrival order, with the
    simulator's ground truth as of the last of them."""

    gpu: list[IntArray] = field(default_factory=list)
    timestamp_ns: list[IntArray] = field(default_factory=list)
    flops: list[Band[FloatArray]] = field(default_factory=list)
    energy_mj: list[FloatArray] = field(default_factory=list)
    power_mw: list[FloatArray] = field(default_factory=list)
    sim_truth: FloatArray | None = None
    groups: GpuGroups | None = None  # of the one chunk buffered, if there is one

    def __len__(self) -> int:
        return len(self.gpu)

    def append(self, gpu: IntArray, groups: GpuGroups, timestamp_ns: IntArray,
               flops: Band[FloatArray], energy_mj: FloatArray, power_mw: FloatArray) -> None:
        self.groups = None if self.gpu else groups
        self.gpu.append(gpu)
        self.timestamp_ns.append(timestamp_ns)
        self.flops.append(flops)
        self.energy_mj.append(energy_mj)
        self.power_mw.append(power_mw)

    def grouped(self, n_gpus: int) -> Grouped:
        """Everything buffered, one time-ordered segment per GPU."""
        if self.groups is not None:
            order, offsets = self.groups.order, self.groups.offsets
        else:
            order, offsets = group_by_gpu(joined(self.gpu), n_gpus)
        flops = Band(*(joined(bound)[order] for bound in zip(*self.flops, strict=True)))
        return Grouped(offsets, joined(self.timestamp_ns)[order], flops,
                       joined(self.energy_mj)[order], joined(self.power_mw)[order])

    def clear(self) -> None:
        for parts in (self.gpu, self.timestamp_ns, self.flops, self.energy_mj, self.power_mw):
            parts.clear()
        self.sim_truth = None
        self.groups = None
