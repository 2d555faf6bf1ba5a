"""The integration kernels against their NumPy references and analytic cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.accounting.integrate import (
    FLOP_UNIT,
    FlopTotals,
    group_by_gpu,
    integrate_energy,
    integrate_flop,
)
from tests.reference import integrate_energy_reference, integrate_flop_reference

SECOND = 1_000_000_000
MAX_GAP = 5 * SECOND


def grouped(gpu: np.ndarray, n_gpus: int, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    order, offsets = group_by_gpu(np.asarray(gpu, np.int64), n_gpus)
    return (offsets, *(np.asarray(c)[order] for c in columns))


def run(
    gpu: list[int] | np.ndarray,
    ts: list[int] | np.ndarray,
    low: list[float] | np.ndarray,
    central: list[float] | np.ndarray,
    high: list[float] | np.ndarray,
    n_gpus: int = 1,
    gap_rate: float = 2e15,
    measured: bool = False,
    last: np.ndarray | None = None,
) -> FlopTotals:
    offsets, ts_g, low_g, central_g, high_g = grouped(
        np.asarray(gpu, np.int64), n_gpus, np.asarray(ts, np.int64),
        np.asarray(low, np.float64), np.asarray(central, np.float64),
        np.asarray(high, np.float64),
    )
    args = (
        offsets, ts_g, low_g, central_g, high_g, np.full(n_gpus, gap_rate),
        np.full(n_gpus, measured, np.bool_),
        np.full(n_gpus, -1, np.int64) if last is None else last, MAX_GAP,
    )
    got = integrate_flop(*args)
    want = integrate_flop_reference(*args)
    for name, a, b in zip(FlopTotals._fields, got, want, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    return got


def test_constant_rate_integrates_exactly() -> None:
    ts = np.arange(11) * SECOND
    rate = np.full(11, 1e15)
    got = run(np.zeros(11), ts, np.full(11, 9e14), rate, np.full(11, 1.1e15))
    # 10 one-second intervals at 1e15 FLOP/s; rounding may add a unit (1 MFLOP) per
    # interval to high and take one from low, never the other way.
    assert got.central_units[0] == 10 * 10**9
    assert 9 * 10**9 - 10 <= got.low_units[0] <= 9 * 10**9
    assert 11 * 10**9 <= got.high_units[0] <= 11 * 10**9 + 10
    assert got.covered_ns[0] == 10 * SECOND
    assert got.last_timestamp_ns[0] == 10 * SECOND


def test_step_rate_applies_to_the_interval_ending_at_the_sample() -> None:
    ts = np.arange(5) * SECOND
    rate = np.array([7e14, 1e14, 1e14, 3e14, 3e14])
    got = run(np.zeros(5), ts, rate, rate, rate)
    # The first sample only opens the interval; its rate is never used.
    assert got.central_units[0] * FLOP_UNIT == 8 * 10**14


def test_ramp_over_irregular_intervals() -> None:
    ts = np.cumsum([0, 100_000_000, 250_000_000, 650_000_000, 1_000_000_000])
    rate = np.array([0.0, 1e14, 2e14, 3e14, 4e14])
    got = run(np.zeros(5), ts, rate, rate, rate)
    expected = 1e14 * 0.1 + 2e14 * 0.25 + 3e14 * 0.65 + 4e14 * 1.0
    assert got.central_units[0] * FLOP_UNIT == pytest.approx(expected, rel=1e-12)


def test_single_sample_and_empty_input_add_nothing() -> None:
    one = run([0], [5 * SECOND], [1e15], [1e15], [1e15])
    assert one.central_units[0] == one.high_units[0] == one.covered_ns[0] == 0
    assert one.last_timestamp_ns[0] == 5 * SECOND
    empty = run([], [], [], [], [])
    assert empty.central_units[0] == 0
    assert empty.last_timestamp_ns[0] == -1


def test_gap_adds_peak_to_high_only() -> None:
    ts = np.array([0, SECOND, 11 * SECOND, 12 * SECOND])
    rate = np.full(4, 1e15)
    got = run(np.zeros(4), ts, rate, rate, rate, gap_rate=2e15)
    assert got.gap_ns[0] == 10 * SECOND
    assert got.covered_ns[0] == 2 * SECOND
    assert got.central_units[0] == 2 * 10**9
    assert 2 * 10**9 - 2 <= got.low_units[0] <= 2 * 10**9
    assert 22 * 10**9 <= got.high_units[0] <= 22 * 10**9 + 3


def test_gap_counts_in_central_when_activity_was_measured_over_it() -> None:
    ts = np.array([0, 10 * SECOND])
    rate = np.full(2, 1e15)
    got = run(np.zeros(2), ts, rate, rate, rate, gap_rate=2e15, measured=True)
    assert got.central_units[0] == 10 * 10**9
    assert got.low_units[0] == 0
    assert 20 * 10**9 <= got.high_units[0] <= 20 * 10**9 + 1


def test_timestamps_that_do_not_advance_are_rejected() -> None:
    ts = np.array([0, SECOND, SECOND, SECOND // 2, 2 * SECOND])
    rate = np.full(5, 1e15)
    got = run(np.zeros(5), ts, rate, rate, rate)
    assert got.rejected[0] == 2
    assert got.central_units[0] == 2 * 10**9


def test_rounding_never_narrows_the_band() -> None:
    ts = np.arange(4) * 1000  # 1 us intervals: 0.5 MFLOP each at 5e11 FLOP/s
    rate = np.full(4, 5e11)
    got = run(np.zeros(4), ts, rate, rate, rate)
    assert got.low_units[0] == 0
    assert got.high_units[0] == 3
    assert got.low_units[0] <= got.central_units[0] <= got.high_units[0]


def test_carried_state_continues_across_calls() -> None:
    ts = np.arange(6) * SECOND
    rate = np.full(6, 1e15)
    first = run(np.zeros(3), ts[:3], rate[:3], rate[:3], rate[:3])
    second = run(np.zeros(3), ts[3:], rate[3:], rate[3:], rate[3:], last=first.last_timestamp_ns)
    whole = run(np.zeros(6), ts, rate, rate, rate)
    assert first.central_units[0] + second.central_units[0] == whole.central_units[0]


samples = st.integers(min_value=1, max_value=300)


@settings(max_examples=60, deadline=None)
@given(n=samples, n_gpus=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
       cuts=st.lists(st.integers(0, 300), max_size=8))
def test_totals_are_bit_identical_for_any_chunking(
    n: int, n_gpus: int, seed: int, cuts: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    gpu = rng.integers(0, n_gpus, n).astype(np.int64)
    # Irregular intervals, some gaps, some repeated timestamps.
    steps = rng.choice([0, 1, 50_000_000, 1_000_000_000, 7_000_000_000], n,
                       p=[0.05, 0.05, 0.3, 0.5, 0.1])
    ts = np.cumsum(steps).astype(np.int64)
    central = rng.uniform(0, 2e15, n)
    low, high = central * rng.uniform(0.5, 1, n), central * rng.uniform(1, 2, n)
    measured = rng.random(n_gpus) < 0.5
    gap_rate = rng.uniform(1e15, 4e15, n_gpus)
    start = np.full(n_gpus, -1, np.int64)

    def integrate(lo: int, hi: int, last: np.ndarray, reference: bool = False) -> FlopTotals:
        offsets, ts_g, low_g, central_g, high_g = grouped(
            gpu[lo:hi], n_gpus, ts[lo:hi], low[lo:hi], central[lo:hi], high[lo:hi]
        )
        fn = integrate_flop_reference if reference else integrate_flop
        return fn(offsets, ts_g, low_g, central_g, high_g, gap_rate, measured, last, MAX_GAP)

    whole = integrate(0, n, start)
    ref = integrate(0, n, start, reference=True)
    for a, b in zip(whole, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    acc = [np.zeros(n_gpus, np.int64) for _ in range(6)]
    last = start
    for lo, hi in itertools.pairwise(bounds):
        part = integrate(lo, hi, last)
        for k in range(6):
            acc[k] += part[k]
        last = part.last_timestamp_ns
    for k in range(6):
        np.testing.assert_array_equal(acc[k], whole[k])
    np.testing.assert_array_equal(last, whole.last_timestamp_ns)


def energy(
    gpu: list[int], ts: list[int], e: list[float], p: list[float], n_gpus: int = 1
) -> tuple[int, int]:
    offsets, ts_g, e_g, p_g = grouped(np.asarray(gpu, np.int64), n_gpus,
                                      np.asarray(ts, np.int64), np.asarray(e, np.float64),
                                      np.asarray(p, np.float64))
    args = (offsets, ts_g, e_g, p_g, np.full(n_gpus, -1, np.int64), np.full(n_gpus, np.nan))
    got = integrate_energy(*args)
    want = integrate_energy_reference(*args)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    return int(got.energy_mj[0]), int(got.counter_resets[0])


def test_energy_from_counter_differences() -> None:
    assert energy([0, 0, 0], [0, SECOND, 2 * SECOND], [1000.0, 1700.0, 2500.0],
                  [np.nan] * 3) == (1500, 0)


def test_energy_counter_reset_counts_from_zero() -> None:
    assert energy([0, 0, 0], [0, SECOND, 2 * SECOND], [1000.0, 1700.0, 300.0],
                  [np.nan] * 3) == (1000, 1)


def test_energy_missing_reading_is_covered_by_the_next_difference() -> None:
    assert energy([0, 0, 0, 0], [0, 1, 2, 3], [1000.0, np.nan, 1800.0, 1900.0],
                  [5e5] * 4) == (900, 0)


def test_energy_falls_back_to_power_without_a_counter() -> None:
    # 500 W for 2 s = 1000 J = 1e6 mJ.
    assert energy([0, 0, 0], [0, SECOND, 2 * SECOND], [np.nan] * 3, [5e5] * 3) == (1_000_000, 0)
