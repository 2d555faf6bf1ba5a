"""Numba kernels: FLOP/s rates and energy readings over time -> interval totals.

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

from typing import NamedTuple

import numpy as np
from numba import njit

from agent.sources.base import BoolArray, FloatArray, IntArray

# 1 MFLOP. int64 then holds 9.2e24 FLOP per GPU, 4,600 years of an H100 at full
# bf16 rate; cluster totals are Python ints (ledger) or float sums (Prometheus).
FLOP_UNIT = 1_000_000
# rate [FLOP/s] x dt [ns] / RATE_NS_PER_UNIT = FLOP units. A division by this exact
# power of ten, not a multiplication by its inexact inverse: whole results stay whole.
RATE_NS_PER_UNIT = 1e9 * FLOP_UNIT


class FlopTotals(NamedTuple):
    """Per-GPU results of :func:`integrate_flop` (all int64 arrays)."""

    low_units: IntArray
    central_units: IntArray
    high_units: IntArray
    covered_ns: IntArray
    gap_ns: IntArray
    intervals: IntArray
    rejected: IntArray
    last_timestamp_ns: IntArray


class EnergyTotals(NamedTuple):
    """Per-GPU results of :func:`integrate_energy`."""

    energy_mj: IntArray
    counter_resets: IntArray
    last_timestamp_ns: IntArray
    last_energy_mj: FloatArray


@njit(cache=True, nogil=True)
def _integrate_flop(
    gpu: IntArray,
    timestamp_ns: IntArray,
    rate_low: FloatArray,
    rate_central: FloatArray,
    rate_high: FloatArray,
    gap_rate: FloatArray,
    measured_over_gaps: BoolArray,
    last_timestamp_ns: IntArray,
    max_gap_ns: int,
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
    n_gpus = last_timestamp_ns.shape[0]
    low = np.zeros(n_gpus, np.int64)
    central = np.zeros(n_gpus, np.int64)
    high = np.zeros(n_gpus, np.int64)
    covered = np.zeros(n_gpus, np.int64)
    gap = np.zeros(n_gpus, np.int64)
    intervals = np.zeros(n_gpus, np.int64)
    rejected = np.zeros(n_gpus, np.int64)
    last = last_timestamp_ns.copy()
    scale = RATE_NS_PER_UNIT
    for i in range(gpu.shape[0]):
        g = gpu[i]
        t = timestamp_ns[i]
        previous = last[g]
        if previous < 0:
            # The first sample of a GPU opens its first interval; nothing before it
            # was observed.
            last[g] = t
            continue
        if t <= previous:
            rejected[g] += 1
            continue
        dt = t - previous
        last[g] = t
        intervals[g] += 1
        if dt > max_gap_ns:
            gap[g] += dt
            high[g] += np.int64(np.ceil(gap_rate[g] * dt / scale))
            if measured_over_gaps[g]:
                central[g] += np.int64(np.rint(rate_central[i] * dt / scale))
        else:
            covered[g] += dt
            low[g] += np.int64(np.floor(rate_low[i] * dt / scale))
            central[g] += np.int64(np.rint(rate_central[i] * dt / scale))
            high[g] += np.int64(np.ceil(rate_high[i] * dt / scale))
    return low, central, high, covered, gap, intervals, rejected, last


def integrate_flop(
    gpu: IntArray,
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

    Args:
        gpu: GPU position of each sample (int64), samples of a GPU in time order.
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
            gpu, timestamp_ns, rate_low, rate_central, rate_high, gap_rate_flops,
            measured_over_gaps, last_timestamp_ns, np.int64(max_gap_ns),
        )
    )


@njit(cache=True, nogil=True)
def _integrate_energy(
    gpu: IntArray,
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
    for i in range(gpu.shape[0]):
        g = gpu[i]
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
    gpu: IntArray,
    timestamp_ns: IntArray,
    energy_mj: FloatArray,
    power_mw: FloatArray,
    last_timestamp_ns: IntArray,
    last_energy_mj: FloatArray,
) -> EnergyTotals:
    """Energy per GPU in whole millijoules from counter differences.

    Uses the NVML total-energy counter where it exists (exact, whatever the sampling),
    handling restarts of the counter; falls back to power x interval on GPUs without
    one. ``last_energy_mj`` is NaN for a GPU with no reading yet.
    """
    return EnergyTotals(
        *_integrate_energy(gpu, timestamp_ns, energy_mj, power_mw, last_timestamp_ns,
                           last_energy_mj)
    )


def warm_up() -> None:
    """Compile (or load from the cache) both kernels before the first tick."""
    one = np.zeros(1, np.int64)
    f = np.zeros(1, np.float64)
    integrate_flop(one, one, f, f, f, f, np.zeros(1, np.bool_), np.full(1, -1, np.int64), 1)
    integrate_energy(one, one, f, f, np.full(1, -1, np.int64), np.full(1, np.nan))
