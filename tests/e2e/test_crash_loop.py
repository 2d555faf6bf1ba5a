"""Crash loop: `kill -9` the agent at random moments, restart it, and check the ledger.

The simulated GPUs are anchored to the wall clock (``sim.epoch_unix_s``), so they keep
working while the agent is dead, exactly as real GPUs would, and the ground truth over
any stretch of wall time is known. Every crash may lose what was not yet checkpointed;
that loss, and the time the agent was down, must come back as a gap record whose high
bound covers it. Nothing may be counted twice.

``FLOPLEDGER_CRASHES`` sets the number of kills (``make soak`` runs many more).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.accounting.records import LedgerRecord
from agent.ledger.query import iter_records
from agent.ledger.verify import verify_ledger
from agent.sources.clock import VirtualClock
from agent.sources.scenarios import SCENARIOS
from agent.sources.simulated import SimulatedSource
from agent.sources.specs import load_spec_table

pytestmark = pytest.mark.e2e

CRASHES = int(os.environ.get("FLOPLEDGER_CRASHES", "50"))
CHECKPOINT_S = 1.0
INTERVAL_S = 0.2
GPUS = 2


def truth_at(epoch_ns: int, wall_ns: int) -> list[float]:
    """FLOP each simulated GPU executed from the epoch to ``wall_ns``."""
    clock = VirtualClock(start_monotonic_ns=0, start_wall_ns=wall_ns)
    source = SimulatedSource(load_spec_table(), "h100_sxm", GPUS, SCENARIOS["pretrain-bf16"],
                             seed=1, clock=clock, epoch_wall_ns=epoch_ns)
    truth = source.read().sim_true_flop_total
    assert truth is not None
    return [float(x) for x in truth]


def window_truth(epoch_ns: int, gpu: int, start_ns: int, end_ns: int) -> float:
    return truth_at(epoch_ns, end_ns)[gpu] - truth_at(epoch_ns, start_ns)[gpu]


def durable_end_ns(state: Path) -> int:
    """The latest sample time the ledger holds durably (sealed or open records)."""
    path = state / "ledger.sqlite"
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            bodies = db.execute("SELECT body FROM open_records").fetchall()
            (sealed,) = db.execute("SELECT COALESCE(MAX(end_ns), 0) FROM records").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return 0
    opened = [LedgerRecord.decode(bytes(b)).end_ns for (b,) in bodies]
    return max([int(sealed), *opened])


def start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--log-level", "WARNING", "run", "--config",
             str(config), "--listen", "127.0.0.1:0"],
            stdout=out, stderr=subprocess.STDOUT,
        )


# 50 agent starts, each to a durable checkpoint: on a loaded two-core machine beside
# other test workers, several minutes; the guard scales with the number of kills.
@pytest.mark.timeout(max(300, 15 * CRASHES))
def test_kill_9_loop_loses_at_most_a_checkpoint_and_never_double_counts(tmp_path: Path) -> None:
    epoch_ns = time.time_ns() - 60 * 10**9
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
state_dir = "{state}"
node = "crash-node"
interval_s = {INTERVAL_S}
integrate_every = 2
checkpoint_s = {CHECKPOINT_S}
source = "simulated"
[sim]
gpus = {GPUS}
scenario = "pretrain-bf16"
epoch_unix_s = {epoch_ns / 1e9}
""")
    log = tmp_path / "agent.log"
    rng = random.Random(20261128)
    # (kill time, True if this incarnation had committed a checkpoint before the kill)
    kills: list[tuple[int, bool]] = []
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(CRASHES):
            started_ns = time.time_ns()
            proc = start_agent(config, log)
            if rng.random() < 0.2:
                # Killed anywhere in start-up: key, ledger, kernels, first samples.
                time.sleep(rng.uniform(0.0, 2.0))
                checkpointed = False
            else:
                # Wait until this incarnation has made a checkpoint durable...
                deadline = time.monotonic() + 30
                while durable_end_ns(state) <= started_ns and (
                    time.monotonic() < deadline and proc.poll() is None
                ):
                    time.sleep(0.02)
                # Then at a random moment of the checkpoint cycle.
                time.sleep(rng.uniform(0.0, 2.5 * CHECKPOINT_S))
                checkpointed = True
            proc.send_signal(signal.SIGKILL)
            kills.append((time.time_ns(), checkpointed))
            proc.wait(30)
    finally:  # a guard's timeout stops the loop: no agent is left running
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(30)
    proc = start_agent(config, log)
    time.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()[-2000:]

    ledger = state / "ledger.sqlite"
    report = verify_ledger(ledger)
    assert report.ok, report.problems  # includes: no two records of a GPU overlap

    records = list(iter_records(ledger))
    gaps = [r for r in records if r.kind == "gap"]
    intervals = [r for r in records if r.kind == "interval"]
    assert intervals
    # Every crash that happened after the first checkpoint left one gap per GPU.
    assert len(gaps) >= GPUS
    assert len(gaps) <= GPUS * CRASHES

    # What a crash lost is the stretch from the last checkpointed sample to the kill:
    # at most one checkpoint interval (plus a sampling interval and scheduling slack).
    ends = sorted({r.end_ns for r in records})
    lost_s = []
    for kill_ns, checkpointed in kills:
        if not checkpointed:
            continue
        last_end = max(e for e in ends if e <= kill_ns)
        lost_s.append((kill_ns - last_end) / 1e9)
    assert lost_s
    assert max(lost_s) <= CHECKPOINT_S + 2 * INTERVAL_S + 0.5, sorted(lost_s)[-5:]

    # Against the truth over the whole span the ledger covers, per GPU.
    for gpu in range(GPUS):
        mine = [r for r in records if r.gpu_index == gpu]
        first, last = min(r.start_ns for r in mine), max(r.end_ns for r in mine)
        truth = window_truth(epoch_ns, gpu, first, last)
        low = sum(r.flop_low for r in mine)
        central = sum(r.flop_central for r in mine)
        high = sum(r.flop_high for r in mine)
        assert low <= truth <= high, (gpu, low, truth, high)
        # Central misses exactly the gaps (downtime + lost windows), nothing else, and
        # never counts anything twice.
        in_gaps = sum(window_truth(epoch_ns, gpu, g.start_ns, g.end_ns)
                      for g in gaps if g.gpu_index == gpu)
        sampled = truth - in_gaps
        assert central <= sampled * 1.02
        assert abs(central / sampled - 1) < 0.02, (gpu, central, sampled)
        covered = sum(r.end_ns - r.start_ns for r in mine if r.kind == "interval") / 1e9
        print(f"GPU {gpu}: {CRASHES} crashes over {(last - first) / 1e9:.0f} s; "
              f"sampled {covered:.0f} s; central {central:.3e} vs truth {truth:.3e} "
              f"({central / truth - 1:+.1%}), of which in gaps {in_gaps:.3e}; "
              f"central vs truth outside gaps {central / sampled - 1:+.2%}")
    print(f"lost per crash (kill - last checkpointed sample): mean "
          f"{sum(lost_s) / len(lost_s):.2f} s, max {max(lost_s):.2f} s, checkpoint interval "
          f"{CHECKPOINT_S} s; {len(gaps) // GPUS} gap(s) per GPU")
