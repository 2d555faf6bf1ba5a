"""Forecasts: a simulated 10^25-bound pre-training run (tests/sample_ledger.py),
evaluated once a day as it progresses."""

from __future__ import annotations

import pytest

from agent.compliance.evaluate import evaluate, notifications
from agent.compliance.thresholds import load_registry
from tests.sample_ledger import DAY, HOUR_NS, T0, build

THRESHOLD = 1e25


@pytest.fixture(scope="module")
def timeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("forecast")
    path = tmp / "ledger.sqlite"
    registry = load_registry()
    found: dict[str, object] = {"crossing_hour": None, "will_fired": None}
    level_fired: dict[str, int] = {}
    etas: list[tuple[int, float]] = []

    def each_hour(h: int, truth: float) -> None:
        if found["crossing_hour"] is None and truth > THRESHOLD:
            found["crossing_hour"] = h + 1
        if (h + 1) % DAY:
            return
        snap = evaluate({}, registry, path, T0 + (h + 1) * HOUR_NS)
        for key, kind, _level, e in notifications(snap):
            a = e.assessment
            if a.regime.key != "eu-art51-systemic-risk" or a.subject.kind != "model":
                continue
            level_fired.setdefault(key, h + 1)
            if kind == "will-be-met" and found["will_fired"] is None:
                found["will_fired"] = h + 1
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
    # Once the run is at full scale its 60-day plan projects past 10^25.
    assert fired <= 4 * DAY
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
