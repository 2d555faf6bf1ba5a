"""The cluster service's ``/metrics``: the authoritative cluster-wide totals.

Every series is built from the last published :class:`ClusterState` (an immutable value
the service's loop swaps after each pass): a scrape runs no SQL. Every replica serves
the totals of its last read and ``flopledger_cluster_leader`` (1 on the one that leads);
the threshold series come from the leader's evaluation only (a follower has none), and
the notification counts from the store's outbox as last read.

Collectors run isolated, as the agent's (:class:`exporters.collector.Exposition`): one
that raises loses only its own series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.cluster.reading import ClusterTotals
from agent.compliance.state import ThresholdState
from agent.notify.status import NotifyStatus
from exporters.collector import Exposition, Part
from exporters.notifications import NotificationCollector
from exporters.runs import RUN_LABELS
from exporters.thresholds import threshold_families

__all__ = ["ClusterCollector", "ClusterState"]


@dataclass(frozen=True, slots=True)
class ClusterState:
    """What the service last found, for /metrics.

    Attributes:
        totals: the last read's totals (kept through an outage; None before the first).
        leader: this replica leads.
        store_up: the last pass reached the store.
        thresholds: the leader's last evaluation (None on a follower).
        notify: the store's outbox counts as last read (None before the first read).
    """

    totals: ClusterTotals | None = None
    leader: bool = False
    store_up: bool = False
    thresholds: ThresholdState | None = None
    notify: NotifyStatus | None = None


# (metric name without _total, help, Band attribute)
_BAND = (
    ("", "central estimate", "central"),
    ("_low", "lower bound", "low"),
    ("_high", "upper bound", "high"),
)


class ClusterTotalsCollector(Collector):
    """The service's own series and the cluster totals of one published state."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        s = self._state
        leader = GaugeMetricFamily("flopledger_cluster_leader",
                                   "1 if this replica leads (evaluates and notifies), else 0.")
        leader.add_metric([], 1.0 if s.leader else 0.0)
        yield leader
        up = GaugeMetricFamily("flopledger_cluster_store_up",
                               "1 if the last pass read the PostgreSQL store, else 0 (the "
                               "totals are then those of the last read).")
        up.add_metric([], 1.0 if s.store_up else 0.0)
        yield up
        t = s.totals
        if t is None:
            return
        last = GaugeMetricFamily("flopledger_cluster_last_read_timestamp_seconds",
                                 "When the totals below were read from the store.")
        last.add_metric([], t.read_wall_seconds)
        yield last
        for suffix, what, attr in _BAND:
            runs = CounterMetricFamily(
                f"flopledger_cluster_run_flop{suffix}",
                f"Estimated FLOP of the run over every node, {what} (the cluster store's "
                "totals).", labels=RUN_LABELS)
            for r in t.runs:
                runs.add_metric([r.run, r.model, r.category], float(getattr(r.flop, attr)))
            yield runs
        for suffix, what, attr in _BAND:
            models = CounterMetricFamily(
                f"flopledger_cluster_model_flop{suffix}",
                f"Estimated FLOP of the model in a regulatory scope over every node, with "
                f"its lineage where the scope inherits, {what}.", labels=["model", "scope"])
            for m in t.models:
                models.add_metric([m.model, m.scope], float(getattr(m.flop, attr)))
            yield models
        nodes = GaugeMetricFamily("flopledger_cluster_nodes",
                                  "Nodes whose records the store holds.")
        nodes.add_metric([], float(len(t.nodes)))
        yield nodes
        flagged = GaugeMetricFamily(
            "flopledger_cluster_node_flagged",
            "1 if the witness stopped accepting a ledger of this node (it went backwards "
            "or forked), else 0.", labels=["node"])
        for n in t.nodes:
            flagged.add_metric([n.node], 1.0 if n.flagged else 0.0)
        yield flagged


class ClusterThresholdCollector(Collector):
    """Threshold series of the leader's last evaluation, on the cluster's totals."""

    def __init__(self, state: ThresholdState | None) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        if self._state is None:
            return
        yield from threshold_families(self._state, "flopledger_cluster_threshold",
                                      "over the whole cluster", "at the cluster's current rate",
                                      "When the leader last evaluated the thresholds.")


class ClusterCollector(Exposition):
    """The cluster service's /metrics, from the state ``get_state`` returns (read once
    per scrape, so every series of a scrape is of the same pass)."""

    def __init__(self, get_state: Callable[[], ClusterState]) -> None:
        super().__init__(self._scrape_parts)
        self._get_state = get_state

    def _scrape_parts(self) -> list[Part]:
        state = self._get_state()
        notify: NotifyStatus | None = state.notify
        return [("cluster", ClusterTotalsCollector(state)),
                ("thresholds", ClusterThresholdCollector(state.thresholds)),
                ("notifications", NotificationCollector(lambda: notify))]
