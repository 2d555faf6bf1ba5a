"""Generated threshold rules: not stale, valid, and unit-tested with promtool."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from agent.compliance.rulegen import generate
from agent.compliance.thresholds import load_registry
from tests.paths import REPO

RULES = REPO / "exporters" / "prometheus"
promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool missing: `make test` installs Debian's prometheus")


def test_checked_in_threshold_rules_are_up_to_date() -> None:
    fresh = generate(load_registry())
    assert (RULES / "threshold_rules.yml").read_text() == fresh, (
        "agent/data/thresholds.toml changed: run "
        "`flopledger rules -o exporters/prometheus/threshold_rules.yml`")


def test_generation_is_deterministic_and_covers_enabled_provider_regimes() -> None:
    registry = load_registry()
    text = generate(registry)
    assert text == generate(registry)
    for regime in registry.enabled():
        wanted = regime.applies_to == "provider" and regime.threshold_flop is not None
        assert (f"regime: {regime.key}" in text) == wanted, regime.key
    assert "us-eo14110" not in text  # disabled (revoked)


@promtool
def test_promtool_checks_and_unit_tests_the_threshold_rules() -> None:
    check = subprocess.run(["promtool", "check", "rules", str(RULES / "threshold_rules.yml")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", "threshold_rules_test.yml"],
                          cwd=RULES / "tests", capture_output=True, text=True, check=False)
    assert unit.returncode == 0, unit.stdout + unit.stderr
