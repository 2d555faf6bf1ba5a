"""Trainers declare through the client spool while the agent is killed and restarted.

Four rank processes (the real ``flopledger_client``) declare a run (rank 0) and report
cumulative progress every few tens of milliseconds; the agent is killed with SIGKILL
mid-run and started again; the ranks finish with their final counts. Afterwards the
ledger holds the declaration exactly once, the run's processed tokens equal the sum of
the ranks' final counts exactly (nothing lost, nothing counted twice), the signed
progress statements never go backwards, the spool holds no declaration or progress
file, and ``flopledger verify`` passes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.agentproc import agent, scrape, total, wait_for
from tests.paths import REPO

pytestmark = pytest.mark.e2e

RANKS = 4
STEPS = 60
TOKENS_PER_STEP = (1000, 1100, 1200, 1300)  # per rank: the ranks' counts differ

RANK_SCRIPT = textwrap.dedent("""
    import sys, time
    from flopledger_client import Run

    rank, steps, per_step = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    with Run("spool-e2e", rank=rank, world_size=4, report_every_s=0.05) as run:
        if rank == 0:
            run.declare(model="tiny-lm", category="pre-training", precision="bf16",
                        recompute="none", params=1.0e9, planned_tokens=1.0e12,
                        planned_steps=steps)
        for step in range(1, steps + 1):
            time.sleep(0.05)
            run.report(tokens=step * per_step, steps=step)
        run.report(tokens=steps * per_step, steps=steps, final=True)
""")


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        [agent]
        source = "simulated"
        interval_s = 0.1
        checkpoint_s = 0.5
        record_s = 1.0
        state_dir = "{tmp_path / 'state'}"
        node = "node-a"

        [client]
        spool_dir = "{tmp_path / 'spool'}"
        progress_record_s = 0.5

        [sim]
        gpus = 4
    """))
    return config


def _ranks(tmp_path: Path, spool: Path) -> list[subprocess.Popen[bytes]]:
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "FLOPLEDGER_SPOOL_DIR": str(spool),
           "PYTHONPATH": str(REPO / "client")}
    return [subprocess.Popen([sys.executable, str(script), str(rank), str(STEPS),
                              str(TOKENS_PER_STEP[rank])], env=env)
            for rank in range(RANKS)]


def _statements(ledger: Path, kind: str) -> list[dict[str, object]]:
    from agent.ledger.query import statements

    return [dict(r.assumptions, run=r.run, model=r.model, seq=r.seq)
            for r in statements(ledger, kinds=[kind])]


def test_declarations_and_progress_survive_a_kill(tmp_path: Path) -> None:
    config = _config(tmp_path)
    spool = tmp_path / "spool"
    ledger = tmp_path / "state" / "ledger.sqlite"
    with agent(config, log=tmp_path / "first.log") as (proc, url):
        wait_for(url, proc)
        ranks = _ranks(tmp_path, spool)
        # Kill once some progress is committed and while the ranks still report.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                ledger.exists() and _statements(ledger, "progress")):
            time.sleep(0.1)
        assert _statements(ledger, "progress"), "no progress recorded before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert any(r.poll() is None for r in ranks), "the ranks ended before the kill"
    # The ranks go on writing while no agent runs: their files wait in the spool.
    time.sleep(0.5)
    with agent(config, log=tmp_path / "second.log") as (proc, url):
        wait_for(url, proc)
        for r in ranks:
            assert r.wait(60) == 0
        expected = sum(STEPS * t for t in TOKENS_PER_STEP)
        deadline = time.monotonic() + 30
        declared = 0.0
        while time.monotonic() < deadline:
            declared = total(scrape(url), "flopledger_run_declared_tokens_total")
            if declared == expected:
                break
            time.sleep(0.2)
        assert declared == expected
        # The declared 6 x P x D so far is exported against the measured compute.
        samples = scrape(url)
        assert total(samples, "flopledger_run_declared_flop_total") == 6 * 1.0e9 * expected
    # Stopped gracefully: the final checkpoint committed everything.
    declarations = _statements(ledger, "declaration")
    assert len(declarations) == 1
    assert declarations[0]["run"] == "spool-e2e"
    assert declarations[0]["model"] == "tiny-lm"
    progress = _statements(ledger, "progress")
    tokens = [int(str(p["progress.tokens"])) for p in progress]
    assert tokens == sorted(tokens), "a signed progress statement went backwards"
    assert tokens[-1] == expected
    ranks_final = progress[-1]["progress.ranks"]
    assert isinstance(ranks_final, dict)
    assert {int(k): v[0] for k, v in ranks_final.items()} == {
        r: STEPS * TOKENS_PER_STEP[r] for r in range(RANKS)}
    left = sorted(p.name for p in spool.iterdir())
    assert not [n for n in left if n.startswith(("declare-", "progress-"))], left
    assert not [n for n in left if n.endswith(".rejected")], left
    verify = subprocess.run(
        [sys.executable, "-m", "agent.cli", "verify", "--ledger", str(ledger)],
        capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "1 declaration" in verify.stdout
    # The run's row keeps the declaration and the progress for a restarted agent.
    from agent.ledger.query import read_view

    meta = read_view(ledger).run_meta.get("spool-e2e", {})
    assert meta.get("via") == "client"
    assert meta.get("progress.tokens") == expected
    # The declared plan is where the forecasts read it ("will be met" from 6 x P x D).
    assert meta.get("plan.params") == 1.0e9
    assert meta.get("plan.tokens") == 1.0e12
    assert json.dumps(meta)  # JSON-clean


def test_hostile_spool_files_are_refused_one_line_each_and_change_nothing(
        tmp_path: Path) -> None:
    """Every bad file of the hostile list, at once, into a live agent's spool: each is
    renamed ``.rejected`` with one ERROR line naming it and why; the agent keeps
    counting, writes no statement, and its ledger verifies."""
    from tests.sources.spool_messages import BAD_MESSAGES, file_name, write

    config = _config(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o1733)
    spool.chmod(0o1733)
    names = {}
    for n, (case, content, _) in enumerate(BAD_MESSAGES):
        name = file_name("progress", tail=f"{n:08x}")
        write(spool, name, content)
        names[name] = case
    log = tmp_path / "agent.log"
    with agent(config, log=log) as (proc, url):
        wait_for(url, proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
                (spool / n).exists() for n in names):
            time.sleep(0.2)
        samples = scrape(url)
        assert total(samples, "flopledger_sampler_ticks_total") > 0
    text = log.read_text()
    assert "Traceback" not in text
    for name, case in names.items():
        assert (spool / f"{name}.rejected").exists(), case
        lines = [line for line in text.splitlines() if name in line and "ERROR" in line]
        assert len(lines) == 1, (case, lines)
    for case, _, reason in BAD_MESSAGES:
        assert reason in text, case
    from agent.accounting.records import RUN_CLOSE
    from agent.ledger.query import statements

    # Nothing of the spool's; the only statements are the node's own closing counts.
    assert {s.kind for s in statements(tmp_path / "state" / "ledger.sqlite")} <= {RUN_CLOSE}
    verify = subprocess.run(
        [sys.executable, "-m", "agent.cli", "verify", "--ledger",
         str(tmp_path / "state" / "ledger.sqlite")], capture_output=True, text=True,
        check=False)
    assert verify.returncode == 0, verify.stdout
