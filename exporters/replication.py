"""Replication series: how far this node's ledger is from the cluster store.

Built from the replication thread's latest :class:`ReplicationStatus`; nothing is
exported when no ``[cluster] url`` is configured. The backlog is left out until the
store has answered once (unknown is not zero).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.ledger.replication_status import ReplicationStatus

__all__ = ["ReplicationCollector"]


class ReplicationCollector(Collector):
    def __init__(self, get_status: Callable[[], ReplicationStatus | None]) -> None:
        self._get_status = get_status

    def collect(self) -> Iterator[Metric]:
        status = self._get_status()
        if status is None:
            return
        yield GaugeMetricFamily(
            "flopledger_cluster_replication_up",
            "1 if the last attempt to ship this node's ledger reached the cluster store "
            "and was accepted, else 0.", value=1.0 if status.up else 0.0)
        if status.backlog_records is not None:
            yield GaugeMetricFamily(
                "flopledger_cluster_backlog_records",
                "Sealed ledger records of this node not yet in the cluster store.",
                value=float(status.backlog_records))
        yield CounterMetricFamily(
            "flopledger_cluster_shipped_records",
            "Ledger records shipped to the cluster store by this agent since it started.",
            value=float(status.shipped_records))
        yield CounterMetricFamily(
            "flopledger_cluster_failed_attempts",
            "Attempts to reach the cluster store that failed, since the agent started.",
            value=float(status.failed_attempts))
        if status.last_success_wall_seconds is not None:
            yield GaugeMetricFamily(
                "flopledger_cluster_last_shipped_timestamp_seconds",
                "When the cluster store last acknowledged a batch of this node's records.",
                value=status.last_success_wall_seconds)
        flagged = GaugeMetricFamily(
            "flopledger_cluster_node_flagged",
            "1 if the cluster store's witness refuses this node's ledger (it went "
            "backwards or forked), with the reason; else 0.", labels=["reason"])
        flagged.add_metric([status.flagged or ""], 1.0 if status.flagged else 0.0)
        yield flagged
