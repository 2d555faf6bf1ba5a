"""The threshold watcher: one evaluation of a ledger, the notifications it enqueues,
and the immutable state it publishes for /metrics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.compliance.evaluate import Evaluation
from agent.compliance.state import ThresholdState
from agent.compliance.thresholds import ThresholdSettings, load_registry
from agent.compliance.watcher import ThresholdWatcher
from tests import sample_ledger
from tests.sample_ledger import DAY, HOUR_NS, MODEL, T0, build, run_records

HOURS = 4 * DAY
EU = "eu-art51-systemic-risk"


@dataclasses.dataclass(frozen=True)
class Sample:
    path: Path
    flop_high: int  # the sum of the records' high bounds


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    path = tmp_path_factory.mktemp("watcher") / "ledger.sqlite"
    # The simulated hours are the slow part: computed once, for build() and the sum.
    per_gpu = sample_ledger.hourly_flop_per_gpu(HOURS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sample_ledger, "hourly_flop_per_gpu", lambda hours: per_gpu[:hours])
        build(path, HOURS)
    high = sum(r.flop_high for h in range(HOURS) for r in run_records(h, per_gpu[h]))
    return Sample(path, high)


class Outbox:
    """Stands in for the durable outbox: idempotent by key."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, key: str, kind: str, level: float, severity: str, e: Evaluation,
                 payload: dict[str, object]) -> bool:
        if key in self.keys:
            return False
        self.keys.append(key)
        return True


def watcher(path: Path, enqueue: Outbox | None = None) -> ThresholdWatcher:
    return ThresholdWatcher(ThresholdSettings(), {}, load_registry(), path, enqueue,
                            wall_ns=lambda: T0 + HOURS * HOUR_NS)


def test_no_ledger_yet_publishes_nothing(tmp_path: Path) -> None:
    w = watcher(tmp_path / "missing.sqlite")
    assert w.run_once() is None
    assert w.state is None


def test_run_once_publishes_what_the_ledger_says(sample: Sample) -> None:
    outbox = Outbox()
    w = watcher(sample.path, outbox)
    state = w.run_once()
    assert state is not None
    assert w.state is state
    assert state.evaluated_wall_seconds == (T0 + HOURS * HOUR_NS) / 1e9
    assert state.evaluations == 1
    rows = {(r.subject_type, r.subject, r.regime): r for r in state.rows}
    model = rows[("model", MODEL, EU)]
    assert model.estimate == "high"
    assert model.fraction == pytest.approx(sample.flop_high / 1e25, rel=1e-9)
    assert 0 < model.fraction < 1
    assert not model.met
    # At 4,096 GPUs the 60-day plan crosses 10^25.
    assert model.will_be_met
    assert model.eta_seconds is not None
    assert model.eta_seconds > 0
    # The 10^23 indicative threshold is long passed.
    assert rows[("model", MODEL, "eu-gpai-indicative")].met
    assert outbox.keys
    assert state.notifications_enqueued == len(outbox.keys)
    assert f"model:{MODEL}|{EU}|will-be-met" in outbox.keys


def test_each_evaluation_swaps_in_a_new_immutable_state(sample: Sample) -> None:
    outbox = Outbox()
    w = watcher(sample.path, outbox)
    first = w.run_once()
    assert first is not None
    enqueued = len(outbox.keys)
    second = w.run_once()
    assert second is not None
    assert second is not first
    assert w.state is second
    assert (first.evaluations, second.evaluations) == (1, 2)
    # Already enqueued keys are not counted again.
    assert second.notifications_enqueued == first.notifications_enqueued == enqueued
    assert first.rows == second.rows
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.evaluations = 5  # type: ignore[misc]
    assert isinstance(first.rows, tuple)
    assert isinstance(second, ThresholdState)
