"""Two replicas of ``flopledger cluster`` as processes against one store: one leads; the
leader killed with SIGKILL, the other leads; a real webhook receiver gets every key
exactly once, whichever replica sent it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.ledger.pgconn import connect
from tests.agentproc import Samples, free_port, scrape
from tests.cluster import nodes
from tests.ledger.cluster_nodes import replicate
from tests.receivers import SECRET, Receiver

WAIT_S = 60.0


def wait_until(what: str, check: Callable[[], bool], procs: list[subprocess.Popen[str]]
               ) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"a replica exited with {p.returncode}"
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {WAIT_S:g} s: {what}")


def metrics(port: int) -> Samples:
    try:
        return scrape(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return {}


def leads(port: int) -> bool:
    return metrics(port).get(("flopledger_cluster_leader", ()), 0.0) == 1.0


def evaluations(port: int) -> float:
    return metrics(port).get(("flopledger_cluster_threshold_last_evaluation_timestamp_seconds",
                              ()), 0.0)


def evaluated_after(port: int) -> Callable[[], bool]:
    """A check that the replica evaluated after now."""
    seen = evaluations(port)
    return lambda: evaluations(port) > seen


@contextlib.contextmanager
def replica(config: Path, port: int, log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "cluster", "--config", str(config),
             "--listen", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


def test_a_killed_leader_is_replaced_and_no_key_is_sent_twice(tmp_path: Path,
                                                              pg_url: str) -> None:
    ledgers = nodes.write_nodes(tmp_path)
    for path in ledgers.values():
        replicate(path, pg_url)
    receiver = Receiver().start()
    (tmp_path / "hook.secret").write_bytes(SECRET)
    config = tmp_path / "cluster.toml"
    config.write_text(f"""
[cluster]
url = "{pg_url}"
evaluate_s = 1
[thresholds]
min_observation_s = 1.0
min_observation_fraction = 0.001
[models.chat]
base_models = ["base"]
role = "modifier"
[notify]
poll_s = 0.2
[[notify.webhook]]
name = "hook"
url = "{receiver.url}"
secret_file = "hook.secret"
""")
    store = connect(pg_url, autocommit=True)

    def all_delivered() -> bool:
        stored = {k for (k,) in store.execute("SELECT key FROM fl_notifications")}
        undelivered = store.execute(
            "SELECT count(*) FROM fl_deliveries WHERE state <> 'done'").fetchone()
        got = {r.key for r in receiver.delivered()}
        return bool(stored) and undelivered == (0,) and got == stored

    port_a, port_b = free_port(), free_port()
    try:
        with replica(config, port_a, tmp_path / "a.log") as a:
            wait_until("replica a leads", lambda: leads(port_a), [a])
            with replica(config, port_b, tmp_path / "b.log") as b:
                wait_until("replica b reads the totals", lambda: (
                    "flopledger_cluster_run_flop_total", (("category", "pre-training"),
                                                          ("model", "base"), ("run", "pt")))
                    in metrics(port_b), [a, b])
                assert not leads(port_b)
                wait_until("a delivers everything due", all_delivered, [a, b])
                first = {r.key for r in receiver.delivered()}
                assert "model:base|eu-gpai-indicative|level:0.5" in first

                a.send_signal(signal.SIGKILL)
                a.wait(30)
                wait_until("b leads", lambda: leads(port_b), [b])
                # More compute arrives: the new leader notifies what is newly due.
                nodes.grow(ledgers["node-2"], "node-2")
                replicate(ledgers["node-2"], pg_url)
                wait_until("b delivers the new level", lambda: all_delivered() and (
                    "model:base|eu-gpai-indicative|level:0.8"
                    in {r.key for r in receiver.delivered()}), [b])
                # A few more of b's evaluations re-derive every key: none is sent again.
                for _ in range(3):
                    wait_until("b evaluates again", evaluated_after(port_b), [b])
                b.send_signal(signal.SIGTERM)
                assert b.wait(30) == 0
    finally:
        receiver.stop()
        store.close()
    sent = Counter(r.key for r in receiver.delivered())
    assert sent
    assert max(sent.values()) == 1, sent
    assert first < set(sent)
    assert all(r.signature_ok for r in receiver.requests)
    for log in ("a.log", "b.log"):
        assert "Traceback" not in (tmp_path / log).read_text()
    assert "leading the cluster" in (tmp_path / "b.log").read_text()
