"""The estimate against the simulator's ground truth, and the determinism contract."""

from __future__ import annotations

import dataclasses

import pytest

from agent.simrun import simulate
from agent.sources.scenarios import SCENARIOS

# Two simulated hours per scenario: long enough for checkpoints, throttle windows,
# bursts and sampler stalls to happen many times.
SECONDS = 7200


@pytest.mark.parametrize(
    ("scenario", "max_central_error"),
    [("pretrain-bf16", 0.02), ("fp8-throttled", 0.02), ("finetune-bursty", 0.02),
     ("pretrain-undeclared", 0.02)],
)
def test_central_is_close_and_band_contains_truth(scenario: str, max_central_error: float) -> None:
    result = simulate(SCENARIOS[scenario], SECONDS)
    assert result.true_flop > 0
    assert abs(result.central_error) < max_central_error, result
    assert result.band_contains_truth, result


def test_bursty_scenario_has_gaps_covered_by_the_high_bound() -> None:
    result = simulate(SCENARIOS["finetune-bursty"], 1800)
    assert result.gap_seconds > 0
    assert result.high > result.true_flop


def test_undeclared_fp8_run_is_inside_the_band_though_central_assumes_bf16() -> None:
    workload = dataclasses.replace(SCENARIOS["fp8-throttled"], declared_precision=None)
    result = simulate(workload, 1800)
    assert result.band_contains_truth
    assert result.central_error == pytest.approx(-0.5, abs=0.02)


def test_utilization_only_gpu_has_a_wide_band_that_contains_truth() -> None:
    result = simulate(SCENARIOS["pretrain-bf16"], 1800, gpu_model="a100_80gb")
    assert result.band_contains_truth
    assert result.high / result.low > 4


def test_totals_are_bit_identical_for_any_integration_chunking() -> None:
    results = [simulate(SCENARIOS["finetune-bursty"], 900, integrate_every=k) for k in (1, 7, 50)]
    first = results[0].snapshot
    for other in results[1:]:
        for a, b in zip(first.gpus, other.snapshot.gpus, strict=True):
            assert (a.flop_low, a.flop_central, a.flop_high, a.energy_joules, a.gap_seconds) == (
                b.flop_low, b.flop_central, b.flop_high, b.energy_joules, b.gap_seconds)


def test_a_different_sampling_interval_gives_the_same_total_within_the_error() -> None:
    fast = simulate(SCENARIOS["pretrain-bf16"], 1800, interval_s=0.2)
    slow = simulate(SCENARIOS["pretrain-bf16"], 1800, interval_s=2.0)
    assert abs(fast.central_error) < 0.02
    assert abs(slow.central_error) < 0.02
    assert fast.central == pytest.approx(slow.central, rel=0.02)
