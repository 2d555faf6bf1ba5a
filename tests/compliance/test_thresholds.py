"""Thresholds: the registry, crossings at each level, lineage, the one-third rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.compliance.lineage import Flop
from agent.compliance.thresholds import (
    Subject,
    ThresholdSettings,
    assess,
    load_registry,
    parse_threshold_settings,
)
from agent.configfile import ConfigError, Problems

REGISTRY = load_registry()
R = REGISTRY.regimes


def model(flop_by_scope: dict[str, float], **kw: object) -> Subject:
    return Subject("model", "m", {k: Flop(int(v), int(v), int(v)) for k, v in
                                  flop_by_scope.items()}, **kw)  # type: ignore[arg-type]


def test_registry_has_the_regimes_with_sources_and_status() -> None:
    for key in ("eu-art51-systemic-risk", "eu-gpai-indicative", "eu-modifier-systemic-risk",
                "eu-modifier-gpai", "ca-sb53-frontier", "ny-raise-frontier",
                "kr-ai-basic-act", "us-eo14110", "us-eo14110-bio", "ca-sb1047"):
        assert R[key].sources, key
    assert R["eu-art51-systemic-risk"].deadline_days == 14
    assert not R["us-eo14110"].enabled
    assert R["us-eo14110"].status == "revoked"
    assert not R["ca-sb1047"].enabled
    assert R["ca-sb1047"].status == "vetoed"
    assert R["kr-ai-basic-act"].comparison == "ge"


@pytest.mark.parametrize(("value", "levels"), [
    (4.9e24, ()), (5e24, (0.5,)), (8e24, (0.5, 0.8)), (9.5e24, (0.5, 0.8, 0.9)),
    (1.0e25, (0.5, 0.8, 0.9)),  # exactly at a "strictly greater" threshold: not met
    (1.0000001e25, (0.5, 0.8, 0.9, 1.0)),
])
def test_levels_and_strict_comparison(value: float, levels: tuple[float, ...]) -> None:
    a = assess(R["eu-art51-systemic-risk"], model({"cumulative": value}))
    assert a is not None
    assert a.levels_reached == levels
    assert a.met == (1.0 in levels)


def test_at_or_above_is_met_exactly_at_the_threshold() -> None:
    a = assess(R["kr-ai-basic-act"], model({"cumulative": 1e26}))
    assert a is not None
    assert a.met
    b = assess(R["ca-sb53-frontier"], model({"frontier-us": 1e26}))
    assert b is not None
    assert not b.met


def test_the_chosen_estimate_decides() -> None:
    subject = Subject("model", "m", {"cumulative": Flop(int(9e24), int(9.8e24), int(1.05e25))})
    assert assess(R["eu-art51-systemic-risk"], subject).met  # type: ignore[union-attr]
    central = assess(R["eu-art51-systemic-risk"], subject, estimate="central")
    assert central is not None
    assert not central.met
    assert central.levels_reached == (0.5, 0.8, 0.9)


def test_modifier_of_a_systemic_risk_model_uses_one_third_of_its_base() -> None:
    base = Flop(int(2.4e25), int(2.5e25), int(2.6e25))
    subject = model({"modification": 8.1e24}, role="modifier",
                    base_flop={"parameter-update": base}, base_systemic=True)
    a = assess(R["eu-modifier-systemic-risk"], subject)
    assert a is not None
    assert a.threshold_flop == pytest.approx(2.4e25 / 3)
    assert a.met
    # A provider's model is not judged by the modifier rule, nor a modifier's by Art. 51.
    assert assess(R["eu-modifier-systemic-risk"], model({"modification": 8.1e24})) is None
    assert assess(R["eu-art51-systemic-risk"], subject) is None


def test_modifier_with_an_unknown_base_uses_the_fallbacks() -> None:
    gpai = model({"modification": 3.4e22}, role="modifier", base_flop={})
    a = assess(R["eu-modifier-gpai"], gpai)
    assert a is not None
    assert a.threshold_flop == 3.3e22
    assert a.met
    # The systemic-risk variant applies only if the base has systemic risk.
    assert assess(R["eu-modifier-systemic-risk"], gpai) is None
    systemic = model({"modification": 3.4e22}, role="modifier", base_systemic=True)
    s = assess(R["eu-modifier-systemic-risk"], systemic)
    assert s is not None
    assert s.threshold_flop == 3.3e24
    assert not s.met


def test_cost_thresholds_need_both_prongs() -> None:
    regime = R["ca-sb1047"]
    price = REGISTRY.usd_per_gpu_hour
    assert price is not None
    hours_for_100m = 1e8 / price
    cheap = model({"frontier-us": 2e26}, gpu_seconds={"frontier-us": 3600 * hours_for_100m / 2})
    dear = model({"frontier-us": 2e26}, gpu_seconds={"frontier-us": 3600 * hours_for_100m * 2})
    assert not assess(regime, cheap, usd_per_gpu_hour=price).met  # type: ignore[union-attr]
    assert assess(regime, dear, usd_per_gpu_hour=price).met  # type: ignore[union-attr]


def test_bad_registry_names_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.toml"
    path.write_text("""
[scopes.s]
categories = ["pre-training"]
inherit = true
[regimes.a]
title = "x"
scope = "nope"
comparison = "gte"
subjects = ["team"]
status = "maybe"
[regimes.b]
scope = "s"
status = "internal"
threshold_usd = 5
""")
    with pytest.raises(ConfigError) as e:
        load_registry(path)
    keys = {k for k, _ in e.value.problems}
    assert keys >= {"regimes.a.scope", "regimes.a.comparison", "regimes.a.subjects",
                    "regimes.a.status", "regimes.a", "regimes.b.threshold_usd"}


def test_unknown_and_mistyped_registry_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.toml"
    path.write_text("""
[scopes.s]
categories = ["pre-training"]
inherit = true
[regimes.a]
scope = "s"
status = "internal"
threshold_flop = "big"
treshold_usd = 5
[extra]
""")
    with pytest.raises(ConfigError) as e:
        load_registry(path)
    problems = dict(e.value.problems)
    assert problems["extra"] == "one of the tables ['pricing', 'regimes', 'scopes']"
    assert problems["regimes.a.treshold_usd"].startswith("one of the known keys [")
    assert problems["regimes.a.threshold_flop"] == "a positive number"


def test_threshold_settings_keep_defaults_for_bad_values() -> None:
    problems = Problems("agent.toml")
    settings = parse_threshold_settings(
        {"thresholds": {"estimate": "median", "levels": [0.5, 2], "window_s": -1,
                        "horizon_days": 7, "evaluate_every": 5}}, problems)
    assert settings == ThresholdSettings(horizon_days=7.0)
    assert [k for k, _ in problems.items] == [
        "thresholds.evaluate_every", "thresholds.estimate", "thresholds.levels",
        "thresholds.window_s"]
    assert parse_threshold_settings({}, problems) == ThresholdSettings()
    assert parse_threshold_settings({"thresholds": {"levels": [1, 0.25]}},
                                    problems).levels == (0.25, 1.0)
