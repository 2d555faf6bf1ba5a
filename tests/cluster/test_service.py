"""One replica's passes: totals and thresholds published for /metrics, and a store that
goes down said once per outage, never a crash."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client.registry import CollectorRegistry

from agent.cluster.config import ClusterConfig
from agent.cluster.metrics import ClusterCollector
from agent.cluster.service import ClusterService
from agent.compliance.thresholds import load_registry
from benchmarks.pgserver import PgServer
from exporters.web.server import start_metrics_server
from tests.agentproc import scrape
from tests.cluster import nodes
from tests.receivers import Recorder


def service(tmp_path: Path, url: str, rec: Recorder | None = None) -> ClusterService:
    channels = {"rec": rec} if rec is not None else {}
    config = ClusterConfig(tmp_path / "cluster.toml", url, evaluate_s=1.0,
                           thresholds=nodes.SETTINGS, models=nodes.MODELS)
    s = ClusterService(config, load_registry(), channels)
    if rec is not None:  # the config names no channel; the outbox is told of this one
        s.outbox.channels = ("rec",)
    return s


def test_metrics_serve_the_cluster_totals_and_the_leaders_thresholds(
        tmp_path: Path, pg_url: str) -> None:
    nodes.build(tmp_path, pg_url)
    leader, follower = service(tmp_path, pg_url), service(tmp_path, pg_url)
    servers = []
    try:
        assert leader.step().leader
        assert not follower.step().leader
        urls = []
        for s in (leader, follower):
            registry = CollectorRegistry(auto_describe=False)
            registry.register(ClusterCollector(lambda s=s: s.state))  # type: ignore[misc]
            servers.append(start_metrics_server(registry, "127.0.0.1", 0))
            urls.append(servers[-1].url)
        lead, follow = (scrape(u) for u in urls)
    finally:
        for server in servers:
            server.shutdown()
        leader.close()
        follower.close()
    assert lead[("flopledger_cluster_leader", ())] == 1
    assert follow[("flopledger_cluster_leader", ())] == 0
    run = (("category", "pre-training"), ("model", "base"), ("run", "pt"))
    for samples in (lead, follow):
        assert samples[("flopledger_cluster_run_flop_total", run)] == float(54 * nodes.E21)
        assert samples[("flopledger_cluster_run_flop_high_total", run)] > 54 * nodes.E21
        assert samples[("flopledger_cluster_nodes", ())] == 2
        assert samples[("flopledger_cluster_node_flagged", (("node", "node-2"),))] == 0
        assert samples[("flopledger_cluster_model_flop_total",
                        (("model", "chat"), ("scope", "cumulative")))] > 54 * nodes.E21
    gpai = (("estimate", "high"), ("regime", "eu-gpai-indicative"), ("subject", "base"),
            ("subject_type", "model"))
    assert lead[("flopledger_cluster_threshold_fraction_ratio", gpai)] > 0.5
    assert ("flopledger_cluster_threshold_fraction_ratio", gpai) not in follow


def test_an_outage_is_one_error_line_and_the_last_totals_stay(
        tmp_path: Path, pg_url: str, pg_server: PgServer,
        caplog: pytest.LogCaptureFixture) -> None:
    nodes.build(tmp_path, pg_url)
    rec = Recorder()
    s = service(tmp_path, pg_url, rec)
    try:
        before = s.step()
        assert before.leader
        assert before.store_up
        pg_server.stop()
        with caplog.at_level(logging.INFO, logger="agent.cluster"):
            states = [s.step() for _ in range(3)]
            pg_server.start()
            after = s.step()
    finally:
        pg_server.start()
        s.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "cluster store unusable" in message
    assert "retrying every 1 s" in message
    assert "Traceback" not in caplog.text
    assert all(not st.leader and not st.store_up for st in states)
    assert all(st.totals == before.totals for st in states)
    assert after.leader
    assert after.store_up
    assert any("reachable again" in r.getMessage() for r in caplog.records)
