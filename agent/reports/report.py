"""``flopledger report``: a run's or a model's compute, stated the way a regulator asks.

Totals to two significant figures with the band; every applicable regime with its
status and dates; the method in the EU Guidelines' terms (Annex A.2.1: C = N x L x H x
U, with U measured) and the 6 x P x D cross-check when the run declared parameters and
tokens (flagged beyond the 30% margin of Annex A.2); data quality (gaps, estimators,
unattributed compute on the same GPUs); and the ledger's signed head with how to
verify. Rendered as Markdown, JSON, CSV (the cumulative timeline) or a PNG chart.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent import figures
from agent.accounting.band import Band
from agent.accounting.records import LedgerRecord
from agent.compliance.evaluate import Evaluation, evaluate, plan_of
from agent.compliance.forecast import DEFAULT_HORIZON_S, run_forecast
from agent.compliance.lineage import ModelInfo
from agent.compliance.planner import EU_MARGIN, cross_check
from agent.compliance.thresholds import Registry
from agent.ledger.query import iter_records, latest_head, open_records, spec_basis, summarize
from agent.sources.specs import MATMUL_PRECISIONS, SpecTable


@dataclass(slots=True)
class Timeline:
    """Cumulative FLOP at each record end (for the chart and the CSV), a column per
    bound."""

    end_ns: list[int] = field(default_factory=list)
    low: list[int] = field(default_factory=list)
    central: list[int] = field(default_factory=list)
    high: list[int] = field(default_factory=list)

    def add(self, end_ns: int, flop: Band[int]) -> None:
        """The cumulative ``flop`` at ``end_ns`` (the last point, if it ends there too)."""
        if self.end_ns and self.end_ns[-1] == end_ns:
            self.low[-1], self.central[-1], self.high[-1] = flop
            return
        self.end_ns.append(end_ns)
        self.low.append(flop.low)
        self.central.append(flop.central)
        self.high.append(flop.high)


@dataclass(slots=True)
class Report:
    subject_type: str
    subject: str
    generated_ns: int
    flop: Band[int]
    energy_mj: int
    first_ns: int
    last_ns: int
    gpus: int
    nodes: list[str]
    gpu_seconds: float
    gap_seconds: float
    estimators: dict[str, float]
    unattributed_share: float | None
    method: dict[str, Any]
    cross_check: dict[str, Any] | None
    regimes: list[dict[str, Any]]
    ledger: dict[str, Any]
    runs: list[str]
    timeline: Timeline
    forecast: dict[str, Any] | None
    # Per basis of the GPUs' peaks (table, derived, ceiling; none in old ledgers): GPU
    # count, share of GPU time, and each GPU not on a table row with its reason.
    spec_bases: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        doc = asdict(self)
        doc["flop_basis"] = FLOP_BASIS
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"


# What each figure of the band counts (EU Guidelines, Annex A.1: model FLOP, recomputed
# activations excluded); every figure the report prints says which.
FLOP_BASIS = {
    "low": "model FLOP (also allowing for undeclared recomputation and non-model work)",
    "central": "model FLOP (executed FLOP less the declared recomputation)",
    "high": "executed FLOP (hardware, incl. recomputation and the counter's error)",
}


def _peak_per_gpu(records: list[LedgerRecord], specs: SpecTable) -> tuple[float, str]:
    """H of the Annex: the dense peak of the declared precision, averaged over GPUs
    weighted by their time (mixed hardware)."""
    weight: dict[tuple[str, str, str], float] = defaultdict(float)
    for r in records:
        spec_key = str(r.assumptions.get("spec") or "")
        precision = str(r.assumptions.get("precision") or "bf16")
        weight[(spec_key, precision, spec_basis(r))] += r.covered_ns + r.gap_ns
    total = sum(weight.values())
    if not total:
        return 0.0, "unknown"
    h = 0.0
    parts = []
    unknown: dict[str, float] = defaultdict(float)
    for (key, precision, basis), w in weight.items():
        spec = specs.specs.get(key)
        if spec is None:
            unknown[basis] += w
            continue
        tensor = MATMUL_PRECISIONS.get(precision, "bf16_tensor")
        sheet = next((p for p in spec.datasheet if p.precision == tensor), None)
        peak = sheet.dense_flops if sheet else spec.peak_flops(tensor, spec.max_sm_clock_mhz)
        h += peak * w / total
        note = "" if basis == "table" else f", {basis} spec: not in the spec table"
        parts.append(f"{spec.name} {precision} {peak / 1e12:.1f} TFLOP/s ({w / total:.0%}{note})")
    # A derived or ceiling spec has no row here: its time counts in the average as 0.
    parts += [f"no table peak for {w / total:.0%} of the GPU time ({basis} specs: not in the "
              "spec table), counted as 0 in H" for basis, w in sorted(unknown.items())]
    return h, "; ".join(parts)


def _spec_bases(records: list[LedgerRecord]) -> dict[str, dict[str, Any]]:
    """Per basis of the GPUs' peaks: how many GPUs, their share of the GPU time, and
    (for every basis but ``table``) each GPU with its spec and reason."""
    time_ns: dict[str, float] = defaultdict(float)
    gpus: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for r in records:
        basis = spec_basis(r)
        time_ns[basis] += r.covered_ns + r.gap_ns
        entry = gpus[basis].setdefault(r.gpu_uuid, {"gpu": r.gpu_uuid, "spec": "", "reason": ""})
        entry["spec"] = str(r.assumptions.get("spec") or entry["spec"])
        entry["reason"] = str(r.assumptions.get("spec_reason") or entry["reason"])
    total = sum(time_ns.values())
    out: dict[str, dict[str, Any]] = {}
    for basis in sorted(gpus, key=lambda b: (b == "table", b)):
        out[basis] = {"gpus": len(gpus[basis]),
                      "gpu_time_share": time_ns[basis] / total if total else 0.0}
        if basis != "table":
            out[basis]["not_in_table"] = sorted(gpus[basis].values(), key=lambda g: g["gpu"])
    return out


def build_report(models: Mapping[str, ModelInfo], registry: Registry, specs: SpecTable,
                 ledger_path: Path, *, run: str | None = None, model: str | None = None,
                 now_ns: int | None = None) -> Report:
    """Gather everything a report states; ``models`` is the config's ``[models.*]``
    lineage.

    Raises:
        ValueError: if neither or both of ``run`` and ``model`` are given, or nothing
            in the ledger matches.
        LedgerNotFoundError: if there is no ledger.
    """
    if (run is None) == (model is None):
        raise ValueError("give exactly one of --run or --model")
    now = now_ns or time.time_ns()
    everything = list(iter_records(ledger_path)) + open_records(ledger_path)
    mine = [r for r in everything if (r.run == run if run is not None else r.model == model)]
    if not mine:
        raise ValueError(f"no records for {'run ' + str(run) if run else 'model ' + str(model)}"
                         f" in {ledger_path}")
    mine.sort(key=lambda r: (r.end_ns, r.seq))
    flop = sum((r.flop for r in mine), Band.exact(0))
    gpu_ns = sum(r.covered_ns + r.gap_ns for r in mine)
    gap_ns = sum(r.gap_ns for r in mine)
    samples = Counter[str]()
    for r in mine:
        for name, count in dict(r.assumptions.get("estimators") or {}).items():
            samples[name] += int(count)
    total_samples = sum(samples.values()) or 1
    uuids = {r.gpu_uuid for r in mine}
    first, last = min(r.start_ns for r in mine), max(r.end_ns for r in mine)
    # Unattributed compute on the same GPUs over the same span: a large share means
    # processes the agent could not map to runs (often: missing permissions).
    unattributed = [r for r in everything if r.run == "unattributed" and r.gpu_uuid in uuids
                    and r.end_ns > first and r.start_ns < last]
    un_flop = sum(r.flop_central for r in unattributed)
    un_share = un_flop / (un_flop + flop.central) if (un_flop + flop.central) else None

    h, h_source = _peak_per_gpu(mine, specs)
    seconds = (last - first) / 1e9
    n = gpu_ns / 1e9 / seconds if seconds else 0.0
    u = flop.central / (gpu_ns / 1e9 * h) if gpu_ns and h else None
    method = {
        "approach": "hardware-based (EU Guidelines Annex A.2.1): C = N x L x H x U",
        "N_gpus_average": n,
        "L_seconds": seconds,
        "H_peak_flops_per_gpu": h,
        "H_source": h_source,
        "U_measured": u,
        "U_how": ("per GPU and per sampling interval: tensor-pipe activity (NVML GPM) x the "
                  "measured SM clock x FLOP per clock of the declared precision, integrated; "
                  "U = C / (N x L x H)"),
        "gpu_hours": gpu_ns / 3.6e12,
    }
    cross = None
    run_meta: dict[str, Any] = {}
    summaries = summarize(everything, ledger_path)
    runs = sorted({r.run for r in mine})
    params = tokens = 0.0
    for name in runs:
        meta = summaries[name].meta if name in summaries else {}
        run_meta[name] = meta
        try:
            params += float(str(meta.get("plan.params", 0)))
            tokens_run = float(str(meta.get("plan.tokens", 0)))
        except ValueError:
            continue
        tokens = max(tokens, tokens_run)
    if params > 0 and tokens > 0:
        # The declared tokens are the plan's, so 6PD is compared with the hardware-based
        # total projected to the planned end at the measured rate (not with the total
        # so far, and not with a projection that already leans on 6PD).
        six_pd = 6 * params * tokens
        at_end = 0.0
        for name_of_run in runs:
            f = run_forecast(name_of_run, [r for r in mine if r.run == name_of_run],
                             plan_of(run_meta.get(name_of_run, {})), now)
            at_end += f.current.central + f.rate.central * f.remaining_s(now, DEFAULT_HORIZON_S)
        difference, beyond = cross_check(six_pd, at_end)
        cross = {"6PD": six_pd, "params": params, "tokens": tokens,
                 "hardware_projected_at_planned_end": at_end, "difference": difference,
                 "beyond_eu_margin": beyond}

    snap = evaluate(models, registry, ledger_path, now, records=everything)
    kind = "run" if run is not None else "model"
    name = run if run is not None else str(model)
    regimes = [_regime_row(e, now) for e in snap.evaluations
               if e.assessment.subject.kind == kind and e.assessment.subject.name == name]
    head, key = latest_head(ledger_path)
    ledger: dict[str, Any] = {"path": str(ledger_path), "key_fingerprint": key}
    if head is not None:
        ledger.update({"records": head.size, "root": head.root.hex(),
                       "signed_at": figures.when(head.timestamp_ns), "origin": head.origin})
    ledger["verify"] = (f"flopledger export --{kind} {name} -o bundle.json; then, anywhere: "
                        f"flopledger verify bundle.json --key-fingerprint {key}")
    timeline = Timeline()
    so_far = Band.exact(0)
    for r in mine:
        so_far += r.flop
        timeline.add(r.end_ns, so_far)
    forecast = None
    if regimes:
        first_eval = next(e for e in snap.evaluations if e.assessment.subject.kind == kind
                          and e.assessment.subject.name == name)
        p = first_eval.projection
        ends = []
        for name_of_run in runs:
            f = run_forecast(name_of_run, [r for r in mine if r.run == name_of_run],
                             plan_of(run_meta.get(name_of_run, {})), now)
            ends.append(f.end_ns if f.end_ns is not None else now + round(DEFAULT_HORIZON_S * 1e9))
        forecast = {"rate_flops": asdict(p.rate), "projected": asdict(p.projected),
                    "basis": first_eval.plan, "end_ns": max(ends)}
    return Report(kind, name, now, flop, sum(r.energy_mj for r in mine), first, last,
                  len(uuids), sorted({r.node for r in mine}), gpu_ns / 1e9, gap_ns / 1e9,
                  {k: v / total_samples for k, v in samples.most_common()}, un_share, method,
                  cross, regimes, ledger, runs, timeline, forecast,
                  spec_bases=_spec_bases(mine))


def _regime_row(e: Evaluation, now_ns: int) -> dict[str, Any]:
    a = e.assessment
    r = a.regime
    eta = e.projection.eta_s.get(a.estimate)
    deadline = None
    if (a.met or e.will_be_met) and r.deadline_days is not None:
        deadline = figures.when(now_ns + r.deadline_days * 86400e9)
    return {
        "regime": r.key, "title": r.title, "jurisdiction": r.jurisdiction, "status": r.status,
        "effective": r.effective, "threshold_flop": a.threshold_flop,
        "comparison": "strictly greater than" if r.comparison == "gt" else "at or above",
        "scope": r.scope, "fraction_high": a.fraction["high"],
        "fraction_central": a.fraction["central"], "met": a.met,
        "will_be_met": e.will_be_met,
        "eta": figures.when(now_ns + eta * 1e9) if eta is not None and not a.met else None,
        "projected_high": e.projection.projected.high, "obligation": r.obligation,
        "deadline_if_known_now": deadline, "sources": list(r.sources),
    }


def render_markdown(rep: Report, chart: str | None = None) -> str:
    f = rep.flop
    m = rep.method
    lines = [
        f"# Training compute report: {rep.subject_type} `{rep.subject}`",
        "",
        f"Generated {figures.when(rep.generated_ns)} by flopledger from the node ledger "
        f"(`{rep.ledger['path']}`).",
        "",
        "## Total",
        "",
        f"**{figures.flop(f.central)} FLOP** (central estimate, model FLOP), band "
        f"**{figures.flop(f.low, 'down')} (model FLOP) .. {figures.flop(f.high, 'up')} "
        "(executed FLOP)**; two significant figures, the band rounded outwards.",
        "",
        "| | |",
        "|---|---|",
        f"| period | {figures.when(rep.first_ns)} .. {figures.when(rep.last_ns)} "
        f"({figures.duration((rep.last_ns - rep.first_ns) / 1e9)}) |",
        f"| GPUs | {m['N_gpus_average']:,.1f} on average ({rep.gpus} GPU ids in the ledger) |",
        f"| nodes | {len(rep.nodes)}: {', '.join(rep.nodes)} |",
        f"| GPU-hours | {m['gpu_hours']:,.1f} |",
        f"| energy | {figures.energy(rep.energy_mj)} |",
        f"| runs | {', '.join(rep.runs)} |",
        "",
    ]
    if chart:
        lines += [f"![cumulative compute]({chart})", ""]
    lines += ["## Thresholds", ""]
    if rep.regimes:
        lines += ["| regime | status | threshold | reached (high, executed FLOP) | state | "
                  "ETA (high) | "
                  "deadline if known now |", "|---|---|---|---|---|---|---|"]
        for r in rep.regimes:
            state = "**met**" if r["met"] else ("**will be met**" if r["will_be_met"] else "-")
            threshold = ((">" if r["comparison"].startswith("strictly") else ">=") + " "
                         + figures.flop(r["threshold_flop"])) if r["threshold_flop"] else "-"
            lines.append(f"| {r['title']} | {r['status']} ({r['effective']}) | {threshold} | "
                         f"{r['fraction_high']:.2g} | {state} | {r['eta'] or '-'} | "
                         f"{r['deadline_if_known_now'] or '-'} |")
    else:
        lines.append("No enabled regime applies to this subject.")
    lines += ["", "## Method", "",
              f"{m['approach']} (Commission Guidelines C(2025) 5045, Annex A.2.1), with U "
              "measured rather than assumed:", "",
              f"- N = {m['N_gpus_average']:,.1f} GPUs on average over the period",
              f"- L = {m['L_seconds']:,.0f} s",
              f"- H = {m['H_peak_flops_per_gpu'] / 1e12:,.1f} TFLOP/s per GPU, dense "
              f"({m['H_source']})",
              (f"- U = {m['U_measured']:.3f}, {m['U_how']}" if m["U_measured"] is not None
               else "- U: not defined (no known peak)"),
              "", "Basis (Annex A.1: model FLOP, recomputed activations excluded): central is "
              "model FLOP, the executed FLOP measured from tensor activity less the "
              "recomputation the run declared; low is model FLOP allowing for the counter "
              "reading up to 6.5% high, 10% non-model work and, where a run did not declare "
              "its recomputation, full activation checkpointing (executed / 1.35); high is "
              "executed FLOP allowing for the counter reading up to 2.5% low, the fastest "
              "candidate precision when none was declared, and the highest possible rate "
              "over sampling gaps.", ""]
    if rep.cross_check:
        c = rep.cross_check
        flag = (f"**beyond the EU's {EU_MARGIN:.0%} margin: check the declared parameters, "
                "tokens and precision**" if c["beyond_eu_margin"]
                else f"within the EU's {EU_MARGIN:.0%} margin")
        lines += [f"Cross-check (architecture-based, Annex A.2.2): 6 x P x D = 6 x "
                  f"{c['params']:.3g} x {c['tokens']:.3g} = {figures.flop(c['6PD'])} FLOP for the "
                  f"planned tokens, {c['difference']:+.0%} from the hardware-based total "
                  f"projected to the planned end at the measured rate "
                  f"({figures.flop(c['hardware_projected_at_planned_end'])}): {flag}.", ""]
    gap_share = rep.gap_seconds / rep.gpu_seconds if rep.gpu_seconds else 0.0
    lines += ["## Data quality", "",
              f"- time in sampling gaps: {gap_share:.2%} of GPU time (counted in the high bound "
              "only)",
              "- estimators (share of samples): " + (", ".join(
                  f"{k} {v:.1%}" for k, v in rep.estimators.items()) or "-"),
              (f"- unattributed compute on the same GPUs over the period: "
               f"{rep.unattributed_share:.2%}" if rep.unattributed_share is not None
               else "- unattributed compute: none"),
              f"- band width: high / low = {f.high / f.low:.3f}" if f.low else
              "- band width: low bound is zero",
              *_spec_lines(rep.spec_bases), "",
              "## Verification", "",
              f"Ledger signed head: {rep.ledger.get('records', 0)} records, root "
              f"`{rep.ledger.get('root', '')[:16]}...`, signed {rep.ledger.get('signed_at', '-')}"
              f" by key `{rep.ledger['key_fingerprint']}` ({rep.ledger.get('origin', '')}).", "",
              f"`{rep.ledger['verify']}`", ""]
    return "\n".join(lines)


_BASIS_TEXT = {
    "derived": "peak derived from the driver's compute capability, SM count and clock",
    "ceiling": "only a name: peak at the largest of the GPU's era, low bound widened",
    "none": "no spec at all: its FLOP were counted as 0 (a ledger written before every "
            "GPU got one)",
}


def _spec_lines(bases: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The data-quality lines on where the GPUs' peaks come from."""
    if set(bases) <= {"table"}:
        n = bases.get("table", {}).get("gpus", 0)
        return [f"- GPU peaks: all {n} GPU(s) from rows of the spec table"]
    lines = ["- **GPU peaks not all from the spec table** (the figures of these GPUs rest on "
             "a less certain peak; their band is wider): " + ", ".join(
                 f"{basis} {b['gpus']} GPU(s), {b['gpu_time_share']:.1%} of GPU time"
                 for basis, b in bases.items())]
    for basis, b in bases.items():
        for g in b.get("not_in_table", []):
            lines.append(f"  - `{g['gpu']}`: {basis} (spec `{g['spec'] or '-'}`; "
                         f"{_BASIS_TEXT.get(basis, basis)}): {g['reason'] or 'no reason given'}")
    return lines


def render_csv(rep: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["time_utc", "end_ns", "flop_low", "flop_central", "flop_high"])
    t = rep.timeline
    for i, end in enumerate(t.end_ns):
        writer.writerow([figures.when(end), end, t.low[i], t.central[i], t.high[i]])
    return out.getvalue()
