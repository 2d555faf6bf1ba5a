"""The per-GPU constants of the estimate: the settings, what is assumed of each GPU,
and the FLOP per clock and factors :func:`agent.accounting.estimate.estimate_rates`
reads.

Apart from the numba kernel, so that a command that only reads the configuration (every
command reads ``[estimator]``) or shows a GPU's peak (``flopledger gpus``) does not load
numba; :mod:`agent.accounting.estimate` explains the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.sources.specs import MATMUL_PRECISIONS

if TYPE_CHECKING:
    from agent.sources.base import ActivityKind, FloatArray, IntArray
    from agent.sources.specs import GpuSpec


@dataclass(frozen=True, slots=True)
class EstimatorSettings:
    """Knobs of the estimation model (``[estimator]`` in the config).

    Attributes:
        default_precision: matmul precision assumed for central when a run declares none.
        undeclared_precisions: candidates spanning the band when a run declares none.
            TF32 is one: tensor counters do not tell it from BF16, and it runs at half
            the rate, so without it low would exclude an undeclared TF32 run.
        tensor_activity_uncertainty: absolute uncertainty of an activity ratio (0-1).
        utilization_efficiency: central prior of achieved/peak per busy second when
            only ``utilization.gpu`` exists.
        utilization_efficiency_low: the low prior for the same case.
        max_gap_s: an interval longer than this is a gap (high bound only).
        counter_error_low: how far tensor activity x peak may read *below* the FLOP
            executed, as a fraction: high divides by (1 - this).
        counter_error_high: how far it may read *above*: low divides by (1 + this).
        undeclared_recompute_max: executed per model FLOP the low bound allows when a
            run does not say whether it recomputes activations.
        non_model_share_max: executed FLOP beyond the model FLOP of the declared
            recomputation, as a fraction of the latter (evaluation passes, attention
            counted past the causal convention): low divides by (1 + this) as well.

    The last four come from one H100 PCIe, TinyLlama-1.1B bf16 training, six
    configurations (nikosvil/flopcheck, analysis/H100_PROBE.md and
    analysis/out/h100_probe_summary.csv, 2026-09-16): activity-based FLOP over executed
    FLOP 0.979..1.062 (the text rounds it to -2%..+6%; the defaults round outward),
    executed over model FLOP 1.025..1.069 without activation checkpointing and
    1.271..1.343 with full checkpointing (the issue's "2-9%" and "27-34%").
    """

    default_precision: str = "bf16"
    undeclared_precisions: tuple[str, ...] = ("tf32", "bf16", "fp8")
    tensor_activity_uncertainty: float = 0.02
    utilization_efficiency: float = 0.4
    utilization_efficiency_low: float = 0.1
    max_gap_s: float = 5.0
    counter_error_low: float = 0.025
    counter_error_high: float = 0.065
    undeclared_recompute_max: float = 1.35
    non_model_share_max: float = 0.10


@dataclass(frozen=True, slots=True)
class GpuAssumptions:
    """What the estimator assumes for one GPU: its spec and the run's declarations.

    Attributes:
        spec: spec-table row, None for a GPU missing from the table: its rates are
            all 0 and its estimator NONE, so it is reported rather than guessed.
        activity_kind: which tensor-activity counters it has.
        precision: declared matmul precision, None if undeclared.
        recompute_factor: hardware FLOP per model FLOP (1.0 without recomputation).
        recompute_declared: whether the run said how it recomputes activations
            (``none`` included); if not, low allows for full checkpointing.
        max_sm_clock_mhz: the device's reported maximum, else the spec's.
        peak_low_factor: multiplies the low bound's FLOP per clock (a derived or
            ceiling spec is less certain than a table row; ResolvedSpec.low_factor).
        peak_high_factor: the same for the high bound (ResolvedSpec.high_factor).
    """

    spec: GpuSpec | None
    activity_kind: ActivityKind
    precision: str | None = None
    recompute_factor: float = 1.0
    max_sm_clock_mhz: float | None = None
    peak_low_factor: float = 1.0
    peak_high_factor: float = 1.0
    recompute_declared: bool = False


@dataclass(frozen=True, slots=True)
class Coefficients:
    """Per-GPU constants of the estimate, as arrays indexed by GPU position."""

    tensor_fpc_low: FloatArray  # FLOP per SM clock, whole GPU, low precision
    tensor_fpc_central: FloatArray
    tensor_fpc_high: FloatArray
    tensor_fpc_fastest: FloatArray  # the fastest tensor precision the GPU has
    int8_fpc: FloatArray
    fp64_tensor_fpc: FloatArray
    fp16_fpc: FloatArray
    fp32_fpc: FloatArray
    fp64_fpc: FloatArray
    max_clock_mhz: FloatArray
    recompute_factor: FloatArray  # central divides by it
    # Multipliers of the low and high rates: peak factors, counter error and basis.
    tensor_low_factor: FloatArray
    tensor_high_factor: FloatArray
    util_low_factor: FloatArray
    util_high_factor: FloatArray
    activity_kind: IntArray
    gap_rate_flops: FloatArray  # the highest rate possible: the high bound of a gap


# The float arrays of :class:`Coefficients`, one entry per GPU.
FLOAT_FIELDS = (
    "tensor_fpc_low", "tensor_fpc_central", "tensor_fpc_high", "tensor_fpc_fastest",
    "int8_fpc", "fp64_tensor_fpc", "fp16_fpc", "fp32_fpc", "fp64_fpc",
    "max_clock_mhz", "recompute_factor", "tensor_low_factor", "tensor_high_factor",
    "util_low_factor", "util_high_factor", "gap_rate_flops",
)


@dataclass(frozen=True, slots=True)
class GpuCoefficients:
    """One GPU's entry of every :class:`Coefficients` array (0 where it has no spec)."""

    tensor_fpc_low: float = 0.0
    tensor_fpc_central: float = 0.0
    tensor_fpc_high: float = 0.0
    tensor_fpc_fastest: float = 0.0
    int8_fpc: float = 0.0
    fp64_tensor_fpc: float = 0.0
    fp16_fpc: float = 0.0
    fp32_fpc: float = 0.0
    fp64_fpc: float = 0.0
    max_clock_mhz: float = 0.0
    recompute_factor: float = 0.0
    tensor_low_factor: float = 0.0
    tensor_high_factor: float = 0.0
    util_low_factor: float = 0.0
    util_high_factor: float = 0.0
    gap_rate_flops: float = 0.0
    activity_kind: int = 0


def _tensor_key(precision: str) -> str:
    return MATMUL_PRECISIONS[precision]


def gpu_coefficients(a: GpuAssumptions, settings: EstimatorSettings) -> GpuCoefficients:
    """The constants of the estimate for one GPU (plain floats: ``flopledger gpus``
    shows a peak without loading NumPy)."""
    # Low is on the model basis: less the declared recomputation and a non-model
    # share; a run silent on recomputation may be checkpointing fully.
    model_basis = a.recompute_factor * (1.0 + settings.non_model_share_max)
    if not a.recompute_declared:
        model_basis = max(model_basis, settings.undeclared_recompute_max)
    factors = {
        "recompute_factor": float(a.recompute_factor),
        "tensor_low_factor": a.peak_low_factor / (
            (1.0 + settings.counter_error_high) * model_basis),
        "tensor_high_factor": a.peak_high_factor / (1.0 - settings.counter_error_low),
        "util_low_factor": a.peak_low_factor / a.recompute_factor,
        "util_high_factor": float(a.peak_high_factor),
    }
    spec = a.spec
    if spec is None:
        return GpuCoefficients(activity_kind=int(a.activity_kind), **factors)
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
    fpc_central = float(spec.flop_per_clock(_tensor_key(central)))
    fpc_high = max(max(per_clock.values()), fpc_central)
    fastest = float(max(max(spec.flop_per_clock(k) for k in MATMUL_PRECISIONS.values()),
                        fpc_high))
    fp32 = float(spec.flop_per_clock("fp32"))
    max_clock = float(max(a.max_sm_clock_mhz or spec.max_sm_clock_mhz,
                          spec.max_sm_clock_mhz))
    return GpuCoefficients(
        tensor_fpc_low=min(min(per_clock.values()), fpc_central),
        tensor_fpc_central=fpc_central,
        tensor_fpc_high=fpc_high,
        tensor_fpc_fastest=fastest,
        int8_fpc=float(spec.flop_per_clock("int8_tensor")),
        fp64_tensor_fpc=float(spec.flop_per_clock("fp64_tensor")),
        fp16_fpc=float(spec.flop_per_clock("fp16")),
        fp32_fpc=fp32,
        fp64_fpc=float(spec.flop_per_clock("fp64")),
        max_clock_mhz=max_clock,
        gap_rate_flops=(fastest + fp32) * max_clock * 1e6 * a.peak_high_factor,
        activity_kind=int(a.activity_kind),
        **factors,
    )


def build_coefficients(
    assumptions: Sequence[GpuAssumptions], settings: EstimatorSettings
) -> Coefficients:
    """Turn per-GPU assumptions into the arrays
    :func:`agent.accounting.estimate.estimate_rates` needs."""
    import numpy as np

    per_gpu = [gpu_coefficients(a, settings) for a in assumptions]
    arrays = {name: np.array([getattr(c, name) for c in per_gpu], dtype=np.float64)
              for name in FLOAT_FIELDS}
    kinds = np.array([c.activity_kind for c in per_gpu], dtype=np.int64)
    return Coefficients(activity_kind=kinds, **arrays)
