"""End to end: /metrics answers while another connection holds the ledger's write lock
and the agent's own writers wait on it.

The scrape path reads only published snapshots (the sampler's, the threshold
watcher's, the dispatcher's notification status): no SQL, no lock a writer holds.

The lock: the ledger is in WAL mode and the agent keeps its connections open, and an
open WAL connection holds a shared lock on the file, so ``PRAGMA
locking_mode=EXCLUSIVE`` can never be granted to another connection while the agent
runs (SQLite answers "database is locked"). What another process can hold is WAL's
write lock (``BEGIN EXCLUSIVE`` and a write): every writer waits on it, and a
notification delivered meanwhile leaves the dispatcher inside ``mark_delivered``,
waiting for it while it holds the outbox, which is where a scrape that counted the
outbox with SQL used to wait too (up to the outbox's 30 s busy timeout, then 500).
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import pytest

from agent.notify.message import Notification
from agent.notify.outbox import Outbox
from tests.agentproc import Samples, agent, scrape, total, wait_for

pytestmark = pytest.mark.e2e

# Waits for a file named "go" in its directory; "started" and "done" around it. It
# gives up after two minutes, so a test that fails before "go" leaves no process behind.
HOOK = """
import pathlib, sys, time
d = pathlib.Path(sys.argv[1])
(d / "started").touch()
deadline = time.monotonic() + 120
while not (d / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.02)
(d / "done").touch()
"""
# Below the outbox's busy timeout: a scrape waiting on the outbox times out here.
SCRAPE_TIMEOUT_S = 20.0


def until(predicate: object, what: str, timeout_s: float = 60.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def notification() -> Notification:
    return Notification(key="model:m|eu-art51-systemic-risk|level:0.5", kind="level",
                        subject_type="model", subject="m", regime="eu-art51-systemic-risk",
                        level=0.5, severity="info", created_ns=time.time_ns(),
                        payload={"threshold": "1e25 FLOP"})


def gpu_series(samples: Samples) -> int:
    return sum(1 for name, _ in samples if name == "flopledger_gpu_flop_total")


def test_scrapes_answer_while_another_connection_holds_the_ledger(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ledger = state / "ledger.sqlite"
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (tmp_path / "hook.py").write_text(HOOK)
    with Outbox(ledger, ["hook"]) as outbox:
        assert outbox.enqueue(notification())
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
interval_s = 0.2
integrate_every = 3
checkpoint_s = 1
state_dir = "{state}"
source = "simulated"
[sim]
gpus = 2
[[notify.command]]
name = "hook"
argv = ["{sys.executable}", "{tmp_path / 'hook.py'}", "{hook_dir}"]
timeout_s = 120
""")
    with agent(config) as (proc, url):
        wait_for(url, proc)
        until(lambda: (hook_dir / "started").exists(), "the hook never ran")
        until(lambda: scrape(url).get(("flopledger_notifications_pending",
                                        (("channel", "hook"),))) == 1.0,
              "no notification status published")
        until(lambda: total(scrape(url), "flopledger_gpu_flop_total") > 0, "no FLOP counted")
        holder = sqlite3.connect(ledger, isolation_level=None, timeout=30)
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("CREATE TABLE IF NOT EXISTS scrape_lock_probe (x INTEGER)")
        holder.execute("INSERT INTO scrape_lock_probe VALUES (1)")
        try:
            probe = sqlite3.connect(ledger, isolation_level=None, timeout=0.1)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                probe.execute("BEGIN IMMEDIATE")
            probe.close()
            # The receiver answers: the dispatcher now records the delivery, and
            # waits for the lock the holder keeps.
            (hook_dir / "go").touch()
            until(lambda: (hook_dir / "done").exists(), "the hook never finished")
            for _ in range(5):
                samples = scrape(url, timeout=SCRAPE_TIMEOUT_S)
                assert gpu_series(samples) == 2
                assert total(samples, "flopledger_gpu_flop_total") > 0
                for collector in ("gpu", "runs", "agent", "thresholds", "notifications"):
                    key = ("flopledger_collector_success", (("collector", collector),))
                    assert samples.get(key) == 1.0, collector
                # The last status read before the lock is still served.
                assert ("flopledger_notifications_pending", (("channel", "hook"),)) in samples
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # The dispatcher's write went through once the lock was released.
        until(lambda: scrape(url).get(("flopledger_notifications_delivered_total",
                                        (("channel", "hook"),))) == 1.0,
              "the delivery was never recorded")
    with sqlite3.connect(ledger) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert "scrape_lock_probe" not in tables
