"""``flopledger report``: a run's or a model's compute, stated the way a regulator asks.

Totals to two significant figures with the band, and the model's per scope with
inherited compute (what the regime rows measure); every applicable regime with its
status, dates and the fraction reached in percent (for a run: its model's regimes whose
scope counts the run's category); the method in the EU Guidelines' terms (Annex A.2.1:
C = N x L x H x U, with U measured) and the 6 x P x D cross-check when the run declared
parameters and tokens (else what to declare), its disagreement measured against the
reported estimate as the EU's 30% margin is (Annex A); data quality (gaps, estimators,
unattributed compute on the same GPUs, energy plausibility); and the ledger's signed
head with how to verify. Every figure is of the records that head covers, read at one
moment (:func:`agent.ledger.query.read_view`); the subject's records it does not cover
yet are stated apart, in no figure. Rendered as Markdown, JSON, CSV (the cumulative
timeline) or a PNG chart.

The cluster store's report (:func:`build_cluster_report`) is the same report over every
node's records, read in one transaction of a
:class:`~agent.ledger.pg_query.ClusterView`, with each node's share and latest signed
head; both are assembled by one code path from what was read.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import figures
from agent.accounting.band import Band
from agent.accounting.names import UNATTRIBUTED_RUN_ID
from agent.accounting.records import LedgerRecord
from agent.compliance.evaluate import Evaluation, Snapshot, evaluate, plan_of
from agent.compliance.forecast import DEFAULT_HORIZON_S, RunForecast, run_forecast
from agent.compliance.lineage import ModelInfo, ModelView, model_view
from agent.compliance.planner import EU_MARGIN, cross_check
from agent.compliance.thresholds import Registry
from agent.ledger.energy import check_energy
from agent.ledger.query import RunSummary, Unsealed, read_view, spec_basis
from agent.reports.processed import PROCESSED_FLAG, ProcessedTotal, processed_check
from agent.sources.specs import MATMUL_PRECISIONS, SpecTable

if TYPE_CHECKING:
    from agent.ledger.pg_query import ClusterView


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
    # Per scope: the model's FLOP band with inherited compute (what the regime rows are
    # measured against), its own part, and whom it inherits from. For a run: its model's.
    scope_totals: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A run report: the model, category and scopes the run's compute counts toward.
    counts_toward: dict[str, Any] | None = None
    # Energy plausibility: findings against the GPUs' physical maximum, and a summary.
    energy: dict[str, Any] = field(default_factory=dict)
    # Per exact accelerator variant (spec-table key): its name, the basis of its peak,
    # GPU ids, and the GPU time covered by samples and lost in gaps (GPU-seconds).
    accelerators: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The cluster store's report: per node key, its records, FLOP band and energy, and
    # the latest signed head the store holds of it (empty for a node's ledger).
    node_shares: list[dict[str, Any]] = field(default_factory=list)

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


def _accelerators(records: list[LedgerRecord], specs: SpecTable) -> dict[str, dict[str, Any]]:
    """GPU time per exact accelerator variant, as the records' specs name it (an H100
    SXM5 and an H100 PCIe are two rows); a spec the table lacks keeps its key as name."""
    out: dict[str, dict[str, Any]] = {}
    uuids: dict[str, set[str]] = defaultdict(set)
    for r in records:
        key = str(r.assumptions.get("spec") or "")
        spec = specs.specs.get(key)
        entry = out.setdefault(key, {"name": spec.name if spec is not None else (key or "unknown"),
                                     "basis": spec_basis(r), "covered_gpu_seconds": 0.0,
                                     "gap_gpu_seconds": 0.0})
        entry["covered_gpu_seconds"] += r.covered_ns / 1e9
        entry["gap_gpu_seconds"] += r.gap_ns / 1e9
        uuids[key].add(r.gpu_uuid)
    for key, entry in out.items():
        entry["gpu_ids"] = len(uuids[key])
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["covered_gpu_seconds"]))


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


# The EU's margin for the two methods, in the Guidelines' words.
EU_MARGIN_RULE = (f'"within an overall error margin of {EU_MARGIN:.0%} of the reported '
                  'estimate" (Commission Guidelines C(2025) 5045, Annex A)')
# How a run declares what the 6 x P x D cross-check and a planned end need.
DECLARE = {"plan.params": "FLOPLEDGER_PLAN_PARAMS", "plan.tokens": "FLOPLEDGER_PLAN_TOKENS"}


def _declared(meta: Mapping[str, Any], key: str) -> float | None:
    """A declared positive finite number, or None (absent or unusable)."""
    value = meta.get(key)
    if isinstance(value, bool):
        return None
    try:
        number = float(str(value)) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) and number > 0 else None


def _cross_check(runs: list[str], run_meta: Mapping[str, Mapping[str, Any]],
                 forecasts: Mapping[str, RunForecast], now_ns: int,
                 records: Mapping[str, list[LedgerRecord]]) -> dict[str, Any]:
    """6 x P x D of the runs that declared P and D against the hardware-based figure the
    report states for the same runs; the runs that did not, with what to declare.

    The declared tokens are the plan's, so the reported figure is the hardware-based
    total projected to the planned end at the measured rate (never a projection that
    leans on 6PD itself); without a declared end, the total so far, said so.

    ``processed``: for the runs that also reported the tokens processed so far, the
    compute that implies against the measured total up to the same moment, from the
    run's ``records`` (:mod:`agent.reports.processed`); None when no run reported them.
    """
    per_run: list[dict[str, Any]] = []
    missing: dict[str, list[str]] = {}
    for name in runs:
        if name == UNATTRIBUTED_RUN_ID:
            continue
        meta = run_meta.get(name, {})
        params, tokens = _declared(meta, "plan.params"), _declared(meta, "plan.tokens")
        if params is None or tokens is None:
            missing[name] = [DECLARE[k] for k, v in (("plan.params", params),
                                                    ("plan.tokens", tokens)) if v is None]
            continue
        f = forecasts[name]
        if f.end_ns is not None and f.end_ns <= now_ns:
            reported = float(f.current.central)
            basis = (f"the hardware-based total (the planned end, {figures.when(f.end_ns)}, "
                     "has passed)")
        elif f.end_ns is not None:
            reported = f.current.central + f.rate.central * f.remaining_s(now_ns, 0.0)
            basis = (f"the hardware-based total projected to the planned end "
                     f"({figures.when(f.end_ns)}) at the measured rate")
        else:
            reported = float(f.current.central)
            basis = ("the hardware-based total so far (the run declared no end, "
                     "FLOPLEDGER_PLAN_DURATION_S or FLOPLEDGER_PLAN_END_TIME: this is the "
                     "whole run only once it has ended)")
        per_run.append({"run": name, "params": params, "tokens": tokens,
                        "6PD": 6 * params * tokens, "reported": reported,
                        "reported_is": basis})
    out: dict[str, Any] = {"ran": bool(per_run), "runs": per_run, "not_declared": missing,
                           "margin": EU_MARGIN, "margin_rule": EU_MARGIN_RULE,
                           "processed": _processed(runs, run_meta, records)}
    if per_run:
        six_pd = sum(r["6PD"] for r in per_run)
        reported = sum(r["reported"] for r in per_run)
        difference, beyond = cross_check(six_pd, reported)
        out.update({"6PD": six_pd, "reported": reported, "difference": difference,
                    "disagreement": abs(difference), "beyond_eu_margin": beyond})
    return out


def _processed(runs: list[str], run_meta: Mapping[str, Mapping[str, Any]],
               records: Mapping[str, list[LedgerRecord]]) -> dict[str, Any] | None:
    """Declared compute for the tokens processed so far against the measured compute
    up to the same moment, per run and summed; None when no run reported its tokens
    together with a parameter count."""
    checks = [check for name in runs if name != UNATTRIBUTED_RUN_ID
              if (check := processed_check(name, run_meta.get(name, {}),
                                           records.get(name, []))) is not None]
    if not checks:
        return None
    total = ProcessedTotal.of(checks)
    m = total.measured
    return {"runs": [c.to_json() for c in checks], "declared": total.declared,
            "measured": {"low": m.low, "central": m.central, "high": m.high},
            "difference": total.difference, "beyond_eu_margin": total.beyond_eu_margin,
            "within_band": total.within_band}


def _scope_totals(view: ModelView, model: str, registry: Registry) -> dict[str, dict[str, Any]]:
    """The model's FLOP per scope, as the regimes see it (the one model view that
    ``flopledger models`` prints), with its own part and its ancestors."""
    totals = view.totals(model)
    ancestors = view.lineage.ancestors(model)
    out: dict[str, dict[str, Any]] = {}
    for scope_name, scope in registry.scopes.items():
        total = totals[scope_name]
        own = sum((r.flop for r in view.runs
                   if r.model == model and scope.counts(r.run, r.category)), Band.exact(0))
        out[scope_name] = {"low": total.low, "central": total.central, "high": total.high,
                           "own_central": own.central, "inherit": scope.inherit,
                           "inherited_from": ancestors if scope.inherit else [],
                           "categories": sorted(scope.categories)}
    return out


def _forecast(forecasts: list[RunForecast], flop: Band[int], now_ns: int) -> dict[str, Any] | None:
    """The subject's own runs projected at their measured rates: to their planned ends,
    or (none declared) ``DEFAULT_HORIZON_S`` ahead, labelled as the current rate."""
    if not forecasts:
        return None
    rate = sum((f.rate for f in forecasts), Band.exact(0.0))
    added = [sum(float(getattr(f.rate, b)) * f.remaining_s(now_ns, DEFAULT_HORIZON_S)
                 for f in forecasts) for b in ("low", "central", "high")]
    planned = [f for f in forecasts if f.end_ns is not None]
    # The projection is the measured rate to the declared end; a declared size (6PD)
    # is the cross-check's, not this line's.
    basis = ("; ".join(sorted({", ".join(p for p in f.plan.split(", ") if p != "6PD")
                               for f in planned})) if planned
             else "no planned end declared")
    ends = [f.end_ns if f.end_ns is not None else now_ns + round(DEFAULT_HORIZON_S * 1e9)
            for f in forecasts]
    return {"rate_flops": asdict(rate),
            "projected": {"low": flop.low + int(added[0]), "central": flop.central + int(added[1]),
                          "high": flop.high + int(added[2])},
            "basis": basis, "planned": bool(planned), "end_ns": max(ends)}


def _energy(records: list[LedgerRecord], specs: SpecTable) -> dict[str, Any]:
    check = check_energy(records, specs.specs)
    return {"findings": [asdict(f) for f in check.findings()], "summary": check.summary()}


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
    _check_subject(run, model)
    now = now_ns or time.time_ns()
    # Every figure comes from one read of the ledger and from the records its latest
    # signed head covers; the records it does not cover yet are stated on their own.
    ledger_view = read_view(ledger_path)
    everything = ledger_view.sealed
    pending = ledger_view.unsealed_of(run=run, model=model)
    mine = [r for r in everything if (r.run == run if run is not None else r.model == model)]
    if not mine:
        what = _subject_text(run, model)
        if pending.records:
            raise ValueError(f"no record of {what} is under the signed head of {ledger_path} "
                             f"yet ({pending.text()} not yet sealed); report again once "
                             "their recording window has closed")
        raise ValueError(f"no records for {what} in {ledger_path}")
    kind, name = _subject(run, model)
    head, key = ledger_view.head, ledger_view.key_fingerprint
    # ``subject_records`` of the head's ``records`` are the Total's; ``unsealed`` is in
    # no figure of the report.
    ledger: dict[str, Any] = {"kind": "node", "path": str(ledger_path), "key_fingerprint": key,
                              "subject_records": len(mine), "unsealed": pending.to_json(),
                              "unsealed_text": pending.text()}
    if head is not None:
        ledger.update({"records": head.size, "root": head.root.hex(),
                       "signed_at": figures.when(head.timestamp_ns), "origin": head.origin,
                       "signed_at_ns": head.timestamp_ns})
    ledger["verify"] = (f"flopledger export --{kind} {name} -o bundle.json; then, anywhere: "
                        f"flopledger verify bundle.json --key-fingerprint {key}")
    snap = evaluate(models, registry, ledger_path, now, records=everything)
    return _assemble(models, registry, specs, run, model, now,
                     _Read(mine, everything, ledger_view.summaries(), snap, ledger))


def build_cluster_report(models: Mapping[str, ModelInfo], registry: Registry,
                         specs: SpecTable, view: ClusterView, snapshot: Snapshot, *,
                         run: str | None = None, model: str | None = None,
                         now_ns: int) -> Report:
    """The report of a run or a model over every node of the cluster store, from one
    read of it (``view``, one transaction): the same sections as a node's report, with
    each node's share and latest signed head. ``snapshot`` is the threshold evaluation
    of the same view at ``now_ns`` (the cluster service's, on every node's records).

    Raises:
        ValueError: if neither or both of ``run`` and ``model`` are given, or no record
            in the store matches.
        ClusterReadError: the store could not be read.
    """
    _check_subject(run, model)
    mine = list(view.iter_records(run=run, model=model))
    if not mine:
        raise ValueError(f"no records for {_subject_text(run, model)} in {view.where}")
    uuids = {r.gpu_uuid for r in mine}
    # A GPU's UUID is unique in a cluster: the unattributed compute on the subject's
    # GPUs is that of the unattributed run on any node.
    unattributed = [r for r in view.iter_records(run=UNATTRIBUTED_RUN_ID)
                    if r.gpu_uuid in uuids]
    shares = node_shares(view, run=run, model=model)
    heads = [s["head"] for s in shares if s["head"] is not None]
    oldest = min(heads, key=lambda h: h["signed_at_ns"], default=None)
    # Every node the subject ran on, each with the latest head the witness accepted: the
    # store holds a node's records only with the signed head that covers them.
    ledger: dict[str, Any] = {
        "kind": "cluster", "path": view.where, "store": view.where,
        "key_fingerprint": ", ".join(s["key_fingerprint"] for s in shares),
        "records": sum(h["size"] for h in heads), "subject_records": len(mine),
        "unsealed": Unsealed().to_json(), "unsealed_text": Unsealed().text(),
        "nodes": shares,
        "verify": f"flopledger verify --ledger {shlex.quote(view.where)}"}
    if oldest is not None:
        ledger.update({"signed_at": oldest["signed_at"], "signed_at_ns": oldest["signed_at_ns"],
                       "origin": "every node's latest signed head; the oldest of them"})
    return _assemble(models, registry, specs, run, model, now_ns,
                     _Read(mine, unattributed, view.run_summaries(), snapshot, ledger, shares))


def node_shares(view: ClusterView, *, run: str | None, model: str | None
                ) -> list[dict[str, Any]]:
    """Per node key holding records of the subject: its records, FLOP band and energy
    (the store's kept totals), and the latest signed head the witness accepted from it;
    by node name, then key."""
    shares: dict[str, dict[str, Any]] = {}
    for row in view.node_totals(run=run, model=model):
        node, s = row.node, row.summary
        share = shares.get(node.node_key)
        if share is None:
            head = node.head
            share = shares[node.node_key] = {
                "node": node.node, "key_fingerprint": node.fingerprint, "records": 0,
                "flop": {"low": 0, "central": 0, "high": 0}, "energy_mj": 0,
                "head": None if head is None else {
                    "size": head.size, "root": head.root.hex(), "origin": head.origin,
                    "signed_at": figures.when(head.timestamp_ns),
                    "signed_at_ns": head.timestamp_ns},
                "flagged": node.flagged}
        share["records"] += s.records
        share["energy_mj"] += s.energy_mj
        for bound in ("low", "central", "high"):
            share["flop"][bound] += getattr(s.flop, bound)
    return sorted(shares.values(), key=lambda s: (s["node"], s["key_fingerprint"]))


def _check_subject(run: str | None, model: str | None) -> None:
    if (run is None) == (model is None):
        raise ValueError("give exactly one of --run or --model")


def _subject(run: str | None, model: str | None) -> tuple[str, str]:
    return ("run", run) if run is not None else ("model", str(model))


def _subject_text(run: str | None, model: str | None) -> str:
    return f"{'run ' + str(run) if run else 'model ' + str(model)}"


@dataclass(frozen=True, slots=True)
class _Read:
    """What a report is drawn from, read at one moment from a node's ledger or the
    cluster store.

    Attributes:
        mine: the subject's compute records under the signed head(s).
        unattributed: records among which the unattributed compute on the subject's
            GPUs is found (a superset will do).
        summaries: every run's sums, with its declared metadata.
        snapshot: the threshold evaluation of the same records.
        ledger: what the figures are of, and how to verify them.
        shares: per node key of the cluster store, its share (none for a node ledger).
    """

    mine: list[LedgerRecord]
    unattributed: Iterable[LedgerRecord]
    summaries: Mapping[str, RunSummary]
    snapshot: Snapshot
    ledger: dict[str, Any]
    shares: list[dict[str, Any]] = field(default_factory=list)


def _assemble(models: Mapping[str, ModelInfo], registry: Registry, specs: SpecTable,
              run: str | None, model: str | None, now: int, read: _Read) -> Report:
    """The report of what ``read`` holds: one code path for a node and the cluster."""
    mine = sorted(read.mine, key=lambda r: (r.end_ns, r.seq))
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
    unattributed = [r for r in read.unattributed
                    if r.run == UNATTRIBUTED_RUN_ID and r.gpu_uuid in uuids
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
    summaries = read.summaries
    runs = sorted({r.run for r in mine})
    run_meta = {name: (summaries[name].meta if name in summaries else {}) for name in runs}
    forecasts = {name: run_forecast(name, [r for r in mine if r.run == name],
                                    plan_of(run_meta[name]), now) for name in runs}
    cross = _cross_check(runs, run_meta, forecasts, now,
                         {name: [r for r in mine if r.run == name] for name in runs})

    snap = read.snapshot
    kind, name = _subject(run, model)
    view = model_view(models, registry.scopes, summaries)
    counts_toward: dict[str, Any] | None = None
    if run is not None:
        # A run's obligations are its model's: the rows are the model's regimes whose
        # scope counts this run's category (and any regime listing runs themselves).
        summary = summaries.get(run)
        run_model = summary.model if summary is not None else ""
        category = summary.category if summary is not None else "unknown"
        picked = [e for e in snap.evaluations
                  if (e.assessment.subject.kind == "run" and e.assessment.subject.name == run)
                  or (run_model and e.assessment.subject.kind == "model"
                      and e.assessment.subject.name == run_model
                      and registry.scopes[e.assessment.regime.scope].counts(run, category))]
        counts_toward = {"model": run_model, "category": category,
                         "scopes": sorted(sc.name for sc in registry.scopes.values()
                                          if sc.counts(run, category))}
        scope_totals = _scope_totals(view, run_model, registry) if run_model else {}
    else:
        picked = [e for e in snap.evaluations
                  if e.assessment.subject.kind == "model" and e.assessment.subject.name == name]
        scope_totals = _scope_totals(view, name, registry)
    regimes = []
    for e in picked:
        row = _regime_row(e, now)
        row["subject"] = f"{e.assessment.subject.kind} {e.assessment.subject.name}"
        if run is not None and e.assessment.subject.kind == "model":
            in_scope = e.assessment.value.central
            row["run_share_central"] = flop.central / in_scope if in_scope else None
        regimes.append(row)
    timeline = Timeline()
    so_far = Band.exact(0)
    for r in mine:
        so_far += r.flop
        timeline.add(r.end_ns, so_far)
    forecast = _forecast(list(forecasts.values()), flop, now)
    return Report(kind, name, now, flop, sum(r.energy_mj for r in mine), first, last,
                  len(uuids), sorted({r.node for r in mine}), gpu_ns / 1e9, gap_ns / 1e9,
                  {k: v / total_samples for k, v in samples.most_common()}, un_share, method,
                  cross, regimes, read.ledger, runs, timeline, forecast,
                  spec_bases=_spec_bases(mine), scope_totals=scope_totals,
                  counts_toward=counts_toward, energy=_energy(mine, specs),
                  accelerators=_accelerators(mine, specs), node_shares=read.shares)


def _regime_row(e: Evaluation, now_ns: int) -> dict[str, Any]:
    from agent.compliance.evaluate import deadline_text

    a = e.assessment
    r = a.regime
    eta = e.projection.eta_s.get(a.estimate)
    # The deadline counts from the stored day the threshold was met or first known to be
    # met (agent.compliance.milestones), never from the time of the report.
    deadline_ns = e.deadline_ns
    anchor = e.deadline_anchor
    will = not a.met and (e.active or e.outlook == "will be met")
    state = "met" if a.met else "will be met" if will else e.outlook
    return {
        "regime": r.key, "title": r.title, "jurisdiction": r.jurisdiction, "status": r.status,
        "effective": r.effective, "threshold_flop": a.threshold_flop,
        "comparison": "strictly greater than" if r.comparison == "gt" else "at or above",
        "scope": r.scope, "fraction_high": a.fraction["high"],
        "fraction_central": a.fraction["central"], "met": a.met,
        "will_be_met": will, "state": state, "state_note": e.note,
        "met_at": figures.when(e.met_at_ns) if a.met and e.met_at_ns is not None else None,
        "known_at": (figures.when(e.known_at_ns) if e.active and e.known_at_ns is not None
                     else None),
        "eta": figures.when(now_ns + eta * 1e9) if eta is not None and not a.met else None,
        "eta_basis": "at the current rate",
        "projected_high": e.projection.projected.high,
        "projected_at_planned_end": (asdict(e.planned_projected)
                                     if e.planned_projected is not None else None),
        "obligation": r.obligation,
        "deadline": figures.when(deadline_ns) if deadline_ns is not None else None,
        "deadline_ns": deadline_ns,
        "deadline_days": r.deadline_days,
        # The stored milestones (ns) behind met_at, known_at and the deadline.
        "met_at_ns": e.met_at_ns if a.met else None,
        "known_at_ns": e.known_at_ns if e.active else None,
        "deadline_from_event": anchor[0] if anchor is not None else None,
        "deadline_from_ns": anchor[1] if anchor is not None else None,
        "estimate": a.estimate,
        "deadline_from": (f"{'met' if anchor[0] == 'met' else 'known to be met'} on "
                          f"{figures.when(anchor[1])}" if anchor is not None else None),
        "deadline_text": deadline_text(deadline_ns, now_ns) or None,
        # Kept for the Markdown table: now the stored deadline, not one "if known now".
        "deadline_if_known_now": deadline_text(deadline_ns, now_ns) or None,
        "sources": list(r.sources),
    }


def render_markdown(rep: Report, chart: str | None = None) -> str:
    f = rep.flop
    m = rep.method
    lines = [
        f"# Training compute report: {rep.subject_type} `{rep.subject}`",
        "",
        f"Generated {figures.when(rep.generated_ns)} by flopledger from "
        + (f"the cluster ledger (`{rep.ledger['path']}`), over every node that holds "
           f"records of this {rep.subject_type}." if is_cluster(rep) else
           f"the node ledger (`{rep.ledger['path']}`)."),
        "",
        "## Total",
        "",
        f"**{figures.flop(f.central)} FLOP** (central estimate, model FLOP), band "
        f"**{figures.flop(f.low, 'down')} (model FLOP) .. {figures.flop(f.high, 'up')} "
        "(executed FLOP)**; two significant figures, the band rounded outwards.",
        "",
        *_coverage_lines(rep),
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
    lines += _node_share_lines(rep)
    lines += _scope_lines(rep)
    if chart:
        lines += [f"![cumulative compute]({chart})", ""]
    lines += ["## Thresholds", ""]
    if rep.counts_toward is not None and rep.regimes:
        c = rep.counts_toward
        lines += [f"This run's compute counts toward model `{c['model']}` ({c['category']}): "
                  "the rows are that model's regimes whose scope counts the run's category, "
                  "each measured against the model's total in that scope (with inherited "
                  "compute); the run's share of it is given.", ""]
    if rep.regimes:
        share = rep.counts_toward is not None
        lines += ["| regime | status | scope | threshold | reached (high bound) | "
                  + ("run's share | " if share else "") + "state | ETA (high) | deadline |",
                  "|---|---|---|---|---|---|---|---|" + ("---|" if share else "")]
        for r in rep.regimes:
            said = r.get("state") or ("met" if r["met"] else
                                      "will be met" if r["will_be_met"] else "")
            state = f"**{said}**" if said in ("met", "will be met") else (said or "-")
            threshold = ((">" if r["comparison"].startswith("strictly") else ">=") + " "
                         + figures.flop(r["threshold_flop"])) if r["threshold_flop"] else "-"
            status = r["status"] + (f" ({r['effective']})" if r.get("effective") else "")
            deadline = (r.get("deadline_text") or r.get("deadline_if_known_now")
                        or r.get("deadline") or "-")
            run_share = (f"{percent(r['run_share_central'])} | "
                         if share and r.get("run_share_central") is not None
                         else "- | " if share else "")
            lines.append(f"| {r['title'] or r['regime']} | {status} | {r['scope']} | "
                         f"{threshold} | {percent(r['fraction_high'])} | {run_share}{state} | "
                         f"{r.get('eta') or '-'} | {deadline} |")
    elif rep.counts_toward is not None and not rep.counts_toward["model"]:
        lines.append("No enabled regime applies: the run names no model (declare "
                     "FLOPLEDGER_MODEL), and no regime applies to runs on their own.")
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
    lines += _cross_check_lines(rep.cross_check)
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
              *_spec_lines(rep.spec_bases), *_energy_lines(rep.energy), "",
              "## Verification", "", *_verification_lines(rep)]
    return "\n".join(lines)


def is_cluster(rep: Report) -> bool:
    """Whether the report is of the cluster store rather than of a node's ledger."""
    return rep.ledger.get("kind") == "cluster"


def _verification_lines(rep: Report) -> list[str]:
    """The signed head(s) every figure is of, and the command that checks them."""
    led = rep.ledger
    if is_cluster(rep):
        heads = "; ".join(_head_text(s) for s in led["nodes"])
        return [f"Cluster ledger `{led['path']}`, the latest signed head of each node key "
                f"holding records of this {rep.subject_type}: {heads}. Every figure of this "
                f"report is of the {led['subject_records']} record(s) of this "
                f"{rep.subject_type} they cover (the store holds a node's records only "
                "with the signed head that covers them). The command below checks every "
                "node of the store: its records, every head's root and signature with the "
                "node's own key, and the kept totals.", "", f"`{led['verify']}`", ""]
    return [f"Ledger signed head: {led.get('records', 0)} records, root "
            f"`{led.get('root', '')[:16]}...`, signed {led.get('signed_at', '-')}"
            f" by key `{led['key_fingerprint']}` ({led.get('origin', '')}); "
            f"every figure of this report is of the {led['subject_records']} "
            f"record(s) of this {rep.subject_type} it covers. Not yet sealed: "
            f"{led['unsealed_text']}.", "", f"`{led['verify']}`", ""]


def _head_text(share: Mapping[str, Any]) -> str:
    """``node-1 (key 0123456789abcdef): 9 records, root `abcd...`, signed TIME``."""
    head = share["head"]
    said = (f"{head['size']} records, root `{head['root'][:16]}...`, signed "
            f"{head['signed_at']}" if head is not None else "no signed head")
    flagged = (f", FLAGGED by the witness: {share['flagged']}"
               if share.get("flagged") is not None else "")
    return f"{share['node']} (key `{share['key_fingerprint']}`): {said}{flagged}"


def _node_share_lines(rep: Report) -> list[str]:
    """The cluster report's table: each node key's records, FLOP and latest head."""
    if not rep.node_shares:
        return []
    total = rep.flop.central
    lines = [f"Per node (the store's kept totals of this {rep.subject_type} on each node "
             "key; a node whose disk was replaced has a second key):", "",
             "| node | key | records | FLOP central | band | share (central) | "
             "latest signed head |", "|---|---|---|---|---|---|---|"]
    for s in rep.node_shares:
        f = s["flop"]
        head = s["head"]
        signed = (f"{head['size']} records, {head['signed_at']}" if head is not None
                  else "none")
        if s.get("flagged") is not None:
            signed += f"; **FLAGGED**: {s['flagged']}"
        share = percent(f["central"] / total) if total else "-"
        lines.append(f"| {s['node']} | `{s['key_fingerprint']}` | {s['records']:,} | "
                     f"{figures.flop(f['central'])} | {figures.flop(f['low'], 'down')} .. "
                     f"{figures.flop(f['high'], 'up')} | {share} | {signed} |")
    return [*lines, ""]


def _coverage_lines(rep: Report) -> list[str]:
    """What the Total covers: the records under the signed head the report cites, and,
    on their own line, the subject's records that head does not cover yet."""
    led = rep.ledger
    if is_cluster(rep):
        return [f"This is the total of the {led['subject_records']} record(s) of this "
                f"{rep.subject_type} on {len(led['nodes'])} node key(s) of the cluster "
                f"ledger, each under its node's signed tree head, the oldest signed "
                f"{led.get('signed_at', '-')} (see Verification). The store holds no "
                "record that awaits sealing.", ""]
    # A report is only built from records under a head (build_report), so there is one.
    covered = (f"This is the total of the {led['subject_records']} record(s) of this "
               f"{rep.subject_type} under the ledger's signed tree head of {led['records']} "
               f"records, signed {led['signed_at']} (see Verification).")
    if not led["unsealed"]["records"]:
        return [covered + " No record of it awaits sealing.", ""]
    return [covered, "",
            f"Not yet sealed: {led['unsealed_text']}, of the current recording windows or "
            "appended after that head; in no figure of this report (the next signed head "
            "covers them).", ""]


def percent(fraction: float) -> str:
    """A fraction as a percentage to two significant figures (``0.74`` -> ``74%``;
    ``74`` -> ``7,400%``; ``0.0007`` -> ``0.07%``)."""
    value = fraction * 100
    if value == 0:
        return "0%"
    if abs(value) >= 100:
        return f"{value:,.0f}%"
    return f"{float(f'{value:.2g}'):g}%"


def _scope_lines(rep: Report) -> list[str]:
    """The model's total per scope, with inherited compute: what the regime rows say."""
    if not rep.scope_totals:
        return []
    model = rep.subject if rep.counts_toward is None else rep.counts_toward["model"]
    head = (f"Model `{model}` per regulatory scope (the figures the thresholds are measured "
            "against: the runs whose category the scope counts, plus the base models' "
            "compute where the scope inherits it):")
    lines = [head, "", "| scope | categories | FLOP central | band | own runs (central) | "
             "inherited from |", "|---|---|---|---|---|---|"]
    for scope, t in rep.scope_totals.items():
        bases = ", ".join(t["inherited_from"]) or ("-" if t["inherit"] else "not inherited")
        lines.append(f"| {scope} | {', '.join(t['categories'])} | {figures.flop(t['central'])} "
                     f"| {figures.flop(t['low'], 'down')} .. {figures.flop(t['high'], 'up')} | "
                     f"{figures.flop(t['own_central'])} | "
                     f"{bases} |")
    return [*lines, ""]


def _cross_check_lines(c: Mapping[str, Any] | None) -> list[str]:
    if not c:
        return []
    return [*_planned_lines(c), *_processed_lines(c.get("processed"), c["margin_rule"])]


def _planned_lines(c: Mapping[str, Any]) -> list[str]:
    title = "Cross-check (architecture-based, Annex A.2.2: 6 x P x D)"
    lines: list[str] = []
    if not c["ran"]:
        undeclared = "; ".join(f"run `{run}` declared no {' or '.join(what)}"
                               for run, what in c["not_declared"].items())
        return [f"{title}: not run: {undeclared or 'no run to check'}. Declare the parameter "
                "count and the planned training tokens (FLOPLEDGER_PLAN_PARAMS and "
                "FLOPLEDGER_PLAN_TOKENS) for the report to compare the two methods.", ""]
    verdict = ("**beyond the EU's margin: check the declared parameters, tokens and "
               "precision**" if c["beyond_eu_margin"] else "within the EU's margin")
    for r in c["runs"]:
        lines.append(f"- run `{r['run']}`: 6 x {r['params']:.3g} x {r['tokens']:.3g} = "
                     f"{figures.flop(r['6PD'])} FLOP for the planned tokens; reported estimate "
                     f"{figures.flop(r['reported'])} FLOP, {r['reported_is']}")
    lines = [f"{title}: {figures.flop(c['6PD'])} FLOP against the reported estimate of "
             f"{figures.flop(c['reported'])} FLOP; |6PD - reported| / reported = "
             f"{c['disagreement']:.0%} (6PD {'above' if c['difference'] > 0 else 'below'}): "
             f"{verdict}, {c['margin_rule']}.", "", *lines]
    if c["not_declared"]:
        lines.append("- not checked: " + "; ".join(
            f"run `{run}` (declare {' and '.join(what)})"
            for run, what in c["not_declared"].items()))
    return [*lines, ""]


def _processed_verdict(c: Mapping[str, Any]) -> str:
    """``+9.1%: within the EU's margin, within the measured band`` or the flag."""
    if c["difference"] is None:
        return "no compute measured up to then"
    margin = (f"**{PROCESSED_FLAG}**" if c["beyond_eu_margin"]
              else "within the EU's margin")
    band = "within the measured band" if c["within_band"] else "outside the measured band"
    return f"{c['difference']:+.1%}: {margin}, {band}"


def _processed_lines(p: Mapping[str, Any] | None, margin_rule: str) -> list[str]:
    """The comparison on the tokens processed so far, summed, then per run."""
    if not p:
        return []
    m = p["measured"]
    lines = [f"Cross-check on the tokens processed so far (declared by the trainers, as "
             f"they reported them, against the measured compute up to the moment each "
             f"counted its tokens): {figures.flop(p['declared'])} FLOP declared against "
             f"{figures.band(m['low'], m['central'], m['high'])} FLOP measured; "
             f"(declared - measured) / measured = {_processed_verdict(p)}; "
             f"{margin_rule}.", ""]
    for r in p["runs"]:
        m = r["measured"]
        reach = ""
        if r["measured_until_ns"] < r["tokens_at_ns"]:
            reach = (f" (the signed records reach only {figures.when(r['measured_until_ns'])}"
                     ": the compute after it is not in the measured figure)")
        lines.append(f"- run `{r['run']}`: {r['tokens']:.3g} tokens processed by "
                     f"{figures.when(r['tokens_at_ns'])}; declared {r['formula']} = "
                     f"{figures.flop(r['declared'])} FLOP (P = {r['params']:.3g}); measured "
                     f"{figures.band(m['low'], m['central'], m['high'])} FLOP up to then"
                     f"{reach}; {_processed_verdict(r)}")
    return [*lines, ""]


def _energy_lines(energy: Mapping[str, Any]) -> list[str]:
    """Energy plausibility: each finding, loud, or the one line saying what was checked."""
    if not energy:
        return []
    findings = energy.get("findings", [])
    if not findings:
        return [f"- energy plausibility: no record claims more compute than its GPU's time "
                f"and energy allow, no run's efficiency is implausibly low "
                f"({energy['summary']})"]
    return ["- **energy plausibility: implausible figures** "
            f"({energy['summary']}):",
            *(f"  - {f['check']}: {f['message']}" for f in findings)]


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
