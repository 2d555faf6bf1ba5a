"""The estimator on analytic cases: known activity, clock, precision -> known FLOP/s."""

from __future__ import annotations

import numpy as np
import pytest

from agent.accounting.estimate import (
    Estimator,
    EstimatorSettings,
    GpuAssumptions,
    Rates,
    Readings,
    build_coefficients,
    estimate_rates,
)
from agent.sources.base import ActivityKind
from agent.sources.specs import load_spec_table

SPECS = load_spec_table()
H100 = SPECS["h100_sxm"]
A100 = SPECS["a100_80gb"]
NAN = float("nan")
SETTINGS = EstimatorSettings()
# The tensor estimator's low is model FLOP with the counter reading high covered (the run
# does not say whether it recomputes activations); its high is executed FLOP with the
# counter reading low covered.
LOW_BASIS = 1 / ((1 + SETTINGS.counter_error_high) * SETTINGS.undeclared_recompute_max)
HIGH_BASIS = 1 / (1 - SETTINGS.counter_error_low)


def rates(
    assumption: GpuAssumptions,
    *,
    clock: float = 1980.0,
    prev_clock: float = NAN,
    util: float = NAN,
    prev_util: float = NAN,
    tensor: float = NAN,
    hmma: float = NAN,
    imma: float = NAN,
    fp32: float = NAN,
    settings: EstimatorSettings = SETTINGS,
) -> Rates:
    coeffs = build_coefficients([assumption], settings)
    def a(x: float) -> np.ndarray:
        return np.array([x], dtype=np.float64)

    readings = Readings(
        np.zeros(1, np.int64), a(clock), a(prev_clock), a(util), a(prev_util), a(tensor),
        a(hmma), a(imma), a(NAN), a(NAN), a(NAN), a(fp32), a(NAN),
    )
    return estimate_rates(readings, coeffs, settings)


GPM_BF16 = GpuAssumptions(H100, ActivityKind.GPM, precision="bf16")


def test_tensor_activity_times_physical_peak() -> None:
    r = rates(GPM_BF16, tensor=50.0, clock=1980.0, prev_clock=1980.0, util=100)
    peak = 132 * 4096 * 1980e6
    assert r.flops.central[0] == pytest.approx(0.5 * peak, rel=1e-12)
    assert r.flops.low[0] == pytest.approx(0.48 * peak * LOW_BASIS, rel=1e-12)
    assert r.flops.high[0] == pytest.approx(0.52 * peak * HIGH_BASIS, rel=1e-12)
    assert r.estimator[0] == Estimator.GPM_TENSOR


def test_clock_change_inside_the_interval_uses_both_ends() -> None:
    r = rates(GPM_BF16, tensor=50.0, clock=1410.0, prev_clock=1980.0, util=100, prev_util=100)
    per_clock = 132 * 4096
    assert r.flops.central[0] == pytest.approx(0.5 * per_clock * (1410e6 + 1980e6) / 2)
    assert r.flops.low[0] == pytest.approx(0.48 * per_clock * 1410e6 * LOW_BASIS)
    assert r.flops.high[0] == pytest.approx(0.52 * per_clock * 1980e6 * HIGH_BASIS)


def test_an_idle_end_of_the_interval_does_not_set_the_clock() -> None:
    # The GPU went idle (clock fell to 345 MHz) after working at 1980 MHz.
    r = rates(GPM_BF16, tensor=20.0, clock=345.0, prev_clock=1980.0, util=0, prev_util=100)
    assert r.flops.central[0] == pytest.approx(0.2 * 132 * 4096 * 1980e6)


def test_per_kind_tensor_activity_uses_each_kinds_peak() -> None:
    r = rates(GpuAssumptions(H100, ActivityKind.GPM, precision="fp8"), tensor=60.0, hmma=40.0,
              imma=20.0, fp32=10.0, prev_clock=1980.0)
    hz = 1980e6
    expected = (0.4 * 132 * 8192 + 0.2 * 132 * 8192 + 0.1 * 132 * 256) * hz
    assert r.flops.central[0] == pytest.approx(expected, rel=1e-12)


def test_undeclared_precision_widens_the_band_by_the_precision_ratio() -> None:
    r = rates(GpuAssumptions(H100, ActivityKind.GPM, precision=None), tensor=50.0,
              prev_clock=1980.0)
    declared = rates(GPM_BF16, tensor=50.0, prev_clock=1980.0)
    assert r.flops.central[0] == declared.flops.central[0]  # bf16 by default
    assert r.flops.high[0] == pytest.approx(2 * declared.flops.high[0])  # fp8 is twice bf16
    # tf32 (half of bf16) is a candidate too: the counters do not tell it from bf16.
    assert r.flops.low[0] == pytest.approx(declared.flops.low[0] / 2)


def test_utilization_only_bounds_from_above_and_says_so() -> None:
    a100 = GpuAssumptions(A100, ActivityKind.NONE, precision="bf16")
    r = rates(a100, util=90.0, clock=1410.0, prev_clock=1410.0)
    peak = 108 * 2048 * 1410e6
    assert r.flops.high[0] == pytest.approx(0.9 * peak)
    assert r.flops.central[0] == pytest.approx(0.9 * 0.4 * peak)
    assert r.flops.low[0] == pytest.approx(0.9 * 0.1 * peak)
    assert r.estimator[0] == Estimator.UTILIZATION


def test_nothing_usable_gives_zero_and_peak() -> None:
    r = rates(GPM_BF16)
    assert r.flops.central[0] == 0
    assert r.flops.low[0] == 0
    assert r.flops.high[0] == build_coefficients([GPM_BF16], SETTINGS).gap_rate_flops[0]
    assert r.estimator[0] == Estimator.NONE


def test_unknown_clock_has_no_lower_bound_and_max_clock_above() -> None:
    r = rates(GPM_BF16, tensor=50.0, clock=NAN)
    assert r.flops.low[0] == 0
    assert r.flops.high[0] == pytest.approx(0.52 * 132 * 4096 * 1980e6 * HIGH_BASIS)


def test_full_recompute_reports_model_flop_central_and_hardware_flop_high() -> None:
    full = GpuAssumptions(H100, ActivityKind.GPM, precision="bf16", recompute_factor=4 / 3)
    r = rates(full, tensor=60.0, prev_clock=1980.0)
    plain = rates(GPM_BF16, tensor=60.0, prev_clock=1980.0)
    assert r.flops.central[0] == pytest.approx(plain.flops.central[0] * 0.75)
    assert r.flops.high[0] == plain.flops.high[0]


def test_precision_the_gpu_lacks_falls_back_to_its_fastest_float() -> None:
    fp8_on_a100 = GpuAssumptions(A100, ActivityKind.NONE, precision="fp8")
    coeffs = build_coefficients([fp8_on_a100], SETTINGS)
    assert coeffs.tensor_fpc_central[0] == 108 * 2048


def test_gpu_missing_from_the_table_is_reported_not_guessed() -> None:
    r = rates(GpuAssumptions(None, ActivityKind.GPM), tensor=50.0, util=100)
    assert r.flops.central[0] == 0
    assert r.flops.high[0] == 0
    assert r.estimator[0] == Estimator.NONE


def test_rates_do_not_depend_on_how_samples_are_grouped() -> None:
    rng = np.random.default_rng(7)
    n = 64
    assumptions = [GPM_BF16, GpuAssumptions(A100, ActivityKind.NONE, precision=None)]
    coeffs = build_coefficients(assumptions, SETTINGS)
    gpu = rng.integers(0, 2, n).astype(np.int64)
    cols = [rng.uniform(300, 2000, n), rng.uniform(300, 2000, n)] + [
        np.where(rng.random(n) < 0.2, NAN, rng.uniform(0, 100, n)) for _ in range(10)
    ]
    def estimate(lo: int, hi: int) -> Rates:
        return estimate_rates(Readings(gpu[lo:hi], *(col[lo:hi] for col in cols)), coeffs,
                              SETTINGS)

    whole = estimate(0, n)
    for lo, hi in ((0, 17), (17, 18), (18, 64)):
        part = estimate(lo, hi)
        for p, w in zip(part.flops, whole.flops, strict=True):
            np.testing.assert_array_equal(p, w[lo:hi])
        np.testing.assert_array_equal(part.estimator, whole.estimator[lo:hi])


def test_kernel_matches_its_numpy_reference_bit_for_bit() -> None:
    from tests.reference import estimate_rates_reference

    rng = np.random.default_rng(11)
    n = 4000
    assumptions = [
        GPM_BF16,
        GpuAssumptions(A100, ActivityKind.NONE, precision=None),
        GpuAssumptions(H100, ActivityKind.DCGM, precision="fp8", recompute_factor=4 / 3),
        GpuAssumptions(None, ActivityKind.GPM),
        GpuAssumptions(SPECS["b200"], ActivityKind.GPM, precision="bf16", recompute_factor=1.2,
                       recompute_declared=True, peak_low_factor=0.7, peak_high_factor=1.4),
        GpuAssumptions(A100, ActivityKind.DCGM, precision="tf32", recompute_declared=True,
                       peak_low_factor=0.0, peak_high_factor=2.0),
    ]
    coeffs = build_coefficients(assumptions, SETTINGS)
    gpu = rng.integers(0, len(assumptions), n).astype(np.int64)

    def column(lo: float, hi: float, nan: float = 0.15, zero: float = 0.1) -> np.ndarray:
        x = rng.uniform(lo, hi, n)
        x[rng.random(n) < zero] = 0.0
        x[rng.random(n) < nan] = NAN
        return x

    cols = [column(300, 2000), column(300, 2000)] + [column(0, 100) for _ in range(10)]
    # Per-pipe figures: none at all (ANY alone), small enough to leave a rest of ANY
    # unclaimed, or summing above ANY.
    no_pipes = rng.random(n) < 0.3
    small = rng.random(n) < 0.4
    for col in cols[5:9]:
        col[small] *= 0.1
        col[no_pipes] = NAN
    readings = Readings(gpu, *cols)
    got = estimate_rates(readings, coeffs, SETTINGS)
    want = estimate_rates_reference(readings, coeffs, SETTINGS)
    for name in ("low", "central", "high"):
        np.testing.assert_array_equal(getattr(got.flops, name), getattr(want.flops, name),
                                      err_msg=name)
    np.testing.assert_array_equal(got.estimator, want.estimator)
