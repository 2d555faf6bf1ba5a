"""``flopledger thresholds``, ``status`` and ``rules``."""

from __future__ import annotations

from pathlib import Path

import yaml

from agent import figures
from agent.compliance.milestones import MilestoneStore
from tests.cli.conftest import Flopledger
from tests.ledger_helpers import SECOND, T0
from tests.paths import REPO

SMALL_REGISTRY = """
[scopes.all]
categories = ["{category}"]
inherit = true

[regimes.tiny]
title = "A tiny test threshold"
scope = "all"
subjects = ["model", "run"]
status = "internal"
threshold_flop = 1e15
deadline_days = 3
obligation = "tell someone"
sources = ["https://example.org/tiny"]
"""


def config_with_registry(tmp_path: Path, extra: str = "", category: str = "pre-training") -> Path:
    """A config whose registry has one regime, ``tiny``: 1e15 FLOP of ``category``."""
    registry = tmp_path / "thresholds.toml"
    registry.write_text(SMALL_REGISTRY.replace("{category}", category))
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nthresholds_file = "{registry}"\n{extra}')
    return config


def test_thresholds_lists_the_registry_with_its_sources(flopledger: Flopledger) -> None:
    status, out, _ = flopledger("thresholds")
    assert status == 0
    assert out.startswith("regime ")
    assert "eu-art51-systemic-risk     > 1.0e+25" in out
    assert "kr-ai-basic-act            >= 1.0e+26" in out
    assert "source:" not in out
    status, out, _ = flopledger("thresholds", "--sources")
    assert "source: https://" in out
    assert "thresholds.toml; scopes: cumulative (" in out


def test_thresholds_reads_the_configured_file(tmp_path: Path, flopledger: Flopledger) -> None:
    status, out, _ = flopledger("thresholds", "--config", str(config_with_registry(tmp_path)))
    assert status == 0
    assert "tiny                       > 1.0e+15" in out
    assert "eu-art51" not in out


def test_status_shows_each_subject_against_the_configured_thresholds(
    ledger_path: Path, tmp_path: Path, flopledger: Flopledger
) -> None:
    config = config_with_registry(tmp_path)
    status, out, _ = flopledger("status", "--config", str(config), "--ledger", str(ledger_path))
    assert status == 0
    lines = out.splitlines()
    # base: exactly 1e15 (high 1.05e15) is strictly greater than 1e15 on the high bound.
    assert "model base (idle; rate 0 FLOP/s [0 .. 0])" in lines
    i = lines.index("model base (idle; rate 0 FLOP/s [0 .. 0])")
    assert lines[i + 1].startswith("  [####################] 105.0% of 1.0e+15  tiny")
    # Met with the record ending at T0 + 5 s: the 3-day deadline counts from there, so
    # it has passed, and says so.
    met_at = figures.when(T0 + 5 * SECOND)
    assert f"MET on {met_at}; deadline passed on " \
           f"{figures.when(T0 + 5 * SECOND + 3 * 86400 * SECOND)}" in lines[i + 1]
    assert "model chat (idle; rate 0 FLOP/s [0 .. 0])" in lines
    assert "run pt (idle; rate 0 FLOP/s [0 .. 0])" in lines
    assert lines[-1] == "fractions use the high estimate; ledger head 2 records"
    _, out, _ = flopledger("status", "--config", str(config), "--ledger", str(ledger_path),
                           "--estimate", "low")
    assert " 95.0% of 1.0e+15  tiny" in out
    assert out.rstrip().endswith("fractions use the low estimate; ledger head 2 records")


def test_status_counts_the_deadline_from_the_stored_day_in_every_call(
    ledger_path: Path, tmp_path: Path, flopledger: Flopledger
) -> None:
    config = str(config_with_registry(tmp_path))
    # The watcher stored the day "base" met the threshold (later than the crossing
    # record, as after an outage): status counts from the stored day.
    stored = T0 + 86400 * SECOND
    MilestoneStore(ledger_path).record({"model:base|tiny|met": stored})
    outputs = [flopledger("status", "--config", config, "--ledger", str(ledger_path))[1]
               for _ in range(2)]
    assert outputs[0] == outputs[1]
    line = next(x for x in outputs[0].splitlines() if "tiny" in x and "MET" in x)
    assert f"MET on {figures.when(stored)}; deadline passed on " \
           f"{figures.when(stored + 3 * 86400 * SECOND)}" in line


def test_status_leaves_out_idle_runs_at_zero_unless_asked(
    ledger_path: Path, tmp_path: Path, flopledger: Flopledger
) -> None:
    # Every record is pre-training: nothing counts toward a fine-tuning threshold.
    config = str(config_with_registry(tmp_path, category="fine-tuning"))
    _, out, _ = flopledger("status", "--config", config, "--ledger", str(ledger_path))
    assert "model base" in out
    assert "run " not in out
    _, out, _ = flopledger("status", "--config", config, "--ledger", str(ledger_path), "--all")
    assert "run ft (idle; rate 0 FLOP/s [0 .. 0])" in out
    assert "run pt (idle; rate 0 FLOP/s [0 .. 0])" in out
    assert "  0.0% of 1.0e+15  tiny" in out


def test_status_uses_the_configured_model_lineage(ledger_path: Path, tmp_path: Path,
                                                  flopledger: Flopledger) -> None:
    config = config_with_registry(
        tmp_path, '[models.external]\ndeclared_flop = 1e16\n'
                  '[models.base]\nbase_models = ["external"]\n')
    _, out, _ = flopledger("status", "--config", str(config), "--ledger", str(ledger_path),
                           "--estimate", "central")
    # base now inherits 1e16 from the declared external model: 1.1e16 of 1e15.
    assert "1100.0% of 1.0e+15  tiny" in out


def test_rules_are_written_to_a_file_or_printed(tmp_path: Path, flopledger: Flopledger) -> None:
    out_file = tmp_path / "rules.yml"
    status, out, _ = flopledger("rules", "-o", str(out_file))
    assert (status, out) == (0, f"wrote {out_file}\n")
    assert out_file.read_text() == (REPO / "exporters/prometheus/threshold_rules.yml").read_text()
    status, out, _ = flopledger("rules", "--estimate", "central",
                                "--config", str(config_with_registry(tmp_path)))
    assert status == 0
    doc = yaml.safe_load(out)
    alerts = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    assert {a["labels"]["regime"] for a in alerts} == {"tiny"}
    assert {a["labels"]["estimate"] for a in alerts} == {"central"}
