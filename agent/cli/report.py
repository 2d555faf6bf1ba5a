"""``flopledger report`` (a run's or model's compute, as a regulator asks) and
``flopledger estimate`` (the compute of a planned run, before it starts)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from agent import figures
from agent.accounting.names import file_stem, printable
from agent.cli.common import add_ledger_args, config_of, ledger_path
from agent.cli.ledger import ledger_warnings


def cmd_report(args: argparse.Namespace) -> int:
    from agent.compliance.thresholds import load_registry
    from agent.reports.report import build_report, render_csv, render_markdown
    from agent.sources.specs import load_spec_table

    config = config_of(args)
    path = ledger_path(args, config)
    # A ledger failing its own checks still gets its report, under a WARNING (on stderr,
    # and atop a Markdown report, which may be read far from this terminal); exit 1.
    warnings, damaged = ledger_warnings(path)
    for line in warnings:
        print(line, file=sys.stderr)
    rep = build_report(config.models, load_registry(config.agent.thresholds_file),
                       load_spec_table(config.agent.spec_file), path,
                       run=args.run, model=args.model)
    # In the current directory whatever the run or model is called ("../x", "a/b").
    name = f"flopledger-{rep.subject_type}-{file_stem(rep.subject)}"
    out = Path(args.output) if args.output else None
    if args.format == "png":
        from agent.reports.chart import render_png

        target = out or Path(f"{name}.png")
        render_png(rep, target)
        print(f"wrote {printable(str(target))}")
        return 1 if damaged else 0
    if args.format == "md":
        chart = None
        if out is not None and args.chart:
            from agent.reports.chart import render_png

            chart_path = out.with_suffix(".png")
            render_png(rep, chart_path)
            chart = chart_path.name
        text = "".join(f"> **{w}**\n\n" for w in warnings) + render_markdown(rep, chart)
    elif args.format == "json":
        text = rep.to_json()
    else:
        text = render_csv(rep)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        print(f"wrote {out}")
    return 1 if damaged else 0


def cmd_estimate(args: argparse.Namespace) -> int:
    """Raises: ValueError for a missing or malformed plan."""
    from agent.compliance.lineage import Flop
    from agent.compliance.planner import (
        EU_MARGIN,
        ArchitecturePlan,
        cross_check,
        hardware_plan,
        parse_span,
        planned_crossings,
    )
    from agent.compliance.thresholds import load_registry
    from agent.sources.specs import load_spec_table

    config = config_of(args)
    specs = load_spec_table(config.agent.spec_file)
    registry = load_registry(config.agent.thresholds_file)
    results: list[Flop] = []
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
        results.append(flop)
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
        results.append(flop)
        print("architecture-based (EU Guidelines Annex A.2.2): C = (" + formula + ") x D")
        print(f"  {'active ' if args.active_params else ''}P = {arch.params.central:.3g}, "
              f"D = {arch.tokens.central:.3g} tokens, {per_token.central:.3g} FLOP per token")
        print(f"  C = {figures.band(flop.low, flop.central, flop.high)} FLOP")
    if not results:
        raise ValueError("give a hardware plan (--gpu with --gpus and --duration, or "
                         "--gpu-hours) or an architecture (--params and --tokens)")
    if len(results) == 2:
        difference, beyond = cross_check(results[1].central, results[0].central)
        print(f"cross-check: architecture-based is {difference:+.0%} from hardware-based, "
              f"{'beyond' if beyond else 'within'} the EU's {EU_MARGIN:.0%} margin")
    start = (dt.datetime.fromisoformat(args.start).replace(tzinfo=dt.UTC).timestamp() * 1e9
             if args.start else float(time.time_ns()))
    flop = max(results, key=lambda f: f.high)
    print("\nthresholds (the plan counted as the model's own pre-training compute):")
    for c in planned_crossings(registry.enabled(), flop, duration, start):
        regime = c.regime
        if not c.crossed:
            print(f"  not crossed  {figures.flop(c.threshold_flop):<8} {regime.title}")
            continue
        state = "crossed" if c.crossed == "central" else "crossed by the high bound"
        line = f"  {state:<12} {figures.flop(c.threshold_flop):<8} {regime.title}"
        if c.at_ns is not None:
            line += f"; reached around {figures.when(c.at_ns)}"
        print(line)
        if regime.deadline_days is not None:
            due = time.time_ns() + regime.deadline_days * 86400e9
            print(f"               it is known now that it will be met: notify by "
                  f"{figures.when(due)} ({regime.deadline_days:g} days; {regime.obligation})")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``report`` and ``estimate``."""
    report = sub.add_parser("report", help="a run's or model's compute, as a regulator asks")
    which_report = report.add_mutually_exclusive_group(required=True)
    which_report.add_argument("--run")
    which_report.add_argument("--model")
    report.add_argument("--format", choices=["md", "json", "csv", "png"], default="md")
    report.add_argument("-o", "--output", help="file (default: standard output; PNG: a file)")
    report.add_argument("--chart", action="store_true",
                        help="with --format md and -o: also write the PNG chart beside it")
    add_ledger_args(report)
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
