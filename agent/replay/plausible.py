"""What cannot be true: the one check every replayed sample passes before it counts.

Every reader's samples go through :class:`Plausibility` in the engine, before the
resumption filter, the checkpoint marks and the accountant: a sample that is
physically impossible is a bad row (counted, named with its line), never part of a
total, and never moves the state that judges the samples after it.

Judged on each sample alone (vectorised):

* SM clock negative, or above the GPU's maximum (the lower of the spec table's and the
  file's own ``clocks.max.sm``) by more than :data:`CLOCK_MARGIN`; with neither known,
  above :data:`MAX_CLOCK_MHZ`, which no GPU reaches;
* utilization, tensor or pipe activity, SM activity or occupancy outside 0-100 %;
* power negative or above :data:`MAX_POWER_MW`, far beyond any GPU's board power;
  an energy counter below zero; any infinite value;
* a wall-clock time before 2000 or later than now plus :data:`FUTURE_MARGIN_NS` (not for
  recordings timed by ``--interval-hint``, whose times start at zero).

Judged against the GPU's other samples, in file order (:func:`_order`, a numba kernel:
a sequential scan that cannot be vectorised; ``tests/replay/test_plausible.py`` holds
its plain-Python reference):

* a time not after the GPU's previous accepted sample is bad (going backwards, or a
  duplicate), named with the line of the sample it does not follow;
* a time more than the gap threshold after the previous one waits for the GPU's next
  sample: if that one is earlier (but after the previous), the waiting sample was a
  lone outlier and is bad; if it is later, the jump was a real gap. A GPU's first
  sample waits likewise: it is bad if the next one is earlier by more than the gap
  threshold, or later by more than :data:`UNCONFIRMED_NS` (a range export sorts a
  stray old point first). A jump that nothing confirms (the file ends, or the GPU is
  silent for :data:`MAX_WAIT_ROWS` rows) stands if it is under
  :data:`UNCONFIRMED_NS`, else is bad;
* an energy reading that cannot follow the GPU's last one (rising faster than
  :data:`MAX_POWER_MW`, or falling) waits for the next one too: if that one follows
  the last good reading, the waiting one was a spike and is bad; it stands only as a
  counter restarted (a driver reload: lower, and no more than the GPU could have used
  since), which the next reading must follow. A GPU's first reading that its next
  cannot follow is dropped: which of the two is wrong cannot be told, and the next
  one is confirmed in turn.

Samples wait in file order: everything from the first waiting sample on is held back
(a few rows, normally) until it is decided, so the accountant sees exactly the samples
and the order it would see if the file were one chunk: the totals do not depend on
chunking.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from agent.replay.readers.base import BadRow, ColumnChunk, select
from agent.sources.base import FLOAT_FIELDS, IntArray

MAX_CLOCK_MHZ = 5000.0  # no GPU's SM clock reaches 5 GHz, overclocked or not
CLOCK_MARGIN = 0.05  # a reading a few percent above the rated maximum happens
MAX_POWER_MW = 10_000_000.0  # 10 kW: ~7x the largest GPU board power of 2026 (1.4 kW)
EARLIEST_NS = calendar.timegm((2000, 1, 1, 0, 0, 0)) * 1_000_000_000
FUTURE_MARGIN_NS = 86_400 * 1_000_000_000  # a log's clock a time zone or a day ahead
UNCONFIRMED_NS = 3600 * 1_000_000_000
MAX_WAIT_ROWS = 1 << 16  # bounds what waits (memory) for a GPU that went silent
_PCT_EPSILON = 1e-6  # a ratio of 1.0 scaled by 100 is exact; allow only rounding

# Codes of a bad sample (0: good, PENDING: waiting for its GPU's next sample).
PENDING = -1
CLOCK_NEGATIVE = 1
CLOCK_HIGH = 2
PCT_OUTSIDE = 3  # aux: field index in FLOAT_FIELDS
POWER_NEGATIVE = 4
POWER_HIGH = 5
ENERGY_NEGATIVE = 6
NOT_FINITE = 7  # aux: field index
TIME_EARLY = 8
TIME_FUTURE = 9
TIME_BACKWARDS = 20  # aux: line of the sample it does not follow
TIME_OUTLIER = 21  # aux: line of the next sample, which is earlier
TIME_UNCONFIRMED = 22  # aux: line of the previous sample
ENERGY_JUMP = 23  # aux: line of the previous energy reading
TIME_LONE = 24  # a first sample far before the next: aux: line of the next sample
ENERGY_LONE = 25  # a first reading the next cannot follow: aux: line of the next sample

_PCT_NAMES = {
    "gpu_util_pct": "utilization", "tensor_any_pct": "tensor activity",
    "tensor_hmma_pct": "tensor (HMMA) activity", "tensor_imma_pct": "tensor (IMMA) activity",
    "tensor_dmma_pct": "tensor (DMMA) activity", "tensor_dfma_pct": "tensor (DFMA) activity",
    "fp16_pct": "FP16 pipe activity", "fp32_pct": "FP32 pipe activity",
    "fp64_pct": "FP64 pipe activity", "sm_util_pct": "SM activity",
    "sm_occupancy_pct": "SM occupancy",
}
_FIELD_INDEX = {name: i for i, name in enumerate(FLOAT_FIELDS)}
_NO_ENERGY = np.zeros(0)


def clock_max_mhz(spec_max_mhz: float | None, file_max_mhz: float | None) -> float | None:
    """The GPU's maximum SM clock: the lower of the spec table's and the recording's
    (a recorded maximum no GPU has is ignored); None if neither is known."""
    known = [m for m in (spec_max_mhz, file_max_mhz)
             if m is not None and 0 < m <= MAX_CLOCK_MHZ]
    return min(known) if known else None


def _num(value: float) -> str:
    """A value as the file had it, near enough: whole numbers in full."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def when(ns: int) -> str:
    """A wall-clock stamp as UTC, to the second, whatever its size."""
    try:
        return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{ns} ns since 1970"


@dataclass(slots=True)
class _Segment:
    """Rows ``lo:hi`` of a chunk, waiting in the window."""

    chunk: ColumnChunk
    gid: IntArray
    lo: int
    hi: int


class Plausibility:
    """The check, with each GPU's state (last accepted time and energy, a waiting
    sample) carried across chunks and files.

    Args:
        now_ns: the wall-clock time the future is judged from.
        jump_ns: the gap threshold: a longer step waits for confirmation.
    """

    def __init__(self, now_ns: int, jump_ns: int) -> None:
        self.now_ns = now_ns
        self.jump_ns = jump_ns
        self._n_gpus = 0
        self._clock_max = np.zeros(0)  # per GPU, NaN unknown
        self._state_i = np.zeros((_SI, 0), dtype=np.int64)  # grown by doubling
        self._state_f = np.zeros((_SF, 0))
        self._segments: list[_Segment] = []
        self._verdict = np.zeros(0, dtype=np.int16)
        self._aux = np.zeros(0, dtype=np.int64)
        self._base = 0  # absolute position (rows given so far) of the window's first row
        self.rows_judged = 0

    @property
    def _unconfirmed_ns(self) -> int:
        return max(UNCONFIRMED_NS, self.jump_ns)

    def add_gpu(self, max_clock_mhz: float | None) -> None:
        """Register the next GPU id with its maximum SM clock (None if unknown)."""
        g = self._n_gpus
        if g == self._state_i.shape[1]:
            size = max(8, 2 * g)
            state_i = np.zeros((_SI, size), dtype=np.int64)
            state_i[:, :g] = self._state_i
            state_f = np.full((_SF, size), np.nan)
            state_f[:, :g] = self._state_f
            self._state_i, self._state_f = state_i, state_f
            self._clock_max = np.resize(self._clock_max, size)
        self._clock_max[g] = np.nan if max_clock_mhz is None else max_clock_mhz
        self._n_gpus += 1

    def take(self, chunk: ColumnChunk, gid: IntArray
             ) -> tuple[list[tuple[ColumnChunk, IntArray]], list[BadRow]]:
        """Judge a chunk's samples (``gid``: their GPU ids).

        Returns:
            the decided good samples, as pieces in file order (a piece may come from an
            earlier chunk), and the bad ones decided now.
        """
        n = chunk.rows
        codes, aux = self._values(chunk, gid)
        start = self._verdict.shape[0]
        verdict = np.concatenate([self._verdict, codes])
        aux_all = np.concatenate([self._aux, aux])
        line = chunk.line if chunk.line is not None else (
            np.arange(n, dtype=np.int64) + self._base + start + 1)
        energy = chunk.fields.get("energy_mj")
        _order(gid, chunk.timestamp_ns, _NO_ENERGY if energy is None else energy, line,
               verdict, aux_all, start, self._base, self._state_i, self._state_f,
               self.jump_ns, self._unconfirmed_ns, MAX_WAIT_ROWS, MAX_POWER_MW, False)
        self.rows_judged += n
        return self._emit([*self._segments, _Segment(chunk, gid, 0, n)], verdict, aux_all)

    def finish(self) -> tuple[list[tuple[ColumnChunk, IntArray]], list[BadRow]]:
        """Decide every waiting sample (the file ended) and hand over the rest."""
        verdict, aux = self._verdict.copy(), self._aux.copy()
        empty = np.zeros(0, dtype=np.int64)
        _order(empty, empty, _NO_ENERGY, empty, verdict, aux, verdict.shape[0], self._base,
               self._state_i, self._state_f, self.jump_ns, self._unconfirmed_ns, MAX_WAIT_ROWS,
               MAX_POWER_MW, True)
        return self._emit(self._segments, verdict, aux)

    # -- one sample at a time, vectorised ------------------------------------------------

    def _values(self, chunk: ColumnChunk, gid: IntArray) -> tuple[np.ndarray[Any, Any],
                                                                  IntArray]:
        n = chunk.rows
        code = np.zeros(n, dtype=np.int16)
        aux = np.zeros(n, dtype=np.int64)

        def mark(bad: np.ndarray[Any, Any], c: int, a: int = 0) -> None:
            if bad.any():
                new = bad & (code == 0)
                code[new] = c
                aux[new] = a

        if chunk.wall_clock:
            mark(chunk.wall_ns < EARLIEST_NS, TIME_EARLY)
            mark(chunk.wall_ns > self.now_ns + FUTURE_MARGIN_NS, TIME_FUTURE)
        for name, values in chunk.fields.items():
            index = _FIELD_INDEX.get(name, 0)
            mark(np.isinf(values), NOT_FINITE, index)
            if name == "sm_clock_mhz":
                mark(values < 0, CLOCK_NEGATIVE)
                limit = self._clock_max[gid] * (1 + CLOCK_MARGIN)
                mark(values > np.where(np.isnan(limit), MAX_CLOCK_MHZ, limit), CLOCK_HIGH)
            elif name in _PCT_NAMES:
                mark((values < 0) | (values > 100 + _PCT_EPSILON), PCT_OUTSIDE, index)
            elif name == "power_mw":
                mark(values < 0, POWER_NEGATIVE)
                mark(values > MAX_POWER_MW, POWER_HIGH)
            elif name == "energy_mj":
                mark(values < 0, ENERGY_NEGATIVE)
        return code, aux

    # -- handing over ------------------------------------------------------------------

    def _emit(self, segments: list[_Segment], verdict: np.ndarray[Any, Any], aux: IntArray,
              ) -> tuple[list[tuple[ColumnChunk, IntArray]], list[BadRow]]:
        waiting = np.flatnonzero(verdict < 0)
        cut = int(waiting[0]) if waiting.size else int(verdict.shape[0])
        pieces: list[tuple[ColumnChunk, IntArray]] = []
        bad: list[BadRow] = []
        rest: list[_Segment] = []
        offset = 0
        for seg in segments:
            size = seg.hi - seg.lo
            done = min(max(cut - offset, 0), size)
            if done:
                v = verdict[offset : offset + done]
                if done == seg.chunk.rows and not v.any():
                    pieces.append((seg.chunk, seg.gid))
                else:
                    good = np.arange(seg.lo, seg.lo + done)[v == 0]
                    if good.size:
                        pieces.append((select(seg.chunk, good), seg.gid[good]))
                    for k in np.flatnonzero(v).tolist():
                        bad.append(self._bad_row(seg, seg.lo + k, int(v[k]),
                                                 int(aux[offset + k])))
            if done < size:
                rest.append(_Segment(seg.chunk, seg.gid, seg.lo + done, seg.hi))
            offset += size
        self._segments = rest
        self._verdict = verdict[cut:].copy()
        self._aux = aux[cut:].copy()
        self._base += cut
        return pieces, bad

    def _bad_row(self, seg: _Segment, row: int, code: int, aux: int) -> BadRow:
        chunk = seg.chunk
        line = int(chunk.line[row]) if chunk.line is not None else 0

        def value(name: str, scale: float = 1.0) -> str:
            return _num(float(chunk.fields[name][row]) * scale)

        def line_of(name: str) -> int:
            lines = chunk.field_lines.get(name)
            return int(lines[row]) if lines is not None else line

        if code == CLOCK_NEGATIVE:
            return BadRow(line_of("sm_clock_mhz"),
                          f"negative SM clock: {value('sm_clock_mhz')} MHz")
        if code == CLOCK_HIGH:
            base = float(self._clock_max[int(seg.gid[row])])
            limit = (f"at most {base * (1 + CLOCK_MARGIN):.0f} MHz ({base:g} MHz + "
                     f"{CLOCK_MARGIN:.0%})") if base == base else \
                f"no GPU reaches {MAX_CLOCK_MHZ:g} MHz"
            return BadRow(line_of("sm_clock_mhz"), "SM clock above the GPU's maximum: "
                                                   f"{value('sm_clock_mhz')} MHz, {limit}")
        if code in (PCT_OUTSIDE, NOT_FINITE):
            name = FLOAT_FIELDS[aux]
            what = _PCT_NAMES.get(name, name)
            if code == NOT_FINITE:
                return BadRow(line_of(name), f"infinite value: {name} = {value(name)}")
            return BadRow(line_of(name), f"{what} outside 0-100%: {value(name)}%")
        if code == POWER_NEGATIVE:
            return BadRow(line_of("power_mw"), f"negative power: {value('power_mw', 1e-3)} W")
        if code == POWER_HIGH:
            return BadRow(line_of("power_mw"), "power far above any GPU's maximum: "
                                               f"{value('power_mw', 1e-3)} W, at most "
                                               f"{MAX_POWER_MW / 1e3:g} W")
        if code == ENERGY_NEGATIVE:
            return BadRow(line_of("energy_mj"),
                          f"negative energy counter: {value('energy_mj')} mJ")
        if code == ENERGY_LONE:
            return BadRow(line_of("energy_mj"), "energy counter jump beyond any GPU's "
                                                f"power: its GPU's next reading (line {aux}) "
                                                "cannot follow it")
        if code == ENERGY_JUMP:
            return BadRow(line_of("energy_mj"), "energy counter jump beyond any GPU's "
                                                f"power: more than {MAX_POWER_MW / 1e6:g} kW "
                                                f"since its previous reading (line {aux})")
        stamp = when(int(chunk.wall_ns[row]))
        if code == TIME_EARLY:
            return BadRow(line, f"timestamp before 2000: {stamp}")
        if code == TIME_FUTURE:
            return BadRow(line, f"timestamp in the future: {stamp}, after "
                                f"{when(self.now_ns + FUTURE_MARGIN_NS)}")
        if code == TIME_BACKWARDS:
            return BadRow(line, f"timestamp not after its GPU's previous sample: {stamp}, "
                                f"not after line {aux}")
        if code == TIME_OUTLIER:
            return BadRow(line, f"timestamp far from its GPU's neighbours: {stamp}, later "
                                f"than the next sample (line {aux}) by more than the gap "
                                f"threshold")
        if code == TIME_LONE:
            return BadRow(line, f"timestamp far from its GPU's neighbours: {stamp}, more "
                                f"than {self._unconfirmed_ns // 10**9} s before the next "
                                f"sample (line {aux}), and no earlier sample confirms it")
        return BadRow(line, f"timestamp far after its GPU's previous sample: {stamp}, "
                            f"more than {self._unconfirmed_ns // 10**9} s after line {aux}, "
                            "and "
                            "no later sample confirms it")


# Per-GPU state rows (int64): has a last sample, its time, its line, time and line of
# the last energy reading, waiting kind (0 none, 1 after a previous sample, 2 a first
# sample), whether the waiting sample's energy reading is in doubt, the waiting
# sample's absolute position, its time, its line. Zero to start.
_HAS, _T, _LINE, _ET, _ELINE, _WAIT, _WDOUBT, _WPOS, _WT, _WLINE = range(10)
_SI = 10
# (float64): last energy reading, the waiting sample's energy.
_E, _WE = range(2)
_SF = 2


@njit(cache=True, nogil=True)
def _follows(e0: float, t0: int, e1: float, t1: int, max_power_mw: float) -> bool:
    """Whether energy reading ``e1`` can follow ``e0`` on one counter."""
    return e1 >= e0 and e1 - e0 <= max_power_mw * (t1 - t0) * 1e-9


@njit(cache=True, nogil=True)
def _accept_waiting(g: int, si: Any, sf: Any, verdict: Any, base: int) -> None:
    verdict[si[_WPOS, g] - base] = 0
    si[_HAS, g] = 1
    si[_T, g] = si[_WT, g]
    si[_LINE, g] = si[_WLINE, g]
    if not np.isnan(sf[_WE, g]):
        sf[_E, g] = sf[_WE, g]
        si[_ET, g] = si[_WT, g]
        si[_ELINE, g] = si[_WLINE, g]
    si[_WAIT, g] = 0


@njit(cache=True, nogil=True)
def _reject_waiting(g: int, code: int, aux_line: int, si: Any, verdict: Any, aux: Any,
                    base: int) -> None:
    verdict[si[_WPOS, g] - base] = code
    aux[si[_WPOS, g] - base] = aux_line
    si[_WAIT, g] = 0


@njit(cache=True, nogil=True)
def _a_reset(g: int, si: Any, sf: Any, max_power_mw: float) -> bool:
    """Whether the waiting reading can be a counter restarted (a driver reload) since
    the last one: lower, and no more than the GPU can use since then."""
    e: float = sf[_WE, g]
    last: float = sf[_E, g]
    span_ns: int = si[_WT, g] - si[_ET, g]
    return e < last and e <= max_power_mw * span_ns * 1e-9


@njit(cache=True, nogil=True)
def _settle(g: int, si: Any, sf: Any, verdict: Any, aux: Any, base: int,
            unconfirmed_ns: int, max_power_mw: float) -> None:
    """Decide a waiting sample nothing confirmed: a first sample stands; a jump stands
    unless it is longer than ``unconfirmed_ns``; a doubtful energy reading only if it
    can be a counter restarted."""
    if si[_WAIT, g] == 2:
        _accept_waiting(g, si, sf, verdict, base)
    elif si[_WT, g] - si[_T, g] > unconfirmed_ns:
        _reject_waiting(g, TIME_UNCONFIRMED, si[_LINE, g], si, verdict, aux, base)
    elif si[_WDOUBT, g] == 1 and not _a_reset(g, si, sf, max_power_mw):
        _reject_waiting(g, ENERGY_JUMP, si[_ELINE, g], si, verdict, aux, base)
    else:
        _accept_waiting(g, si, sf, verdict, base)


@njit(cache=True, nogil=True)
def _order(gid: Any, ts: Any, energy: Any, line: Any, verdict: Any, aux: Any, start: int,
           base: int, si: Any, sf: Any, jump_ns: int, unconfirmed_ns: int, max_wait: int,
           max_power_mw: float, final: bool) -> None:
    """Judge rows ``start:`` of the window (``verdict``/``aux``, whose row 0 is at
    absolute position ``base``) against their GPUs' state; the new rows' ``gid``,
    ``ts``, ``energy`` (empty: none) and ``line`` are given from 0. A row already bad
    is skipped. Writes verdicts of the new rows and of waiting rows it decides.

    A sample waits for its GPU's next one when it is the GPU's first, when it comes
    more than ``jump_ns`` after the previous one, or when its energy reading cannot
    follow the last one (a spike, or a counter restarted); the next sample decides."""
    have_energy = energy.shape[0] > 0
    for k in range(gid.shape[0]):
        i = start + k
        if verdict[i] != 0:
            continue
        g = gid[k]
        t = ts[k]
        e = energy[k] if have_energy else np.nan
        if si[_WAIT, g] != 0 and base + i - si[_WPOS, g] > max_wait:
            _settle(g, si, sf, verdict, aux, base, unconfirmed_ns, max_power_mw)
        wt = si[_WT, g]
        if si[_WAIT, g] == 2:
            if t == wt or (t < wt and wt - t <= jump_ns):
                verdict[i] = TIME_BACKWARDS
                aux[i] = si[_WLINE, g]
                continue
            if t < wt:
                # A first sample far ahead of the next one was the outlier; this one
                # is the GPU's first sample now.
                _reject_waiting(g, TIME_OUTLIER, line[k], si, verdict, aux, base)
            elif t - wt > unconfirmed_ns:
                _reject_waiting(g, TIME_LONE, line[k], si, verdict, aux, base)
            elif not (np.isnan(e) or np.isnan(sf[_WE, g])) and not _follows(
                    sf[_WE, g], wt, e, t, max_power_mw):
                # Which of the two readings is wrong cannot be told: the first goes.
                _reject_waiting(g, ENERGY_LONE, line[k], si, verdict, aux, base)
            else:
                _accept_waiting(g, si, sf, verdict, base)
        elif si[_WAIT, g] == 1:
            if t <= si[_T, g] or t == wt:
                verdict[i] = TIME_BACKWARDS
                aux[i] = si[_LINE, g] if t <= si[_T, g] else si[_WLINE, g]
                continue
            if t < wt:
                _reject_waiting(g, TIME_OUTLIER, line[k], si, verdict, aux, base)
            elif si[_WDOUBT, g] == 1 and (
                    np.isnan(e) or _follows(sf[_E, g], si[_ET, g], e, t, max_power_mw)
                    or not (_a_reset(g, si, sf, max_power_mw)
                            and _follows(sf[_WE, g], wt, e, t, max_power_mw))):
                # The next reading follows the last good one (the waiting one was a
                # spike), or follows neither.
                _reject_waiting(g, ENERGY_JUMP, si[_ELINE, g], si, verdict, aux, base)
            else:
                _accept_waiting(g, si, sf, verdict, base)
        if si[_HAS, g] == 0:
            si[_WAIT, g] = 2
            si[_WPOS, g] = base + i
            si[_WT, g] = t
            si[_WLINE, g] = line[k]
            sf[_WE, g] = e
            verdict[i] = PENDING
            continue
        if t <= si[_T, g]:
            verdict[i] = TIME_BACKWARDS
            aux[i] = si[_LINE, g]
            continue
        doubt = not (np.isnan(e) or np.isnan(sf[_E, g])) and not _follows(
            sf[_E, g], si[_ET, g], e, t, max_power_mw)
        if doubt or t - si[_T, g] > jump_ns:
            si[_WAIT, g] = 1
            si[_WDOUBT, g] = 1 if doubt else 0
            si[_WPOS, g] = base + i
            si[_WT, g] = t
            si[_WLINE, g] = line[k]
            sf[_WE, g] = e
            verdict[i] = PENDING
            continue
        si[_T, g] = t
        si[_LINE, g] = line[k]
        if not np.isnan(e):
            sf[_E, g] = e
            si[_ET, g] = t
            si[_ELINE, g] = line[k]
    end = base + start + gid.shape[0]
    for g in range(si.shape[1]):  # unused columns never wait
        if si[_WAIT, g] != 0 and (final or end - si[_WPOS, g] > max_wait):
            _settle(g, si, sf, verdict, aux, base, unconfirmed_ns, max_power_mw)
