"""Thresholds x forecasts for every run and model in the ledger, and what to notify.

One evaluation reads the ledger (sealed and still-open records), builds every model's
figures per scope (with lineage) and every run's own, assesses each enabled regime,
projects each subject to its planned end, and turns new warning levels and new
"will be met" projections into notifications with stable idempotency keys.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import figures
from agent.accounting.records import LedgerRecord
from agent.compliance.forecast import (
    DEFAULT_HORIZON_S,
    DEFAULT_WINDOW_S,
    Projection,
    RunForecast,
    project,
    run_forecast,
)
from agent.compliance.lineage import Flop, ModelInfo, model_view
from agent.compliance.thresholds import DEFAULT_LEVELS, Assessment, Registry, Subject, assess
from agent.ledger.query import iter_records, latest_head, open_records, summarize

METHOD = ("hardware-based estimate, EU Guidelines Annex A.2.1 C = N x L x H x U, with U "
          "measured per GPU and per interval (tensor-pipe activity x measured SM clock x "
          "FLOP per clock of the declared precision); band from the activity's uncertainty, "
          "the clock range, undeclared precision and sampling gaps")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One regime for one subject: where it stands and where it is heading."""

    assessment: Assessment
    projection: Projection
    will_be_met: bool
    plan: str

    @property
    def key_prefix(self) -> str:
        a = self.assessment
        return f"{a.subject.kind}:{a.subject.name}|{a.regime.key}"


@dataclass(slots=True)
class Snapshot:
    """Every evaluation of one pass, plus the ledger's head for the record."""

    now_ns: int
    evaluations: list[Evaluation] = field(default_factory=list)
    tree_head: dict[str, Any] = field(default_factory=dict)
    active_runs: set[str] = field(default_factory=set)


def _gpu_seconds(records: Iterable[LedgerRecord]) -> float:
    return sum(r.covered_ns + r.gap_ns for r in records) / 1e9


def evaluate(models: Mapping[str, ModelInfo], registry: Registry, ledger_path: Path,
             now_ns: int, *,
             estimate: str = "high", levels: Sequence[float] = DEFAULT_LEVELS,
             window_s: float = DEFAULT_WINDOW_S,
             horizon_s: float = DEFAULT_HORIZON_S,
             records: list[LedgerRecord] | None = None) -> Snapshot:
    """Assess and project every enabled regime for every model and run.

    ``models`` is the config's ``[models.*]`` lineage (runs add the base models they
    declare). ``records`` are the ledger's sealed and open records if the caller has already
    read them; otherwise they are read here.

    Raises:
        LedgerNotFoundError: if there is no ledger yet.
    """
    if records is None:
        records = list(iter_records(ledger_path)) + open_records(ledger_path)
    by_run: dict[str, list[LedgerRecord]] = defaultdict(list)
    for r in records:
        by_run[r.run].append(r)
    summaries = summarize(records, ledger_path)
    scopes = registry.scopes
    view = model_view(models, scopes, summaries)
    lineage = view.lineage
    category_of = {s.run: s.category for s in summaries.values()}
    forecasts = {
        run: run_forecast(run, rows, plan_of(summaries[run].meta if run in summaries else {}),
                          now_ns, window_s)
        for run, rows in by_run.items()
    }
    snap = Snapshot(now_ns)
    head, key_fp = latest_head(ledger_path)
    if head is not None:
        snap.tree_head = {"size": head.size, "root": base64.b64encode(head.root).decode(),
                          "timestamp_ns": head.timestamp_ns, "origin": head.origin,
                          "key_fingerprint": key_fp}
    snap.active_runs = {run for run, f in forecasts.items() if f.rate.high > 0}
    regimes = registry.enabled()

    def seconds_in(names: Iterable[str], scope: str) -> float:
        wanted = set(names)
        return sum(_gpu_seconds(rows) for run, rows in by_run.items()
                   if run in summaries and summaries[run].model in wanted
                   and scopes[scope].counts(run, summaries[run].category))

    # Models, with lineage.
    for name in view.model_names():
        info = lineage.models.get(name, ModelInfo(name))
        totals = view.totals(name)
        ancestors = lineage.ancestors(name)
        base_flop: dict[str, Flop | None] = {}
        for scope in scopes:
            bases = [view.totals(b)[scope] for b in info.base_models]
            known = [b for b in bases if b.high > 0]
            base_flop[scope] = max(known, key=lambda f: f.low) if known else None
        base_systemic = any(
            _is_systemic(lineage.models.get(b, ModelInfo(b)),
                         view.totals(b), registry)
            for b in info.base_models
        )
        subject = Subject(
            "model", name, totals,
            {scope: seconds_in([name, *ancestors] if scopes[scope].inherit else [name], scope)
             for scope in scopes},
            info.role, base_flop, base_systemic,
        )
        model_runs = [forecasts[r.run] for r in view.runs
                      if r.model == name and r.run in forecasts]
        _evaluate_subject(snap, subject, regimes, model_runs, category_of, registry, now_ns,
                          estimate, levels, horizon_s)
    # Runs on their own (the regimes that list "run" among their subjects).
    for s in summaries.values():
        if s.run == "unattributed":
            continue
        totals = {scope: (s.flop if s.category in sc.categories else Flop.exact(0))
                  for scope, sc in scopes.items()}
        seconds = {scope: (_gpu_seconds(by_run[s.run]) if s.category in sc.categories else 0.0)
                   for scope, sc in scopes.items()}
        subject = Subject("run", s.run, totals, seconds)
        run_f = [forecasts[s.run]] if s.run in forecasts else []
        _evaluate_subject(snap, subject, regimes, run_f, category_of, registry, now_ns, estimate,
                          levels, horizon_s)
    return snap


def plan_of(meta: Mapping[str, object]) -> dict[str, object]:
    """The FLOPLEDGER_PLAN_* values of a run's metadata, without their prefix."""
    return {k.removeprefix("plan."): v for k, v in meta.items() if k.startswith("plan.")}


def _is_systemic(info: ModelInfo, totals: Mapping[str, Flop], registry: Registry) -> bool:
    if info.systemic_risk is not None:
        return info.systemic_risk
    eu = registry.regimes.get("eu-art51-systemic-risk")
    if eu is None or eu.threshold_flop is None:
        return False
    return eu.reached(float(totals.get(eu.scope, Flop.exact(0)).high), eu.threshold_flop)


def _evaluate_subject(snap: Snapshot, subject: Subject, regimes: Sequence[Any],
                      runs: Sequence[RunForecast], category_of: Mapping[str, str],
                      registry: Registry, now_ns: int, estimate: str,
                      levels: Sequence[float], horizon_s: float) -> None:
    for regime in regimes:
        a = assess(regime, subject, estimate=estimate, levels=levels,
                   usd_per_gpu_hour=registry.usd_per_gpu_hour)
        if a is None:
            continue
        scope = registry.scopes[regime.scope]
        in_scope = [f for f in runs if scope.counts(f.run, category_of.get(f.run, "unknown"))]
        current = subject.flop.get(regime.scope, Flop.exact(0))
        projection = project(current, in_scope, now_ns, a.threshold_flop, horizon_s)
        will = False
        if a.threshold_flop is not None and not a.met:
            will = regime.reached(float(getattr(projection.projected, estimate)),
                                  a.threshold_flop)
        plans = sorted({f.plan for f in in_scope})
        snap.evaluations.append(Evaluation(a, projection, will, ", ".join(plans) or "none"))


def deadline_ns(regime_deadline_days: float | None, since_ns: int) -> int | None:
    if regime_deadline_days is None:
        return None
    return since_ns + round(regime_deadline_days * 86400 * 1e9)


def payload(e: Evaluation, kind: str, level: float, snap: Snapshot,
            since_ns: int) -> dict[str, Any]:
    """Everything a compliance team needs in one notification."""
    a = e.assessment
    r = a.regime
    value = a.value
    deadline = deadline_ns(r.deadline_days, since_ns)
    eta = e.projection.eta_s.get(a.estimate)
    return {
        "kind": kind,
        "level": level,
        "subject_type": a.subject.kind,
        "subject": a.subject.name,
        "regime": r.key,
        "regime_title": r.title,
        "jurisdiction": r.jurisdiction,
        "status": r.status,
        "threshold_flop": a.threshold_flop,
        "threshold": figures.flop(a.threshold_flop) if a.threshold_flop else None,
        "comparison": "strictly greater than" if r.comparison == "gt" else "at or above",
        "scope": r.scope,
        "estimate_used": a.estimate,
        "flop": {"low": value.low, "central": value.central, "high": value.high},
        "flop_2sf": figures.band(value.low, value.central, value.high),
        "fraction": {k: float(f"{v:.2g}") for k, v in a.fraction.items()},
        "cost_usd": a.cost_usd,
        "projected_flop": {"low": e.projection.projected.low,
                           "central": e.projection.projected.central,
                           "high": e.projection.projected.high},
        "projection_basis": e.plan,
        "eta": figures.when(snap.now_ns + eta * 1e9) if eta is not None else None,
        "obligation": r.obligation,
        "deadline": figures.when(deadline) if deadline is not None else None,
        "deadline_ns": deadline,
        "method": METHOD,
        "ledger": snap.tree_head,
        "sources": list(r.sources),
        "evaluated_at": figures.when(snap.now_ns),
    }


def severity(kind: str, level: float) -> str:
    if kind == "will-be-met" or level >= 1.0:
        return "critical"
    return "warning" if level >= 0.9 else "info"


def notifications(snap: Snapshot) -> list[tuple[str, str, float, Evaluation]]:
    """(key, kind, level, evaluation) for everything that should have been notified by
    now: the highest warning level reached, and "will be met" projections. Keys are
    stable, so the outbox turns repeats into no-ops."""
    out = []
    for e in snap.evaluations:
        a = e.assessment
        if a.levels_reached:
            level = a.levels_reached[-1]
            out.append((f"{e.key_prefix}|level:{level:g}", "level", level, e))
        if e.will_be_met:
            out.append((f"{e.key_prefix}|will-be-met", "will-be-met", 1.0, e))
    return out
