"""The agent's threshold watcher: evaluates the regimes against the ledger every minute
and enqueues notifications for warning levels, "will be met" projections and their
resolutions.

Before it notifies, it stores what starts a legal deadline (``agent.compliance.
milestones``): when a threshold was met and when a "will be met" was first known, so
every later ``status``, ``report``, notification and metric counts from the same day.
A "will be met" is resolved (and the resolution notified) once the projection to the
planned ends stays below (1 - ``resolve_margin``) x threshold for ``resolve_after``
evaluations in a row: a rate that wobbles around the threshold does not flap, a plan
cut short resolves within a few evaluations. The count of evaluations below is kept in
memory; after a restart it starts again from zero, which only delays a resolution.

It reads the ledger through its own read-only connection in its own thread, so a slow
evaluation never delays sampling. What it finds is also published for /metrics.
Evaluations use this node's ledger: a run spread over many nodes is judged here on
this node's share, and across the cluster by the generated Prometheus rules.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.accounting.band import Band
from agent.compliance.evaluate import (
    Evaluation,
    Snapshot,
    evaluate,
    notifications,
    payload,
    severity,
)
from agent.compliance.lineage import ModelInfo
from agent.compliance.milestones import MilestoneStore, episode_key, resolved_key
from agent.compliance.state import ThresholdRow, ThresholdState
from agent.compliance.thresholds import ESTIMATES, Registry, ThresholdSettings
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
        self.snapshot: Snapshot | None = None  # the last evaluation, milestones applied
        self._evaluations = 0
        self._enqueued = 0
        self.store = MilestoneStore(ledger_path)
        self._below: dict[str, int] = {}  # key prefix -> evaluations below in a row
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> ThresholdState | None:
        """One evaluation; None if the ledger does not exist yet."""
        t = self.settings
        now = self.wall_ns()
        try:
            snap = evaluate(self.models, self.registry, self.ledger_path, now,
                            estimate=t.estimate, levels=t.levels, window_s=t.window_s,
                            horizon_s=t.horizon_days * 86400,
                            min_observation_s=t.min_observation_s,
                            min_observation_fraction=t.min_observation_fraction)
        except LedgerNotFoundError:
            return None
        return self.take(snap, now)

    def take(self, snap: Snapshot, now: int) -> ThresholdState:
        """An evaluation made: milestones stored, notifications enqueued, state
        published (the cluster service feeds its own evaluations through here too)."""
        self._track(snap)
        self.snapshot = snap
        if self.enqueue is not None:
            for ev in notifications(snap):
                doc = payload(ev, snap)
                if self.enqueue(ev.key, ev.kind, ev.level, severity(ev.kind, ev.level),
                                ev.evaluation, doc):
                    self._enqueued += 1
                    log.warning("notification: %s", ev.key)
        self._evaluations += 1
        rows = tuple(
            ThresholdRow(e.assessment.subject.kind, e.assessment.subject.name,
                         e.assessment.regime.key, e.assessment.estimate,
                         e.assessment.used_fraction,
                         e.projection.eta_s.get(e.assessment.estimate), e.assessment.met,
                         e.active and not e.assessment.met,
                         e.deadline_ns / 1e9 if e.deadline_ns is not None else None,
                         Band(*(e.assessment.fraction[k] for k in ESTIMATES))
                         if e.assessment.threshold_flop else None)
            for e in snap.evaluations
        )
        self.state = ThresholdState(now / 1e9, self._evaluations, rows, self._enqueued)
        return self.state

    def _track(self, snap: Snapshot) -> None:
        """Store new milestones (met, "will be met" known, resolved) and update the
        evaluations to match, before anything is notified."""
        t = self.settings
        now = snap.now_ns
        new: dict[str, int] = {}
        for i, e in enumerate(snap.evaluations):
            a = e.assessment
            prefix = e.key_prefix
            met_key = f"{prefix}|met"
            if a.met and met_key not in snap.milestones:
                # Where the ledger crossed it; now, if compute declared elsewhere did.
                at = e.met_at_ns if e.met_at_ns is not None else now
                new[met_key] = at
                e = dataclasses.replace(e, met_at_ns=at)
            if not a.met and e.active and a.threshold_flop is not None:
                projected = e.planned_projected
                below = projected is None or float(projected.central) < (
                    (1 - t.resolve_margin) * a.threshold_flop)
                self._below[prefix] = self._below.get(prefix, 0) + 1 if below else 0
                if self._below[prefix] >= t.resolve_after:
                    new[resolved_key(prefix, e.episode)] = now
                    e = dataclasses.replace(e, active=False, known_at_ns=None)
                    self._below.pop(prefix)
            elif not a.met and not e.active and e.outlook == "will be met":
                episode = e.episode + 1
                new[episode_key(prefix, episode)] = now
                e = dataclasses.replace(e, episode=episode, active=True, known_at_ns=now)
            snap.evaluations[i] = e
        if new:
            self.store.record(new)
            snap.milestones.update(new)

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
