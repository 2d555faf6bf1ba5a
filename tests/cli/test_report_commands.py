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
                                "--duration", "90d", "--start", "2026-01-01")
    assert status == 0
    assert "cross-check" not in out
    lines = out.splitlines()
    eu = next(line for line in lines if "Art. 51(2)" in line)
    # 1e25 of 5.0e25 over 90 days: a fifth of the way, 18 days in.
    assert eu.startswith("  crossed      1.0e+25  EU AI Act")
    assert eu.endswith("; reached around 2026-01-18 20:23:46Z")
    assert lines[lines.index(eu) + 1].startswith(
        "               it is known now that it will be met: notify by ")
    assert any(line.startswith("  not crossed  1.0e+26  California SB 53") for line in lines)


def test_estimate_counts_a_threshold_crossed_by_the_high_bound_only(
    flopledger: Flopledger
) -> None:
    # 6 x 1e11 x 1.65e13 = 9.9e24 central; the high end of the tokens, 1.08e25.
    _, out, _ = flopledger("estimate", "--params", "1e11", "--tokens", "1.5e13-1.8e13")
    assert "  crossed by the high bound 1.0e+25  EU AI Act" in out


@pytest.mark.parametrize(("args", "message"), [
    ((), "give a hardware plan"),
    (("--params", "7e9"), "give both --params and --tokens"),
    (("--gpu", "nope", "--gpus", "3", "--duration", "1d"), "--gpu: 'nope' is not in the spec"),
    (("--gpus", "x", "--duration", "1d"), "--gpus: expected a number"),
])
def test_estimate_without_a_usable_plan_exits_1(args: tuple[str, ...], message: str,
                                                flopledger: Flopledger) -> None:
    status, out, err = flopledger("estimate", *args)
    assert (status, out) == (1, "")
    assert err.startswith(f"flopledger: {message}")
