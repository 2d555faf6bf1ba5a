"""Forecasts: a simulated 10^25-bound pre-training run, evaluated as it progresses.

The run's compute comes from the simulator's ground truth for one H100 running the
pre-training workload, hour by hour, times the GPUs the run has: 1,024 for the first
three days, then 4,096. It declares a 60-day plan. The ledger gets one record per hour
per quarter of the cluster; the evaluator runs once a day.
"""

from __future__ import annotations

import pytest

from agent.config import parse_config
from agent.evaluate import evaluate, notifications
from agent.ledger.records import LedgerRecord
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from agent.sources.scenarios import SCENARIOS
from agent.sources.simulated import SimulatedGpu
from agent.specs import load_spec_table
from agent.thresholds import load_registry

HOUR_NS = 3600 * 10**9
DAY = 24
T0 = 1_780_000_000 * 10**9
THRESHOLD = 1e25


def gpus_at(hour: int) -> int:
    return 1024 if hour < 3 * DAY else 4096


def hourly_flop_per_gpu(hours: int) -> list[float]:
    gpu = SimulatedGpu(0, load_spec_table()["h100_sxm"], SCENARIOS["pretrain-bf16"], seed=3)
    out, before = [], 0.0
    for h in range(1, hours + 1):
        gpu.advance(h * HOUR_NS)
        out.append(gpu.true_flop - before)
        before = gpu.true_flop
    return out


def run_records(hour: int, flop_per_gpu: float) -> list[LedgerRecord]:
    n = gpus_at(hour)
    records = []
    for part in range(4):
        central = int(flop_per_gpu * n / 4)
        records.append(LedgerRecord(
            seq=-1, kind="interval", node=f"pod-{part}", run="frontier-pt", model="frontier",
            category="pre-training", gpu_uuid=f"GPU-group-{part}", gpu_index=part,
            start_ns=T0 + hour * HOUR_NS, end_ns=T0 + (hour + 1) * HOUR_NS,
            flop_low=int(central * 0.957), flop_central=central, flop_high=int(central * 1.044),
            energy_mj=0, samples=3600, covered_ns=HOUR_NS * n // 4, gap_ns=0,
            estimator="gpm_tensor", assumptions={"precision": "bf16"}))
    return records


@pytest.fixture(scope="module")
def timeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("forecast")
    path = tmp / "ledger.sqlite"
    ledger = Ledger(path, "cluster", load_or_create_key(tmp / "node.key"))
    config = parse_config({"agent": {"state_dir": str(tmp)}})
    registry = load_registry()
    hours = 62 * DAY
    per_gpu = hourly_flop_per_gpu(hours)
    meta = {"frontier-pt": RunRow("frontier-pt", "frontier", "pre-training",
                                  {"plan.duration_s": 60 * 86400.0})}
    truth = 0.0
    crossing_hour = None
    will_fired = None
    level_fired: dict[str, int] = {}
    etas: list[tuple[int, float]] = []
    for h in range(hours):
        ledger.append(run_records(h, per_gpu[h]), T0 + (h + 1) * HOUR_NS, meta)
        truth += per_gpu[h] * gpus_at(h)
        if crossing_hour is None and truth > THRESHOLD:
            crossing_hour = h + 1
        if (h + 1) % DAY:
            continue
        snap = evaluate(config, registry, path, T0 + (h + 1) * HOUR_NS)
        for key, kind, _level, e in notifications(snap):
            a = e.assessment
            if a.regime.key != "eu-art51-systemic-risk" or a.subject.kind != "model":
                continue
            level_fired.setdefault(key, h + 1)
            if kind == "will-be-met" and will_fired is None:
                will_fired = h + 1
        for e in snap.evaluations:
            a = e.assessment
            if a.regime.key == "eu-art51-systemic-risk" and a.subject.kind == "model":
                eta = e.projection.eta_s.get("central")
                if eta is not None and not a.met:
                    etas.append((h + 1, (h + 1) * 3600 + eta))
    ledger.close()
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
