"""A ledger of a simulated frontier pre-training run, for tests and the sample report.

The run's compute is the simulator's ground truth for one H100 running the pre-training
workload, hour by hour, times the GPUs the run has: 1,024 for the first three days,
then 4,096. It declares a 60-day plan and its size (70e9 parameters, 28e12 tokens).
The ledger gets one record per hour per quarter of the cluster.

``python -m tests.sample_ledger docs/`` writes docs/sample-report.md and .png.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from agent.accounting.records import LedgerRecord
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from agent.sources.scenarios import SCENARIOS
from agent.sources.simulated import SimulatedGpu
from agent.sources.specs import load_spec_table

HOUR_NS = 3600 * 10**9
DAY = 24
T0 = 1_780_000_000 * 10**9
RUN = "frontier-pt"
MODEL = "frontier"
META = {RUN: RunRow(RUN, MODEL, "pre-training",
                    {"plan.duration_s": 60 * 86400.0, "plan.params": 70e9,
                     "plan.tokens": 28e12, "precision": "bf16", "via": "env"})}


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
            seq=-1, kind="interval", node=f"pod-{part}", run=RUN, model=MODEL,
            category="pre-training", gpu_uuid=f"GPU-group-{part}", gpu_index=part,
            start_ns=T0 + hour * HOUR_NS, end_ns=T0 + (hour + 1) * HOUR_NS,
            flop_low=int(central * 0.957), flop_central=central, flop_high=int(central * 1.044),
            energy_mj=int(n / 4 * 0.55e3 * 3600e3), samples=3600,
            covered_ns=HOUR_NS * n // 4, gap_ns=0, estimator="gpm_tensor",
            assumptions={"spec": "h100_sxm", "precision": "bf16",
                         "estimators": {"gpm_tensor": 3600}}))
    return records


def build(path: Path, hours: int,
          each_hour: Callable[[int, float], None] | None = None) -> None:
    """Write ``hours`` hours of the run; ``each_hour(hour, true_flop_so_far)`` is called
    after each hour is in the ledger."""
    ledger = Ledger(path, "cluster", load_or_create_key(path.parent / "node.key"))
    per_gpu = hourly_flop_per_gpu(hours)
    truth = 0.0
    for h in range(hours):
        ledger.append(run_records(h, per_gpu[h]), T0 + (h + 1) * HOUR_NS, META)
        truth += per_gpu[h] * gpus_at(h)
        if each_hour is not None:
            each_hour(h, truth)
    ledger.close()


def main(out_dir: Path) -> None:
    import tempfile

    from agent.compliance.thresholds import ThresholdSettings, load_registry
    from agent.compliance.watcher import ThresholdWatcher
    from agent.reports.chart import render_png
    from agent.reports.report import build_report, render_markdown

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.sqlite"
        hours = 40 * DAY
        build(path, hours)
        # The agent's watcher stores when a threshold became known to be met; the
        # report's deadlines count from that stored day.
        ThresholdWatcher(ThresholdSettings(), {}, load_registry(), path,
                         wall_ns=lambda: T0 + hours * HOUR_NS).run_once()
        rep = build_report({}, load_registry(), load_spec_table(), path, model=MODEL,
                           now_ns=T0 + hours * HOUR_NS)
        out_dir.mkdir(parents=True, exist_ok=True)
        render_png(rep, out_dir / "sample-report.png")
        text = render_markdown(rep, "sample-report.png").replace(str(path), "ledger.sqlite")
        (out_dir / "sample-report.md").write_text(text)
    print(f"wrote {out_dir / 'sample-report.md'} and {out_dir / 'sample-report.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
