"""Numba kernels: FLOP/s rates and energy readings over time -> interval totals.

Samples come grouped by GPU (one contiguous, time-ordered segment per GPU), which lets
the hot loop run branch-free and vectorised.

Determinism contract: every interval's FLOP is converted to an integer number of
:data:`FLOP_UNIT` FLOP on its own (low rounded down, central to nearest-even, high
rounded up, so rounding never narrows the band), and totals are integer sums. Integer
addition is associative, so the same samples give bit-identical totals however they
are chunked, on however many threads, live or replayed.

The rate of a sample applies to the interval from the previous sample of the same GPU
to it (GPM activity is an average over exactly that interval). An interval longer than
``max_gap_ns`` is a gap: low adds nothing and high adds the GPU's highest possible rate
over the whole gap. Central adds nothing either, unless the GPU's activity counter
averages over whatever interval it is read at (NVML GPM: two counter snapshots), in
which case the activity of the gap was measured and central counts it at that
activity; only the clock inside the gap is unknown, which low and high already cover.

The kernels are pure: arrays in, new arrays out; the carried state (last timestamp and
last energy reading per GPU) goes in as an argument and comes back as a result.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

from agent.accounting.band import Band
from agent.sources.base import BoolArray, FloatArray, IntArray

# 1 MFLOP. int64 then holds 9.2e24 FLOP per GPU, 4,600 years of an H100 at full
# bf16 rate; cluster totals are Python ints (ledger) or float sums (Prometheus).
FLOP_UNIT = 1_000_000
# rate [FLOP/s] x dt [ns] x NS_TO_UNITS = FLOP units. The factor is inexact (1e-15 has
# no exact binary form), so a whole result may come out a unit off; the rounding
# direction per bound keeps the band conservative and every path uses this same
# product, so results are still bit-identical.
NS_TO_UNITS = 1e-9 / FLOP_UNIT


class FlopTotals(NamedTuple):
    """Per-GPU results of :func:`integrate_flop` (all int64 arrays).

    The kernel's output tuple as it is, field for field (its NumPy reference in the
    tests returns the same); :attr:`units` reads the three bounds as one band.
    """

    low_units: IntArray
    central_units: IntArray
    high_units: IntArray
    covered_ns: IntArray
    gap_ns: IntArray
    rejected: IntArray
    last_timestamp_ns: IntArray

    @property
    def units(self) -> Band[IntArray]:
        """FLOP per GPU in :data:`FLOP_UNIT` units (low, central, high)."""
        return Band(self.low_units, self.central_units, self.high_units)


class EnergyTotals(NamedTuple):
    """Per-GPU results of :func:`integrate_energy`."""

    energy_mj: IntArray
    counter_resets: IntArray
    last_timestamp_ns: IntArray
    last_energy_mj: FloatArray


@njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)
def _segment_fast(
    ts: IntArray, low: FloatArray, central: FloatArray, high: FloatArray, start: int,
    end: int, gap_rate: float, measured: bool, max_gap_ns: int,
) -> tuple[Any, ...]:
    # Branch-free so that LLVM vectorises it: every interval is computed, and masks
    # (0 or 1) select what it adds to. Integer sums are exact in any order.
    s_low = np.int64(0)
    s_central = np.int64(0)
    s_high = np.int64(0)
    s_covered = np.int64(0)
    s_gap = np.int64(0)
    s_bad = np.int64(0)
    keep_gap = np.int64(1) if measured else np.int64(0)
    # Slices indexed from 0 let LLVM prove no index is negative (a possibly negative
    # index takes numba's wraparound branch, which stops vectorisation).
    previous = ts[start - 1 : end - 1]
    current = ts[start:end]
    low_s = low[start:end]
    central_s = central[start:end]
    high_s = high[start:end]
    for i in range(current.shape[0]):
        dt = current[i] - previous[i]
        dtf = dt * NS_TO_UNITS
        ok = np.int64(dt > 0)
        is_gap = np.int64(dt > max_gap_ns)
        in_band = 1 - is_gap
        s_bad += 1 - ok
        s_low += ok * in_band * np.int64(np.floor(low_s[i] * dtf))
        s_central += ok * (in_band | keep_gap) * np.int64(np.rint(central_s[i] * dtf))
        s_high += ok * np.int64(np.ceil((high_s[i] * in_band + gap_rate * is_gap) * dtf))
        s_covered += ok * in_band * dt
        s_gap += ok * is_gap * dt
    return s_low, s_central, s_high, s_covered, s_gap, s_bad


@njit(cache=True, nogil=True, error_model="numpy")
def _segment_checked(
    ts: IntArray, low: FloatArray, central: FloatArray, high: FloatArray, start: int,
    end: int, previous: int, gap_rate: float, measured: bool, max_gap_ns: int,
) -> tuple[Any, ...]:
    # The same arithmetic as _segment_fast (its masked sums select exactly high[i] or
    # gap_rate), one interval at a time, skipping samples whose timestamp does not
    # advance: they must not open the next interval.
    s_low = np.int64(0)
    s_central = np.int64(0)
    s_high = np.int64(0)
    s_covered = np.int64(0)
    s_gap = np.int64(0)
    rejected = np.int64(0)
    for i in range(start, end):
        dt = ts[i] - previous
        if dt <= 0:
            rejected += 1
            continue
        previous = ts[i]
        dtf = dt * NS_TO_UNITS
        if dt > max_gap_ns:
            s_gap += dt
            s_high += np.int64(np.ceil(gap_rate * dtf))
            if measured:
                s_central += np.int64(np.rint(central[i] * dtf))
        else:
            s_covered += dt
            s_low += np.int64(np.floor(low[i] * dtf))
            s_central += np.int64(np.rint(central[i] * dtf))
            s_high += np.int64(np.ceil(high[i] * dtf))
    return s_low, s_central, s_high, s_covered, s_gap, rejected, previous


@njit(cache=True, nogil=True)
def _integrate_flop(
    offsets: IntArray,
    timestamp_ns: IntArray,
    rate_low: FloatArray,
    rate_central: FloatArray,
    rate_high: FloatArray,
    gap_rate: FloatArray,
    measured_over_gaps: BoolArray,
    last_timestamp_ns: IntArray,
    max_gap_ns: int,
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
    n_gpus = last_timestamp_ns.shape[0]
    out = np.zeros((6, n_gpus), np.int64)
    last = last_timestamp_ns.copy()
    for g in range(n_gpus):
        start = offsets[g]
        end = offsets[g + 1]
        if start == end:
            continue
        previous = last[g]
        if previous < 0:
            # The first sample of a GPU opens its first interval; nothing before it
            # was observed.
            previous = timestamp_ns[start]
            start += 1
        # The vectorised pass takes each interval from the sample before it in the
        # array; that is right unless some timestamp fails to advance, in which case
        # the checked pass redoes the segment.
        if start < end and timestamp_ns[start] > previous:
            head = _segment_checked(
                timestamp_ns, rate_low, rate_central, rate_high, start, start + 1, previous,
                gap_rate[g], measured_over_gaps[g], max_gap_ns,
            )
            rest = _segment_fast(
                timestamp_ns, rate_low, rate_central, rate_high, start + 1, end, gap_rate[g],
                measured_over_gaps[g], max_gap_ns,
            )
            if rest[5] == 0:
                for k in range(5):
                    out[k, g] = head[k] + rest[k]
                last[g] = timestamp_ns[end - 1]
                continue
        slow = _segment_checked(
            timestamp_ns, rate_low, rate_central, rate_high, start, end, previous,
            gap_rate[g], measured_over_gaps[g], max_gap_ns,
        )
        for k in range(6):
            out[k, g] = slow[k]
        last[g] = slow[6]
    return out[0], out[1], out[2], out[3], out[4], out[5], last


def integrate_flop(
    offsets: IntArray,
    timestamp_ns: IntArray,
    rate_low: FloatArray,
    rate_central: FloatArray,
    rate_high: FloatArray,
    gap_rate_flops: FloatArray,
    measured_over_gaps: BoolArray,
    last_timestamp_ns: IntArray,
    max_gap_ns: int,
) -> FlopTotals:
    """Integrate per-sample FLOP/s into per-GPU totals in :data:`FLOP_UNIT` units.

    Samples are grouped by GPU: those of GPU ``g`` are ``[offsets[g], offsets[g+1])``,
    in time order (see :func:`group_by_gpu`).

    Args:
        offsets: int64, one more entry than there are GPUs.
        timestamp_ns: monotonic time of each sample (int64 ns).
        rate_low, rate_central, rate_high: FLOP/s of the interval ending at each sample.
        gap_rate_flops: per GPU, the highest rate possible (high bound over a gap).
        measured_over_gaps: per GPU, True if its activity is an average over the
            whole interval however long (GPM), so central may count a gap.
        last_timestamp_ns: per GPU, the last sample before this chunk, -1 if none.
        max_gap_ns: intervals longer than this are gaps.

    Returns:
        Totals of this chunk per GPU and the new ``last_timestamp_ns``. A sample not
        later than its GPU's previous one is counted in ``rejected`` and skipped.
    """
    return FlopTotals(
        *_integrate_flop(
            offsets, timestamp_ns, rate_low, rate_central, rate_high, gap_rate_flops,
            measured_over_gaps, last_timestamp_ns, int(max_gap_ns),
        )
    )


@njit(cache=True, nogil=True)
def _group_by_gpu(gpu: IntArray, n_gpus: int) -> tuple[IntArray, IntArray]:
    counts = np.zeros(n_gpus + 1, np.int64)
    for i in range(gpu.shape[0]):
        counts[gpu[i] + 1] += 1
    offsets = np.cumsum(counts)
    cursor = offsets[:-1].copy()
    order = np.empty(gpu.shape[0], np.int64)
    for i in range(gpu.shape[0]):
        g = gpu[i]
        order[cursor[g]] = i
        cursor[g] += 1
    return order, offsets


def group_by_gpu(gpu: IntArray, n_gpus: int) -> tuple[IntArray, IntArray]:
    """A stable counting sort of interleaved samples by GPU position.

    Returns:
        ``order`` (index array that groups the samples) and ``offsets`` (GPU ``g``'s
        samples are ``order[offsets[g]:offsets[g+1]]``).
    """
    return _group_by_gpu(gpu, int(n_gpus))


@njit(cache=True, nogil=True)
def _integrate_energy(
    offsets: IntArray,
    timestamp_ns: IntArray,
    energy_mj: FloatArray,
    power_mw: FloatArray,
    last_timestamp_ns: IntArray,
    last_energy_mj: FloatArray,
) -> tuple[IntArray, IntArray, IntArray, FloatArray]:
    n_gpus = last_timestamp_ns.shape[0]
    total = np.zeros(n_gpus, np.int64)
    resets = np.zeros(n_gpus, np.int64)
    last_t = last_timestamp_ns.copy()
    last_e = last_energy_mj.copy()
    for g in range(n_gpus):
        for i in range(offsets[g], offsets[g + 1]):
            t = timestamp_ns[i]
            e = energy_mj[i]
            previous_t = last_t[g]
            if previous_t >= 0 and t <= previous_t:
                continue
            have_e = not np.isnan(e)
            have_last_e = not np.isnan(last_e[g])
            if have_e and have_last_e:
                if e >= last_e[g]:
                    total[g] += np.int64(e - last_e[g])
                else:
                    # The counter restarts at zero when the driver reloads.
                    resets[g] += 1
                    total[g] += np.int64(e)
            elif not have_last_e and previous_t >= 0 and not np.isnan(power_mw[i]):
                # No counter to difference (yet): mW x s = mJ over this interval only.
                total[g] += np.int64(np.rint(power_mw[i] * (t - previous_t) * 1e-9))
            # A missing reading after a good one adds nothing: the next good reading's
            # difference covers the whole span exactly.
            if have_e:
                last_e[g] = e
            last_t[g] = t
    return total, resets, last_t, last_e


def integrate_energy(
    offsets: IntArray,
    timestamp_ns: IntArray,
    energy_mj: FloatArray,
    power_mw: FloatArray,
    last_timestamp_ns: IntArray,
    last_energy_mj: FloatArray,
) -> EnergyTotals:
    """Energy per GPU in whole millijoules from counter differences.

    Samples are grouped by GPU as for :func:`integrate_flop`. Uses the NVML
    total-energy counter where it exists (exact, whatever the sampling), handling
    restarts of the counter; falls back to power x interval on GPUs without one.
    ``last_energy_mj`` is NaN for a GPU with no reading yet.
    """
    return EnergyTotals(
        *_integrate_energy(offsets, timestamp_ns, energy_mj, power_mw, last_timestamp_ns,
                           last_energy_mj)
    )


def warm_up() -> None:
    """Compile (or load from the cache) both kernels before the first tick."""
    one = np.zeros(1, np.int64)
    f = np.zeros(1, np.float64)
    integrate_flop(np.array([0, 1], np.int64), one, f, f, f, f, np.zeros(1, np.bool_),
                   np.full(1, -1, np.int64), 1)
    group_by_gpu(one, 1)
    integrate_energy(np.array([0, 1], np.int64), one, f, f, np.full(1, -1, np.int64),
                     np.full(1, np.nan))
