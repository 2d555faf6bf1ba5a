"""The replication series from the replication thread's published status."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.ledger.replication_status import ReplicationStatus
from exporters.collector import FlopledgerCollector
from tests.exposition import registry_of, sample_snapshot


def _samples(status: ReplicationStatus | None) -> dict[str, tuple[dict[str, str], float]]:
    text = generate_latest(registry_of(FlopledgerCollector(
        sample_snapshot, get_replication=lambda: status))).decode()
    return {s.name: (s.labels, s.value) for f in text_string_to_metric_families(text)
            for s in f.samples if s.name.startswith("flopledger_cluster_")}


def test_before_the_store_answers_the_backlog_is_unknown_not_zero() -> None:
    samples = _samples(ReplicationStatus(failed_attempts=3))
    assert samples["flopledger_cluster_replication_up"][1] == 0
    assert "flopledger_cluster_backlog_records" not in samples
    assert "flopledger_cluster_last_shipped_timestamp_seconds" not in samples
    assert samples["flopledger_cluster_failed_attempts_total"][1] == 3


def test_a_shipping_node_and_a_flagged_one() -> None:
    samples = _samples(ReplicationStatus(up=True, backlog_records=7, shipped_records=900,
                                         last_success_wall_seconds=1.75e9))
    assert samples["flopledger_cluster_backlog_records"][1] == 7
    assert samples["flopledger_cluster_shipped_records_total"][1] == 900
    assert samples["flopledger_cluster_node_flagged"] == ({"reason": ""}, 0.0)
    flagged = _samples(ReplicationStatus(up=False, backlog_records=50,
                                         flagged="backwards: head 40 < 120"))
    assert flagged["flopledger_cluster_replication_up"][1] == 0
    assert flagged["flopledger_cluster_node_flagged"] == (
        {"reason": "backwards: head 40 < 120"}, 1.0)


def test_no_cluster_configured_no_series() -> None:
    text = generate_latest(registry_of(FlopledgerCollector(sample_snapshot))).decode()
    assert "flopledger_cluster_" not in text
