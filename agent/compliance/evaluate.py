"""Thresholds x forecasts for every run and model in the ledger, and what to notify.

One evaluation reads the ledger (sealed and still-open records), builds every model's
figures per scope (with lineage) and every run's own, assesses each enabled regime,
projects each subject to its planned end, and turns warning levels, "will be met"
projections and their resolutions into notifications with stable idempotency keys.

What is said about a projection:

- "will be met": the in-scope runs with a declared plan (end time, duration, or size
  6PD), projected to their planned ends at the central rate, cross the threshold, and
  they have been observed long enough (``min_observation_s`` of run time and
  ``min_observation_fraction`` of the threshold, whichever comes later). Only this
  starts a legal deadline.
- "may be met": only the high bound crosses, or the observation window has not passed.
- otherwise, no verdict: the ETA at the current rate is shown, labelled so.

A deadline counts from the stored milestone (``agent.compliance.milestones``): when the
threshold was met, or when an unresolved "will be met" was first known, whichever is
earlier; every reader gets it from there, so it never moves with the clock.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    RunSpan,
    planned_projection,
    project,
    run_forecast,
)
from agent.compliance.lineage import Flop, ModelInfo, model_view
from agent.compliance.milestones import (
    History,
    episode_key,
    histories,
    read_milestones,
    resolved_key,
)
from agent.compliance.thresholds import (
    DEFAULT_LEVELS,
    Assessment,
    Regime,
    Registry,
    Subject,
    assess,
)
from agent.ledger.query import (
    RunSummary,
    iter_records,
    latest_head,
    open_records,
    summarize,
)

METHOD = ("hardware-based estimate, EU Guidelines Annex A.2.1 C = N x L x H x U, with U "
          "measured per GPU and per interval (tensor-pipe activity x measured SM clock x "
          "FLOP per clock of the declared precision); band from the activity's uncertainty, "
          "the clock range, undeclared precision and sampling gaps")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One regime for one subject: where it stands and where it is heading.

    Attributes:
        projection: current rate, ETA at the current rate (all in-scope runs), and the
            total projected to the planned ends or, without a plan, ``horizon_s`` ahead.
        will_be_met: the outlook is "will be met" in this evaluation.
        plan: how the in-scope runs declared their ends ("none": no plan).
        outlook: "met", "will be met", "may be met" or "" (no verdict).
        note: why the outlook is only "may be met", or what the ETA is based on.
        planned_projected: the total at the planned ends (planned runs only), None
            without a plan.
        met_at_ns: when the threshold was met (stored, or where the ledger crossed it).
        known_at_ns: when the active "will be met" episode was first known.
        episode: "will be met" episodes stored so far.
        active: an episode is known and not resolved.
    """

    assessment: Assessment
    projection: Projection
    will_be_met: bool
    plan: str
    outlook: str = ""
    note: str = ""
    planned_projected: Flop | None = None
    met_at_ns: int | None = None
    known_at_ns: int | None = None
    episode: int = 0
    active: bool = False

    @property
    def key_prefix(self) -> str:
        a = self.assessment
        return f"{a.subject.kind}:{a.subject.name}|{a.regime.key}"

    @property
    def deadline_ns(self) -> int | None:
        """The legal deadline: the regime's days from when the threshold was met or an
        unresolved "will be met" was first known, whichever is earlier; None if neither
        is stored or derived, or the regime sets no deadline."""
        anchor = self.deadline_anchor
        days = self.assessment.regime.deadline_days
        if anchor is None or days is None:
            return None
        return anchor[1] + round(days * 86400e9)

    @property
    def deadline_anchor(self) -> tuple[str, int] | None:
        """("met" or "known", ns) the deadline counts from."""
        anchors = []
        if self.assessment.met and self.met_at_ns is not None:
            anchors.append(("met", self.met_at_ns))
        if self.active and self.known_at_ns is not None:
            anchors.append(("known", self.known_at_ns))
        return min(anchors, key=lambda x: x[1]) if anchors else None


@dataclass(slots=True)
class Snapshot:
    """Every evaluation of one pass, plus the ledger's head for the record."""

    now_ns: int
    evaluations: list[Evaluation] = field(default_factory=list)
    tree_head: dict[str, Any] = field(default_factory=dict)
    active_runs: set[str] = field(default_factory=set)
    milestones: dict[str, int] = field(default_factory=dict)


# Every record of the given runs (see ``evaluate``'s ``run_records``).
RunRecords = Callable[[Sequence[str]], Iterable[LedgerRecord]]


def _gpu_seconds(records: Iterable[LedgerRecord]) -> float:
    return sum(r.covered_ns + r.gap_ns for r in records) / 1e9


def evaluate(models: Mapping[str, ModelInfo], registry: Registry, ledger_path: Path | None,
             now_ns: int, *,
             estimate: str = "high", levels: Sequence[float] = DEFAULT_LEVELS,
             window_s: float = DEFAULT_WINDOW_S,
             horizon_s: float = DEFAULT_HORIZON_S,
             records: Iterable[LedgerRecord] | None = None,
             min_observation_s: float = 3600.0, min_observation_fraction: float = 0.01,
             milestones: Mapping[str, int] | None = None,
             summaries: Mapping[str, RunSummary] | None = None,
             tree_head: Mapping[str, Any] | None = None,
             run_records: RunRecords | None = None) -> Snapshot:
    """Assess and project every enabled regime for every model and run.

    ``models`` is the config's ``[models.*]`` lineage (runs add the base models they
    declare). ``records`` are the ledger's sealed and open records if the caller has already
    read them (they are read once, so a stream will do); otherwise they are read here.
    ``milestones`` are the stored milestones (``agent.compliance.milestones``); read from
    the ledger file if not given. ``tree_head`` is what the notifications cite as the
    ledger; the file's latest head if not given.

    ``summaries`` are each run's sums over ``records`` with its declared metadata, if the
    caller keeps them (the cluster store does): the runs' FLOP, categories, GPU time
    (covered + gap), first start and last end are then taken from them, and the records
    serve only the rates and the crossings. Without them they are summed here and the
    metadata read from the file.

    ``run_records``, with ``summaries``: reads every record of the given runs, in the
    order ``records`` would hold them. ``records`` then need only hold those that end
    after ``now_ns - window_s`` (the rates); a crossing not yet stored as a milestone
    is dated on what ``run_records`` returns, so a caller keeps its reads per
    evaluation proportional to the window, not to the ledger.

    Without a ledger file (``ledger_path`` None: the cluster store, read by its caller)
    ``records``, ``milestones`` and ``summaries`` must all be given.

    Raises:
        LedgerNotFoundError: if there is no ledger yet.
        ValueError: ``ledger_path`` None and one of those three not given.
    """
    if ledger_path is None and (records is None or milestones is None or summaries is None):
        raise ValueError("evaluate without a ledger file needs records, milestones and "
                         "summaries")
    if run_records is not None and summaries is None:
        raise ValueError("run_records needs summaries")
    if records is None:
        assert ledger_path is not None
        records = list(iter_records(ledger_path)) + open_records(ledger_path)
    by_run: dict[str, list[LedgerRecord]] = defaultdict(list)
    for r in records:
        by_run[r.run].append(r)
    run_seconds: Callable[[str], float]
    if summaries is None:
        assert ledger_path is not None
        # Every run's records in their order, runs in order of first appearance: the
        # sums (and the order of the runs) are those of ``records`` read in one pass.
        summaries = summarize((r for rows in by_run.values() for r in rows), ledger_path)

        def run_seconds(run: str) -> float:
            return _gpu_seconds(by_run[run])
    else:
        # The runs in the order their records first name them, as summing would give;
        # with only a window's records, in the caller's order (the same at every
        # evaluation, wherever the window falls).
        given = summaries
        summaries = (dict(given) if run_records is not None else
                     {**{run: given[run] for run in by_run if run in given}, **given})

        def run_seconds(run: str) -> float:
            s = given.get(run)
            return (s.covered_ns + s.gap_ns) / 1e9 if s is not None else 0.0
    scopes = registry.scopes
    view = model_view(models, scopes, summaries)
    lineage = view.lineage
    category_of = {s.run: s.category for s in summaries.values()}
    if run_records is not None:
        # The window's records give the rates; the sums give the rest, for every run
        # (one without a record in the window still has a plan and a total).
        forecasts = {
            s.run: run_forecast(s.run, by_run.get(s.run, ()), plan_of(s.meta), now_ns,
                                window_s, known=RunSpan(s.first_ns, s.last_ns, s.flop))
            for s in summaries.values()}

        def rows_of(runs: Sequence[str]) -> Mapping[str, list[LedgerRecord]]:
            assert run_records is not None
            rows: dict[str, list[LedgerRecord]] = defaultdict(list)
            for r in run_records(runs):
                rows[r.run].append(r)
            return rows
    else:
        forecasts = {
            run: run_forecast(run, rows,
                              plan_of(summaries[run].meta if run in summaries else {}),
                              now_ns, window_s)
            for run, rows in by_run.items()
        }

        def rows_of(runs: Sequence[str]) -> Mapping[str, list[LedgerRecord]]:
            return by_run
    snap = Snapshot(now_ns)
    if milestones is None:
        assert ledger_path is not None
        milestones = read_milestones(ledger_path)
    snap.milestones = dict(milestones)
    context = _Context(registry, category_of, rows_of, histories(snap.milestones), now_ns,
                       estimate, levels, horizon_s, min_observation_s,
                       min_observation_fraction)
    if tree_head is not None:
        snap.tree_head = dict(tree_head)
    elif ledger_path is not None:
        head, key_fp = latest_head(ledger_path)
        if head is not None:
            snap.tree_head = {"size": head.size, "root": base64.b64encode(head.root).decode(),
                              "timestamp_ns": head.timestamp_ns, "origin": head.origin,
                              "key_fingerprint": key_fp}
    snap.active_runs = {run for run, f in forecasts.items() if f.rate.high > 0}
    regimes = registry.enabled()

    def seconds_in(names: Iterable[str], scope: str) -> float:
        wanted = set(names)
        return sum(run_seconds(run) for run in summaries
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
            is_systemic(lineage.models.get(b, ModelInfo(b)),
                         view.totals(b), registry)
            for b in info.base_models
        )
        subject = Subject(
            "model", name, totals,
            {scope: seconds_in([name, *ancestors] if scopes[scope].inherit else [name], scope)
             for scope in scopes},
            info.role, base_flop, base_systemic,
        )
        # Ancestors still training add to the model's future, where the scope inherits.
        family = {name, *ancestors}
        model_runs = [(forecasts[r.run], r.model == name) for r in view.runs
                      if r.model in family and r.run in forecasts]
        _evaluate_subject(snap, subject, regimes, model_runs, context)
    # Runs on their own (the regimes that list "run" among their subjects).
    for s in summaries.values():
        if s.run == "unattributed":
            continue
        totals = {scope: (s.flop if s.category in sc.categories else Flop.exact(0))
                  for scope, sc in scopes.items()}
        seconds = {scope: (run_seconds(s.run) if s.category in sc.categories else 0.0)
                   for scope, sc in scopes.items()}
        subject = Subject("run", s.run, totals, seconds)
        run_f = [(forecasts[s.run], True)] if s.run in forecasts else []
        _evaluate_subject(snap, subject, regimes, run_f, context)
    return snap


def plan_of(meta: Mapping[str, object]) -> dict[str, object]:
    """The FLOPLEDGER_PLAN_* values of a run's metadata, without their prefix."""
    return {k.removeprefix("plan."): v for k, v in meta.items() if k.startswith("plan.")}


def is_systemic(info: ModelInfo, totals: Mapping[str, Flop], registry: Registry) -> bool:
    if info.systemic_risk is not None:
        return info.systemic_risk
    eu = registry.regimes.get("eu-art51-systemic-risk")
    if eu is None or eu.threshold_flop is None:
        return False
    return eu.reached(float(totals.get(eu.scope, Flop.exact(0)).high), eu.threshold_flop)


@dataclass(frozen=True, slots=True)
class _Context:
    registry: Registry
    category_of: Mapping[str, str]
    rows_of: Callable[[Sequence[str]], Mapping[str, list[LedgerRecord]]]
    histories: Mapping[str, History]
    now_ns: int
    estimate: str
    levels: Sequence[float]
    horizon_s: float
    min_observation_s: float
    min_observation_fraction: float


def _crossing_ns(rows_by_run: Mapping[str, list[LedgerRecord]], runs: Iterable[str],
                 total: Flop, threshold: float, regime: Regime, estimate: str) -> int | None:
    """The end of the ledger record with which ``total`` (of the chosen estimate) crossed
    the threshold; None if it was crossed before any of these runs' records (declared or
    inherited compute from elsewhere) or not at all."""
    rows = sorted((r for run in runs for r in rows_by_run.get(run, [])), key=lambda r: r.end_ns)
    so_far = float(getattr(total, estimate)) - sum(float(getattr(r.flop, estimate))
                                                   for r in rows)
    if regime.reached(so_far, threshold):
        return None
    for r in rows:
        so_far += float(getattr(r.flop, estimate))
        if regime.reached(so_far, threshold):
            return r.end_ns
    return None


def _outlook(a: Assessment, regime: Regime, planned: Sequence[RunForecast],
             projected: Flop | None, c: _Context) -> tuple[str, str]:
    if a.met:
        return "met", ""
    threshold = a.threshold_flop
    if threshold is None:
        return "", ""
    if projected is None:
        return "", "at the current rate"
    central = regime.reached(float(projected.central), threshold)
    high = regime.reached(float(projected.high), threshold)
    if not central:
        return ("may be met", "only the high bound of the plan crosses") if high else ("", "")
    observed_s = max(f.observed_s for f in planned)
    evidence = sum(float(f.current.central) for f in planned)
    if observed_s < c.min_observation_s or evidence < c.min_observation_fraction * threshold:
        return "may be met", (
            f"observed {observed_s / 3600:.2g} h and {evidence / threshold:.2%} of the "
            f"threshold; 'will be met' needs {c.min_observation_s / 3600:.2g} h and "
            f"{c.min_observation_fraction:.2%}")
    return "will be met", ""


def _evaluate_subject(snap: Snapshot, subject: Subject, regimes: Sequence[Regime],
                      runs: Sequence[tuple[RunForecast, bool]], c: _Context) -> None:
    """``runs``: (forecast, whether it is the subject's own run rather than an
    ancestor's)."""
    for regime in regimes:
        a = assess(regime, subject, estimate=c.estimate, levels=c.levels,
                   usd_per_gpu_hour=c.registry.usd_per_gpu_hour)
        if a is None:
            continue
        scope = c.registry.scopes[regime.scope]
        in_scope = [f for f, own in runs if (own or scope.inherit)
                    and scope.counts(f.run, c.category_of.get(f.run, "unknown"))]
        current = subject.flop.get(regime.scope, Flop.exact(0))
        projection = project(current, in_scope, c.now_ns, a.threshold_flop, c.horizon_s)
        planned = [f for f in in_scope if f.planned]
        planned_total = planned_projection(current, planned, c.now_ns) if planned else None
        outlook, note = _outlook(a, regime, planned, planned_total, c)
        plans = sorted({f.plan for f in planned})
        prefix = f"{subject.kind}:{subject.name}|{regime.key}"
        history = c.histories.get(prefix, History())
        met_at = history.met_at_ns
        if a.met and met_at is None and a.threshold_flop is not None:
            crossing_runs = [f.run for f in in_scope]
            met_at = _crossing_ns(c.rows_of(crossing_runs), crossing_runs, current,
                                  a.threshold_flop, regime, c.estimate)
        active = history.active
        snap.evaluations.append(Evaluation(
            a, projection, outlook == "will be met", ", ".join(plans) or "none", outlook,
            note, planned_total, met_at,
            history.known_at_ns.get(active) if active is not None else None,
            history.episodes, active is not None))


def deadline_text(deadline_ns: int | None, now_ns: int) -> str:
    """"deadline DATE", or "deadline passed on DATE" once it is behind ``now_ns``;
    empty without a deadline."""
    if deadline_ns is None:
        return ""
    when = figures.when(deadline_ns)
    return f"deadline passed on {when}" if deadline_ns < now_ns else f"deadline {when}"


@dataclass(frozen=True, slots=True)
class Event:
    """One notification that is due, whether or not it was enqueued before.

    Attributes:
        key: the idempotency key (stable across restarts).
        kind: "level", "will-be-met" or "resolved" (a "will be met" that no longer is).
        level: the fraction of the threshold it is about (1.0 for met and will-be-met).
        deadline_ns: the legal deadline; only met (level 1.0) and will-be-met carry one.
        at_ns: when what it reports happened: met, first known, resolved.
        resolves: for "resolved", the key of the "will be met" it ends.
    """

    key: str
    kind: str
    level: float
    evaluation: Evaluation
    deadline_ns: int | None = None
    at_ns: int | None = None
    resolves: str | None = None


def payload(ev: Event, snap: Snapshot) -> dict[str, Any]:
    """Everything a compliance team needs in one notification."""
    e = ev.evaluation
    a = e.assessment
    r = a.regime
    value = a.value
    eta = e.projection.eta_s.get(a.estimate)
    planned = e.planned_projected
    return {
        "kind": ev.kind,
        "level": ev.level,
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
        "outlook": e.outlook,
        "outlook_note": e.note,
        "projected_flop": {"low": e.projection.projected.low,
                           "central": e.projection.projected.central,
                           "high": e.projection.projected.high},
        "projected_at_planned_end_flop": ({"low": planned.low, "central": planned.central,
                                           "high": planned.high} if planned else None),
        "projection_basis": e.plan,
        "eta": figures.when(snap.now_ns + eta * 1e9) if eta is not None else None,
        "eta_basis": "at the current rate",
        "at": figures.when(ev.at_ns) if ev.at_ns is not None else None,
        "at_ns": ev.at_ns,
        "resolves": ev.resolves,
        "obligation": r.obligation,
        "deadline": figures.when(ev.deadline_ns) if ev.deadline_ns is not None else None,
        "deadline_ns": ev.deadline_ns,
        "deadline_passed": ev.deadline_ns is not None and ev.deadline_ns < snap.now_ns,
        "method": METHOD,
        "ledger": snap.tree_head,
        "sources": list(r.sources),
        "evaluated_at": figures.when(snap.now_ns),
    }


def severity(kind: str, level: float) -> str:
    if kind == "resolved":
        return "info"
    if kind == "will-be-met" or level >= 1.0:
        return "critical"
    return "warning" if level >= 0.9 else "info"


def notifications(snap: Snapshot) -> list[Event]:
    """Everything that should have been notified by now: every warning level reached
    (also those passed while no agent ran), every stored "will be met" episode and
    every resolution of one. Keys are stable, so the outbox turns repeats into no-ops;
    "will be met" comes only from stored milestones (the watcher stores them first)."""
    out = []
    stored = histories(snap.milestones)
    for e in snap.evaluations:
        a = e.assessment
        prefix = e.key_prefix
        for level in a.levels_reached:
            met = level >= 1.0
            out.append(Event(f"{prefix}|level:{level:g}", "level", level, e,
                             e.deadline_ns if met else None, e.met_at_ns if met else None))
        h = stored.get(prefix)
        if h is None:
            continue
        days = a.regime.deadline_days
        for n, known_ns in sorted(h.known_at_ns.items()):
            deadline = known_ns + round(days * 86400e9) if days is not None else None
            out.append(Event(episode_key(prefix, n), "will-be-met", 1.0, e, deadline, known_ns))
            if n in h.resolved_at_ns:
                out.append(Event(resolved_key(prefix, n), "resolved", 1.0, e, None,
                                 h.resolved_at_ns[n], episode_key(prefix, n)))
    return out
