"""Samples -> FLOP/s rates (low, central, high) per GPU per sample.

The peak is physical: ``sm_count x flop_per_clock_per_sm[precision] x sm_clock_hz``,
at the clock measured over the interval, not a datasheet constant. Then:

* **Tensor activity** (NVML GPM on Hopper and newer, or DCGM's PIPE_TENSOR_ACTIVE fed
  in by replay): central = activity x peak of the run's matmul precision, plus the
  non-tensor FP pipes where reported. Low and high move the activity by the counter's
  uncertainty and the clock to the lower/higher of the interval's two ends.
* **Utilization only** (``utilization.gpu``, which says only that *a* kernel was
  running): it bounds activity from above, never estimates it. Central = utilization x
  peak x an efficiency prior, low uses a lower prior, high assumes every busy cycle was
  a tensor cycle. The band is wide and the record says so.
* **Nothing usable**: low = central = 0, high = peak.

Undeclared precision widens the band: low uses the slowest of the candidate
precisions, high the fastest. A declared recompute mode turns hardware FLOP into model
FLOP (what the EU counts) for low and central; high stays hardware FLOP.

Rates are float64 FLOP/s; the rate of a sample applies to the interval that ends at it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.sources.base import ActivityKind, FloatArray, IntArray
from agent.specs import MATMUL_PRECISIONS, GpuSpec

RECOMPUTE_FACTORS: dict[str, float] = {
    # Hardware FLOP per model FLOP. Full activation recomputation repeats the forward
    # pass: 1 forward + 2 backward + 1 forward again = 4/3 of the model's 3 passes.
    "none": 1.0,
    "full": 4.0 / 3.0,
}


class Estimator(enum.IntEnum):
    """Which method produced a rate; recorded with every interval."""

    NONE = 0
    GPM_TENSOR = 1
    DCGM_TENSOR = 2
    UTILIZATION = 3


@dataclass(frozen=True, slots=True)
class EstimatorSettings:
    """Knobs of the estimation model (``[estimator]`` in the config).

    Attributes:
        default_precision: matmul precision assumed for central when a run declares none.
        undeclared_precisions: candidates spanning the band when a run declares none.
        tensor_activity_uncertainty: absolute uncertainty of an activity ratio (0-1).
        utilization_efficiency: central prior of achieved/peak per busy second when
            only ``utilization.gpu`` exists.
        utilization_efficiency_low: the low prior for the same case.
        max_gap_s: an interval longer than this is a gap (high bound only).
    """

    default_precision: str = "bf16"
    undeclared_precisions: tuple[str, ...] = ("bf16", "fp8")
    tensor_activity_uncertainty: float = 0.02
    utilization_efficiency: float = 0.4
    utilization_efficiency_low: float = 0.1
    max_gap_s: float = 5.0


@dataclass(frozen=True, slots=True)
class GpuAssumptions:
    """What the estimator assumes for one GPU: its spec and the run's declarations.

    Attributes:
        spec: spec-table row, None for a GPU missing from the table: its rates are
            all 0 and its estimator NONE, so it is reported rather than guessed.
        activity_kind: which tensor-activity counters it has.
        precision: declared matmul precision, None if undeclared.
        recompute_factor: hardware FLOP per model FLOP (1.0 without recomputation).
        max_sm_clock_mhz: the device's reported maximum, else the spec's.
    """

    spec: GpuSpec | None
    activity_kind: ActivityKind
    precision: str | None = None
    recompute_factor: float = 1.0
    max_sm_clock_mhz: float | None = None


@dataclass(frozen=True, slots=True)
class Coefficients:
    """Per-GPU constants of the estimate, as arrays indexed by GPU position."""

    tensor_fpc_low: FloatArray  # FLOP per SM clock, whole GPU, low precision
    tensor_fpc_central: FloatArray
    tensor_fpc_high: FloatArray
    int8_fpc: FloatArray
    fp64_tensor_fpc: FloatArray
    fp16_fpc: FloatArray
    fp32_fpc: FloatArray
    fp64_fpc: FloatArray
    max_clock_mhz: FloatArray
    recompute_factor: FloatArray
    activity_kind: IntArray
    gap_rate_flops: FloatArray  # the highest rate possible: the high bound of a gap


def _tensor_key(precision: str) -> str:
    return MATMUL_PRECISIONS[precision]


def build_coefficients(
    assumptions: Sequence[GpuAssumptions], settings: EstimatorSettings
) -> Coefficients:
    """Turn per-GPU assumptions into the arrays :func:`estimate_rates` needs."""
    n = len(assumptions)
    arrays = {
        name: np.zeros(n, dtype=np.float64)
        for name in (
            "tensor_fpc_low", "tensor_fpc_central", "tensor_fpc_high", "int8_fpc",
            "fp64_tensor_fpc", "fp16_fpc", "fp32_fpc", "fp64_fpc", "max_clock_mhz",
            "recompute_factor", "gap_rate_flops",
        )
    }
    kinds = np.zeros(n, dtype=np.int64)
    for i, a in enumerate(assumptions):
        arrays["recompute_factor"][i] = a.recompute_factor
        kinds[i] = int(a.activity_kind)
        spec = a.spec
        if spec is None:
            continue
        if a.precision is not None:
            candidates = [a.precision]
            central = a.precision
        else:
            candidates = list(settings.undeclared_precisions)
            central = settings.default_precision
        supported = [p for p in candidates if spec.supports(_tensor_key(p))]
        if not spec.supports(_tensor_key(central)):
            # A precision the GPU lacks (fp8 on an A100) runs emulated in a wider
            # format; count it at the fastest float precision the GPU has.
            central = max(
                (p for p in ("tf32", "fp16", "bf16", "fp8") if spec.supports(_tensor_key(p))),
                key=lambda p: spec.flop_per_clock(_tensor_key(p)),
                default=central,
            )
        supported = supported or [central]
        per_clock = {p: float(spec.flop_per_clock(_tensor_key(p))) for p in supported}
        arrays["tensor_fpc_central"][i] = spec.flop_per_clock(_tensor_key(central))
        arrays["tensor_fpc_low"][i] = min(min(per_clock.values()), arrays["tensor_fpc_central"][i])
        arrays["tensor_fpc_high"][i] = max(max(per_clock.values()), arrays["tensor_fpc_central"][i])
        arrays["int8_fpc"][i] = spec.flop_per_clock("int8_tensor")
        arrays["fp64_tensor_fpc"][i] = spec.flop_per_clock("fp64_tensor")
        arrays["fp16_fpc"][i] = spec.flop_per_clock("fp16")
        arrays["fp32_fpc"][i] = spec.flop_per_clock("fp32")
        arrays["fp64_fpc"][i] = spec.flop_per_clock("fp64")
        max_clock = a.max_sm_clock_mhz or spec.max_sm_clock_mhz
        arrays["max_clock_mhz"][i] = max(max_clock, spec.max_sm_clock_mhz)
        highest_tensor = max(
            arrays["tensor_fpc_high"][i], arrays["int8_fpc"][i], arrays["fp64_tensor_fpc"][i]
        )
        arrays["gap_rate_flops"][i] = (
            highest_tensor + arrays["fp32_fpc"][i]
        ) * arrays["max_clock_mhz"][i] * 1e6
    return Coefficients(activity_kind=kinds, **arrays)


@dataclass(frozen=True, slots=True)
class Rates:
    """Estimated FLOP/s per sample, with the method used."""

    low: FloatArray
    central: FloatArray
    high: FloatArray
    estimator: IntArray


def _zero_nan(x: FloatArray) -> FloatArray:
    return np.where(np.isnan(x), 0.0, x)


def estimate_rates(
    gpu: IntArray,
    sm_clock_mhz: FloatArray,
    sm_clock_prev_mhz: FloatArray,
    gpu_util_pct: FloatArray,
    gpu_util_prev_pct: FloatArray,
    tensor_any_pct: FloatArray,
    tensor_hmma_pct: FloatArray,
    tensor_imma_pct: FloatArray,
    tensor_dmma_pct: FloatArray,
    tensor_dfma_pct: FloatArray,
    fp16_pct: FloatArray,
    fp32_pct: FloatArray,
    fp64_pct: FloatArray,
    coeffs: Coefficients,
    settings: EstimatorSettings,
) -> Rates:
    """FLOP/s (low, central, high) for each sample.

    Every argument but ``coeffs`` and ``settings`` is an array with one entry per
    sample; ``gpu`` gives each sample's GPU position in ``coeffs``. ``sm_clock_prev_mhz``
    and ``gpu_util_prev_pct`` are the readings at the previous sample of the same GPU
    (NaN for its first sample).
    Pure and vectorised: the same inputs give bit-identical rates however the samples
    are grouped.
    """
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
    split = ~np.isnan(tensor_hmma_pct)
    any_ratio = _zero_nan(tensor_any_pct) * 0.01
    float_ratio = np.where(split, _zero_nan(tensor_hmma_pct) * 0.01, any_ratio)
    int_ratio = np.where(split, _zero_nan(tensor_imma_pct) * 0.01, 0.0)
    f64_ratio = np.where(
        split, np.maximum(_zero_nan(tensor_dmma_pct), _zero_nan(tensor_dfma_pct)) * 0.01, 0.0
    )
    pipes = (
        (_zero_nan(fp16_pct) * 0.01, coeffs.fp16_fpc[g]),
        (_zero_nan(fp32_pct) * 0.01, coeffs.fp32_fpc[g]),
        (_zero_nan(fp64_pct) * 0.01, coeffs.fp64_fpc[g]),
        (int_ratio, coeffs.int8_fpc[g]),
        (f64_ratio, coeffs.fp64_tensor_fpc[g]),
    )
    other_central = np.zeros_like(any_ratio)
    other_low = np.zeros_like(any_ratio)
    other_high = np.zeros_like(any_ratio)
    for ratio, fpc in pipes:
        other_central += ratio * fpc
        other_low += np.maximum(ratio - unc, 0.0) * fpc
        other_high += np.minimum(ratio + unc, 1.0) * fpc * (ratio > 0)
    tensor_central = (float_ratio * coeffs.tensor_fpc_central[g] + other_central) * clock_central_hz
    tensor_low = (
        np.maximum(float_ratio - unc, 0.0) * coeffs.tensor_fpc_low[g] + other_low
    ) * clock_low_hz
    # A reading of exactly zero means no tensor cycles at all: no uncertainty to add.
    tensor_high = (
        np.minimum(float_ratio + unc, 1.0) * coeffs.tensor_fpc_high[g] * (float_ratio > 0)
        + other_high
    ) * clock_high_hz

    util = _zero_nan(gpu_util_pct) * 0.01
    has_util = ~np.isnan(gpu_util_pct)
    util_central = util * settings.utilization_efficiency * coeffs.tensor_fpc_central[g] * (
        clock_central_hz
    )
    util_low = util * settings.utilization_efficiency_low * coeffs.tensor_fpc_low[g] * clock_low_hz
    util_high = util * coeffs.tensor_fpc_high[g] * clock_high_hz

    peak_high = coeffs.gap_rate_flops[g]
    hw_central = np.where(has_tensor, tensor_central, np.where(has_util, util_central, 0.0))
    hw_low = np.where(has_tensor, tensor_low, np.where(has_util, util_low, 0.0))
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
    factor = coeffs.recompute_factor[g]
    return Rates(
        low=hw_low / factor, central=hw_central / factor, high=high, estimator=estimator
    )
