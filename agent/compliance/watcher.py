"""The agent's threshold watcher: evaluates the regimes against the ledger every minute
and enqueues notifications for new warning levels and "will be met" projections.

It reads the ledger through its own read-only connection in its own thread, so a slow
evaluation never delays sampling. What it finds is also published for /metrics.
Evaluations use this node's ledger: a run spread over many nodes is judged here on
this node's share, and across the cluster by the generated Prometheus rules.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.compliance.evaluate import Evaluation, evaluate, notifications, payload, severity
from agent.compliance.lineage import ModelInfo
from agent.compliance.state import ThresholdRow, ThresholdState
from agent.compliance.thresholds import Registry, ThresholdSettings
from agent.ledger.query import LedgerNotFoundError

__all__ = ["Enqueue", "ThresholdRow", "ThresholdState", "ThresholdWatcher"]

log = logging.getLogger(__name__)

# (key, kind, level, severity, evaluation, payload) -> True if newly enqueued
Enqueue = Callable[[str, str, float, str, Evaluation, dict[str, object]], bool]


class ThresholdWatcher:
    """Evaluates every ``settings.evaluate_every_s`` until stopped.

    Args:
        settings: the agent config's ``[thresholds]``.
        models: the agent config's ``[models.*]`` lineage.
    """

    def __init__(self, settings: ThresholdSettings, models: Mapping[str, ModelInfo],
                 registry: Registry, ledger_path: Path, enqueue: Enqueue | None = None,
                 wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.settings = settings
        self.models = models
        self.registry = registry
        self.ledger_path = ledger_path
        self.enqueue = enqueue
        self.wall_ns = wall_ns
        self.state: ThresholdState | None = None
        self._evaluations = 0
        self._enqueued = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> ThresholdState | None:
        """One evaluation; None if the ledger does not exist yet."""
        t = self.settings
        now = self.wall_ns()
        try:
            snap = evaluate(self.models, self.registry, self.ledger_path, now,
                            estimate=t.estimate, levels=t.levels, window_s=t.window_s,
                            horizon_s=t.horizon_days * 86400)
        except LedgerNotFoundError:
            return None
        if self.enqueue is not None:
            for key, kind, level, e in notifications(snap):
                doc = payload(e, kind, level, snap, now)
                if self.enqueue(key, kind, level, severity(kind, level), e, doc):
                    self._enqueued += 1
                    log.warning("notification: %s", key)
        self._evaluations += 1
        rows = tuple(
            ThresholdRow(e.assessment.subject.kind, e.assessment.subject.name,
                         e.assessment.regime.key, e.assessment.estimate,
                         e.assessment.used_fraction,
                         e.projection.eta_s.get(e.assessment.estimate), e.assessment.met,
                         e.will_be_met)
            for e in snap.evaluations
        )
        self.state = ThresholdState(now / 1e9, self._evaluations, rows, self._enqueued)
        return self.state

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # an evaluation bug must not stop the agent's accounting
                log.exception("threshold evaluation failed")
            self._stop.wait(self.settings.evaluate_every_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="thresholds", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
