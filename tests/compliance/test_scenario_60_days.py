"""A 60-day pre-training plan toward the EU's 10^25 FLOP, evaluated once a day by the
threshold watcher against a real ledger, one record per day.

The run declares its end (``plan.end_time``, day 60) and trains at 2e23 FLOP a day
(central; the high bound 5 % above), so the plan projects 1.2e25 at the central rate.
The agent is down on days 37 and 38: the ledger holds a gap for them whose high bound
is the GPUs' peak, so the 0.8 and 0.9 levels are both crossed while nobody evaluates.
On day 40 the plan is cut short (its end moved to day 41): the projection falls below
the threshold and the "will be met" is resolved three evaluations later.

``pytest -s`` prints the notification log (kind, time, deadline).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agent import figures
from agent.accounting.records import LedgerRecord
from agent.compliance.evaluate import Evaluation, deadline_text
from agent.compliance.milestones import read_milestones
from agent.compliance.thresholds import ThresholdSettings, load_registry
from agent.compliance.watcher import ThresholdWatcher
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow

DAY_NS = 86400 * 10**9
HALF_HOUR_NS = 1800 * 10**9
T0 = 1_780_000_000 * 10**9
RUN, MODEL = "frontier-pt", "frontier"
EU = "eu-art51-systemic-risk"
PREFIX = f"model:{MODEL}|{EU}"
CENTRAL_PER_DAY = 2e23
PEAK_PER_DAY = 8e23  # the gap's high bound: the GPUs' peak rate
OUTAGE_DAYS = (37, 38)  # records ending on these days are gaps; no evaluation on them
CUT_DAY = 40
LAST_DAY = 45


def record(start_ns: int, end_ns: int, gap: bool = False) -> LedgerRecord:
    share = (end_ns - start_ns) / DAY_NS
    if gap:
        low = central = 0
        high = int(PEAK_PER_DAY * share)
    else:
        central = int(CENTRAL_PER_DAY * share)
        low, high = int(central * 0.95), int(central * 1.05)
    return LedgerRecord(
        seq=-1, kind="gap" if gap else "interval", node="pod-0", run=RUN, model=MODEL,
        category="pre-training", gpu_uuid="GPU-0", gpu_index=0, start_ns=start_ns,
        end_ns=end_ns, flop_low=low, flop_central=central, flop_high=high, energy_mj=0,
        samples=0 if gap else 1, covered_ns=0 if gap else end_ns - start_ns,
        gap_ns=end_ns - start_ns if gap else 0, estimator="none" if gap else "gpm_tensor",
        assumptions={"precision": "bf16"})


def meta(end_day: int) -> dict[str, RunRow]:
    return {RUN: RunRow(RUN, MODEL, "pre-training",
                        {"plan.end_time": (T0 + end_day * DAY_NS) / 1e9, "via": "env"})}


@dataclass(frozen=True)
class Logged:
    key: str
    kind: str
    level: float
    enqueued_ns: int
    at: str | None
    deadline: str | None


@dataclass
class Scenario:
    log: list[Logged]
    daily: dict[int, Evaluation]  # day -> the model's EU evaluation
    first: Evaluation  # half an hour in
    milestones: dict[str, int]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    path = tmp_path_factory.mktemp("scenario") / "ledger.sqlite"
    ledger = Ledger(path, "cluster", load_or_create_key(path.parent / "node.key"))
    registry = load_registry()
    clock = [T0]
    log: list[Logged] = []
    outbox: set[str] = set()

    def enqueue(key: str, kind: str, level: float, severity: str, e: Evaluation,
                payload: dict[str, object]) -> bool:
        if key in outbox:
            return False
        outbox.add(key)
        if key.startswith(PREFIX + "|"):
            at, deadline = payload["at"], payload["deadline"]
            assert at is None or isinstance(at, str)
            assert deadline is None or isinstance(deadline, str)
            log.append(Logged(key, kind, level, clock[0], at, deadline))
        return True

    def start_agent() -> ThresholdWatcher:
        return ThresholdWatcher(ThresholdSettings(), {}, registry, path, enqueue,
                                wall_ns=lambda: clock[0])

    def evaluation(w: ThresholdWatcher) -> Evaluation:
        assert w.run_once() is not None
        assert w.snapshot is not None
        return next(e for e in w.snapshot.evaluations
                    if e.key_prefix == PREFIX)

    watcher = start_agent()
    ledger.append([record(T0, T0 + HALF_HOUR_NS)], T0 + HALF_HOUR_NS, meta(60))
    clock[0] = T0 + HALF_HOUR_NS
    first = evaluation(watcher)
    ledger.append([record(T0 + HALF_HOUR_NS, T0 + DAY_NS)], T0 + DAY_NS, meta(60))
    daily: dict[int, Evaluation] = {}
    end_day = 60
    for day in range(1, LAST_DAY + 1):
        if day == CUT_DAY:
            end_day = 41
        if 1 < day <= 41:
            ledger.append([record(T0 + (day - 1) * DAY_NS, T0 + day * DAY_NS,
                                  gap=day in OUTAGE_DAYS)], T0 + day * DAY_NS, meta(end_day))
        clock[0] = T0 + day * DAY_NS
        if day in OUTAGE_DAYS:
            continue
        if day == OUTAGE_DAYS[-1] + 1:
            watcher = start_agent()  # a new process: nothing in memory survives
        daily[day] = evaluation(watcher)
    ledger.close()
    return Scenario(log, daily, first, read_milestones(path))


def test_print_the_notification_log(scenario: Scenario) -> None:
    print("\nnotification log (model frontier, EU Art. 51 10^25 FLOP):")
    print(f"{'day':>6}  {'kind':<12} {'level':>5}  {'key':<40} {'at':<21} deadline")
    for n in scenario.log:
        print(f"{(n.enqueued_ns - T0) / DAY_NS:6.2f}  {n.kind:<12} {n.level:5g}  "
              f"{n.key.removeprefix(PREFIX):<40} {n.at or '-':<21} {n.deadline or '-'}")
    kinds = [(n.kind, n.key.removeprefix(PREFIX)) for n in scenario.log]
    assert kinds == [
        ("will-be-met", "|will-be-met"),
        ("level", "|level:0.5"),
        ("level", "|level:0.8"),
        ("level", "|level:0.9"),
        ("resolved", "|will-be-met-resolved"),
    ]


def test_no_will_be_met_before_the_observation_window(scenario: Scenario) -> None:
    # Half an hour in, the plan already projects past 10^25, but an hour is needed.
    assert scenario.first.outlook == "may be met"
    assert "needs 1 h" in scenario.first.note
    assert not scenario.first.active
    assert scenario.first.deadline_ns is None


def test_will_be_met_is_known_on_day_1_and_its_deadline_never_moves(scenario: Scenario) -> None:
    will = scenario.log[0]
    assert will.enqueued_ns == T0 + DAY_NS
    assert will.at == figures.when(T0 + DAY_NS)
    assert will.deadline == figures.when(T0 + 15 * DAY_NS)
    assert scenario.milestones[f"{PREFIX}|will-be-met"] == T0 + DAY_NS
    deadlines = {day: e.deadline_ns for day, e in scenario.daily.items() if e.active}
    assert set(deadlines) == set(range(1, 42)) - set(OUTAGE_DAYS)
    # Identical in every later evaluation, across the restart after the outage.
    assert set(deadlines.values()) == {T0 + 15 * DAY_NS}
    # Past it, it is said to have passed.
    assert deadline_text(T0 + 15 * DAY_NS, T0 + 20 * DAY_NS) == (
        f"deadline passed on {figures.when(T0 + 15 * DAY_NS)}")


def test_levels_jumped_over_during_the_outage_are_each_notified_once(
        scenario: Scenario) -> None:
    levels = {n.key.rsplit("|", 1)[1]: n for n in scenario.log if n.kind == "level"}
    # 0.5 on the day it was crossed (high bound 1.05 x 2e23 a day: day 24).
    assert levels["level:0.5"].enqueued_ns == T0 + 24 * DAY_NS
    # 0.8 and 0.9 were both crossed while the agent was down: both on its restart.
    restart = T0 + (OUTAGE_DAYS[-1] + 1) * DAY_NS
    assert levels["level:0.8"].enqueued_ns == levels["level:0.9"].enqueued_ns == restart
    assert scenario.daily[36].assessment.levels_reached == (0.5,)
    # Levels carry no legal deadline.
    assert all(n.deadline is None for n in levels.values())
    assert "level:1" not in levels
    assert len({n.key for n in scenario.log}) == len(scenario.log)


def test_a_plan_cut_short_resolves_the_projection(scenario: Scenario) -> None:
    cut = scenario.daily[CUT_DAY]
    assert cut.outlook != "will be met"
    assert cut.planned_projected is not None
    assert cut.planned_projected.central < 0.95e25
    # Hysteresis: three evaluations below (days 40, 41, 42), then resolved.
    assert cut.active
    assert scenario.daily[41].active
    assert not scenario.daily[42].active
    resolved = scenario.log[-1]
    assert (resolved.kind, resolved.enqueued_ns) == ("resolved", T0 + 42 * DAY_NS)
    assert resolved.deadline is None
    assert scenario.milestones[f"{PREFIX}|will-be-met-resolved"] == T0 + 42 * DAY_NS
    # Not met, and no new "will be met" afterwards.
    assert not any(e.assessment.met for e in scenario.daily.values())
    assert all(e.deadline_ns is None for day, e in scenario.daily.items() if day >= 42)
    assert f"{PREFIX}|will-be-met:2" not in scenario.milestones
