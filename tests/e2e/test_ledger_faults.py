"""The ledger fault matrix with the real agent: every fault is refused at start (exit 2,
one line, nothing written) or survived, ``flopledger recover`` continues with a recorded
discontinuity, and no counter on ``/metrics`` ever goes backwards.

| fault                          | outcome                                                |
|--------------------------------|--------------------------------------------------------|
| kill -9 during checkpoints     | starts again, ``verify`` OK, counters never go back     |
| WAL and -shm deleted           | refused; recover; counters resume; ``verify`` names it  |
| older copy of the file restored| refused; recover; counters resume; ``verify`` names it  |
| totals table edited            | refused; recover; counters resume                       |
| record edited / stored as TEXT | refused; recover; counters resume                       |
| file truncated                 | refused; recover; counters resume                       |
| second agent, same state_dir   | exit 2 naming the first's PID; the first keeps counting |
"""

from __future__ import annotations

import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.ledger.verify import verify_ledger
from tests.agentproc import Samples, agent, free_port, scrape, total, wait_for
from tests.hostile.harness import tree_state

pytestmark = pytest.mark.e2e

COUNTERS = ("flopledger_gpu_flop_total", "flopledger_gpu_flop_low_total",
            "flopledger_gpu_flop_high_total", "flopledger_run_flop_total",
            "flopledger_run_flop_high_total")


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
state_dir = "{tmp_path}/state"
node = "fault-node"
interval_s = 0.2
integrate_every = 2
checkpoint_s = 0.5
record_s = 1.0
source = "simulated"
[sim]
gpus = 2
scenario = "pretrain-bf16"
""")
    return config


def counters(samples: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {k: v for k, v in samples.items() if k[0] in COUNTERS}


def assert_not_behind(now: Samples, before: dict[tuple[str, tuple[tuple[str, str], ...]],
                                                 float]) -> None:
    """Every counter series seen before is present now and no lower."""
    for key, value in before.items():
        assert key in now, f"series {key} disappeared"
        assert now[key] >= value, (key, value, now[key])


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def run_until_sealed(config: Path, *, kill: bool = False) -> dict[
        tuple[str, tuple[tuple[str, str], ...]], float]:
    """Start the agent, wait for sealed records and growing counters, stop it (SIGTERM,
    or SIGKILL); returns the last counters it exported."""
    head = config.parent / "state" / "ledger.sqlite.head"
    with agent(config) as (proc, url):
        wait_for(url, proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            last = scrape(url)
            if total(last, "flopledger_gpu_flop_total") > 0 and head.exists() and (
                    b'"size":0' not in head.read_bytes()):
                break
            time.sleep(0.2)
        last = scrape(url)
        if kill:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        else:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    return counters(last)


def start_refused(config: Path) -> str:
    """Start the agent on a damaged state directory: it must exit 2 having written
    nothing; returns what it said."""
    state = config.parent / "state"
    before = tree_state(state)
    result = cli("run", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "refusing to start" in result.stderr
    assert "flopledger recover" in result.stderr
    assert tree_state(state) == before
    return result.stderr


def recover_and_resume(config: Path, before: dict[tuple[str, tuple[tuple[str, str], ...]],
                                                  float]) -> None:
    """``flopledger recover``, then the agent starts, its counters no lower than
    ``before``, and ``verify`` names the discontinuity."""
    result = cli("recover", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "record 0 states the discontinuity" in result.stdout
    with agent(config) as (proc, url):
        first = wait_for(url, proc)
        assert_not_behind(first, before)
        time.sleep(1.5)
        assert_not_behind(scrape(url), counters(first))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    verify = cli("verify", "--config", str(config))
    assert verify.returncode == 1, verify.stdout
    assert "FAIL record 0: discontinuity" in verify.stdout
    assert verify.stdout.count("  FAIL ") == 1, verify.stdout


def test_kill_9_during_checkpoints_restarts_and_counters_never_go_back(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    rng = random.Random(11)
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for _ in range(3):
        with agent(config) as (proc, url):
            first = wait_for(url, proc)
            assert_not_behind(first, seen)
            time.sleep(rng.uniform(0.0, 1.5))  # anywhere in a checkpoint cycle
            seen = counters(scrape(url))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    report = verify_ledger(tmp_path / "state" / "ledger.sqlite")
    assert report.ok, report.problems


def delete_wal(state: Path) -> None:
    for suffix in ("-wal", "-shm"):
        (state / f"ledger.sqlite{suffix}").unlink(missing_ok=True)


def edit_totals(state: Path) -> None:
    db = sqlite3.connect(state / "ledger.sqlite")
    db.execute("UPDATE totals SET flop_central = '1' WHERE scope = 'gpu'")
    db.commit()
    db.close()


def body_as_text(state: Path) -> None:
    db = sqlite3.connect(state / "ledger.sqlite")
    db.execute("UPDATE records SET body = CAST(body AS TEXT) WHERE seq = 1")
    db.commit()
    db.close()


def truncate(state: Path) -> None:
    path = state / "ledger.sqlite"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(("damage", "said"), [
    (edit_totals, "totals for gpu"),
    (body_as_text, "stored as TEXT"),
    (truncate, "damaged or truncated"),
], ids=["totals-edited", "record-as-text", "truncated"])
def test_a_damaged_ledger_is_refused_then_recovered(tmp_path: Path,
                                                    damage: Callable[[Path], None],
                                                    said: str) -> None:
    config = write_config(tmp_path)
    last = run_until_sealed(config)
    damage(tmp_path / "state")
    assert said in start_refused(config)
    recover_and_resume(config, last)


def test_a_deleted_wal_after_kill_9_is_refused_then_recovered(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    last = run_until_sealed(config, kill=True)
    delete_wal(tmp_path / "state")
    said = start_refused(config)
    assert "WAL deleted" in said or "rolled back" in said
    recover_and_resume(config, last)


def test_an_older_copy_put_back_is_refused_then_recovered(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "state"
    run_until_sealed(config)
    shutil.copy(state / "ledger.sqlite", tmp_path / "backup.sqlite")
    last = run_until_sealed(config)
    shutil.copy(tmp_path / "backup.sqlite", state / "ledger.sqlite")
    assert "rolled back" in start_refused(config)
    recover_and_resume(config, last)


def test_a_second_agent_on_the_same_state_directory_exits_2_naming_the_first(
        tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with agent(config) as (proc, url):
        first = wait_for(url, proc)
        second = cli("run", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}")
        assert second.returncode == 2, second.stderr
        assert f"held by PID {proc.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        # Started exactly as the first (same port too), it still names the holder.
        port = url.split(":")[2].split("/")[0]
        same = cli("run", "--config", str(config), "--listen", f"127.0.0.1:{port}")
        assert same.returncode == 2, same.stderr
        assert f"held by PID {proc.pid}" in same.stderr
        # The first one never noticed: it keeps counting and checkpointing.
        time.sleep(1.5)
        later = scrape(url)
        assert total(later, "flopledger_gpu_flop_total") > total(
            first, "flopledger_gpu_flop_total")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    report = verify_ledger(tmp_path / "state" / "ledger.sqlite")
    assert report.ok, report.problems
