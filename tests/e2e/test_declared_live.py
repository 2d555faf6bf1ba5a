"""Declared against measured compute, live, and the release gate on what was measured.

A live agent on 8 simulated GPUs: run ``agree-run`` (model ``demo-agree``) on 6 of them,
``overstated-run`` (model ``demo-overstated``) on 2. A trainer process per run (the real
``flopledger_client``) declares the run and reports the tokens it processed. The
simulator's ground truth stands in for the trainer's own exact count of its work: each
trainer reports the tokens its true FLOP correspond to, D = true FLOP / (6 x P). The
first declares its true parameter count, so its 6 x P x D is its true work and must lie
within the agent's measured band; the second declares 1.5 x its parameter count (a
misdeclaration), so its 6 x P x D overstates its work by 50% and must be flagged in the
ratio metric, in ``status`` and in ``report``. Then ``gate`` on both models with the
shipped policy (both below every tier: open weights allowed) and with a policy whose one
tier lies between the two models' totals (one allowed, one not).

``pytest -s`` prints the commands' output.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.agentproc import agent, scrape, wait_for
from tests.paths import REPO

pytestmark = pytest.mark.e2e

PARAMS = 1.0e9
SECONDS = 20.0

TRAINER = textwrap.dedent("""
    import sys, time, urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    from flopledger_client import Run

    url, run_id, model, gpus, declared_params, seconds = sys.argv[1:7]
    gpus = set(gpus.split(","))
    true_params, declared_params = float(sys.argv[7]), float(declared_params)

    def true_flop():
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "flopledger_sim_true_flop_total" and s.labels["gpu"] in gpus)

    with Run(run_id, report_every_s=0.0) as run:
        run.declare(model=model, category="pre-training", precision="bf16",
                    recompute="none", params=declared_params, planned_tokens=1e15)
        end = time.monotonic() + float(seconds)
        step = 0
        while time.monotonic() < end:
            time.sleep(0.5)
            step += 1
            run.report(tokens=int(true_flop() / (6 * true_params)), steps=step)
        run.report(tokens=int(true_flop() / (6 * true_params)), steps=step, final=True)
""")


def _flopledger(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                            text=True, check=False)
    print(f"$ flopledger {' '.join(args)}   (exit {result.returncode})")
    print(result.stdout + result.stderr)
    return result


def test_declared_and_measured_agree_or_are_flagged_and_the_gate_decides(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        [agent]
        source = "simulated"
        interval_s = 0.2
        checkpoint_s = 0.5
        record_s = 2.0
        state_dir = "{state}"
        node = "demo-node"

        [client]
        spool_dir = "{tmp_path / 'spool'}"
        progress_record_s = 1.0

        [sim]
        scenario = "pretrain-bf16"
        gpus = 8

        [[sim.jobs]]
        gpus = [0, 1, 2, 3, 4, 5]
        [sim.jobs.env]
        FLOPLEDGER_RUN_ID = "agree-run"
        FLOPLEDGER_PRECISION = "bf16"
        FLOPLEDGER_RECOMPUTE = "none"

        [[sim.jobs]]
        gpus = [6, 7]
        [sim.jobs.env]
        FLOPLEDGER_RUN_ID = "overstated-run"
        FLOPLEDGER_PRECISION = "bf16"
        FLOPLEDGER_RECOMPUTE = "none"
    """))
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    env = {**os.environ, "FLOPLEDGER_SPOOL_DIR": str(tmp_path / "spool"),
           "PYTHONPATH": f"{REPO / 'client'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with agent(config, log=tmp_path / "agent.log") as (proc, url):
        wait_for(url, proc)
        trainers = [
            subprocess.Popen([sys.executable, str(script), url, "agree-run", "demo-agree",
                              "0,1,2,3,4,5", str(PARAMS), str(SECONDS), str(PARAMS)], env=env),
            subprocess.Popen([sys.executable, str(script), url, "overstated-run",
                              "demo-overstated", "6,7", str(1.5 * PARAMS), str(SECONDS),
                              str(PARAMS)], env=env),
        ]
        for t in trainers:
            assert t.wait(SECONDS + 60) == 0
        time.sleep(1.5)  # the final reports reach a checkpoint
        ratios = {dict(labels)["run"]: value for (name, labels), value in scrape(url).items()
                  if name == "flopledger_run_declared_to_measured_ratio"}
    print(f"flopledger_run_declared_to_measured_ratio: {ratios}")
    assert abs(ratios["agree-run"] - 1) < 0.30
    assert ratios["overstated-run"] > 1.30

    ledger = str(state / "ledger.sqlite")
    status = _flopledger("status", "--ledger", ledger)
    assert status.returncode == 0
    agree = next(line for line in status.stdout.splitlines() if "agree-run" in line
                 and "declared" in line.lower())
    overstated = [line for line in status.stdout.splitlines() if "overstated-run" in line]
    assert "within the band" in status.stdout
    assert "FLAG: declared and measured compute differ by more than 30%" in status.stdout
    assert "FLAG" not in agree
    assert overstated

    report = _flopledger("report", "--run", "agree-run", "--format", "json", "--ledger",
                         ledger)
    processed = json.loads(report.stdout)["cross_check"]["processed"]
    assert processed["within_band"] is True
    assert processed["beyond_eu_margin"] is False
    report = _flopledger("report", "--run", "overstated-run", "--format", "json",
                         "--ledger", ledger)
    processed = json.loads(report.stdout)["cross_check"]["processed"]
    assert processed["beyond_eu_margin"] is True
    assert processed["difference"] == pytest.approx(0.5, abs=0.15)

    # The shipped policy: both models are far below every tier.
    for model in ("demo-agree", "demo-overstated"):
        gate = _flopledger("gate", model, "--mode", "open-weights", "--ledger", ledger)
        assert gate.returncode == 0
    # A policy whose one tier lies between the two models' measured totals (high end).
    highs = {}
    for model in ("demo-agree", "demo-overstated"):
        shown = json.loads(_flopledger("gate", model, "--mode", "internal", "--ledger", ledger,
                                       "--format", "json").stdout)
        highs[model] = next(float(c["total"]["high"]) for c in shown["checks"]
                            if c["scope"] == "cumulative")
    assert highs["demo-agree"] > 2 * highs["demo-overstated"] > 0
    tier = float(f"{math.sqrt(highs['demo-agree'] * highs['demo-overstated']):.2g}")
    policy = tmp_path / "release.toml"
    policy.write_text(textwrap.dedent(f"""
        [[tiers]]
        name = "demo-tier"
        description = "a tier between the two demo models ({tier:.2g} FLOP)"
        min_flop = {tier!r}
        scope = "cumulative"
        modes = ["staged", "structured-access", "internal"]
        [tiers.evaluations]
        staged = ["red-team"]
        [default]
        modes = ["open-weights", "staged", "structured-access", "internal"]
    """))
    below = _flopledger("gate", "demo-overstated", "--mode", "open-weights", "--policy",
                        str(policy), "--ledger", ledger)
    above = _flopledger("gate", "demo-agree", "--mode", "open-weights", "--policy",
                        str(policy), "--ledger", ledger)
    staged = _flopledger("gate", "demo-agree", "--mode", "staged", "--policy", str(policy),
                         "--ledger", ledger)
    assert (below.returncode, above.returncode, staged.returncode) == (0, 3, 4)
    verify = _flopledger("verify", ledger)
    assert verify.returncode == 0
    assert "gate" in verify.stdout
