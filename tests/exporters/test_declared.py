"""Declared series on /metrics: the trainer's reported tokens, steps and compute, and
the ratio of that compute to the measured one, through the agent's collector."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.accounting.snapshot import DeclaredRunSnapshot, RunSnapshot, Snapshot
from exporters.declared import DeclaredCollector
from tests.exposition import exposition, registry_of, sample_snapshot

MEASURED = 1.0e21  # central FLOP of every measured run below


def run(run_id: str) -> RunSnapshot:
    return RunSnapshot(run_id=run_id, model=f"{run_id}-model", category="pre-training",
                       flop_low=0.9 * MEASURED, flop_central=MEASURED, flop_high=1.2 * MEASURED,
                       energy_joules=1e9, gpus=8, created_wall_seconds=1.7e9)


def declared(run_id: str, tokens: int, params: float | None,
             flop: float | None = None) -> DeclaredRunSnapshot:
    implied = 6 * params * tokens if params is not None else None
    return DeclaredRunSnapshot(run_id=run_id, model=f"{run_id}-model", tokens=tokens,
                               steps=tokens // 4096, planned_tokens=None, params=params,
                               declared_flop=implied if flop is None else flop,
                               formula="6 x P x D", updated_wall_seconds=1.7e9 + 60)


def snapshot() -> Snapshot:
    # agree: 6 x 7e9 x 2.5e10 = 1.05e21 (ratio 1.05); off: 1.4e21 (40% above);
    # no-params: tokens only; elsewhere: declared here, measured on another node;
    # idle: measured 0 so far.
    idle = dataclasses.replace(run("idle"), flop_low=0.0, flop_central=0.0, flop_high=0.0)
    return Snapshot(
        source_kind="nvml", started_wall_seconds=1.7e9,
        runs=(run("agree"), run("off"), run("no-params"), idle),
        declared=(declared("agree", 25_000_000_000, 7e9),
                  declared("off", 1_000_000_000, 7e9, flop=1.4e21),
                  declared("no-params", 123_456, None),
                  declared("elsewhere", 1000, 7e9),
                  declared("idle", 0, 7e9)))


def samples(text: str) -> dict[tuple[str, str], float]:
    """(sample name, run) -> value, of the declared series."""
    return {(s.name, s.labels["run"]): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith("flopledger_run_declared")}


def test_declared_series_as_the_trainer_reported_them() -> None:
    got = samples(exposition(snapshot()))
    assert got[("flopledger_run_declared_flop_total", "agree")] == pytest.approx(1.05e21)
    assert got[("flopledger_run_declared_tokens_total", "agree")] == 25_000_000_000
    assert got[("flopledger_run_declared_steps_total", "agree")] == 25_000_000_000 // 4096
    assert got[("flopledger_run_declared_to_measured_ratio", "agree")] == pytest.approx(1.05)
    assert got[("flopledger_run_declared_to_measured_ratio", "off")] == pytest.approx(1.4)
    assert got[("flopledger_run_declared_flop_total", "off")] == 1.4e21


def test_unknown_values_are_left_out() -> None:
    got = samples(exposition(snapshot()))
    # No parameter count: its tokens and steps, no FLOP and no ratio.
    assert got[("flopledger_run_declared_tokens_total", "no-params")] == 123_456
    assert ("flopledger_run_declared_flop_total", "no-params") not in got
    assert ("flopledger_run_declared_to_measured_ratio", "no-params") not in got
    # Not measured on this node, or nothing measured yet: no ratio (never inf or NaN).
    assert got[("flopledger_run_declared_flop_total", "elsewhere")] == 6 * 7e9 * 1000
    assert ("flopledger_run_declared_to_measured_ratio", "elsewhere") not in got
    assert got[("flopledger_run_declared_flop_total", "idle")] == 0.0
    assert ("flopledger_run_declared_to_measured_ratio", "idle") not in got


def test_labels_and_help_say_what_is_declared() -> None:
    text = exposition(snapshot())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in (("flopledger_run_declared_flop", "counter"),
                       ("flopledger_run_declared_tokens", "counter"),
                       ("flopledger_run_declared_steps", "counter"),
                       ("flopledger_run_declared_to_measured_ratio", "gauge")):
        family = families[name]
        assert family.type == kind, name
        assert "as the trainer reported it" in family.documentation, name
        for s in family.samples:
            assert set(s.labels) == {"run", "model"}, s
            assert s.labels["model"] == f"{s.labels['run']}-model", s
    get = registry_of(DeclaredCollector(snapshot)).get_sample_value
    assert get("flopledger_run_declared_tokens_total",
               {"run": "agree", "model": "agree-model"}) == 25_000_000_000


def test_no_declaration_no_declared_families() -> None:
    text = exposition(dataclasses.replace(sample_snapshot(), declared=()))
    assert "flopledger_run_declared" not in text
    assert 'flopledger_collector_success{collector="declared"} 1.0' in text
    assert "flopledger_run_declared" not in exposition(None)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool missing: `make test` installs Debian's prometheus")
def test_promtool_accepts_the_declared_series() -> None:
    result = subprocess.run(["promtool", "check", "metrics"], input=exposition(snapshot()),
                            text=True, capture_output=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == ""
