"""`flopledger estimate` against the Commission's own worked examples (Annex A.3)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.compliance.lineage import Flop
from agent.compliance.planner import (
    EU_MARGIN,
    ArchitecturePlan,
    PlanError,
    Span,
    cross_check,
    hardware_plan,
    parse_span,
    parse_start,
    parse_utilization,
    planned_crossings,
    read_plan,
)
from agent.compliance.thresholds import load_registry
from agent.sources.specs import load_spec_table

SPECS = load_spec_table()
ONE = Span(1.0, 1.0)


def test_model_b_200k_a100_hours_at_300_tflops_and_half_utilization() -> None:
    plan = hardware_plan(SPECS, gpu=None, gpus=None, duration_s=None,
                         gpu_hours=Span(2e5, 2e5), utilization=Span(0.5, 0.5),
                         peak_tflops=Span(300, 300))
    assert plan.compute().central == pytest.approx(1.08e23, rel=1e-9)


def test_model_h_370k_h100_hours_at_the_dense_bf16_datasheet_peak() -> None:
    plan = hardware_plan(SPECS, gpu="h100_sxm", gpus=None, duration_s=None,
                         gpu_hours=Span(3.7e5, 3.7e5), utilization=Span(0.5, 0.5))
    assert plan.peak_flops.central == pytest.approx(989.4e12)
    assert plan.compute().central == pytest.approx(6.59e23, rel=1e-3)


@pytest.mark.parametrize(("params", "tokens", "expected"), [
    (3.8e9, 3.3e12, 7.5e22), (0.6e9, 36e12, 1.3e23), (1.7e9, 36e12, 3.7e23)])
def test_six_p_d_examples(params: float, tokens: float, expected: float) -> None:
    plan = ArchitecturePlan(Span(params, params), Span(tokens, tokens), None, None, None)
    assert float(f"{plan.compute().central:.2g}") == expected


def test_ranges_give_a_band_and_names_resolve() -> None:
    plan = hardware_plan(SPECS, gpu="NVIDIA H100 80GB HBM3", gpus=parse_span("1000-2000", "n"),
                         duration_s=parse_span("30d", "d", "duration"), gpu_hours=None,
                         utilization=parse_span("0.3-0.5", "u"))
    f = plan.compute()
    assert f.low < f.central < f.high
    assert f.high / f.low == pytest.approx(2 * 0.5 / 0.3)


def test_moe_uses_active_parameters_and_long_context_adds_attention() -> None:
    dense = ArchitecturePlan(Span(37e9, 37e9), Span(1e12, 1e12), None, None, None)
    attention = ArchitecturePlan(Span(37e9, 37e9), Span(1e12, 1e12), Span(61, 61),
                                 Span(7168, 7168), Span(131072, 131072))
    extra = 12 * 61 * 7168 * 131072 * 1e12
    assert attention.compute().central == pytest.approx(dense.compute().central + extra)


@pytest.mark.parametrize("bad", ["x", "-3", "5-2", "1e999"])
def test_bad_numbers_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="--gpus"):
        parse_span(bad, "--gpus")


def test_cli_says_which_thresholds_and_when_the_eu_notice_is_due() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "estimate", "--gpu", "h100_sxm", "--gpus", "16384",
         "--duration", "90d", "--utilization", "0.4", "--params", "405e9", "--tokens", "15.6e12"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    assert "C = 5.0e+25" in out  # 16384 x 90 d x 989.4 TFLOP/s x 0.4
    assert "C = 3.8e+25" in out  # 6 x 405e9 x 15.6e12
    assert "within the EU's 30% margin" in out
    assert "crossed      1.0e+25" in out
    assert "notify by" in out


@pytest.mark.parametrize(("estimate", "reference", "expected"), [
    (130.0, 100.0, (0.3, False)), (131.0, 100.0, (0.31, True)), (69.0, 100.0, (-0.31, True)),
    (5.0, 0.0, (0.0, False))])
def test_cross_check_flags_a_difference_beyond_the_eu_margin(
    estimate: float, reference: float, expected: tuple[float, bool]
) -> None:
    difference, beyond = cross_check(estimate, reference)
    assert difference == pytest.approx(expected[0])
    assert beyond is expected[1]
    assert EU_MARGIN == 0.30


def test_planned_crossings_of_the_provider_thresholds() -> None:
    regimes = load_registry().enabled()
    day = Span(86400.0, 86400.0)
    crossings = planned_crossings(regimes, Flop(10**24, 2 * 10**25, 4 * 10**25), day, 0.0)
    by_key = {c.regime.key: c for c in crossings}
    assert all(c.regime.applies_to == "provider" for c in crossings)
    assert "eu-modifier-gpai" not in by_key
    eu = by_key["eu-art51-systemic-risk"]
    assert (eu.crossed, eu.threshold_flop) == ("central", 1e25)
    assert eu.at_ns == pytest.approx(86400e9 / 2)  # half way at the central rate
    us = by_key["ca-sb53-frontier"]
    assert (us.crossed, us.at_ns) == ("", None)
    high_only = planned_crossings(regimes, Flop(10**24, 9 * 10**24, 2 * 10**25), None, 0.0)
    eu = next(c for c in high_only if c.regime.key == "eu-art51-systemic-risk")
    assert (eu.crossed, eu.at_ns) == ("high", None)


@pytest.mark.parametrize(("text", "expected"), [
    ("0.4", Span(0.4, 0.4)), ("40%", Span(0.4, 0.4)), ("1", Span(1.0, 1.0)),
    ("100%", Span(1.0, 1.0)), ("0.3-0.5", Span(0.3, 0.5)), ("30%-50%", Span(0.3, 0.5)),
    (" 35 % ", Span(0.35, 0.35))])
def test_utilization_is_a_fraction_or_a_percentage(text: str, expected: Span) -> None:
    got = parse_utilization(text)
    assert got.low == pytest.approx(expected.low)
    assert got.high == pytest.approx(expected.high)


@pytest.mark.parametrize("bad", ["40", "0", "0%", "-0.3", "1.01", "101%", "0-0.5", "0.3-1.2",
                                 "30-50%", "nan", "inf", "x", "0.5-0.3", "0.1-0.2-0.3", ""])
def test_utilization_outside_zero_to_one_is_refused(bad: str) -> None:
    with pytest.raises(PlanError, match=r"^--utilization: "):
        parse_utilization(bad)


def test_a_bare_percentage_says_how_to_write_it() -> None:
    with pytest.raises(PlanError, match=r"for 40 percent write 40%$"):
        parse_utilization("40")


def test_start_is_utc_unless_it_says_otherwise() -> None:
    assert parse_start("2026-01-01") == 1767225600e9
    assert parse_start("2026-01-01T02:00+02:00") == 1767225600e9
    with pytest.raises(PlanError, match=r"^--start: expected a date"):
        parse_start("01/02/2026")


@pytest.mark.parametrize(("given", "message"), [
    ({"gpu_hours": "1e6", "gpus": "8"}, "--gpu-hours: give either --gpu-hours or --gpus"),
    ({"gpu_hours": "1e6", "duration": "30d"}, r"not both \(--gpu-hours with --duration\)"),
    ({"gpu_hours": "1e6", "gpus": "8", "duration": "30d"},
     r"\(--gpu-hours with --gpus and --duration\)"),
    ({"gpus": "8"}, "--duration: needed with --gpus"),
    ({"duration": "30d"}, "--gpus: needed with --duration"),
    ({"gpus": "8", "duration": "30d", "utilization": "50"}, "--utilization: '50' is outside"),
    ({"gpu_hours": "0"}, "--gpu-hours: expected a value above zero"),
    ({"gpu_hours": "1e6", "peak_tflops": "0"}, "--peak-tflops: expected a value above zero"),
    ({"params": "7e9", "active_params": "7.1e9", "tokens": "1e12"},
     "--active-params: 7.1e9 is above --params 7e9"),
    ({"active_params": "1e9", "tokens": "1e12"}, "--params: needed"),
    ({"params": "7e9", "tokens": "0"}, "--tokens: expected a value above zero"),
    ({"params": "7e9", "tokens": "1e12", "context": "8192"},
     "--layers: needed with --context for the attention term"),
    ({"params": "7e9", "tokens": "1e12", "peak_tflops": "100"},
     "--peak-tflops: used only by the hardware-based method"),
    ({"params": "7e9", "tokens": "1e12", "precision": "fp8"},
     "--precision: used only by the hardware-based method"),
    ({}, "give a hardware plan"),
])
def test_a_plan_that_cannot_be_meant_is_refused(given: dict[str, str], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        read_plan(SPECS, gpu="h100_sxm" if "gpu_hours" in given or "gpus" in given
                  or "duration" in given else None, **given)


def test_a_gpu_without_a_row_is_refused_not_given_a_ceiling() -> None:
    assert SPECS.resolve("NVIDIA Z9000").basis != "table"  # what a sampler would use
    with pytest.raises(PlanError, match=r"--gpu: 'NVIDIA Z9000' matches no row .*"
                                        r"--peak-tflops.*flopledger gpus --resolve "
                                        r"'NVIDIA Z9000'$"):
        read_plan(SPECS, gpu="NVIDIA Z9000", gpu_hours="1e6")
    plan = read_plan(SPECS, gpu="NVIDIA Z9000", gpu_hours="1e6", peak_tflops="500")
    assert plan.hardware is not None
    assert plan.hardware.peak_flops == Span(500e12, 500e12)


def test_active_parameters_equal_to_the_total_are_a_dense_model() -> None:
    plan = read_plan(SPECS, params="7e9", active_params="7e9", tokens="1e12")
    assert plan.architecture is not None
    assert plan.active_params
    assert plan.architecture.params == Span(7e9, 7e9)
    moe = read_plan(SPECS, params="671e9", active_params="37e9", tokens="1e12",
                    start="2026-01-01")
    assert moe.architecture is not None
    assert moe.architecture.params == Span(37e9, 37e9)
    assert (moe.hardware, moe.start_ns) == (None, 1767225600e9)


def test_the_notice_deadline_counts_from_a_past_start_and_can_have_passed() -> None:
    regimes = load_registry().enabled()
    day_ns = 86400e9
    flop = Flop(2 * 10**25, 2 * 10**25, 2 * 10**25)

    def eu(start_ns: float, now_ns: float, f: Flop = flop) -> tuple[float | None, bool]:
        c = next(c for c in planned_crossings(regimes, f, None, start_ns, now_ns=now_ns)
                 if c.regime.key == "eu-art51-systemic-risk")
        return c.due_ns, c.due_passed

    assert eu(100 * day_ns, 10 * day_ns) == (24 * day_ns, False)  # planned ahead: from now
    assert eu(10 * day_ns, 20 * day_ns) == (24 * day_ns, False)  # started, still in time
    assert eu(10 * day_ns, 30 * day_ns) == (24 * day_ns, True)  # started, passed
    # Only the high bound: "may be met" starts no deadline.
    assert eu(10 * day_ns, 30 * day_ns, Flop(10**24, 9 * 10**24, 2 * 10**25)) == (None, False)
