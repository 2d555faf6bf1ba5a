"""``flopledger report --form``: the official texts' items, filled from a report.

Two forms, each built from one :class:`agent.reports.report.Report` (so from the same
figures, milestones and signed head as the report itself), each as a JSON document and
as Markdown rendered from that document:

- ``eu-notification``: what an AI Act Art. 52(1) notification should contain (Commission
  Guidelines C(2025) 5045, para. 32): the compute that triggered it in FLOP to two
  significant figures ("2.3x10^25 FLOP"), the date the threshold was met or became known
  to be met (the stored milestone, never the time of the report), the estimation
  approach with its approximations, and the deadline (stored, 14 days from that date).
  A threshold neither met nor known to be met gives no date and says that no
  notification is due yet.
- ``eu-model-documentation``: the computational-resources and energy items of the GPAI
  Code of Practice's Model Documentation Form (Transparency chapter): training time
  (wall-clock days; hardware days per exact accelerator variant), training compute
  (FLOP, two significant figures; order of magnitude for national authorities), compute
  methodology, training energy (MWh, two significant figures, with its measurement
  boundary), energy methodology. What the ledger cannot know is listed as to be
  completed by the provider, never filled in.

Every figure cites the signed tree head of the ledger it comes from and how to verify it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from agent import figures
from agent.reports.report import FLOP_BASIS, Report, percent

__all__ = ["FORMS", "build_form", "render_form_json", "render_form_markdown"]

FORMS = ("eu-notification", "eu-model-documentation")

GUIDELINES = "Commission Guidelines C(2025) 5045"
NOTIFICATION_BASIS = f"AI Act Art. 52(1); {GUIDELINES}, paras. 30-32"
DOCUMENTATION_BASIS = ("General-Purpose AI Code of Practice (July 2025), Transparency "
                       "chapter, Model Documentation Form: computational resources and energy")
# A regime whose obligation is an Art. 52 notification (the systemic-risk threshold,
# and a downstream modifier becoming a systemic-risk provider).
ART52 = "Art. 52"
SEC_PER_DAY = 86400.0
MJ_PER_MWH = 3.6e12

ENERGY_BOUNDARY = (
    "GPU: the boards' own energy as NVML reports it; not the node (CPUs, memory, network, "
    "storage, power supplies) and not the facility (cooling, power distribution, PUE)")
POWER_LIMITS = "not recorded in the ledger: unknown (to be stated by the provider)"
ENERGY_METHOD = (
    "Measured: the increase of each GPU's cumulative energy counter (NVML "
    "nvmlDeviceGetTotalEnergyConsumption, millijoules) between the agent's samples, "
    "restarts of the counter handled, summed over the subject's ledger records; on a GPU "
    "without that counter, its reported power times the sampling interval. GPU board "
    "energy only (see the boundary); no PUE or node overhead is applied.")
PROVIDER_COMPLETES_DOCUMENTATION = [
    "benchmarked inference computation (FLOP, with the task and the hardware): the "
    "ledger records training, not inference benchmarks",
    "energy of the node beyond the GPUs (CPUs, memory, network, storage) and of the "
    "facility (cooling, power distribution; PUE): the ledger measures GPU boards only",
    "power limits or caps applied to the GPUs during training: not recorded in the ledger",
    "training time and compute as ranges for national authorities, if the provider "
    "chooses ranges rather than the figures above",
    "compute, time and energy of training not monitored by this ledger (other clusters, "
    "earlier checkpoints, base models' own training beyond a declared FLOP figure)",
    "the decision to report N/A where the form allows it and the provider withholds "
    "an item",
]


def sci(value: float, rounding: str = "nearest") -> str:
    """FLOP as the Guidelines write them: two significant figures, ``2.3x10^25``;
    ``rounding`` as :func:`agent.figures.flop` (``down``/``up`` for a band's bounds)."""
    text = figures.flop(value, rounding)
    if text == "0":
        return "0"
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}x10^{int(exponent)}"


def two_sig(value: float) -> float:
    """``value`` rounded to two significant figures."""
    return float(f"{value:.1e}")


def two_sig_text(value: float) -> str:
    """A plain number to two significant figures, without an exponent (``15,000``,
    ``5.3``, ``0.0012``)."""
    rounded = two_sig(value)
    if rounded == 0:
        return "0"
    decimals = max(0, 1 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:,.{decimals}f}"


def _flop_item(low: float, central: float, high: float, basis: str) -> dict[str, Any]:
    return {"flop": two_sig(central), "text": f"{sci(central)} FLOP",
            "band": {"low": two_sig(float(figures.flop(low, "down"))),
                     "high": two_sig(float(figures.flop(high, "up"))),
                     "text": f"{sci(low, 'down')} .. {sci(high, 'up')} FLOP"},
            "exact": {"low": low, "central": central, "high": high}, "basis": basis}


def _signed_head(rep: Report) -> dict[str, Any]:
    """The ledger's signed tree head the figures come from, and how to check it."""
    led = rep.ledger
    head = {"ledger": led.get("path"), "records": led.get("records"), "root": led.get("root"),
            "signed_at": led.get("signed_at"), "origin": led.get("origin"),
            "key_fingerprint": led.get("key_fingerprint"), "verify": led.get("verify"),
            # The subject's records under that head (every figure's), and those not yet
            # sealed (in no figure).
            "subject_records": led.get("subject_records"),
            "unsealed": led.get("unsealed_text")}
    if led.get("kind") == "cluster":
        # Every node's own head: the cluster store has no head of its own.
        head.update({"kind": "cluster", "nodes": [
            {"node": s["node"], "key_fingerprint": s["key_fingerprint"],
             **({"records": s["head"]["size"], "root": s["head"]["root"],
                 "signed_at": s["head"]["signed_at"]} if s["head"] is not None else {}),
             "flagged": s.get("flagged")} for s in led.get("nodes", [])]})
    if led.get("records") is None:
        head["warning"] = ("the ledger has no signed tree head yet: these figures cannot "
                           "be verified until it is sealed")
    return head


def _approach(rep: Report) -> dict[str, Any]:
    """How the compute was estimated, and every approximation made where precise
    information was not available (para. 32)."""
    m = rep.method
    approximations = [
        f"N = {m['N_gpus_average']:,.1f} GPUs on average, L = {m['L_seconds']:,.0f} s, "
        f"H = {m['H_peak_flops_per_gpu'] / 1e12:,.1f} TFLOP/s per GPU dense ({m['H_source']})"
        + (f", U = {m['U_measured']:.3f} measured" if m["U_measured"] is not None
           else ", U not defined (no known peak)"),
        f"basis: the central figure is {FLOP_BASIS['central']}; the low bound "
        f"{FLOP_BASIS['low']}; the high bound {FLOP_BASIS['high']} (Guidelines Annex A.1: "
        "model FLOP, recomputed activations excluded)",
        f"band: {sci(rep.flop.low, 'down')} .. {sci(rep.flop.high, 'up')} FLOP around "
        f"{sci(rep.flop.central)}, rounded outwards; it covers the counter's error, the "
        "clock range, an undeclared precision or recomputation, and sampling gaps",
    ]
    gap_share = rep.gap_seconds / rep.gpu_seconds if rep.gpu_seconds else 0.0
    approximations.append(f"sampling gaps: {gap_share:.2%} of the GPU time, counted at the "
                          "highest possible rate in the high bound only")
    if rep.estimators:
        approximations.append("estimators (share of samples): " + ", ".join(
            f"{k} {v:.1%}" for k, v in rep.estimators.items()))
    off_table = {b: v for b, v in rep.spec_bases.items() if b != "table"}
    if off_table:
        approximations.append("GPUs not in the spec table (peak less certain, band wider): "
                              + ", ".join(f"{b} {v['gpus']} GPU(s), {v['gpu_time_share']:.1%} "
                                          "of GPU time" for b, v in off_table.items()))
    if rep.unattributed_share:
        approximations.append(f"compute on the same GPUs not attributed to a run: "
                              f"{rep.unattributed_share:.2%} (not counted)")
    c = rep.cross_check
    if c and c.get("ran"):
        approximations.append(
            f"cross-check (Annex A.2.2, 6 x P x D): {sci(c['6PD'])} FLOP, "
            f"{c['disagreement']:.0%} from the reported estimate: "
            f"{'beyond' if c['beyond_eu_margin'] else 'within'} the EU's margin, "
            f"{c['margin_rule']}")
    elif c:
        approximations.append("cross-check (6 x P x D) not run: " + ("; ".join(
            f"run `{run}` declared no {' or '.join(what)}"
            for run, what in c["not_declared"].items()) or "no run to check"))
    processed = c.get("processed") if c else None
    if processed:
        measured = processed["measured"]
        verdict = ("no compute measured up to then" if processed["difference"] is None
                   else f"{processed['difference']:+.0%} from the measured "
                   f"{sci(measured['central'])} FLOP ({sci(measured['low'], 'down')} .. "
                   f"{sci(measured['high'], 'up')}): "
                   f"{'beyond' if processed['beyond_eu_margin'] else 'within'} the EU's "
                   f"margin, {'within' if processed['within_band'] else 'outside'} the band")
        approximations.append(
            f"cross-check on the tokens processed so far (as the trainer reported them): "
            f"{sci(processed['declared'])} FLOP declared, {verdict}")
    findings = rep.energy.get("findings") if rep.energy else None
    if findings:
        approximations.append(f"energy plausibility: {len(findings)} implausible finding(s) "
                              "(see the report's data quality)")
    return {"approach": m["approach"], "U_how": m["U_how"],
            "N_gpus_average": m["N_gpus_average"], "L_seconds": m["L_seconds"],
            "H_peak_flops_per_gpu": m["H_peak_flops_per_gpu"], "H_source": m["H_source"],
            "U_measured": m["U_measured"], "flop_basis": dict(FLOP_BASIS),
            "approximations": approximations}


def _scope_flop(rep: Report, scope: str) -> tuple[float, float, float, str]:
    t = rep.scope_totals.get(scope)
    if t is None:
        return (rep.flop.low, rep.flop.central, rep.flop.high,
                f"the {rep.subject_type}'s own compute in the ledger")
    inherited = (f", with compute inherited from {', '.join(t['inherited_from'])}"
                 if t["inherited_from"] else "")
    return (t["low"], t["central"], t["high"],
            f"the model's compute in scope `{scope}` so far{inherited}")


def _notification(rep: Report, row: Mapping[str, Any]) -> dict[str, Any]:
    """One Art. 52(1) regime: due (met or known to be met, with the stored date and
    deadline) or not due yet."""
    low, central, high, basis = _scope_flop(rep, row["scope"])
    event = row.get("deadline_from_event")
    at_ns = row.get("deadline_from_ns")
    item: dict[str, Any] = {
        "regime": row["regime"], "title": row["title"], "obligation": row["obligation"],
        "subject": row.get("subject"), "state": row.get("state") or "",
        "threshold": {"flop": row["threshold_flop"],
                      "text": f"{row['comparison']} {sci(row['threshold_flop'])} FLOP"
                      if row["threshold_flop"] else None,
                      "reached_high": percent(row["fraction_high"]),
                      "decided_by": f"the {row.get('estimate', 'high')} estimate"},
        "compute_so_far": _flop_item(low, central, high, basis),
    }
    planned = row.get("projected_at_planned_end")
    if planned is not None:
        item["compute_at_planned_end"] = _flop_item(
            planned["low"], planned["central"], planned["high"],
            "projected to the declared planned end at the measured rate")
    if event is None or at_ns is None:
        item.update({"due": False, "compute": item["compute_so_far"], "date": None,
                     "deadline": None,
                     "status": "No notification is due yet: the threshold is neither met "
                               "nor known to be met"
                               + (f" ({row['state']}: {row['state_note']})"
                                  if row.get("state") and row.get("state_note") else "")
                               + "."})
        return item
    met = event == "met"
    # What triggered it: the compute past the threshold (met), or the declared plan
    # that makes it known to be met.
    trigger = item["compute_so_far"] if met or planned is None else item["compute_at_planned_end"]
    deadline_ns = row.get("deadline_ns")
    deadline = None
    if deadline_ns is not None:
        deadline = {"at": figures.when(deadline_ns), "at_ns": deadline_ns,
                    "days": row.get("deadline_days"),
                    "passed": deadline_ns < rep.generated_ns,
                    "text": row.get("deadline_text")}
    item.update({"due": True, "compute": trigger,
                 "date": {"event": "met" if met else "known to be met",
                          "at": figures.when(at_ns), "at_ns": at_ns,
                          "stored": ("the cluster store's fl_milestones, first recorded "
                                     "by the cluster service; never moved"
                                     if rep.ledger.get("kind") == "cluster" else
                                     "the ledger's threshold_milestones, first recorded by "
                                     "the agent's watcher; never moved")},
                 "deadline": deadline,
                 "status": f"Notification due: the threshold was "
                           f"{'met' if met else 'known to be met'} on {figures.when(at_ns)}."})
    return item


def _eu_notification(rep: Report) -> dict[str, Any]:
    rows = [r for r in rep.regimes
            if r.get("jurisdiction") == "EU" and ART52 in str(r.get("obligation") or "")]
    items = [_notification(rep, r) for r in rows]
    return {"form": "eu-notification", "title": "Notification under AI Act Art. 52(1)",
            "basis": NOTIFICATION_BASIS,
            "due": any(i["due"] for i in items),
            "notifications": items,
            "none_applies": None if items else (
                "No enabled regime with an Art. 52(1) notification applies to this "
                f"{rep.subject_type}: no notification is due."),
            "estimation_approach": _approach(rep)}


def _hardware_days(rep: Report) -> list[dict[str, Any]]:
    out = []
    for key, a in rep.accelerators.items():
        days = a["covered_gpu_seconds"] / SEC_PER_DAY
        out.append({"accelerator": a["name"], "spec": key, "basis": a["basis"],
                    "gpu_ids": a["gpu_ids"], "days": days, "days_2sf": two_sig(days),
                    "gap_days": a["gap_gpu_seconds"] / SEC_PER_DAY,
                    "text": f"{two_sig_text(days)} {a['name']} days"})
    return out


def _eu_model_documentation(rep: Report) -> dict[str, Any]:
    model = rep.subject if rep.counts_toward is None else rep.counts_toward["model"]
    if rep.subject_type == "model" and "cumulative" in rep.scope_totals:
        low, central, high, basis = _scope_flop(rep, "cumulative")
    else:
        low, central, high = rep.flop.low, rep.flop.central, rep.flop.high
        basis = f"the {rep.subject_type}'s own compute in the ledger"
    compute = _flop_item(low, central, high, basis)
    exponent = math.floor(math.log10(two_sig(central))) if central > 0 else None
    compute["order_of_magnitude"] = {
        "exponent": exponent, "text": f"10^{exponent} FLOP" if exponent is not None else "0",
        "band_spans": sorted({math.floor(math.log10(v)) for v in (low, high) if v > 0})}
    wall_days = (rep.last_ns - rep.first_ns) / 1e9 / SEC_PER_DAY
    mwh = rep.energy_mj / MJ_PER_MWH
    findings = rep.energy.get("findings") if rep.energy else None
    approach = _approach(rep)
    items = {
        "training_time": {
            "wall_clock_days": wall_days, "wall_clock_days_2sf": two_sig(wall_days),
            "text": f"{two_sig_text(wall_days)} days",
            "period": f"{figures.when(rep.first_ns)} .. {figures.when(rep.last_ns)}",
            "hardware_days": _hardware_days(rep),
            "covers": f"the {rep.subject_type}'s records in the ledger (covered GPU time; "
                      "time lost in sampling gaps given apart)"},
        "training_compute": compute,
        "compute_methodology": {
            "text": (f"{approach['approach']}, with U measured: "
                     f"{approach['U_how']}. Central figure: {FLOP_BASIS['central']}. "
                     "Approximations: " + "; ".join(approach["approximations"]) + "."),
            **approach},
        "training_energy": {
            "mwh": two_sig(mwh), "text": f"{two_sig_text(mwh)} MWh", "exact_mj": rep.energy_mj,
            "boundary": ENERGY_BOUNDARY, "power_limits": POWER_LIMITS,
            "plausibility": (f"{len(findings)} implausible finding(s): see the report"
                             if findings else (rep.energy or {}).get("summary"))},
        "energy_methodology": {"text": ENERGY_METHOD},
    }
    return {"form": "eu-model-documentation",
            "title": "Model Documentation Form: computational resources and energy",
            "basis": DOCUMENTATION_BASIS, "model": model, "items": items,
            "provider_completes": list(PROVIDER_COMPLETES_DOCUMENTATION)}


def build_form(rep: Report, form: str) -> dict[str, Any]:
    """The form ``form`` (one of :data:`FORMS`) filled from ``rep``, as a JSON-ready dict.

    Raises:
        ValueError: for a form name not in :data:`FORMS`.
    """
    if form == "eu-notification":
        doc = _eu_notification(rep)
    elif form == "eu-model-documentation":
        doc = _eu_model_documentation(rep)
    else:
        raise ValueError(f"unknown form {form!r} (choose from {', '.join(FORMS)})")
    doc.update({"subject": {"type": rep.subject_type, "name": rep.subject,
                            "counts_toward": rep.counts_toward},
                "generated": figures.when(rep.generated_ns), "generated_ns": rep.generated_ns,
                "signed_head": _signed_head(rep)})
    return doc


def render_form_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def _head_lines(doc: Mapping[str, Any]) -> list[str]:
    h = doc["signed_head"]
    lines = ["## Source of every figure", ""]
    if h.get("warning"):
        lines += [f"**{h['warning']}**", ""]
    elif h.get("kind") == "cluster":
        heads = "; ".join(
            f"{n['node']} (key `{n['key_fingerprint']}`): "
            + (f"{n['records']} records, root `{n['root']}`, signed {n['signed_at']}"
               if n.get("records") is not None else "no signed head")
            + (f", FLAGGED by the witness: {n['flagged']}" if n.get("flagged") else "")
            for n in h["nodes"])
        lines += [f"The cluster ledger `{h['ledger']}`, the latest signed tree head of each "
                  f"node key holding records of this {doc['subject']['type']}: {heads}; "
                  f"every figure is of the {h['subject_records']} record(s) of this "
                  f"{doc['subject']['type']} they cover.", ""]
    else:
        lines += [f"The ledger `{h['ledger']}`, signed tree head of {h['records']} records, "
                  f"root `{h['root']}`, signed {h['signed_at']} by key "
                  f"`{h['key_fingerprint']}` ({h['origin']})"
                  + (f"; every figure is of the {h['subject_records']} record(s) of this "
                     f"{doc['subject']['type']} it covers" if h.get("subject_records") else "")
                  + (f". Not yet sealed, in no figure: {h['unsealed']}" if h.get("unsealed")
                     else "") + ".", ""]
    return [*lines, "Verify:", "", f"`{h['verify']}`", ""]


def _flop_line(item: Mapping[str, Any]) -> str:
    return (f"**{item['text']}** (band {item['band']['text']}; two significant figures, "
            f"the band rounded outwards): {item['basis']}")


def _notification_markdown(doc: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    if doc["none_applies"]:
        lines += [doc["none_applies"], ""]
    for n in doc["notifications"]:
        lines += [f"## {n['title']}", "", f"**{n['status']}**", "",
                  f"- Obligation: {n['obligation']}",
                  f"- Threshold: {n['threshold']['text'] or '-'} ({n['subject']}; reached "
                  f"{n['threshold']['reached_high']} by the high bound; decided by "
                  f"{n['threshold']['decided_by']})"]
        if n["due"]:
            lines.append(f"- Compute that triggered the notification: {_flop_line(n['compute'])}")
            if n["compute"] != n["compute_so_far"]:
                lines.append(f"- Compute so far: {_flop_line(n['compute_so_far'])}")
            d = n["date"]
            lines.append(f"- Date the threshold was {d['event']}: **{d['at']}** (stored in "
                         f"{d['stored']})")
            if n["deadline"] is not None:
                dl = n["deadline"]
                said = (f"passed on {dl['at']}" if dl["passed"] else dl["at"])
                lines.append(f"- Deadline ({dl['days']:g} days from that date): **{said}**")
        else:
            lines.append(f"- Compute so far: {_flop_line(n['compute_so_far'])}")
            if "compute_at_planned_end" in n:
                lines.append(f"- Compute at the planned end: "
                             f"{_flop_line(n['compute_at_planned_end'])}")
            lines.append("- Date met or known to be met: none (no date is given before it "
                         "is)")
        lines.append("")
    a = doc["estimation_approach"]
    lines += ["## Estimation approach and approximations", "",
              f"{a['approach']}, with U measured: {a['U_how']}.",
              "", *(f"- {x}" for x in a["approximations"]), ""]
    return lines


def _documentation_markdown(doc: Mapping[str, Any]) -> list[str]:
    it = doc["items"]
    t, c, e = it["training_time"], it["training_compute"], it["training_energy"]
    lines = [f"Model: `{doc['model'] or '-'}`", "",
             "## Training time", "",
             f"- Wall-clock: **{t['text']}** ({t['period']})",
             *(f"- Hardware: **{h['text']}** ({h['gpu_ids']} GPU id(s) in the ledger, "
               f"peak basis {h['basis']}"
               + (f"; {two_sig_text(h['gap_days'])} days more in sampling gaps"
                  if h["gap_days"] else "") + ")" for h in t["hardware_days"]),
             f"- Covers: {t['covers']}", "",
             "## Training compute", "",
             f"- AI Office: {_flop_line(c)}",
             f"- National authorities (order of magnitude): **{c['order_of_magnitude']['text']}**",
             "", "## Compute methodology", "", it["compute_methodology"]["text"], "",
             "## Training energy", "",
             f"- **{e['text']}** (two significant figures)",
             f"- Boundary: {e['boundary']}",
             f"- Power limits: {e['power_limits']}",
             f"- Plausibility: {e['plausibility'] or '-'}", "",
             "## Energy methodology", "", it["energy_methodology"]["text"], "",
             "## To be completed by the provider", "",
             "The ledger cannot know these; nothing here is filled in for them:", "",
             *(f"- {x}" for x in doc["provider_completes"]), ""]
    return lines


def render_form_markdown(doc: Mapping[str, Any]) -> str:
    s = doc["subject"]
    lines = [f"# {doc['title']}: {s['type']} `{s['name']}`", "",
             f"{doc['basis']}. Filled by flopledger on {doc['generated']} from the signed "
             "ledger; every figure below traces to the signed head cited at the end.", ""]
    if doc["form"] == "eu-notification":
        lines += _notification_markdown(doc)
    else:
        lines += _documentation_markdown(doc)
    return "\n".join(lines + _head_lines(doc))
