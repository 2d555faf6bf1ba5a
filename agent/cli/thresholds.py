"""The threshold commands: ``thresholds`` (the registry), ``status`` (where runs and
models stand) and ``rules`` (Prometheus rules generated from the registry).

``status --ledger postgresql://...`` states the cluster-wide figures: the evaluation the
cluster service runs (:mod:`agent.cluster.reading`) on every node's records, read in one
transaction, with a WARNING at the top (exit 1) for a node the witness flagged. The
helpers that read the store so (:func:`evaluate_store`, :func:`store_text`) serve
``report`` and ``gate`` too."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import figures
from agent.accounting.names import printable
from agent.cli.common import add_ledger_args, cluster_url, config_of, ledger_path, open_cluster

if TYPE_CHECKING:
    from agent.accounting.records import LedgerRecord
    from agent.compliance.evaluate import Evaluation, Snapshot
    from agent.compliance.lineage import ModelInfo
    from agent.compliance.thresholds import Registry
    from agent.ledger.pg_query import ClusterView
    from agent.reports.processed import ProcessedCheck


def cmd_thresholds(args: argparse.Namespace) -> int:
    from agent.compliance.thresholds import load_registry

    registry = load_registry(config_of(args).agent.thresholds_file)
    print(f"{'regime':<26} {'threshold':<22} {'scope':<17} {'status':<9} {'on':<3} "
          f"{'deadline':<9} title")
    for r in registry.regimes.values():
        parts = []
        if r.threshold_flop:
            parts.append(("> " if r.comparison == "gt" else ">= ") + figures.flop(r.threshold_flop))
        if r.threshold_fraction_of_base:
            parts.append(f"> 1/3 base (else {figures.flop(r.fallback_flop or 0)})")
        if r.threshold_usd:
            parts.append(f"and > ${r.threshold_usd / 1e6:g}M")
        deadline = f"{r.deadline_days:g} days" if r.deadline_days is not None else "-"
        print(f"{r.key:<26} {' '.join(parts):<22} {r.scope:<17} {r.status:<9} "
              f"{'yes' if r.enabled else 'no':<3} {deadline:<9} {r.title}")
        if args.sources:
            for s in r.sources:
                print(f"{'':<26} source: {s}")
    print(f"\n{registry.path}; scopes: " + ", ".join(
        f"{s.name} ({', '.join(sorted(s.categories))}{'; inherits' if s.inherit else ''})"
        for s in registry.scopes.values()))
    return 0


def _bar(fraction: float, width: int = 20) -> str:
    filled = min(width, round(max(0.0, fraction) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def cmd_status(args: argparse.Namespace) -> int:
    """0, or 1 if the ledger fails its checks or the cluster store holds a node the
    witness flagged (a WARNING at the top, the figures below it)."""
    from agent.compliance.evaluate import evaluate
    from agent.compliance.thresholds import load_registry
    from agent.ledger.query import read_view

    config = config_of(args)
    registry = load_registry(config.agent.thresholds_file)
    now = time.time_ns()
    t = config.thresholds
    settings = {"estimate": args.estimate, "levels": t.levels, "window_s": t.window_s,
                "horizon_s": t.horizon_days * 86400, "min_observation_s": t.min_observation_s,
                "min_observation_fraction": t.min_observation_fraction}
    if cluster_url(args) is not None:
        from agent.cluster.reading import run_records

        with open_cluster(args, config) as store:
            for line in store.warnings():
                print(printable(line, 4000))
            # One transaction: the thresholds, the declared compute and the heads cited
            # are of the same records. Only the runs whose trainers reported tokens are
            # read whole (their measured compute up to the count).
            snap = evaluate_store(store, config.models, registry, now, settings)
            counted = sorted(run for run, meta in store.run_meta.items()
                             if meta.get("progress.tokens"))
            declared_records = list(run_records(store, counted)) if counted else []
            _print_status(args, snap, now, store.run_meta, declared_records,
                          store_text(store), lambda: cluster_dead_letters(store))
            return 1 if store.flagged() else 0
    path = ledger_path(args, config)
    from agent.cli.ledger import ledger_warnings

    warnings, damaged = ledger_warnings(path)
    for line in warnings:
        print(line)
    # One read: the thresholds and the declared compute are of the same records, and of
    # the runs' metadata as it was then.
    view = read_view(path)
    records = [*view.sealed, *view.unsealed]
    snap = evaluate(config.models, registry, path, now, records=records, **settings)
    _print_status(args, snap, now, view.run_meta, records,
                  f"ledger head {snap.tree_head.get('size', 0)} records",
                  lambda: _dead_letters(path))
    return 1 if damaged else 0


def _print_status(args: argparse.Namespace, snap: Snapshot, now: int,
                  run_meta: dict[str, dict[str, object]], records: list[LedgerRecord],
                  head_text: str, dead_letters: Callable[[], list[str]]) -> None:
    """Where each run and model stands, the declared compute against the measured,
    what the figures are of (``head_text``) and the notifications never delivered."""
    by_subject: dict[tuple[str, str], list[Evaluation]] = {}
    for e in snap.evaluations:
        a = e.assessment
        active = a.subject.kind == "model" or a.subject.name in snap.active_runs
        if not args.all and not active and max(a.fraction.values()) == 0:
            continue
        by_subject.setdefault((a.subject.kind, a.subject.name), []).append(e)
    if not by_subject:
        print("(nothing to show: no runs or models in the ledger yet)")
        _print_lines(dead_letters())
        return
    for (kind, name), evaluations in sorted(by_subject.items()):
        rate = evaluations[0].projection.rate
        state = "active" if (kind == "run" and name in snap.active_runs) or rate.high > 0 else (
            "idle")
        print(f"{kind} {name} ({state}; rate {figures.flop(rate.central)} FLOP/s "
              f"[{figures.flop(rate.low, 'down')} .. {figures.flop(rate.high, 'up')}])")
        for e in evaluations:
            a = e.assessment
            f = a.used_fraction
            threshold = figures.flop(a.threshold_flop) if a.threshold_flop else "cost"
            print(f"  {_bar(f)} {f:6.1%} of {threshold:<8} {a.regime.key:<26} "
                  f"{_outlook_text(e, now)}".rstrip())
    declared = _declared_lines(run_meta, records)
    if declared:
        print("\n" + "\n".join(declared))
    print(f"\nfractions use the {args.estimate} estimate; {head_text}")
    _print_lines(dead_letters())


def _print_lines(lines: list[str]) -> None:
    if lines:
        print("\n" + "\n".join(lines))


# ---------------------------------------------------------------------------------------
# The cluster store: ``status``, ``report`` and ``gate`` read it as the cluster service
# does (agent.cluster.reading), in one transaction of a ClusterView.


def evaluate_store(view: ClusterView, models: Mapping[str, ModelInfo], registry: Registry,
                   now_ns: int, settings: Mapping[str, Any] | None = None) -> Snapshot:
    """The threshold evaluation the cluster service runs on ``view`` (the stored run
    totals, the records of the rate window, a crossing's runs' records when no milestone
    dates it yet, the store's milestones, every node's head), with the agent's
    evaluation settings.

    Raises:
        ClusterReadError: the store could not be read.
    """
    from agent.cluster.reading import (
        cluster_head,
        compute_records,
        read_milestones,
        run_records,
    )
    from agent.compliance.evaluate import evaluate
    from agent.compliance.forecast import DEFAULT_WINDOW_S

    given = dict(settings or {})
    window_s = float(given.get("window_s", DEFAULT_WINDOW_S))
    window = compute_records(view, ends_after_ns=now_ns - round(window_s * 1e9))
    return evaluate(models, registry, None, now_ns, records=window,
                    milestones=read_milestones(view), summaries=view.run_summaries(),
                    tree_head=cluster_head(view),
                    run_records=lambda runs: run_records(view, runs), **given)


def store_text(view: ClusterView, state: str = "") -> str:
    """``cluster ledger URL: 2 node(s), 14 records; every node's latest signed head, the
    oldest at TIME of node-2 (key K)``: what the figures read from the store are of. The
    oldest of the nodes' latest heads is how recent the cluster-wide figures are at
    least. ``state`` is said after the store (``verified``)."""
    where = f"cluster ledger {printable(view.where, 400)}: " + (f"{state}; " if state else "")
    if not view.nodes:
        return f"{where}no node has replicated to it yet"
    text = f"{where}{len(view.nodes)} node(s), {view.records_held} records"
    headless = [n for n in view.nodes if n.head is None]
    heads = sorted((n.head.timestamp_ns, n.node, n.node_key, n) for n in view.nodes
                   if n.head is not None)
    if heads:
        at_ns, _, _, oldest = heads[0]
        every = "every node's latest" if not headless else "the latest of every other node's"
        text += (f"; {every} signed head, the oldest at {figures.when(at_ns)} of "
                 f"{printable(oldest.label())}")
    if headless:
        text += "; no signed head yet from " + ", ".join(printable(n.label())
                                                          for n in headless)
    return text


def cluster_dead_letters(view: ClusterView, limit: int = 20) -> list[str]:
    """The cluster service's dead letters in the store, as a node's are listed."""
    from agent.ledger.pg_query import ClusterReadError
    from agent.notify.deadletter import DeadLetter, describe

    try:
        rows = view.rows("SELECT key, channel, COALESCE(last_error, ''),"
                     " COALESCE(last_attempt_ns, 0), attempts FROM fl_deliveries"
                     " WHERE state = 'dead' ORDER BY last_attempt_ns DESC NULLS LAST, channel, key"
                         " LIMIT %s", [limit])
        if not rows:
            return []
        (count,), = view.rows("SELECT count(*) FROM fl_deliveries WHERE state = 'dead'")
    except ClusterReadError as e:  # a store the cluster service never ran on
        return [f"notifications: dead letters unreadable in the store: {e}"]
    return describe(int(count), [DeadLetter(str(k), str(c), str(reason), int(at), int(n))
                                 for k, c, reason, at, n in rows])


def _declared_lines(run_meta: dict[str, dict[str, object]],
                    records: list[LedgerRecord]) -> list[str]:
    """Per run that declared its parameter count and reported its processed tokens, the
    compute that implies against the measured compute up to the moment the tokens were
    counted; a run declared through the client without a parameter count says so."""
    from agent.accounting.names import UNATTRIBUTED_RUN_ID, printable
    from agent.reports.processed import declares_no_params, processed_check

    by_run: dict[str, list[LedgerRecord]] = {}
    for r in records:
        by_run.setdefault(r.run, []).append(r)
    lines = []
    for run, meta in sorted(run_meta.items()):
        if run == UNATTRIBUTED_RUN_ID:
            continue
        check = processed_check(run, meta, by_run.get(run, []))
        if check is not None:
            lines.append(f"  run {printable(run)}: {_check_text(check)}")
        elif declares_no_params(meta):
            lines.append(f"  run {printable(run)}: declared no parameter count")
    if not lines:
        return []
    return ["declared compute, as the trainers reported it, against the measured compute "
            "up to the moment they counted their tokens:", *lines]


def _check_text(c: ProcessedCheck) -> str:
    """``2,500 tokens processed at TIME; declared 1.1e+21 FLOP (6 x P x D) vs measured
    1.0e+21 [9.5e+20 .. 1.1e+21] FLOP; +5.0%; within the band``."""
    from agent.reports.processed import PROCESSED_FLAG

    m = c.measured
    parts = [f"{c.tokens:,} tokens processed at {figures.when(c.tokens_at_ns)}",
             f"declared {figures.flop(c.declared)} FLOP ({c.formula}) vs measured "
             f"{figures.band(m.low, m.central, m.high)} FLOP"]
    if c.measured_until_ns < c.tokens_at_ns:
        parts[-1] += f" (records up to {figures.when(c.measured_until_ns)} only)"
    parts.append("no compute measured up to then" if c.difference is None
                 else f"{c.difference:+.1%}")
    if c.beyond_eu_margin:
        parts.append(PROCESSED_FLAG)
    if c.within_band:
        parts.append("within the band")
    return "; ".join(parts)


def _outlook_text(e: Evaluation, now_ns: int) -> str:
    """MET / will be met / may be met, with the stored day and the deadline counted from
    it (identical in every call), or the ETA at the current rate."""
    from agent.compliance.evaluate import deadline_text

    a = e.assessment
    parts = []
    if a.met:
        parts.append("MET" + (f" on {figures.when(e.met_at_ns)}" if e.met_at_ns else ""))
    elif e.active and e.known_at_ns is not None:
        parts.append(f"will be met (known on {figures.when(e.known_at_ns)}; {e.plan})")
    elif e.outlook == "will be met":
        parts.append(f"will be met ({e.plan}; not yet recorded by the agent)")
    elif e.outlook == "may be met":
        parts.append(f"may be met ({e.note})")
    eta = e.projection.eta_s.get(a.estimate)
    if eta is not None and not a.met:
        parts.append(f"ETA {figures.when(now_ns + eta * 1e9)} at the current rate")
    deadline = deadline_text(e.deadline_ns, now_ns)
    if deadline:
        parts.append(deadline)
    elif (a.met or e.outlook == "will be met") and a.regime.deadline_days is not None:
        parts.append("deadline not fixed: the agent stores the day it is first met or known")
    return "; ".join(parts)


def _dead_letters(path: Path) -> list[str]:
    from agent.notify.deadletter import status_lines

    return status_lines(path)


def cmd_rules(args: argparse.Namespace) -> int:
    from agent.compliance.rulegen import generate
    from agent.compliance.thresholds import load_registry

    text = generate(load_registry(config_of(args).agent.thresholds_file), estimate=args.estimate)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``thresholds``, ``status`` and ``rules``."""
    thresholds = sub.add_parser("thresholds", help="the threshold registry, with sources")
    thresholds.add_argument("--config", help="TOML config file (for agent.thresholds_file)")
    thresholds.add_argument("--sources", action="store_true", help="list each regime's sources")
    thresholds.set_defaults(func=cmd_thresholds)

    status = sub.add_parser("status", help="progress of runs and models toward each threshold")
    add_ledger_args(status)
    status.add_argument("--estimate", choices=["low", "central", "high"], default="high")
    status.add_argument("--all", action="store_true", help="also idle subjects at zero")
    status.set_defaults(func=cmd_status)

    rules = sub.add_parser("rules", help="generate Prometheus threshold rules from the registry")
    rules.add_argument("--config", help="TOML config file (for agent.thresholds_file)")
    rules.add_argument("-o", "--output", help="file to write (default: standard output)")
    rules.add_argument("--estimate", choices=["central", "high"], default="high")
    rules.set_defaults(func=cmd_rules)
