"""Prometheus rule files: promtool's checks and unit tests, and their conventions."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.exposition import exported_names, metric_names
from tests.paths import REPO

RULES_DIR = REPO / "exporters" / "prometheus"
RECORDING = RULES_DIR / "recording_rules.yml"
ALERTS = RULES_DIR / "alert_rules.yml"
UNIT_TESTS = RULES_DIR / "tests" / "rules_test.yml"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool missing: `make test` installs Debian's prometheus package")
RECORD_NAME = re.compile(r"^[a-z][a-z_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")
def rules(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


@needs_promtool
def test_promtool_check_rules() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(RECORDING), str(ALERTS)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = subprocess.run(["promtool", "test", "rules", str(UNIT_TESTS)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for rule in rules(RECORDING):
        assert "record" in rule, rule
        assert RECORD_NAME.match(rule["record"]), rule["record"]


def test_alerts_have_severity_summary_description_and_for() -> None:
    alerts = rules(ALERTS)
    assert {a["alert"] for a in alerts} == {
        "FlopledgerSamplerStalled", "FlopledgerGpuDown",
        "FlopledgerTensorActivityZeroWhileBusy", "FlopledgerSampleErrors",
        "FlopledgerGpuSpecNotInTable",
        "FlopledgerNotificationDead", "FlopledgerScrapeMissing",
        "FlopledgerDeclaredComputeDisagrees", "FlopledgerClusterBacklogGrowing",
        "FlopledgerClusterNodeFlagged"}
    for alert in alerts:
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        assert alert["annotations"]["summary"].strip(), alert["alert"]
        assert alert["annotations"]["description"].strip(), alert["alert"]
        assert alert.get("for"), alert["alert"]  # no alert on a single evaluation


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    doc = yaml.safe_load(UNIT_TESTS.read_text())
    firing: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in rules(ALERTS)}
    assert names <= firing, names - firing
    assert names <= silent, names - silent


def test_every_recording_rule_value_is_tested() -> None:
    doc = yaml.safe_load(UNIT_TESTS.read_text())
    tested = {check["expr"].strip() for case in doc["tests"]
              for check in case.get("promql_expr_test", [])}
    records = {r["record"] for r in rules(RECORDING)}
    assert records <= tested, records - tested


def test_rules_use_only_metrics_the_agent_exports() -> None:
    exported = exported_names()
    for rule in rules(RECORDING) + rules(ALERTS):
        missing = metric_names(rule["expr"]) - exported
        assert not missing, (rule.get("record") or rule.get("alert"), missing)


def test_threshold_alerts_are_left_to_the_generated_file() -> None:
    text = ALERTS.read_text()
    assert "threshold_rules.yml" in text
    assert not any("threshold" in a["alert"].lower() for a in rules(ALERTS))
