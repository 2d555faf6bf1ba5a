"""The cluster's threshold evaluation: the agent's watcher (:mod:`agent.compliance.watcher`)
on the store's records, with its milestones in the store.

The regimes, scopes, lineage, the modifier rule, the outlook, the milestones and the
notification keys are the agent's own code: :class:`ClusterWatcher` only changes where
the records come from (every node's, from one read of the store) and where the
milestones are kept (``fl_milestones``, so a new leader counts every deadline from the
day the first one stored). The count of evaluations a "will be met" has stayed below the
threshold is kept in memory, as on a node: a new leader starts it again from zero, which
only delays a resolution.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg

from agent.cluster.reading import cluster_head, compute_records, read_milestones, run_records
from agent.compliance.evaluate import evaluate
from agent.compliance.lineage import ModelInfo
from agent.compliance.milestones import MilestoneStore
from agent.compliance.state import ThresholdState
from agent.compliance.thresholds import Registry, ThresholdSettings
from agent.compliance.watcher import Enqueue, ThresholdWatcher
from agent.ledger.pg_query import ClusterView
from agent.ledger.query import RunSummary

__all__ = ["ClusterWatcher", "StoreMilestones"]

log = logging.getLogger(__name__)


class StoreMilestones(MilestoneStore):
    """The milestones in ``fl_milestones``: each stored once (``ON CONFLICT DO
    NOTHING``), never changed. Writes on the connection ``connection()`` returns (an
    autocommit one), in a transaction of their own."""

    def __init__(self, connection: Callable[[], psycopg.Connection[Any]]) -> None:
        # No ledger file: every read and write below goes to the store.
        self._connection = connection

    def read(self) -> dict[str, int]:
        rows = self._connection().execute("SELECT key, at_ns FROM fl_milestones").fetchall()
        return {str(k): int(t) for k, t in rows}

    def record(self, milestones: Mapping[str, int]) -> None:
        """Raises: psycopg.Error, the transaction failed (nothing stored, nothing
        notified: the evaluation stops there)."""
        if not milestones:
            return
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany("INSERT INTO fl_milestones (key, at_ns) VALUES (%s, %s)"
                            " ON CONFLICT (key) DO NOTHING", sorted(milestones.items()))


class ClusterWatcher(ThresholdWatcher):
    """Evaluates the cluster's records when :meth:`evaluate_view` is called (the service's
    loop calls it on the leader; the watcher's own thread is never started).

    Args:
        settings: the cluster config's ``[thresholds]``.
        models: its ``[models.*]`` lineage.
        milestones: the store's milestones.
        enqueue: into the store's outbox.
    """

    def __init__(self, settings: ThresholdSettings, models: Mapping[str, ModelInfo],
                 registry: Registry, milestones: StoreMilestones,
                 enqueue: Enqueue | None = None,
                 wall_ns: Callable[[], int] = time.time_ns) -> None:
        # The ledger path is never read: evaluate_view reads the store.
        super().__init__(settings, models, registry, Path(os.devnull), enqueue, wall_ns)
        self.store = milestones

    def evaluate_view(self, view: ClusterView, summaries: Mapping[str, RunSummary]
                      ) -> ThresholdState:
        """One evaluation on what ``view`` holds (``summaries``: its
        :meth:`~ClusterView.run_summaries`): milestones stored, then notifications
        enqueued (as :meth:`ThresholdWatcher.run_once` does with a node's ledger).

        Raises:
            ClusterReadError: the store could not be read.
            psycopg.Error: a milestone or a notification could not be stored.
        """
        t = self.settings
        now = self.wall_ns()
        # The rates need the window's records only; the rest comes from the stored
        # totals, and a crossing is dated on its runs' records when first found.
        window = compute_records(view, ends_after_ns=now - round(t.window_s * 1e9))
        snap = evaluate(self.models, self.registry, None, now,
                        estimate=t.estimate, levels=t.levels, window_s=t.window_s,
                        horizon_s=t.horizon_days * 86400,
                        min_observation_s=t.min_observation_s,
                        min_observation_fraction=t.min_observation_fraction,
                        records=window, milestones=read_milestones(view),
                        summaries=summaries, tree_head=cluster_head(view),
                        run_records=lambda runs: run_records(view, runs))
        return self.take(snap, now)
