"""The ``flopledger`` command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__, figures
from agent.config import SOURCES, Config, load_config, parse_listen
from agent.configfile import ConfigError
from agent.ledger.query import LedgerNotFoundError
from agent.ledger.store import LedgerError
from agent.sources.base import SourceError

log = logging.getLogger("flopledger")


def _load(args: argparse.Namespace) -> Config:
    config = load_config(Path(args.config) if args.config else None)
    agent = config.agent
    if getattr(args, "source", None):
        agent = dataclasses.replace(agent, source=args.source)
    if getattr(args, "interval", None) is not None:
        if args.interval < 0.1:
            raise ConfigError("--interval", [("--interval", "a number of seconds >= 0.1")])
        agent = dataclasses.replace(agent, interval_s=args.interval)
    if getattr(args, "listen", None):
        parsed = parse_listen(args.listen)
        if parsed is None:
            raise ConfigError("--listen", [("--listen", "\"host:port\"")])
        agent = dataclasses.replace(agent, listen_host=parsed[0], listen_port=parsed[1])
    if getattr(args, "exit_after", None) is not None:
        agent = dataclasses.replace(agent, exit_after_s=args.exit_after)
    if getattr(args, "summary", None):
        agent = dataclasses.replace(agent, summary_file=Path(args.summary))
    return dataclasses.replace(config, agent=agent)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import run_agent

    return run_agent(_load(args))


def cmd_gpus(args: argparse.Namespace) -> int:
    from agent.accounting.estimate import GpuAssumptions, build_coefficients
    from agent.daemon import open_source, specs_for
    from agent.sources.specs import load_spec_table

    config = _load(args)
    specs = load_spec_table(config.agent.spec_file)
    source, _clock = open_source(config, specs)
    devices = source.devices()
    assumptions = [GpuAssumptions(spec, d.activity_kind, None, 1.0, d.max_sm_clock_mhz)
                   for d, spec in zip(devices, specs_for(devices, specs), strict=True)]
    coeffs = build_coefficients(assumptions, config.estimator)
    header = f"{'idx':>3}  {'uuid':<40}  {'name':<36}  {'spec':<10}  {'max MHz':>7}  estimator"
    print(header)
    for i, (d, a) in enumerate(zip(devices, assumptions, strict=True)):
        if a.spec is None:
            method = "none (GPU not in the spec table)"
        elif d.activity_kind.name == "GPM":
            method = "gpm-tensor (NVML GPM tensor activity x clock)"
        elif d.activity_kind.name == "DCGM":
            method = "dcgm-tensor (DCGM tensor-pipe activity x clock)"
        else:
            method = "utilization (utilization.gpu x prior; wide band)"
        peak = coeffs.tensor_fpc_central[i] * coeffs.max_clock_mhz[i] * 1e6
        print(f"{d.index:>3}  {d.uuid:<40}  {d.name[:36]:<36}  {d.spec_key or '-':<10}  "
              f"{(d.max_sm_clock_mhz or 0):>7.0f}  {method}; peak {peak / 1e12:.1f} TFLOP/s")
    print(f"source: {source.kind}")
    source.close()
    return 0


def _ledger_path(args: argparse.Namespace) -> Path:
    if getattr(args, "ledger", None):
        return Path(args.ledger)
    config = load_config(Path(args.config) if getattr(args, "config", None) else None)
    return config.agent.state_dir / "ledger.sqlite"


def cmd_verify(args: argparse.Namespace) -> int:
    from agent.ledger.bundle import verify_bundle
    from agent.ledger.verify import verify_ledger

    path = Path(args.path) if args.path else _ledger_path(args)
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

    path = _ledger_path(args)
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

    runs = run_summaries(_ledger_path(args))
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
    from agent.ledger.query import gpu_breakdown, latest_head, run_summaries

    path = _ledger_path(args)
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
    from agent.compliance.modelview import load_model_view

    config = load_config(Path(args.config) if args.config else None)
    view = load_model_view(config, _ledger_path(args))
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


def cmd_thresholds(args: argparse.Namespace) -> int:
    from agent.compliance.thresholds import load_registry

    config = load_config(Path(args.config) if args.config else None)
    registry = load_registry(config.agent.thresholds_file)
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
    import time

    from agent.compliance.evaluate import Evaluation, evaluate
    from agent.compliance.thresholds import load_registry

    config = load_config(Path(args.config) if args.config else None)
    registry = load_registry(config.agent.thresholds_file)
    now = time.time_ns()
    snap = evaluate(config, registry, _ledger_path(args), now, estimate=args.estimate)
    by_subject: dict[tuple[str, str], list[Evaluation]] = {}
    for e in snap.evaluations:
        a = e.assessment
        active = a.subject.kind == "model" or a.subject.name in snap.active_runs
        if not args.all and not active and max(a.fraction.values()) == 0:
            continue
        by_subject.setdefault((a.subject.kind, a.subject.name), []).append(e)
    if not by_subject:
        print("(nothing to show: no runs or models in the ledger yet)")
        return 0
    for (kind, name), evaluations in sorted(by_subject.items()):
        rate = evaluations[0].projection.rate
        state = "active" if (kind == "run" and name in snap.active_runs) or rate.high > 0 else (
            "idle")
        print(f"{kind} {name} ({state}; rate {figures.flop(rate.central)} FLOP/s "
              f"[{figures.flop(rate.low, 'down')} .. {figures.flop(rate.high, 'up')}])")
        for e in evaluations:
            a = e.assessment
            f = a.used_fraction
            eta = e.projection.eta_s.get(a.estimate)
            note = "MET" if a.met else ("will be met" if e.will_be_met else "")
            when = "" if eta is None or a.met else f"ETA {figures.when(now + eta * 1e9)}"
            deadline = ""
            if (a.met or e.will_be_met) and a.regime.deadline_days is not None:
                deadline = (f"deadline {figures.when(now + a.regime.deadline_days * 86400e9)}"
                            " if first known now")
            threshold = figures.flop(a.threshold_flop) if a.threshold_flop else "cost"
            print(f"  {_bar(f)} {f:6.1%} of {threshold:<8} {a.regime.key:<26} "
                  f"{note:<12} {when} {deadline}".rstrip())
    print(f"\nfractions use the {args.estimate} estimate; ledger head "
          f"{snap.tree_head.get('size', 0)} records")
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    from agent.compliance.rulegen import generate
    from agent.compliance.thresholds import load_registry

    config = load_config(Path(args.config) if args.config else None)
    text = generate(load_registry(config.agent.thresholds_file), estimate=args.estimate)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from agent.compliance.thresholds import load_registry
    from agent.reports.report import build_report, render_csv, render_markdown
    from agent.sources.specs import load_spec_table

    config = load_config(Path(args.config) if args.config else None)
    rep = build_report(config, load_registry(config.agent.thresholds_file),
                       load_spec_table(config.agent.spec_file), _ledger_path(args),
                       run=args.run, model=args.model)
    name = f"flopledger-{rep.subject_type}-{rep.subject}"
    out = Path(args.output) if args.output else None
    if args.format == "png":
        from agent.reports.chart import render_png

        target = out or Path(f"{name}.png")
        render_png(rep, target)
        print(f"wrote {target}")
        return 0
    if args.format == "md":
        chart = None
        if out is not None and args.chart:
            from agent.reports.chart import render_png

            chart_path = out.with_suffix(".png")
            render_png(rep, chart_path)
            chart = chart_path.name
        text = render_markdown(rep, chart)
    elif args.format == "json":
        text = rep.to_json()
    else:
        text = render_csv(rep)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        print(f"wrote {out}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    import datetime as dt
    import time

    from agent.compliance.planner import ArchitecturePlan, hardware_plan, parse_span
    from agent.compliance.thresholds import load_registry
    from agent.sources.specs import load_spec_table

    config = load_config(Path(args.config) if args.config else None)
    specs = load_spec_table(config.agent.spec_file)
    registry = load_registry(config.agent.thresholds_file)
    results = []
    duration = None
    if args.gpu_hours or args.gpus or args.duration:
        gpus = parse_span(args.gpus, "--gpus") if args.gpus else None
        duration = parse_span(args.duration, "--duration", "duration") if args.duration else None
        plan = hardware_plan(
            specs, gpu=args.gpu, gpus=gpus, duration_s=duration,
            gpu_hours=parse_span(args.gpu_hours, "--gpu-hours") if args.gpu_hours else None,
            utilization=parse_span(args.utilization, "--utilization"),
            precision=args.precision,
            peak_tflops=parse_span(args.peak_tflops, "--peak-tflops") if args.peak_tflops
            else None)
        flop = plan.compute()
        results.append(("hardware-based, N x L x H x U", flop))
        u = plan.utilization
        print("hardware-based (EU Guidelines Annex A.2.1): C = N x L x H x U")
        print(f"  N x L = {plan.gpus.central * plan.seconds.central / 3600:,.0f} GPU-hours"
              + (f" ({plan.gpus.low * plan.seconds.low / 3600:,.0f} .. "
                 f"{plan.gpus.high * plan.seconds.high / 3600:,.0f})"
                 if plan.gpus.low != plan.gpus.high or plan.seconds.low != plan.seconds.high
                 else ""))
        print(f"  H = {plan.peak_flops.central / 1e12:,.1f} TFLOP/s ({plan.source_of_peak})")
        print(f"  U = {u.central:g}" + (f" ({u.low:g} .. {u.high:g})" if u.low != u.high else "")
              + "  (MFU: model FLOP/s over this peak; not utilization.gpu)")
        print(f"  C = {figures.band(flop.low, flop.central, flop.high)} FLOP")
    if args.params or args.tokens:
        if not (args.params and args.tokens):
            raise ValueError("give both --params and --tokens")
        active = args.active_params or args.params
        arch = ArchitecturePlan(
            parse_span(active, "--active-params"), parse_span(args.tokens, "--tokens"),
            parse_span(args.layers, "--layers") if args.layers else None,
            parse_span(args.d_model, "--d-model") if args.d_model else None,
            parse_span(args.context, "--context") if args.context else None)
        per_token, formula = arch.flop_per_token()
        flop = arch.compute()
        results.append(("architecture-based, 6PD", flop))
        print("architecture-based (EU Guidelines Annex A.2.2): C = (" + formula + ") x D")
        print(f"  {'active ' if args.active_params else ''}P = {arch.params.central:.3g}, "
              f"D = {arch.tokens.central:.3g} tokens, {per_token.central:.3g} FLOP per token")
        print(f"  C = {figures.band(flop.low, flop.central, flop.high)} FLOP")
    if not results:
        raise ValueError("give a hardware plan (--gpu with --gpus and --duration, or "
                         "--gpu-hours) or an architecture (--params and --tokens)")
    if len(results) == 2:
        hw, ar = results[0][1].central, results[1][1].central
        diff = (ar - hw) / hw if hw else 0.0
        verdict = "beyond" if abs(diff) > 0.30 else "within"
        print(f"cross-check: architecture-based is {diff:+.0%} from hardware-based, {verdict} "
              "the EU's 30% margin")
    start = (dt.datetime.fromisoformat(args.start).replace(tzinfo=dt.UTC).timestamp() * 1e9
             if args.start else float(time.time_ns()))
    flop = max((r[1] for r in results), key=lambda f: f.high)
    print("\nthresholds (the plan counted as the model's own pre-training compute):")
    for regime in registry.enabled():
        if regime.applies_to != "provider" or regime.threshold_flop is None:
            continue
        t = regime.threshold_flop
        high, central = regime.reached(flop.high, t), regime.reached(flop.central, t)
        if not high:
            print(f"  not crossed  {figures.flop(t):<8} {regime.title}")
            continue
        state = "crossed" if central else "crossed by the high bound"
        line = f"  {state:<12} {figures.flop(t):<8} {regime.title}"
        if duration is not None:
            at = start + duration.central * 1e9 * min(1.0, t / max(1, flop.central))
            line += f"; reached around {figures.when(at)}"
        print(line)
        if regime.deadline_days is not None:
            due = time.time_ns() + regime.deadline_days * 86400e9
            print(f"               it is known now that it will be met: notify by "
                  f"{figures.when(due)} ({regime.deadline_days:g} days; {regime.obligation})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flopledger",
        description="Measure the training compute (FLOP) of every GPU, run and model.",
    )
    parser.add_argument("--version", action="version", version=f"flopledger {__version__}")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent in the foreground")
    run.add_argument("--config", help="TOML config file (defaults apply without one)")
    run.add_argument("--listen", help="HOST:PORT for /metrics (default 0.0.0.0:9947)")
    run.add_argument("--source", choices=SOURCES, help="override agent.source")
    run.add_argument("--interval", type=float, help="sampling interval in seconds (>= 0.1)")
    run.add_argument("--exit-after", type=float, help="stop after this many seconds")
    run.add_argument("--summary", help="write final totals as JSON to this file on exit")
    run.set_defaults(func=cmd_run)

    gpus = sub.add_parser("gpus", help="list detected GPUs and the estimator each gets")
    gpus.add_argument("--config", help="TOML config file")
    gpus.add_argument("--source", choices=SOURCES, help="override agent.source")
    gpus.set_defaults(func=cmd_gpus)

    def ledger_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML config file (for agent.state_dir)")
        p.add_argument("--ledger", help="ledger file (default: <state_dir>/ledger.sqlite)")

    verify = sub.add_parser("verify", help="check a ledger file or an audit bundle")
    verify.add_argument("path", nargs="?", help="ledger.sqlite or a bundle .json")
    verify.add_argument("--key-fingerprint", help="fail unless signed by this key")
    ledger_args(verify)
    verify.set_defaults(func=cmd_verify)

    export = sub.add_parser("export", help="write a self-contained audit bundle")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--run")
    which.add_argument("--model")
    export.add_argument("-o", "--output", help="bundle file (default: flopledger-<run>.json)")
    ledger_args(export)
    export.set_defaults(func=cmd_export)

    runs = sub.add_parser("runs", help="table of the runs in the ledger")
    ledger_args(runs)
    runs.set_defaults(func=cmd_runs)

    show = sub.add_parser("show", help="one run in detail")
    show.add_argument("run")
    ledger_args(show)
    show.set_defaults(func=cmd_show)

    models = sub.add_parser("models", help="per-model totals per regulatory scope, with lineage")
    ledger_args(models)
    models.set_defaults(func=cmd_models)

    thresholds = sub.add_parser("thresholds", help="the threshold registry, with sources")
    thresholds.add_argument("--config", help="TOML config file (for agent.thresholds_file)")
    thresholds.add_argument("--sources", action="store_true", help="list each regime's sources")
    thresholds.set_defaults(func=cmd_thresholds)

    status = sub.add_parser("status", help="progress of runs and models toward each threshold")
    ledger_args(status)
    status.add_argument("--estimate", choices=["low", "central", "high"], default="high")
    status.add_argument("--all", action="store_true", help="also idle subjects at zero")
    status.set_defaults(func=cmd_status)

    rules = sub.add_parser("rules", help="generate Prometheus threshold rules from the registry")
    rules.add_argument("--config", help="TOML config file (for agent.thresholds_file)")
    rules.add_argument("-o", "--output", help="file to write (default: standard output)")
    rules.add_argument("--estimate", choices=["central", "high"], default="high")
    rules.set_defaults(func=cmd_rules)

    from agent.cli.replay import add_replay_parser

    add_replay_parser(sub)

    report = sub.add_parser("report", help="a run's or model's compute, as a regulator asks")
    which_report = report.add_mutually_exclusive_group(required=True)
    which_report.add_argument("--run")
    which_report.add_argument("--model")
    report.add_argument("--format", choices=["md", "json", "csv", "png"], default="md")
    report.add_argument("-o", "--output", help="file (default: standard output; PNG: a file)")
    report.add_argument("--chart", action="store_true",
                        help="with --format md and -o: also write the PNG chart beside it")
    ledger_args(report)
    report.set_defaults(func=cmd_report)

    estimate = sub.add_parser("estimate", help="compute of a planned run, before it starts")
    estimate.add_argument("--config", help="TOML config file (spec and thresholds files)")
    estimate.add_argument("--gpu", help="spec-table key or GPU name (e.g. h100_sxm, 'A100 80GB')")
    estimate.add_argument("--gpus", help="number of GPUs, or a range LOW-HIGH")
    estimate.add_argument("--duration", help="e.g. 90d, 2160h, 7776000 (or a range)")
    estimate.add_argument("--gpu-hours", help="instead of --gpus and --duration")
    estimate.add_argument("--utilization", default="0.3-0.5",
                          help="average MFU (default 0.3-0.5)")
    estimate.add_argument("--precision", default="bf16")
    estimate.add_argument("--peak-tflops", help="override H, dense TFLOP/s per GPU")
    estimate.add_argument("--params", help="parameters P (dense), e.g. 70e9 or 65e9-75e9")
    estimate.add_argument("--active-params", help="active parameters per token (MoE)")
    estimate.add_argument("--tokens", help="training tokens D")
    estimate.add_argument("--layers", help="for the attention term")
    estimate.add_argument("--d-model", help="for the attention term")
    estimate.add_argument("--context", help="context length, for the attention term")
    estimate.add_argument("--start", help="planned start date, YYYY-MM-DD (default: now)")
    estimate.set_defaults(func=cmd_estimate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.func(args)
    except ConfigError as e:
        print(f"flopledger: configuration error in {e}", file=sys.stderr)
        return 2
    except SourceError as e:
        print(f"flopledger: {e}", file=sys.stderr)
        return 3
    except (LedgerNotFoundError, LedgerError, ValueError) as e:
        print(f"flopledger: {e}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
