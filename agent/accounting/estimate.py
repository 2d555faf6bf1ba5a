"""Samples -> FLOP/s rates (low, central, high) per GPU per sample.

The peak is physical: ``sm_count x flop_per_clock_per_sm[precision] x sm_clock_hz``,
at the clock measured over the interval, not a datasheet constant. Then:

* **Tensor activity** (NVML GPM on Hopper and newer, or DCGM's PIPE_TENSOR_ACTIVE fed
  in by replay): the ANY-tensor activity is the busy fraction; the per-pipe figures
  (HMMA, IMMA, and FP64 tensor as DMMA/DFMA) only split it by precision. Busy cycles no
  pipe claims are of undeclared precision: central counts them at the run's central
  precision, low at the slowest candidate, high at the fastest tensor precision the GPU
  has, so work NVIDIA buckets nowhere (FP8 on Hopper may be such) stays in the band.
  Non-tensor FP pipes add their own share. Low and high move each activity by the
  counter's uncertainty and the clock to the lower/higher of the interval's two ends.
* **Utilization only** (``utilization.gpu``, which says only that *a* kernel was
  running): it bounds activity from above, never estimates it. Central = utilization x
  peak x an efficiency prior, low uses a lower prior, high assumes every busy cycle was
  a tensor cycle. The band is wide and the record says so.
* **Nothing usable**: low = central = 0, high = peak.

Undeclared precision widens the band: low uses the slowest of the candidate
precisions, high the fastest. A spec derived from the driver or only a ceiling scales
the low and high FLOP per clock by its factors (``GpuAssumptions.peak_*_factor``).

The basis (EU Guidelines, Annex A.1: model FLOP, recomputed activations excluded).
Activity x SMs x FLOP per clock x measured clock tracks the FLOP the GPU *executed*
within -2.1% to +6.2% (six bf16 training configurations on an H100 PCIe, DCGM
PIPE_TENSOR_ACTIVE against PyTorch's FLOP counter; nikosvil/flopcheck,
analysis/H100_PROBE.md, 2026-09-16). So, on the tensor-activity estimator:

* central = the executed estimate / the declared recompute factor;
* high = executed, the counter's reading low covered: / (1 - counter_error_low);
* low = model FLOP, the counter's reading high covered: / (1 + counter_error_high),
  and / (recompute factor x (1 + non_model_share_max)), at least
  / undeclared_recompute_max when the run does not say whether it recomputes
  activations (full checkpointing executed 1.27-1.34x the model FLOP in the same
  measurements; without it 1.03-1.07x).

The utilization-only and nothing-usable cases keep their wide priors: low and central
are divided by the declared recompute factor only, high stays hardware FLOP.

Rates are float64 FLOP/s; the rate of a sample applies to the interval that ends at it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numba import njit

from agent.accounting.band import Band

# The constants of the estimate live apart from the kernel (a light module for the
# commands); named here too, where the estimator's users have always found them.
from agent.accounting.coefficients import Coefficients as Coefficients
from agent.accounting.coefficients import EstimatorSettings as EstimatorSettings
from agent.accounting.coefficients import GpuAssumptions as GpuAssumptions
from agent.accounting.coefficients import build_coefficients as build_coefficients
from agent.sources.base import ActivityKind, FloatArray, IntArray


class Estimator(enum.IntEnum):
    """Which method produced a rate; recorded with every interval."""

    NONE = 0
    GPM_TENSOR = 1
    DCGM_TENSOR = 2
    UTILIZATION = 3


# Plain ints for the kernel (numba freezes module globals at compile time).
ESTIMATOR_NONE = int(Estimator.NONE)
ESTIMATOR_GPM = int(Estimator.GPM_TENSOR)
ESTIMATOR_DCGM = int(Estimator.DCGM_TENSOR)
ESTIMATOR_UTILIZATION = int(Estimator.UTILIZATION)
KIND_DCGM = int(ActivityKind.DCGM)


@dataclass(frozen=True, slots=True)
class Readings:
    """What the estimator reads of a run of samples: one entry per sample in every array.

    ``gpu`` gives each sample's GPU position in the :class:`Coefficients`;
    ``sm_clock_prev_mhz`` and ``gpu_util_prev_pct`` are the readings at the previous
    sample of the same GPU (NaN for its first). The rest are SampleBatch fields of the
    same names (vendor units, NaN where unknown).
    """

    gpu: IntArray
    sm_clock_mhz: FloatArray
    sm_clock_prev_mhz: FloatArray
    gpu_util_pct: FloatArray
    gpu_util_prev_pct: FloatArray
    tensor_any_pct: FloatArray
    tensor_hmma_pct: FloatArray
    tensor_imma_pct: FloatArray
    tensor_dmma_pct: FloatArray
    tensor_dfma_pct: FloatArray
    fp16_pct: FloatArray
    fp32_pct: FloatArray
    fp64_pct: FloatArray

    @classmethod
    def of(cls, gpu: IntArray, fields: Mapping[str, FloatArray], sm_clock_prev_mhz: FloatArray,
           gpu_util_prev_pct: FloatArray) -> Readings:
        """From SampleBatch float fields by name (every one the estimator reads)."""
        return cls(
            gpu, fields["sm_clock_mhz"], sm_clock_prev_mhz, fields["gpu_util_pct"],
            gpu_util_prev_pct, fields["tensor_any_pct"], fields["tensor_hmma_pct"],
            fields["tensor_imma_pct"], fields["tensor_dmma_pct"], fields["tensor_dfma_pct"],
            fields["fp16_pct"], fields["fp32_pct"], fields["fp64_pct"],
        )


@dataclass(frozen=True, slots=True)
class Rates:
    """Estimated FLOP/s per sample, with the method used (an :class:`Estimator` code)."""

    flops: Band[FloatArray]
    estimator: IntArray


@njit(cache=True, nogil=True)
def _estimate(
    gpu: IntArray, clock: FloatArray, clock_prev: FloatArray, util: FloatArray,
    util_prev: FloatArray, tensor_any: FloatArray, hmma: FloatArray, imma: FloatArray,
    dmma: FloatArray, dfma: FloatArray, fp16: FloatArray, fp32: FloatArray, fp64: FloatArray,
    fpc_low: FloatArray, fpc_central: FloatArray, fpc_high: FloatArray,
    fpc_fastest: FloatArray, int8_fpc: FloatArray, fp64_tensor_fpc: FloatArray,
    fp16_fpc: FloatArray, fp32_fpc: FloatArray, fp64_fpc: FloatArray, max_clock: FloatArray,
    recompute: FloatArray, tensor_low_factor: FloatArray, tensor_high_factor: FloatArray,
    util_low_factor: FloatArray, util_high_factor: FloatArray, kind: IntArray,
    gap_rate: FloatArray, unc: float, eff: float, eff_low: float,
) -> tuple[FloatArray, FloatArray, FloatArray, IntArray]:
    n = gpu.shape[0]
    out_low = np.empty(n)
    out_central = np.empty(n)
    out_high = np.empty(n)
    out_estimator = np.empty(n, np.int64)
    for i in range(n):
        g = gpu[i]
        have_now = not np.isnan(clock[i])
        have_prev = not np.isnan(clock_prev[i])
        prev = clock_prev[i] if have_prev else clock[i]
        now = clock[i] if have_now else max_clock[g]
        if not have_now:
            prev = max_clock[g]
        # Tensor work only runs while a kernel runs, and an idle GPU drops its clock: the
        # clock read at an idle end of the interval says nothing about the clock the
        # work ran at. Central and low use the ends where the GPU was busy (both if
        # neither). An unknown utilization counts as busy.
        busy_now = util[i] != 0
        busy_prev = (util_prev[i] != 0) and have_prev
        use_now = busy_now or not busy_prev
        use_prev = busy_prev or not busy_now
        weight = (1.0 if use_now else 0.0) + (1.0 if use_prev else 0.0)
        clock_central = ((now if use_now else 0.0) + (prev if use_prev else 0.0)) / weight * 1e6
        clock_high = max(prev, now) * 1e6
        busy_min = min(now if use_now else np.inf, prev if use_prev else np.inf)
        # An unknown clock has no useful lower bound.
        clock_low = busy_min * 1e6 if have_now else 0.0

        has_tensor = not np.isnan(tensor_any[i])
        any_ratio = (0.0 if np.isnan(tensor_any[i]) else tensor_any[i]) * 0.01
        split = not (np.isnan(hmma[i]) and np.isnan(imma[i]) and np.isnan(dmma[i])
                     and np.isnan(dfma[i]))
        if split:
            float_ratio = (0.0 if np.isnan(hmma[i]) else hmma[i]) * 0.01
            int_ratio = (0.0 if np.isnan(imma[i]) else imma[i]) * 0.01
            # Two GPM metrics name the FP64 tensor pipe (DFMA, and DMMA on newer
            # drivers): the larger, so that one pipe is not counted twice.
            f64_ratio = max(0.0 if np.isnan(dmma[i]) else dmma[i],
                            0.0 if np.isnan(dfma[i]) else dfma[i]) * 0.01
        else:
            # ANY alone: all of it at the run's precision.
            float_ratio = any_ratio
            int_ratio = 0.0
            f64_ratio = 0.0
        # ANY is the busy fraction, the pipes only split it. Pipes above ANY (noise, or
        # one ANY does not count) are scaled down to it for low and central; busy cycles
        # no pipe claims are the rest, of undeclared precision.
        claimed = float_ratio + int_ratio + f64_ratio
        share = any_ratio / claimed if claimed > any_ratio else 1.0
        rest = any_ratio - claimed if claimed < any_ratio else 0.0
        other_central = 0.0
        other_low = 0.0
        other_high = 0.0
        for k in range(3):
            if k == 0:
                ratio, fpc = (0.0 if np.isnan(fp16[i]) else fp16[i]) * 0.01, fp16_fpc[g]
            elif k == 1:
                ratio, fpc = (0.0 if np.isnan(fp32[i]) else fp32[i]) * 0.01, fp32_fpc[g]
            else:
                ratio, fpc = (0.0 if np.isnan(fp64[i]) else fp64[i]) * 0.01, fp64_fpc[g]
            other_central += ratio * fpc
            other_low += max(ratio - unc, 0.0) * fpc
            other_high += min(ratio + unc, 1.0) * fpc * (1.0 if ratio > 0 else 0.0)
        if has_tensor:
            at_precision = float_ratio * share + rest
            hw_central = (at_precision * fpc_central[g] + int_ratio * share * int8_fpc[g]
                          + f64_ratio * share * fp64_tensor_fpc[g] + other_central
                          ) * clock_central
            hw_low = (max(at_precision - unc, 0.0) * fpc_low[g]
                      + max(int_ratio * share - unc, 0.0) * int8_fpc[g]
                      + max(f64_ratio * share - unc, 0.0) * fp64_tensor_fpc[g]
                      + other_low) * clock_low * tensor_low_factor[g]
            # A reading of exactly zero means no cycles at all: no uncertainty to add.
            high = (min(float_ratio + unc, 1.0) * fpc_high[g] * (1.0 if float_ratio > 0 else 0.0)
                    + min(rest + unc, 1.0) * fpc_fastest[g] * (1.0 if rest > 0 else 0.0)
                    + min(int_ratio + unc, 1.0) * int8_fpc[g] * (1.0 if int_ratio > 0 else 0.0)
                    + min(f64_ratio + unc, 1.0) * fp64_tensor_fpc[g]
                    * (1.0 if f64_ratio > 0 else 0.0)
                    + other_high) * clock_high * tensor_high_factor[g]
        elif not np.isnan(util[i]):
            u = util[i] * 0.01
            hw_central = u * eff * fpc_central[g] * clock_central
            hw_low = u * eff_low * fpc_low[g] * clock_low * util_low_factor[g]
            high = u * fpc_high[g] * clock_high * util_high_factor[g]
        else:
            hw_central = 0.0
            hw_low = 0.0
            high = gap_rate[g]
        if not fpc_central[g] > 0:
            code = ESTIMATOR_NONE
        elif has_tensor:
            code = ESTIMATOR_DCGM if kind[g] == KIND_DCGM else ESTIMATOR_GPM
        elif not np.isnan(util[i]):
            code = ESTIMATOR_UTILIZATION
        else:
            code = ESTIMATOR_NONE
        out_low[i] = hw_low
        out_central[i] = hw_central / recompute[g]
        out_high[i] = high
        out_estimator[i] = code
    return out_low, out_central, out_high, out_estimator


def estimate_rates(readings: Readings, coeffs: Coefficients,
                   settings: EstimatorSettings) -> Rates:
    """FLOP/s (low, central, high) for each sample, and the method used.

    A numba kernel, pure and per sample: the same readings give bit-identical rates
    however the samples are grouped (tests/reference.py has its NumPy twin).
    """
    r = readings
    c = coeffs
    low, central, high, estimator = _estimate(
        r.gpu, r.sm_clock_mhz, r.sm_clock_prev_mhz, r.gpu_util_pct, r.gpu_util_prev_pct,
        r.tensor_any_pct, r.tensor_hmma_pct, r.tensor_imma_pct, r.tensor_dmma_pct,
        r.tensor_dfma_pct, r.fp16_pct, r.fp32_pct, r.fp64_pct, c.tensor_fpc_low,
        c.tensor_fpc_central, c.tensor_fpc_high, c.tensor_fpc_fastest, c.int8_fpc,
        c.fp64_tensor_fpc, c.fp16_fpc, c.fp32_fpc, c.fp64_fpc, c.max_clock_mhz,
        c.recompute_factor, c.tensor_low_factor, c.tensor_high_factor, c.util_low_factor,
        c.util_high_factor, c.activity_kind, c.gap_rate_flops,
        settings.tensor_activity_uncertainty, settings.utilization_efficiency,
        settings.utilization_efficiency_low,
    )
    return Rates(Band(low, central, high), estimator)
