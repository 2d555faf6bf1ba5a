"""``flopledger report`` and ``flopledger estimate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import Flopledger


def test_report_formats(ledger_path: Path, tmp_path: Path, flopledger: Flopledger) -> None:
    status, out, _ = flopledger("report", "--run", "pt", "--ledger", str(ledger_path),
                                "--format", "json")
    assert status == 0
    doc = json.loads(out)
    assert (doc["subject_type"], doc["subject"], doc["flop"]["central"]) == ("run", "pt", 10**15)
    status, out, _ = flopledger("report", "--model", "chat", "--ledger", str(ledger_path),
                                "--format", "csv")
    assert out.splitlines()[0] == "time_utc,end_ns,flop_low,flop_central,flop_high"
    target = tmp_path / "report.md"
    status, out, _ = flopledger("report", "--run", "pt", "--ledger", str(ledger_path),
                                "-o", str(target))
    assert (status, out) == (0, f"wrote {target}\n")
    assert target.read_text().startswith("# Training compute report: run `pt`")
    assert not target.with_suffix(".png").exists()


def test_report_uses_the_configured_lineage(ledger_path: Path, tmp_path: Path,
                                            flopledger: Flopledger) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[models.base]\nbase_models = ["external"]\n'
                      '[models.external]\ndeclared_flop = 2e23\n')
    _, out, _ = flopledger("report", "--model", "base", "--ledger", str(ledger_path),
                           "--format", "json")
    assert not any(r["met"] for r in json.loads(out)["regimes"])
    _, out, _ = flopledger("report", "--model", "base", "--ledger", str(ledger_path),
                           "--format", "json", "--config", str(config))
    regimes = {r["regime"]: r for r in json.loads(out)["regimes"]}
    # 2e23 inherited from the declared base is over the EU's indicative 1e23.
    assert regimes["eu-gpai-indicative"]["met"]


def test_report_of_nothing_exits_1(ledger_path: Path, flopledger: Flopledger) -> None:
    status, out, err = flopledger("report", "--run", "nope", "--ledger", str(ledger_path))
    assert (status, out) == (1, "")
    assert err == f"flopledger: no records for run nope in {ledger_path}\n"


@pytest.mark.parametrize(("params", "verdict"), [
    ("70e9", "architecture-based is +309% from hardware-based, beyond the EU's 30% margin"),
    ("20e9", "architecture-based is +17% from hardware-based, within the EU's 30% margin"),
])
def test_estimate_cross_checks_the_two_methods(params: str, verdict: str,
                                               flopledger: Flopledger) -> None:
    status, out, _ = flopledger("estimate", "--gpu", "h100_sxm", "--gpus", "1000-2000",
                                "--duration", "30d", "--params", params, "--tokens", "15e12",
                                "--start", "2026-01-01")
    assert status == 0
    assert f"cross-check: {verdict}\n" in out


def test_estimate_says_when_each_threshold_is_reached(flopledger: Flopledger) -> None:
    status, out, _ = flopledger("estimate", "--gpu", "h100_sxm", "--gpus", "16384",
                                "--duration", "90d", "--start", "2099-01-01")
    assert status == 0
    assert "cross-check" not in out
    assert "is past" not in out
    lines = out.splitlines()
    eu = next(line for line in lines if "Art. 51(2)" in line)
    # 1e25 of 5.0e25 over 90 days: a fifth of the way, 18 days in.
    assert eu.startswith("  crossed      1.0e+25  EU AI Act")
    assert eu.endswith("; reached around 2099-01-18 20:23:46Z")
    assert lines[lines.index(eu) + 1].startswith(
        "               it is known now that it will be met: notify by ")
    assert any(line.startswith("  not crossed  1.0e+26  California SB 53") for line in lines)


def test_estimate_with_a_past_start_says_the_deadline_has_passed(
    flopledger: Flopledger
) -> None:
    status, out, _ = flopledger("estimate", "--gpu", "h100_sxm", "--gpus", "16384",
                                "--duration", "90d", "--start", "2020-01-01")
    assert status == 0
    lines = out.splitlines()
    assert ("the planned start, 2020-01-01 00:00:00Z, is past: the plan was known by then "
            "at the latest, and deadlines count from it") in lines
    eu = next(line for line in lines if "Art. 51(2)" in line)
    assert eu.endswith("; by the plan reached around 2020-01-18 20:23:46Z, already past")
    # 14 days from the start, not from now.
    assert lines[lines.index(eu) + 1].startswith(
        "               the deadline has passed: notice was due by 2020-01-15 00:00:00Z "
        "(14 days; ")
    assert "notify by" not in out
    assert "known now" not in out


def test_estimate_start_keeps_its_own_time_zone(flopledger: Flopledger) -> None:
    _, out, _ = flopledger("estimate", "--gpu", "h100_sxm", "--gpus", "16384",
                           "--duration", "90d", "--start", "2099-01-01T02:00:00+02:00")
    assert "; reached around 2099-01-18 20:23:46Z" in out


def test_estimate_counts_a_threshold_crossed_by_the_high_bound_only(
    flopledger: Flopledger
) -> None:
    # 6 x 1e11 x 1.65e13 = 9.9e24 central; the high end of the tokens, 1.08e25.
    _, out, _ = flopledger("estimate", "--params", "1e11", "--tokens", "1.5e13-1.8e13")
    assert "  crossed by the high bound 1.0e+25  EU AI Act" in out


HARDWARE = ("--gpu", "h100_sxm", "--gpus", "8", "--duration", "1d")
ARCHITECTURE = ("--params", "7e9", "--tokens", "1e12")


@pytest.mark.parametrize(("args", "message"), [
    ((), "give a hardware plan"),
    (("--params", "7e9"), "--tokens: needed with --params"),
    (("--tokens", "1e12"), "--params: needed for the architecture-based method"),
    (("--active-params", "7e9", "--tokens", "1e12"), "--params: needed"),
    (("--gpu", "nope", "--gpus", "3", "--duration", "1d"),
     "--gpu: 'nope' matches no row of the spec table"),
    (("--gpus", "x", "--duration", "1d"), "--gpus: expected a number"),
    (("--gpus", "0", "--duration", "1d", "--peak-tflops", "100"),
     "--gpus: expected a value above zero, got '0'"),
    ((*HARDWARE, "--utilization", "40"),
     "--utilization: '40' is outside (0, 1] (0 < MFU <= 100%); for 40 percent write 40%"),
    ((*HARDWARE, "--utilization", "0"), "--utilization: '0' is outside (0, 1]"),
    ((*HARDWARE, "--utilization", "0.3-1.2"), "--utilization: '1.2' is outside (0, 1]"),
    ((*HARDWARE, "--utilization", "150%"), "--utilization: '150%' is outside (0, 1]"),
    ((*HARDWARE, "--utilization", "-0.3"), "--utilization: '-0.3' is outside (0, 1]"),
    ((*HARDWARE, "--utilization", "half"), "--utilization: expected a fraction like 0.4"),
    ((*HARDWARE, "--utilization", "0.5-0.3"), "--utilization: expected a range LOW-HIGH"),
    (("--gpu", "h100_sxm", "--gpu-hours", "1e6", "--gpus", "8"),
     "--gpu-hours: give either --gpu-hours or --gpus with --duration, not both "
     "(--gpu-hours with --gpus)"),
    (("--gpu", "h100_sxm", "--gpu-hours", "1e6", "--duration", "30d"),
     "--gpu-hours: give either --gpu-hours or --gpus with --duration, not both "
     "(--gpu-hours with --duration)"),
    (("--gpu", "h100_sxm", "--gpus", "8"), "--duration: needed with --gpus"),
    (("--gpu", "h100_sxm", "--duration", "30d"), "--gpus: needed with --duration"),
    (("--params", "7e9", "--active-params", "8e9", "--tokens", "1e12"),
     "--active-params: 8e9 is above --params 7e9"),
    (("--params", "40e9-45e9", "--active-params", "30e9-50e9", "--tokens", "1e12"),
     "--active-params: 30e9-50e9 is above --params 40e9-45e9"),
    ((*ARCHITECTURE, "--layers", "32"), "--d-model: needed with --layers for the attention"),
    ((*ARCHITECTURE, "--layers", "32", "--d-model", "4096"),
     "--context: needed with --layers and --d-model"),
    ((*ARCHITECTURE, "--gpu", "h100_sxm"), "--gpu: used only by the hardware-based method"),
    ((*ARCHITECTURE, "--utilization", "0.4"),
     "--utilization: used only by the hardware-based method"),
    ((*HARDWARE, "--precision", "fp7"), "--precision: expected one of"),
    ((*ARCHITECTURE, "--start", "next week"), "--start: expected a date YYYY-MM-DD"),
])
def test_estimate_refuses_a_plan_naming_the_flag(args: tuple[str, ...], message: str,
                                                  flopledger: Flopledger) -> None:
    status, out, err = flopledger("estimate", *args)
    assert (status, out) == (2, "")
    assert err.startswith(f"flopledger: estimate: {message}")
    assert err.count("\n") == 1


def test_estimate_of_a_gpu_without_a_row_suggests_its_peak(flopledger: Flopledger) -> None:
    _, _, err = flopledger("estimate", "--gpu", "NVIDIA Z9000", "--gpus", "8",
                           "--duration", "1d")
    assert err.rstrip().endswith("give its dense peak with --peak-tflops, or see how it would "
                                 "be resolved: flopledger gpus --resolve 'NVIDIA Z9000'")
    status, out, _ = flopledger("estimate", "--gpu", "NVIDIA Z9000", "--gpus", "8",
                                "--duration", "1d", "--peak-tflops", "500",
                                "--utilization", "40%")
    assert status == 0
    assert "  H = 500.0 TFLOP/s (given with --peak-tflops for NVIDIA Z9000)" in out
    assert "  U = 0.4  (MFU" in out


def test_estimate_reads_percent_utilization_as_the_fraction(flopledger: Flopledger) -> None:
    _, percent, _ = flopledger("estimate", *HARDWARE, "--utilization", "30%-50%",
                               "--start", "2099-01-01")
    _, fraction, _ = flopledger("estimate", *HARDWARE, "--utilization", "0.3-0.5",
                                "--start", "2099-01-01")
    assert "  U = 0.4 (0.3 .. 0.5)" in percent
    assert percent == fraction
