"""One run on four live agents, one cluster ledger in a real PostgreSQL, two cluster
service replicas, and everything that goes wrong going wrong.

Four agents (4 nodes, 2 simulated GPUs each) train one run toward an internal review
budget; they ship their ledgers to PostgreSQL. Two `flopledger cluster` replicas
evaluate the cluster-wide total; one leads. In order: the first warning level is
delivered; the leading replica is killed with SIGKILL (the other takes over); PostgreSQL
is stopped for ``FLOPLEDGER_PG_OUTAGE_S`` (default 60) seconds and started again; one
agent is killed with SIGKILL and started again; the run crosses the rest of the levels.
Afterwards: the cluster total equals the sum of the four node ledgers exactly, the store
holds every node record once (same bytes), every notification key reached the webhook
once, and ``flopledger verify --ledger postgresql://...`` passes. Then one node's ledger
is rolled back to an earlier copy and its agent started again: the store's witness flags
it, and the cluster commands say so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from benchmarks.pgserver import PgServer
from tests.agentproc import agent, free_port, scrape, total, wait_for
from tests.e2e.test_thresholds import budget_registry
from tests.receivers import SECRET, Receiver

pytestmark = pytest.mark.e2e

NODES = 4
BUDGET = 2.0e17  # ~45 s of the 8 simulated GPUs' high estimate
OUTAGE_S = float(os.environ.get("FLOPLEDGER_PG_OUTAGE_S", "60"))


def until(what: str, predicate: Callable[[], bool], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"not reached in {timeout_s} s: {what}")


def agent_config(tmp_path: Path, n: int, url: str, thresholds: Path) -> Path:
    config = tmp_path / f"node-{n}.toml"
    config.write_text(f"""
[agent]
state_dir = "{tmp_path}/node-{n}"
node = "node-{n}"
interval_s = 0.2
checkpoint_s = 1
record_s = 2
source = "simulated"
thresholds_file = "{thresholds}"
[client]
spool_dir = ""
[cluster]
url = "{url}"
replicate_s = 1
[sim]
gpus = 2
seed = {n}
[[sim.jobs]]
gpus = [0, 1]
[sim.jobs.env]
FLOPLEDGER_RUN_ID = "cluster-run"
FLOPLEDGER_MODEL = "cluster-model"
FLOPLEDGER_CATEGORY = "pre-training"
FLOPLEDGER_PRECISION = "bf16"
[thresholds]
evaluate_every_s = 3600
""")
    return config


def service_config(tmp_path: Path, url: str, thresholds: Path, webhook: Receiver) -> Path:
    config = tmp_path / "cluster.toml"
    config.write_text(f"""
[cluster]
url = "{url}"
evaluate_s = 1
thresholds_file = "{thresholds}"
[thresholds]
min_observation_s = 5
[notify]
poll_s = 0.2
[[notify.webhook]]
name = "compliance"
url = "{webhook.url}"
secret_file = "{tmp_path}/webhook.secret"
timeout_s = 5
""")
    return config


@contextmanager
def service(config: Path, log: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "cluster", "--config", str(config),
             "--listen", f"127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            yield proc, f"http://127.0.0.1:{port}/metrics"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def is_leader(url: str) -> bool:
    try:
        return total(scrape(url), "flopledger_cluster_leader") == 1
    except OSError:
        return False


def flopledger(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, check=False)


def node_sums(tmp_path: Path) -> tuple[dict[tuple[str, int], bytes], tuple[int, int, int]]:
    """Every node's sealed records, statements included (by node and seq, as bytes), and
    the run's compute total over the nodes."""
    from agent.accounting.records import LedgerRecord, is_compute
    from agent.ledger.schema import connect_read_only

    bodies: dict[tuple[str, int], bytes] = {}
    low = central = high = 0
    for n in range(1, NODES + 1):
        db = connect_read_only(tmp_path / f"node-{n}" / "ledger.sqlite")
        try:
            rows = db.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
        finally:
            db.close()
        for seq, body in rows:
            bodies[(f"node-{n}", int(seq))] = bytes(body)
            r = LedgerRecord.decode(bytes(body))
            if r.run == "cluster-run" and is_compute(r):
                low, central, high = (low + r.flop_low, central + r.flop_central,
                                      high + r.flop_high)
    return bodies, (low, central, high)


def test_one_run_on_four_nodes_through_an_outage_and_kills(
        tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    import psycopg

    thresholds = budget_registry(tmp_path, BUDGET)
    (tmp_path / "webhook.secret").write_bytes(SECRET)
    webhook = Receiver().start()
    cluster_cfg = service_config(tmp_path, pg_url, thresholds, webhook)
    configs = [agent_config(tmp_path, n, pg_url, thresholds) for n in range(1, NODES + 1)]

    def keys() -> list[str]:
        return [r.key for r in webhook.delivered() if r.key and "|test-budget|" in r.key]

    with ExitStack() as stack:
        agents = {n: stack.enter_context(agent(configs[n - 1], log=tmp_path / f"a{n}.log"))
                  for n in range(1, NODES + 1)}
        for proc, url in agents.values():
            wait_for(url, proc)
        first = stack.enter_context(service(cluster_cfg, tmp_path / "s1.log"))
        second = stack.enter_context(service(cluster_cfg, tmp_path / "s2.log"))
        until("one leader", lambda: is_leader(first[1]) or is_leader(second[1]), 60)
        leader, follower = (first, second) if is_leader(first[1]) else (second, first)
        until("the first warning level at the webhook",
              lambda: any(k.endswith("level:0.5") for k in keys()), 120)
        leader[0].send_signal(signal.SIGKILL)
        leader[0].wait(10)
        until("the other replica leads", lambda: is_leader(follower[1]), 30)

        pg_server.stop()
        time.sleep(OUTAGE_S / 2)
        proc2, _ = agents[2]
        proc2.send_signal(signal.SIGKILL)
        proc2.wait(10)
        time.sleep(OUTAGE_S / 2)
        pg_server.start()
        agents[2] = stack.enter_context(agent(configs[1], log=tmp_path / "a2-again.log"))
        wait_for(agents[2][1], agents[2][0])

        until("the budget crossed at the webhook",
              lambda: any(k.endswith("|level:1") for k in keys()), 180)
        for proc, _ in agents.values():  # graceful: the final checkpoint is shipped
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        bodies, band = node_sums(tmp_path)
        with psycopg.connect(pg_url) as conn:
            until("every node's ledger in the store", lambda: conn.execute(
                "SELECT coalesce(sum(records), 0) FROM fl_nodes").fetchone() == (
                    len(bodies),), 60)
            stored = {(str(node), int(seq)): bytes(body) for node, seq, body in conn.execute(
                "SELECT n.node, r.seq, r.body FROM fl_records r JOIN fl_nodes n USING"
                " (node_key)").fetchall()}
            row = conn.execute(
                "SELECT sum(flop_low), sum(flop_central), sum(flop_high) FROM fl_run_totals"
                " WHERE run = 'cluster-run'").fetchone()
        assert stored == bodies  # no record missing, none duplicated, byte for byte
        assert row is not None
        assert tuple(int(x) for x in row) == band  # the cluster total, exactly
        time.sleep(3)  # the leader's last passes: nothing more is due
    webhook.stop()

    delivered = keys()
    counts = Counter(delivered)
    assert {k.split("|")[-1] for k in counts} >= {"level:0.5", "level:0.8", "level:0.9",
                                                  "level:1"}
    assert all(c == 1 for c in counts.values()), counts
    verify = flopledger("verify", "--ledger", pg_url)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for n in (1, 2):
        text = (tmp_path / f"s{n}.log").read_text()
        assert "Traceback" not in text

    # A node restored from an earlier copy of its ledger: the witness flags it.
    node3 = tmp_path / "node-3"
    copy = tmp_path / "node-3-copy"
    shutil.copytree(node3, copy)
    with agent(configs[2], log=tmp_path / "a3-more.log") as (proc, url):
        wait_for(url, proc)
        time.sleep(6)  # more records, shipped
    shutil.rmtree(node3)
    shutil.copytree(copy, node3)
    with agent(configs[2], log=tmp_path / "a3-rolled-back.log") as (proc, url):
        wait_for(url, proc)
        until("the node flagged", lambda: total(
            scrape(url), "flopledger_cluster_node_flagged") == 1, 60)
    runs = flopledger("runs", "--ledger", pg_url)
    assert runs.returncode == 1
    assert "node-3: flagged by the witness" in runs.stdout + runs.stderr
