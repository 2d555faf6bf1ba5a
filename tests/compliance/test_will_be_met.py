""""Will be met" only from a declared plan after the observation window; "may be met"
when only the high bound crosses; the ETA "at the current rate" without a plan; an
ancestor still training counts in its descendant's forecast; deadlines from the stored
day, not from the time of the evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.accounting.records import LedgerRecord
from agent.compliance.evaluate import Evaluation, evaluate, notifications
from agent.compliance.lineage import ModelInfo
from agent.compliance.milestones import MilestoneStore, read_milestones
from agent.compliance.thresholds import (
    ThresholdSettings,
    load_registry,
    parse_threshold_settings,
)
from agent.compliance.watcher import ThresholdWatcher
from agent.configfile import Problems
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow

T0 = 1_780_000_000 * 10**9
S = 10**9
HOUR = 3600 * S
EU = "eu-art51-systemic-risk"


def rec(run: str, model: str, start_ns: int, end_ns: int, central: float,
        high_share: float = 1.05, category: str = "pre-training") -> LedgerRecord:
    c = int(central)
    return LedgerRecord(
        seq=-1, kind="interval", node="n", run=run, model=model, category=category,
        gpu_uuid=f"GPU-{run}", gpu_index=0, start_ns=start_ns, end_ns=end_ns,
        flop_low=int(c * 0.95), flop_central=c, flop_high=int(c * high_share), energy_mj=0,
        samples=1, covered_ns=end_ns - start_ns, gap_ns=0, estimator="gpm_tensor",
        assumptions={})


def ledger(tmp_path: Path, records: list[LedgerRecord], meta: dict[str, RunRow],
           now_ns: int) -> Path:
    path = tmp_path / "ledger.sqlite"
    lg = Ledger(path, "n", load_or_create_key(tmp_path / "node.key"))
    lg.append(records, now_ns, meta)
    lg.close()
    return path


def eu(path: Path, now_ns: int, subject: str = "m",
       models: dict[str, ModelInfo] | None = None) -> Evaluation:
    snap = evaluate(models or {}, load_registry(), path, now_ns)
    return next(e for e in snap.evaluations if e.key_prefix == f"model:{subject}|{EU}")


def test_a_run_without_a_plan_gets_an_eta_at_the_current_rate_never_will_be_met(
        tmp_path: Path) -> None:
    # 30 seconds at 3 % of 10^25 (the case that used to fire "will be met").
    now = T0 + 30 * S
    path = ledger(tmp_path, [rec("r", "m", T0, now, 3e23)],
                  {"r": RunRow("r", "m", "pre-training", {})}, now)
    e = eu(path, now)
    assert (e.outlook, e.will_be_met, e.note) == ("", False, "at the current rate")
    assert e.planned_projected is None
    assert e.projection.eta_s["high"] is not None
    keys: list[str] = []

    def enqueue(key: str, *_: object) -> bool:
        keys.append(key)
        return True

    w = ThresholdWatcher(ThresholdSettings(), {}, load_registry(), path, enqueue,
                         wall_ns=lambda: now)
    w.run_once()
    assert not [k for k in keys if "will-be-met" in k]
    # Only the 10^23 indicative threshold, already met, is stored.
    assert list(read_milestones(path)) == ["model:m|eu-gpai-indicative|met"]


@pytest.mark.parametrize(("hours", "central", "outlook"), [
    (0.5, 3e23, "may be met"),    # the plan crosses, but observed for under an hour
    (2.0, 5e22, "may be met"),    # two hours, but only 0.5 % of the threshold
    (2.0, 2e23, "will be met"),   # both: known
])
def test_will_be_met_needs_the_observation_window(tmp_path: Path, hours: float,
                                                  central: float, outlook: str) -> None:
    now = T0 + int(hours * HOUR)
    # The plan ends after 1,000 hours: far past 10^25 at any of these rates.
    plan: dict[str, object] = {"plan.end_time": (T0 + 1000 * HOUR) / 1e9}
    path = ledger(tmp_path, [rec("r", "m", T0, now, central)],
                  {"r": RunRow("r", "m", "pre-training", plan)}, now)
    assert eu(path, now).outlook == outlook


def test_only_the_high_bound_crossing_is_may_be_met(tmp_path: Path) -> None:
    now = T0 + 10 * HOUR
    # 1e24 in 10 h, planned to end at 97 h: central 9.7e24, high (x 1.1) 1.07e25.
    plan: dict[str, object] = {"plan.end_time": (T0 + 97 * HOUR) / 1e9}
    path = ledger(tmp_path, [rec("r", "m", T0, now, 1e24, high_share=1.1)],
                  {"r": RunRow("r", "m", "pre-training", plan)}, now)
    e = eu(path, now)
    assert e.planned_projected is not None
    assert e.planned_projected.central < 1e25 < e.planned_projected.high
    assert (e.outlook, e.will_be_met) == ("may be met", False)
    assert "high bound" in e.note


def test_a_declared_size_is_a_plan(tmp_path: Path) -> None:
    now = T0 + 10 * HOUR
    plan: dict[str, object] = {"plan.params": 70e9, "plan.tokens": 28e12}  # 6PD = 1.18e25
    path = ledger(tmp_path, [rec("r", "m", T0, now, 2e23)],
                  {"r": RunRow("r", "m", "pre-training", plan)}, now)
    e = eu(path, now)
    assert e.planned_projected is not None
    assert e.planned_projected.central == pytest.approx(6 * 70e9 * 28e12, rel=1e-9)
    assert e.outlook == "will be met"


def test_planned_gpus_alone_fix_no_end(tmp_path: Path) -> None:
    now = T0 + 10 * HOUR
    path = ledger(tmp_path, [rec("r", "m", T0, now, 2e23)],
                  {"r": RunRow("r", "m", "pre-training", {"plan.gpus": 4096.0})}, now)
    assert eu(path, now).outlook == ""


def test_an_ancestor_still_training_counts_in_its_descendants_forecast(
        tmp_path: Path) -> None:
    now = T0 + 10 * HOUR
    # "base" trains on (2e23 per 10 h, until 500 h); "chat" fine-tunes it, briefly.
    base_plan: dict[str, object] = {"plan.end_time": (T0 + 500 * HOUR) / 1e9}
    chat_plan = {"plan.end_time": (T0 + 11 * HOUR) / 1e9, "base_models": ["base"]}
    path = ledger(tmp_path, [rec("b", "base", T0, now, 2e23),
                             rec("c", "chat", T0, now, 1e20, category="fine-tuning")],
                  {"b": RunRow("b", "base", "pre-training", base_plan),
                   "c": RunRow("c", "chat", "fine-tuning", chat_plan)}, now)
    chat = eu(path, now, "chat")
    # The cumulative scope inherits: base's 1e25-bound future is chat's too.
    assert chat.planned_projected is not None
    assert chat.planned_projected.central > 9e24
    assert chat.projection.rate.central == pytest.approx(2e23 / 36000 + 1e20 / 36000,
                                                         rel=1e-6)
    assert chat.outlook == "will be met"


def test_the_deadline_counts_from_the_stored_day_not_from_now(tmp_path: Path) -> None:
    now = T0 + 10 * HOUR
    plan: dict[str, object] = {"plan.end_time": (T0 + 1000 * HOUR) / 1e9}
    path = ledger(tmp_path, [rec("r", "m", T0, now, 2e23)],
                  {"r": RunRow("r", "m", "pre-training", plan)}, now)
    known = T0 + 5 * HOUR
    MilestoneStore(path).record({f"model:m|{EU}|will-be-met": known})
    # A stored row never moves.
    MilestoneStore(path).record({f"model:m|{EU}|will-be-met": now})
    assert read_milestones(path)[f"model:m|{EU}|will-be-met"] == known
    for later in (now, now + 3 * HOUR, now + 30 * 24 * HOUR):
        e = eu(path, later)
        assert e.active
        assert e.deadline_ns == known + 14 * 24 * HOUR
    snap = evaluate({}, load_registry(), path, now)
    events = {ev.key: ev for ev in notifications(snap)}
    assert events[f"model:m|{EU}|will-be-met"].deadline_ns == known + 14 * 24 * HOUR


def test_met_counts_from_the_record_that_crossed(tmp_path: Path) -> None:
    # Two records; the second takes the high bound over 1e25 at T0 + 2 h.
    now = T0 + 50 * HOUR
    path = ledger(tmp_path, [rec("r", "m", T0, T0 + HOUR, 6e24),
                             rec("r", "m", T0 + HOUR, T0 + 2 * HOUR, 6e24)],
                  {"r": RunRow("r", "m", "pre-training", {})}, now)
    for later in (now, now + 40 * 24 * HOUR):
        e = eu(path, later)
        assert e.assessment.met
        assert e.met_at_ns == T0 + 2 * HOUR
        assert e.deadline_ns == T0 + 2 * HOUR + 14 * 24 * HOUR


def test_new_settings_are_validated() -> None:
    problems = Problems("agent.toml")
    settings = parse_threshold_settings(
        {"thresholds": {"resolve_after": 1.5, "resolve_margin": 0.9,
                        "min_observation_s": -1, "min_observation_fraction": 2}}, problems)
    assert settings == ThresholdSettings()
    assert sorted(k for k, _ in problems.items) == [
        "thresholds.min_observation_fraction", "thresholds.min_observation_s",
        "thresholds.resolve_after", "thresholds.resolve_margin"]
    good = parse_threshold_settings(
        {"thresholds": {"resolve_after": 5, "min_observation_s": 7200}}, problems)
    assert (good.resolve_after, good.min_observation_s) == (5, 7200.0)
