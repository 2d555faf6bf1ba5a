"""``flopledger report`` (a run's or model's compute, as a regulator asks) and
``flopledger estimate`` (the compute of a planned run, before it starts)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent import figures
from agent.accounting.names import file_stem, printable
from agent.cli.common import add_ledger_args, cluster_url, config_of, ledger_path, open_cluster
from agent.cli.ledger import ledger_warnings

if TYPE_CHECKING:
    from agent.config import Config
    from agent.ledger.pg_query import ClusterView
    from agent.reports.report import Report


def cmd_report(args: argparse.Namespace) -> int:
    """0, or 1 if the ledger fails its checks or the cluster store holds a flagged
    node (the report is still written, under a WARNING)."""
    from agent.compliance.thresholds import load_registry
    from agent.reports.report import build_report
    from agent.sources.specs import load_spec_table

    if args.form is not None and args.format not in ("md", "json"):
        # Said before anything is read or connected to.
        print(f"flopledger: report: --form gives --format md or json, not {args.format}",
              file=sys.stderr)
        return 2
    config = config_of(args)
    if cluster_url(args) is not None:
        with open_cluster(args, config, run=args.run, model=args.model) as view:
            # As on a damaged ledger: a flagged node is a WARNING (on stderr, and atop
            # the report) above the figures still readable, and exit 1.
            warnings = [printable(line, 4000) for line in view.warnings()]
            for line in warnings:
                print(line, file=sys.stderr)
            rep = _cluster_report(args, config, view)
        return _write(args, rep, warnings, bool(warnings))
    path = ledger_path(args, config)
    # A ledger failing its own checks still gets its report, under a WARNING (on stderr,
    # and atop a Markdown report, which may be read far from this terminal); exit 1.
    warnings, damaged = ledger_warnings(path)
    for line in warnings:
        print(line, file=sys.stderr)
    rep = build_report(config.models, load_registry(config.agent.thresholds_file),
                       load_spec_table(config.agent.spec_file), path,
                       run=args.run, model=args.model)
    return _write(args, rep, warnings, damaged)


def _cluster_report(args: argparse.Namespace, config: Config, view: ClusterView) -> Report:
    """The report over every node of the store, evaluated as the cluster service does
    (with the evaluation settings a node's report uses)."""
    from agent.cli.thresholds import evaluate_store
    from agent.compliance.thresholds import load_registry
    from agent.reports.report import build_cluster_report
    from agent.sources.specs import load_spec_table

    registry = load_registry(config.agent.thresholds_file)
    now = time.time_ns()
    snap = evaluate_store(view, config.models, registry, now)
    return build_cluster_report(config.models, registry,
                                load_spec_table(config.agent.spec_file), view, snap,
                                run=args.run, model=args.model, now_ns=now)


def _write(args: argparse.Namespace, rep: Report, warnings: list[str], damaged: bool) -> int:
    """The report in ``--format`` (or the ``--form``), to ``-o`` or standard output."""
    from agent.reports.report import render_csv, render_markdown

    # In the current directory whatever the run or model is called ("../x", "a/b").
    name = f"flopledger-{rep.subject_type}-{file_stem(rep.subject)}"
    out = Path(args.output) if args.output else None
    if args.form is not None:
        return _write_form(args, rep, warnings, out, damaged)
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
    return _emit(text, out, damaged)


def _emit(text: str, out: Path | None, damaged: bool) -> int:
    """Write the text to ``out`` or standard output; 1 if the ledger was damaged."""
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        print(f"wrote {out}")
    return 1 if damaged else 0


def _write_form(args: argparse.Namespace, rep: Report, warnings: list[str], out: Path | None,
                damaged: bool) -> int:
    """``--form``: the official form's items from the same report, as Markdown or JSON."""
    from agent.reports.forms import build_form, render_form_json, render_form_markdown

    doc = build_form(rep, args.form)
    if args.format == "json":
        if warnings:
            doc["ledger_warnings"] = warnings
        text = render_form_json(doc)
    else:
        text = "".join(f"> **{w}**\n\n" for w in warnings) + render_form_markdown(doc)
    return _emit(text, out, damaged)


def cmd_estimate(args: argparse.Namespace) -> int:
    """Exit 2, with one line naming the flag, for a plan that cannot be what was meant
    (:class:`agent.compliance.planner.PlanError`), before anything is printed."""
    from agent.compliance.lineage import Flop
    from agent.compliance.planner import (
        EU_MARGIN,
        PlanError,
        cross_check,
        planned_crossings,
        read_plan,
    )
    from agent.compliance.thresholds import load_registry
    from agent.sources.specs import load_spec_table

    config = config_of(args)
    specs = load_spec_table(config.agent.spec_file)
    registry = load_registry(config.agent.thresholds_file)
    try:
        plan = read_plan(
            specs, gpu=args.gpu, gpus=args.gpus, duration=args.duration,
            gpu_hours=args.gpu_hours, utilization=args.utilization, precision=args.precision,
            peak_tflops=args.peak_tflops, params=args.params, active_params=args.active_params,
            tokens=args.tokens, layers=args.layers, d_model=args.d_model, context=args.context,
            start=args.start)
    except PlanError as e:
        # A usage error, as argparse's own (exit 2), but on one line.
        print(f"flopledger: estimate: {e}", file=sys.stderr)
        return 2
    results: list[Flop] = []
    if plan.hardware is not None:
        hw = plan.hardware
        flop = hw.compute()
        results.append(flop)
        u = hw.utilization
        print("hardware-based (EU Guidelines Annex A.2.1): C = N x L x H x U")
        print(f"  N x L = {hw.gpus.central * hw.seconds.central / 3600:,.0f} GPU-hours"
              + (f" ({hw.gpus.low * hw.seconds.low / 3600:,.0f} .. "
                 f"{hw.gpus.high * hw.seconds.high / 3600:,.0f})"
                 if hw.gpus.low != hw.gpus.high or hw.seconds.low != hw.seconds.high
                 else ""))
        print(f"  H = {hw.peak_flops.central / 1e12:,.1f} TFLOP/s ({hw.source_of_peak})")
        print(f"  U = {u.central:g}" + (f" ({u.low:g} .. {u.high:g})" if u.low != u.high else "")
              + "  (MFU: model FLOP/s over this peak; not utilization.gpu)")
        print(f"  C = {figures.band(flop.low, flop.central, flop.high)} FLOP")
    if plan.architecture is not None:
        arch = plan.architecture
        per_token, formula = arch.flop_per_token()
        flop = arch.compute()
        results.append(flop)
        print("architecture-based (EU Guidelines Annex A.2.2): C = (" + formula + ") x D")
        print(f"  {'active ' if plan.active_params else ''}P = {arch.params.central:.3g}, "
              f"D = {arch.tokens.central:.3g} tokens, {per_token.central:.3g} FLOP per token")
        print(f"  C = {figures.band(flop.low, flop.central, flop.high)} FLOP")
    if len(results) == 2:
        difference, beyond = cross_check(results[1].central, results[0].central)
        print(f"cross-check: architecture-based is {difference:+.0%} from hardware-based, "
              f"{'beyond' if beyond else 'within'} the EU's {EU_MARGIN:.0%} margin")
    now = float(time.time_ns())
    start = now if plan.start_ns is None else plan.start_ns
    if start < now:
        print(f"\nthe planned start, {figures.when(start)}, is past: the plan was known by "
              f"then at the latest, and deadlines count from it")
    flop = max(results, key=lambda f: f.high)
    print("\nthresholds (the plan counted as the model's own pre-training compute):")
    for c in planned_crossings(registry.enabled(), flop, plan.duration_s, start, now_ns=now):
        regime = c.regime
        if not c.crossed:
            print(f"  not crossed  {figures.flop(c.threshold_flop):<8} {regime.title}")
            continue
        state = "crossed" if c.crossed == "central" else "crossed by the high bound"
        line = f"  {state:<12} {figures.flop(c.threshold_flop):<8} {regime.title}"
        if c.at_ns is not None:
            line += (f"; reached around {figures.when(c.at_ns)}" if c.at_ns >= now
                     else f"; by the plan reached around {figures.when(c.at_ns)}, already past")
        print(line)
        if regime.deadline_days is None:
            continue
        terms = f"{regime.deadline_days:g} days; {regime.obligation}"
        if c.due_ns is None:
            print(f"               only the high bound crosses: it may be met, not known to "
                  f"be; no deadline yet ({terms}, once it is known that it will be met)")
        elif c.due_passed:
            print(f"               the deadline has passed: notice was due by "
                  f"{figures.when(c.due_ns)} ({terms}); notify without delay")
        else:
            known = ("it is known now" if start >= now
                     else f"it has been known since the start, {figures.when(start)},")
            print(f"               {known} that it will be met: notify by "
                  f"{figures.when(c.due_ns)} ({terms})")
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
    report.add_argument("--form", choices=["eu-notification", "eu-model-documentation"],
                        help="fill an official form's items instead of the report: an AI Act "
                             "Art. 52(1) notification, or the GPAI Code of Practice's Model "
                             "Documentation Form (compute and energy); --format md or json")
    add_ledger_args(report)
    report.set_defaults(func=cmd_report)

    estimate = sub.add_parser("estimate", help="compute of a planned run, before it starts")
    estimate.add_argument("--config", help="TOML config file (spec and thresholds files)")
    estimate.add_argument("--gpu", help="spec-table key or GPU name (e.g. h100_sxm, 'A100 80GB')")
    estimate.add_argument("--gpus", help="number of GPUs, or a range LOW-HIGH")
    estimate.add_argument("--duration", help="e.g. 90d, 2160h, 7776000 (or a range)")
    estimate.add_argument("--gpu-hours", help="instead of --gpus and --duration")
    estimate.add_argument("--utilization",
                          help="average MFU in (0, 1]: 0.4, 40%%, or a range 0.3-0.5 or "
                               "30%%-50%% (default 0.3-0.5)")
    estimate.add_argument("--precision", help="tensor precision of H (default bf16)")
    estimate.add_argument("--peak-tflops", help="override H, dense TFLOP/s per GPU (for a "
                          "GPU the spec table has no row for)")
    estimate.add_argument("--params", help="parameters P (dense), e.g. 70e9 or 65e9-75e9")
    estimate.add_argument("--active-params", help="active parameters per token (MoE)")
    estimate.add_argument("--tokens", help="training tokens D")
    estimate.add_argument("--layers", help="for the attention term")
    estimate.add_argument("--d-model", help="for the attention term")
    estimate.add_argument("--context", help="context length, for the attention term")
    estimate.add_argument("--start", help="planned start, YYYY-MM-DD or an ISO time, UTC "
                          "unless it says otherwise (default: now); deadlines count from "
                          "it when it is past")
    estimate.set_defaults(func=cmd_estimate)
