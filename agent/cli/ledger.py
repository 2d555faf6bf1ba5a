"""The ledger's commands: ``verify``, ``export``, ``runs``, ``show`` and ``models``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent import figures
from agent.cli.common import add_ledger_args, config_of, ledger_path


def cmd_verify(args: argparse.Namespace) -> int:
    """0 if every check of the ledger or audit bundle passed, else 1."""
    from agent.ledger.bundle import verify_bundle
    from agent.ledger.verify import verify_ledger

    path = Path(args.path) if args.path else ledger_path(args)
    is_bundle = path.is_file() and path.read_bytes()[:16] != b"SQLite format 3\x00"
    if is_bundle:
        bundle = verify_bundle(path, args.key_fingerprint)
        what = ", ".join(f"{k} {v}" for k, v in bundle.selection.items())
        print(f"audit bundle {path}: {what}; {bundle.records} records; "
              f"signed by key {bundle.key_fingerprint}")
        if bundle.totals:
            t = bundle.totals
            print(f"  FLOP {figures.band(t['flop_low'], t['flop_central'], t['flop_high'])}")
        problems = bundle.problems
    else:
        report = verify_ledger(path, args.key_fingerprint)
        print(f"ledger {path}: {report.records} records, {report.heads} signed tree heads; "
              f"key {report.key_fingerprint or '?'}")
        problems = report.problems
    for p in problems:
        print(f"  FAIL {p}")
    print("OK: every check passed" if not problems else f"FAILED: {len(problems)} problem(s)")
    return 0 if not problems else 1


def cmd_export(args: argparse.Namespace) -> int:
    from agent.ledger.bundle import export_bundle

    path = ledger_path(args)
    name = args.run or args.model
    out = Path(args.output or f"flopledger-{'run' if args.run else 'model'}-{name}.json")
    summary = export_bundle(path, out, run=args.run, model=args.model)
    t = summary["totals"]
    print(f"wrote {out}: {t['records']} records, FLOP "
          f"{figures.band(t['flop_low'], t['flop_central'], t['flop_high'])}")
    print(f"check it anywhere with: flopledger verify {out}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from agent.ledger.query import run_summaries

    runs = run_summaries(ledger_path(args))
    header = (f"{'run':<28} {'model':<18} {'category':<16} {'GPUs':>4}  "
              f"{'FLOP central [low .. high]':<30} {'energy':>10}  {'first seen':<20} last seen")
    print(header)
    for r in sorted(runs.values(), key=lambda r: r.first_ns):
        print(f"{r.run[:28]:<28} {r.model[:18]:<18} {r.category[:16]:<16} {len(r.gpus):>4}  "
              f"{figures.band(r.flop_low, r.flop_central, r.flop_high):<30} "
              f"{figures.energy(r.energy_mj):>10}  {figures.when(r.first_ns):<20} "
              f"{figures.when(r.last_ns)}")
    if not runs:
        print("(no runs in the ledger yet)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """0, or 1 if the run is not in the ledger."""
    from agent.ledger.query import gpu_breakdown, latest_head, run_summaries

    path = ledger_path(args)
    runs = run_summaries(path, run=args.run)
    if args.run not in runs:
        print(f"flopledger: no run {args.run!r} in {path}", file=sys.stderr)
        return 1
    r = runs[args.run]
    span_s = (r.last_ns - r.first_ns) / 1e9
    print(f"run       {r.run}")
    print(f"model     {r.model or '-'}   category {r.category}")
    band = figures.band(r.flop_low, r.flop_central, r.flop_high)
    print(f"FLOP      {band}  (central [low .. high])")
    print(f"energy    {figures.energy(r.energy_mj)}")
    print(f"time      {figures.when(r.first_ns)} .. {figures.when(r.last_ns)} "
          f"({figures.duration(span_s)})")
    print(f"coverage  {r.samples} samples, {r.records} records on {len(r.gpus)} GPU(s), "
          f"{len(r.nodes)} node(s); gaps {figures.duration(r.gap_ns / 1e9)}")
    estimators = ", ".join(f"{k} {v}" for k, v in r.estimators.most_common())
    print(f"method    {estimators} (samples per estimator); splits "
          + ", ".join(f"{k} {v}" for k, v in r.splits.most_common()))
    if r.meta:
        print("declared  " + ", ".join(f"{k}={v}" for k, v in sorted(r.meta.items())))
    print("per GPU:")
    for uuid, g in sorted(gpu_breakdown(path, args.run).items()):
        print(f"  {uuid:<42} {figures.band(g.flop_low, g.flop_central, g.flop_high)}")
    head, key = latest_head(path)
    if head is not None:
        print(f"ledger    {head.size} records under signed head at "
              f"{figures.when(head.timestamp_ns)}, key {key}")
        print(f"verify    flopledger export --run {args.run} && flopledger verify "
              f"flopledger-run-{args.run}.json")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from agent.compliance.lineage import load_model_view

    config = config_of(args)
    view = load_model_view(config.models, config.agent.thresholds_file,
                           ledger_path(args, config))
    names = view.model_names()
    if not names:
        print("(no models in the ledger or the config yet)")
        return 0
    for name in names:
        bases = view.lineage.ancestors(name)
        own = sum(1 for r in view.runs if r.model == name)
        print(f"{name}: {own} run(s)" + (f", inherits from {', '.join(bases)}" if bases else ""))
        for scope, f in view.totals(name).items():
            print(f"  {scope:<18} {figures.band(f.low, f.central, f.high)}")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``verify``, ``export``, ``runs``, ``show`` and ``models``."""
    verify = sub.add_parser("verify", help="check a ledger file or an audit bundle")
    verify.add_argument("path", nargs="?", help="ledger.sqlite or a bundle .json")
    verify.add_argument("--key-fingerprint", help="fail unless signed by this key")
    add_ledger_args(verify)
    verify.set_defaults(func=cmd_verify)

    export = sub.add_parser("export", help="write a self-contained audit bundle")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--run")
    which.add_argument("--model")
    export.add_argument("-o", "--output", help="bundle file (default: flopledger-<run>.json)")
    add_ledger_args(export)
    export.set_defaults(func=cmd_export)

    runs = sub.add_parser("runs", help="table of the runs in the ledger")
    add_ledger_args(runs)
    runs.set_defaults(func=cmd_runs)

    show = sub.add_parser("show", help="one run in detail")
    show.add_argument("run")
    add_ledger_args(show)
    show.set_defaults(func=cmd_show)

    models = sub.add_parser("models", help="per-model totals per regulatory scope, with lineage")
    add_ledger_args(models)
    models.set_defaults(func=cmd_models)
