"""NumPy references of the integration kernels, written independently of them.

Vectorised per GPU segment with NumPy temporaries, so they share no loop structure
with the numba kernels they check.
"""

from __future__ import annotations

import numpy as np

from agent.accounting.band import Band
from agent.accounting.estimate import Coefficients, Estimator, EstimatorSettings, Rates, Readings
from agent.accounting.integrate import NS_TO_UNITS, EnergyTotals, FlopTotals
from agent.sources.base import ActivityKind, BoolArray, FloatArray, IntArray


def integrate_flop_reference(
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
    n_gpus = last_timestamp_ns.shape[0]
    out = {k: np.zeros(n_gpus, np.int64) for k in
           ("low", "central", "high", "covered", "gap", "rejected")}
    last = last_timestamp_ns.copy()
    for g in range(n_gpus):
        idx = np.arange(offsets[g], offsets[g + 1])
        if idx.size == 0:
            continue
        t = timestamp_ns[idx]
        start = last[g]
        if start < 0:
            start, idx, t = t[0], idx[1:], t[1:]
        # A sample counts only if it is later than every sample before it.
        running = np.maximum.accumulate(np.concatenate(([start], t)))
        keep = t > running[:-1]
        out["rejected"][g] = int((~keep).sum())
        idx, t = idx[keep], t[keep]
        prev = np.concatenate(([start], t[:-1]))
        dt = t - prev
        last[g] = t[-1] if t.size else start
        is_gap = dt > max_gap_ns
        ok = ~is_gap
        dtf = dt * NS_TO_UNITS
        out["covered"][g] = dt[ok].sum()
        out["gap"][g] = dt[is_gap].sum()
        out["low"][g] = np.floor(rate_low[idx][ok] * dtf[ok]).astype(np.int64).sum()
        central = np.rint(rate_central[idx] * dtf).astype(np.int64)
        out["central"][g] = central[ok].sum() + (
            central[is_gap].sum() if measured_over_gaps[g] else 0
        )
        out["high"][g] = (
            np.ceil(rate_high[idx][ok] * dtf[ok]).astype(np.int64).sum()
            + np.ceil(gap_rate_flops[g] * dtf[is_gap]).astype(np.int64).sum()
        )
    return FlopTotals(out["low"], out["central"], out["high"], out["covered"], out["gap"],
                      out["rejected"], last)


def integrate_energy_reference(
    offsets: IntArray,
    timestamp_ns: IntArray,
    energy_mj: FloatArray,
    power_mw: FloatArray,
    last_timestamp_ns: IntArray,
    last_energy_mj: FloatArray,
) -> EnergyTotals:
    n_gpus = last_timestamp_ns.shape[0]
    total = np.zeros(n_gpus, np.int64)
    resets = np.zeros(n_gpus, np.int64)
    last_t = last_timestamp_ns.copy()
    last_e = last_energy_mj.copy()
    for g in range(n_gpus):
        for i in range(offsets[g], offsets[g + 1]):
            t, e = timestamp_ns[i], energy_mj[i]
            if last_t[g] >= 0 and t <= last_t[g]:
                continue
            if not np.isnan(e) and not np.isnan(last_e[g]):
                delta = e - last_e[g]
                if delta < 0:
                    resets[g] += 1
                    delta = e
                total[g] += int(delta)
            elif np.isnan(last_e[g]) and last_t[g] >= 0 and not np.isnan(power_mw[i]):
                total[g] += int(np.rint(power_mw[i] * (t - last_t[g]) * 1e-9))
            if not np.isnan(e):
                last_e[g] = e
            last_t[g] = t
    return EnergyTotals(total, resets, last_t, last_e)


def _zero_nan(x: FloatArray) -> FloatArray:
    return np.where(np.isnan(x), 0.0, x)


def estimate_rates_reference(
    readings: Readings, coeffs: Coefficients, settings: EstimatorSettings
) -> Rates:
    """FLOP/s (low, central, high) for each sample.

    Pure and vectorised: the same inputs give bit-identical rates however the samples
    are grouped.
    """
    r = readings
    gpu, sm_clock_mhz, sm_clock_prev_mhz = r.gpu, r.sm_clock_mhz, r.sm_clock_prev_mhz
    gpu_util_pct, gpu_util_prev_pct = r.gpu_util_pct, r.gpu_util_prev_pct
    tensor_any_pct, tensor_hmma_pct, tensor_imma_pct = (
        r.tensor_any_pct, r.tensor_hmma_pct, r.tensor_imma_pct)
    tensor_dmma_pct, tensor_dfma_pct = r.tensor_dmma_pct, r.tensor_dfma_pct
    fp16_pct, fp32_pct, fp64_pct = r.fp16_pct, r.fp32_pct, r.fp64_pct
    g = gpu
    max_clock = coeffs.max_clock_mhz[g]
    have_now = ~np.isnan(sm_clock_mhz)
    have_prev = ~np.isnan(sm_clock_prev_mhz)
    prev = np.where(have_prev, sm_clock_prev_mhz, sm_clock_mhz)
    now = np.where(have_now, sm_clock_mhz, max_clock)
    prev = np.where(have_now, prev, max_clock)
    # Tensor work only runs while a kernel runs, and an idle GPU drops its clock: the
    # clock read at an idle end of the interval says nothing about the clock the work
    # ran at. Central and low use the ends where the GPU was busy (both if neither).
    busy_now = ~(gpu_util_pct == 0)
    busy_prev = ~(gpu_util_prev_pct == 0) & have_prev
    use_now = busy_now | ~busy_prev
    use_prev = busy_prev | ~busy_now
    weight = use_now.astype(np.float64) + use_prev.astype(np.float64)
    clock_central_hz = (np.where(use_now, now, 0.0) + np.where(use_prev, prev, 0.0)) / weight * 1e6
    clock_high_hz = np.maximum(prev, now) * 1e6
    # An unknown clock has no useful lower bound.
    busy_min = np.minimum(np.where(use_now, now, np.inf), np.where(use_prev, prev, np.inf))
    clock_low_hz = np.where(have_now, busy_min * 1e6, 0.0)

    unc = settings.tensor_activity_uncertainty
    has_tensor = ~np.isnan(tensor_any_pct)
    any_ratio = _zero_nan(tensor_any_pct) * 0.01
    split = ~(np.isnan(tensor_hmma_pct) & np.isnan(tensor_imma_pct)
              & np.isnan(tensor_dmma_pct) & np.isnan(tensor_dfma_pct))
    float_ratio = np.where(split, _zero_nan(tensor_hmma_pct) * 0.01, any_ratio)
    int_ratio = np.where(split, _zero_nan(tensor_imma_pct) * 0.01, 0.0)
    # DMMA and DFMA both name the FP64 tensor pipe: the larger, never the sum.
    f64_ratio = np.where(
        split, np.maximum(_zero_nan(tensor_dmma_pct), _zero_nan(tensor_dfma_pct)) * 0.01, 0.0
    )
    # ANY sets the busy fraction; pipes above it are scaled down to it, and what no
    # pipe claims is the rest, of undeclared precision.
    claimed = float_ratio + int_ratio + f64_ratio
    over = claimed > any_ratio
    share = np.ones_like(any_ratio)
    np.divide(any_ratio, claimed, out=share, where=over)
    rest = np.where(claimed < any_ratio, any_ratio - claimed, 0.0)
    pipes = (
        (_zero_nan(fp16_pct) * 0.01, coeffs.fp16_fpc[g]),
        (_zero_nan(fp32_pct) * 0.01, coeffs.fp32_fpc[g]),
        (_zero_nan(fp64_pct) * 0.01, coeffs.fp64_fpc[g]),
    )
    other_central = np.zeros_like(any_ratio)
    other_low = np.zeros_like(any_ratio)
    other_high = np.zeros_like(any_ratio)
    for ratio, fpc in pipes:
        other_central += ratio * fpc
        other_low += np.maximum(ratio - unc, 0.0) * fpc
        other_high += np.minimum(ratio + unc, 1.0) * fpc * (ratio > 0)
    int8_fpc, f64t_fpc = coeffs.int8_fpc[g], coeffs.fp64_tensor_fpc[g]
    at_precision = float_ratio * share + rest
    tensor_central = (
        at_precision * coeffs.tensor_fpc_central[g] + int_ratio * share * int8_fpc
        + f64_ratio * share * f64t_fpc + other_central
    ) * clock_central_hz
    tensor_low = (
        np.maximum(at_precision - unc, 0.0) * coeffs.tensor_fpc_low[g]
        + np.maximum(int_ratio * share - unc, 0.0) * int8_fpc
        + np.maximum(f64_ratio * share - unc, 0.0) * f64t_fpc
        + other_low
    ) * clock_low_hz * coeffs.tensor_low_factor[g]
    # A reading of exactly zero means no cycles at all: no uncertainty to add.
    tensor_high = (
        np.minimum(float_ratio + unc, 1.0) * coeffs.tensor_fpc_high[g] * (float_ratio > 0)
        + np.minimum(rest + unc, 1.0) * coeffs.tensor_fpc_fastest[g] * (rest > 0)
        + np.minimum(int_ratio + unc, 1.0) * int8_fpc * (int_ratio > 0)
        + np.minimum(f64_ratio + unc, 1.0) * f64t_fpc * (f64_ratio > 0)
        + other_high
    ) * clock_high_hz * coeffs.tensor_high_factor[g]

    util = _zero_nan(gpu_util_pct) * 0.01
    has_util = ~np.isnan(gpu_util_pct)
    util_central = util * settings.utilization_efficiency * coeffs.tensor_fpc_central[g] * (
        clock_central_hz
    )
    util_low = (util * settings.utilization_efficiency_low * coeffs.tensor_fpc_low[g]
                * clock_low_hz * coeffs.util_low_factor[g])
    util_high = util * coeffs.tensor_fpc_high[g] * clock_high_hz * coeffs.util_high_factor[g]

    peak_high = coeffs.gap_rate_flops[g]
    hw_central = np.where(has_tensor, tensor_central, np.where(has_util, util_central, 0.0))
    low = np.where(has_tensor, tensor_low, np.where(has_util, util_low, 0.0))
    high = np.where(has_tensor, tensor_high, np.where(has_util, util_high, peak_high))
    dcgm = coeffs.activity_kind[g] == int(ActivityKind.DCGM)
    known = coeffs.tensor_fpc_central[g] > 0
    estimator = np.where(
        ~known,
        int(Estimator.NONE),
        np.where(
            has_tensor,
            np.where(dcgm, int(Estimator.DCGM_TENSOR), int(Estimator.GPM_TENSOR)),
            np.where(has_util, int(Estimator.UTILIZATION), int(Estimator.NONE)),
        ),
    ).astype(np.int64)
    return Rates(Band(low, hw_central / coeffs.recompute_factor[g], high), estimator)
