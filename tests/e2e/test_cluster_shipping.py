"""A live agent ships its ledger to a real PostgreSQL, through an outage of the store.

The store is stopped while the agent runs: the agent keeps counting into its own ledger,
says so once, exports ``flopledger_cluster_replication_up 0`` and a growing backlog;
when the store is back the backlog is shipped. After a graceful stop the store holds
exactly the node's records (same bodies) and its per-run totals equal the ledger's.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.pgserver import PgServer
from tests.agentproc import Samples, agent, scrape, total, wait_for

pytestmark = pytest.mark.e2e


def _until(predicate: Callable[[Samples], bool], url: str, timeout_s: float = 60) -> Samples:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = scrape(url)
        if predicate(samples):
            return samples
        time.sleep(0.2)
    raise AssertionError(f"not reached in {timeout_s} s")


def test_the_agent_ships_through_an_outage_and_the_store_equals_the_ledger(
        tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    import psycopg

    from agent.ledger.schema import connect_read_only
    from agent.ledger.signing import load_or_create_key
    from agent.ledger.store import Ledger

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
        spool_dir = ""

        [cluster]
        url = "{pg_url}"
        replicate_s = 0.5

        [sim]
        gpus = 2
    """))
    log = tmp_path / "agent.log"
    with agent(config, log=log) as (proc, url):
        wait_for(url, proc)
        _until(lambda s: total(s, "flopledger_cluster_shipped_records_total") > 0
               and total(s, "flopledger_cluster_backlog_records") == 0, url)
        pg_server.stop()
        down = _until(lambda s: total(s, "flopledger_cluster_replication_up") == 0
                      and total(s, "flopledger_cluster_backlog_records") > 5, url)
        flop_down = total(down, "flopledger_gpu_flop_total")
        time.sleep(2)
        assert total(scrape(url), "flopledger_gpu_flop_total") > flop_down  # still counting
        pg_server.start()
        _until(lambda s: total(s, "flopledger_cluster_replication_up") == 1
               and total(s, "flopledger_cluster_backlog_records") == 0, url)
    text = log.read_text()
    assert "Traceback" not in text
    outage = [line for line in text.splitlines() if "ERROR" in line and "cluster store" in line]
    assert len(outage) == 1, outage
    assert "answers again" in text

    ledger_path = tmp_path / "state" / "ledger.sqlite"
    db = connect_read_only(ledger_path)  # every record, statements (run-close) included
    try:
        local = {int(seq): bytes(body) for seq, body in db.execute(
            "SELECT seq, body FROM records").fetchall()}
    finally:
        db.close()
    ledger = Ledger(ledger_path, "node-a", load_or_create_key(tmp_path / "state" / "node.key"))
    run_totals = {run: t.flop for run, t in ledger.totals["run"].items()}
    ledger.close()
    with psycopg.connect(pg_url) as conn:
        stored: dict[int, bytes] = {
            int(seq): bytes(body) for seq, body in
            conn.execute("SELECT seq, body FROM fl_records ORDER BY seq").fetchall()}
        sums = {run: (int(lo), int(c), int(hi)) for run, lo, c, hi in conn.execute(
            "SELECT run, sum(flop_low), sum(flop_central), sum(flop_high) FROM fl_run_totals"
            " GROUP BY run").fetchall()}
        flagged = conn.execute("SELECT count(*) FROM fl_nodes WHERE flagged IS NOT NULL"
                               ).fetchone()
    assert stored == local
    assert sums == {run: tuple(band) for run, band in run_totals.items()}
    assert flagged == (0,)
