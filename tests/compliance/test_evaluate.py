"""Forecasts: a simulated 10^25-bound pre-training run (tests/sample_ledger.py),
evaluated once a day as it progresses."""

from __future__ import annotations

import pytest

from agent.compliance.evaluate import Evaluation, evaluate
from agent.compliance.thresholds import ThresholdSettings, load_registry
from agent.compliance.watcher import ThresholdWatcher
from tests.sample_ledger import DAY, HOUR_NS, T0, build

THRESHOLD = 1e25


@pytest.fixture(scope="module")
def timeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("forecast")
    path = tmp / "ledger.sqlite"
    found: dict[str, object] = {"crossing_hour": None, "will_fired": None}
    level_fired: dict[str, int] = {}
    etas: list[tuple[int, float]] = []
    clock = [T0]

    def enqueue(key: str, kind: str, level: float, severity: str, e: Evaluation,
                payload: dict[str, object]) -> bool:
        a = e.assessment
        if (a.regime.key != "eu-art51-systemic-risk" or a.subject.kind != "model"
                or key in level_fired):
            return False
        level_fired[key] = (clock[0] - T0) // HOUR_NS
        if kind == "will-be-met" and found["will_fired"] is None:
            found["will_fired"] = level_fired[key]
        return True

    # "Will be met" is stored by the watcher before it is notified: evaluate through it.
    watcher = ThresholdWatcher(ThresholdSettings(), {}, load_registry(), path, enqueue,
                               wall_ns=lambda: clock[0])

    def each_hour(h: int, truth: float) -> None:
        if found["crossing_hour"] is None and truth > THRESHOLD:
            found["crossing_hour"] = h + 1
        if (h + 1) % DAY:
            return
        clock[0] = T0 + (h + 1) * HOUR_NS
        watcher.run_once()
        snap = evaluate({}, watcher.registry, path, clock[0])
        for e in snap.evaluations:
            a = e.assessment
            if a.regime.key == "eu-art51-systemic-risk" and a.subject.kind == "model":
                eta = e.projection.eta_s.get("central")
                if eta is not None and not a.met:
                    etas.append((h + 1, (h + 1) * 3600 + eta))

    build(path, 62 * DAY, each_hour)
    crossing_hour, will_fired = found["crossing_hour"], found["will_fired"]
    return {"crossing_hour": crossing_hour, "will_fired": will_fired, "levels": level_fired,
            "etas": etas}


def test_will_be_met_fires_well_before_the_crossing(timeline: dict[str, object]) -> None:
    crossing = timeline["crossing_hour"]
    fired = timeline["will_fired"]
    assert isinstance(crossing, int)
    assert isinstance(fired, int)
    # Its declared size (6PD, 1.2e25) crosses 10^25 at the central rate as soon as the
    # run has been observed for an hour and holds 1% of the threshold (day 3).
    assert 2 * DAY <= fired <= 4 * DAY
    assert crossing - fired >= 30 * DAY
    levels = timeline["levels"]
    assert isinstance(levels, dict)
    hours = {k.rsplit("|", 1)[1]: v for k, v in levels.items()}
    assert hours["level:0.5"] < hours["level:0.8"] < hours["level:0.9"] < hours["level:1"]
    # The high bound is used: level 1.0 is notified no later than the true crossing.
    assert hours["level:1"] <= crossing + DAY
    print(f"\ntrue crossing of 1e25 at day {crossing / 24:.1f}; 'will be met' at day "
          f"{fired / 24:.1f} ({(crossing - fired) / 24:.1f} days ahead; EU deadline day "
          f"{fired / 24 + 14:.1f}); level 1.0 notified at day {hours['level:1'] / 24:.1f}")


def test_eta_error_shrinks_as_the_run_progresses(timeline: dict[str, object]) -> None:
    crossing = timeline["crossing_hour"]
    etas = timeline["etas"]
    assert isinstance(crossing, int)
    assert isinstance(etas, list)
    predicted = [(h, t) for h, t in etas if t > 10 * 3600 and h % (5 * DAY) == 0]
    errors = [(h, (t - crossing * 3600) / 86400) for h, t in predicted]
    print("\nday  predicted crossing - true (days, central rate)")
    for h, err in errors:
        print(f"{h / 24:4.0f}  {err:+.2f}")
    late = [abs(e) for h, e in errors if h >= 10 * DAY]
    assert late
    assert max(late) < 2.0
