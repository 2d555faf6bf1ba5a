"""`flopledger report --form`: the EU notification and the Model Documentation Form's
compute and energy items, filled from the signed ledger."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.compliance.lineage import default_thresholds_path
from agent.compliance.milestones import read_milestones
from agent.compliance.thresholds import Registry, ThresholdSettings, load_registry
from agent.compliance.watcher import ThresholdWatcher
from agent.ledger.query import iter_records, latest_head
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from agent.reports.forms import (
    FORMS,
    build_form,
    render_form_json,
    render_form_markdown,
    sci,
    two_sig_text,
)
from agent.reports.report import Report, build_report
from agent.sources.specs import load_spec_table
from tests.sample_ledger import (
    DAY,
    HOUR_NS,
    META,
    MODEL,
    RUN,
    T0,
    build,
    hourly_flop_per_gpu,
    run_records,
)

HOURS = 6 * DAY
NOW = T0 + HOURS * HOUR_NS
ART51 = "eu-art51-systemic-risk"


def _watched(path: Path, hours: int, registry: Registry) -> Path:
    build(path, hours)
    ThresholdWatcher(ThresholdSettings(), {}, registry, path,
                     wall_ns=lambda: T0 + hours * HOUR_NS).run_once()
    return path


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six days of the 60-day plan: the EU 10^25 is known to be met (the watcher stored
    when), not met."""
    return _watched(tmp_path_factory.mktemp("forms") / "ledger.sqlite", HOURS, load_registry())


def _low_threshold_registry(tmp_path: Path, threshold: str) -> Registry:
    """The shipped regimes with the EU Art. 51(2) threshold at ``threshold``."""
    head, sep, rest = default_thresholds_path().read_text().partition(f"[regimes.{ART51}]")
    rest = rest.replace("threshold_flop = 1e25", f"threshold_flop = {threshold}", 1)
    path = tmp_path / "thresholds.toml"
    path.write_text(head + sep + rest)
    return load_registry(path)


def _report(path: Path, now_ns: int = NOW, registry: Registry | None = None,
            **kw: str) -> Report:
    return build_report({}, registry or load_registry(), load_spec_table(), path,
                        now_ns=now_ns, **kw)


def _art51(doc: dict[str, Any]) -> dict[str, Any]:
    items: list[dict[str, Any]] = [n for n in doc["notifications"] if n["regime"] == ART51]
    (item,) = items
    return item


@pytest.mark.parametrize(("value", "rounding", "text"), [
    (2.34e25, "nearest", "2.3x10^25"), (2.35e25 + 1e22, "nearest", "2.4x10^25"),
    (9.96e25, "nearest", "1.0x10^26"), (2.31e25, "up", "2.4x10^25"),
    (2.39e25, "down", "2.3x10^25"), (7.1e23, "nearest", "7.1x10^23"), (0, "nearest", "0"),
])
def test_flop_to_two_significant_figures(value: float, rounding: str, text: str) -> None:
    assert sci(value, rounding) == text


@pytest.mark.parametrize(("value", "text"), [
    (15_360.0, "15,000"), (202.752, "200"), (5.34, "5.3"), (1.6896, "1.7"),
    (0.001234, "0.0012"), (6.0, "6.0"), (99.6, "100"),
])
def test_plain_figures_to_two_significant_figures(value: float, text: str) -> None:
    assert two_sig_text(value) == text


def test_notification_known_to_be_met_dates_from_the_stored_milestone(ledger: Path) -> None:
    known_ns = read_milestones(ledger)[f"model:{MODEL}|{ART51}|will-be-met"]
    # A report a week later: the date and the deadline stay where they were stored.
    for now in (NOW, NOW + 7 * DAY * HOUR_NS):
        doc = build_form(_report(ledger, now_ns=now, model=MODEL), "eu-notification")
        item = _art51(doc)
        assert doc["due"]
        assert item["due"]
        assert item["date"]["event"] == "known to be met"
        assert item["date"]["at_ns"] == known_ns
        assert item["deadline"]["at_ns"] == known_ns + 14 * DAY * HOUR_NS
        assert item["deadline"]["days"] == 14
        assert item["deadline"]["passed"] is False
    # Known from the plan: the trigger is the compute projected to the planned end.
    planned = item["compute_at_planned_end"]
    assert item["compute"] == planned
    assert planned["flop"] > 1e25 > item["compute_so_far"]["flop"]
    assert re.fullmatch(r"\d\.\dx10\^25 FLOP", planned["text"])
    text = render_form_markdown(doc)
    assert f"- Date the threshold was known to be met: **{item['date']['at']}**" in text
    assert f"- Deadline (14 days from that date): **{item['deadline']['at']}**" in text
    assert f"- Compute that triggered the notification: **{planned['text']}**" in text


def test_notification_met_gives_the_stored_met_date_and_a_passed_deadline(
        tmp_path: Path) -> None:
    registry = _low_threshold_registry(tmp_path, "2e23")
    path = _watched(tmp_path / "ledger.sqlite", 96, registry)
    met_ns = read_milestones(path)[f"model:{MODEL}|{ART51}|met"]
    # The end of the record that crossed 2e23, not the time of the report.
    assert T0 < met_ns < T0 + 96 * HOUR_NS
    late = met_ns + 20 * DAY * HOUR_NS
    rep = _report(path, now_ns=late, registry=registry, model=MODEL)
    item = _art51(build_form(rep, "eu-notification"))
    assert item["date"] == {"event": "met", "at": item["date"]["at"], "at_ns": met_ns,
                            "stored": item["date"]["stored"]}
    assert item["deadline"]["at_ns"] == met_ns + 14 * DAY * HOUR_NS
    assert item["deadline"]["passed"] is True
    # Met: the trigger is the compute in the regime's scope, as the report's scope row.
    cumulative = rep.scope_totals["cumulative"]
    assert item["compute"]["exact"] == {k: cumulative[k] for k in ("low", "central", "high")}
    assert item["compute"]["text"] == f"{sci(cumulative['central'])} FLOP"
    text = render_form_markdown(build_form(rep, "eu-notification"))
    assert f"- Deadline (14 days from that date): **passed on {item['deadline']['at']}**" in text


def test_notification_not_due_gives_no_date(tmp_path: Path) -> None:
    # Two hours of the run without a plan: far below 10^25, nothing known.
    path = tmp_path / "ledger.sqlite"
    book = Ledger(path, "n", load_or_create_key(tmp_path / "node.key"))
    for h, flop in enumerate(hourly_flop_per_gpu(2)):
        book.append(run_records(h, flop), T0 + (h + 1) * HOUR_NS,
                    {RUN: RunRow(RUN, MODEL, "pre-training")})
    book.close()
    ThresholdWatcher(ThresholdSettings(), {}, load_registry(), path,
                     wall_ns=lambda: T0 + 2 * HOUR_NS).run_once()
    doc = build_form(_report(path, now_ns=T0 + 2 * HOUR_NS, model=MODEL), "eu-notification")
    item = _art51(doc)
    assert doc["due"] is False
    assert (item["due"], item["date"], item["deadline"]) == (False, None, None)
    assert item["status"].startswith("No notification is due yet: the threshold is neither "
                                     "met nor known to be met")
    text = render_form_markdown(doc)
    assert "- Date met or known to be met: none" in text
    assert "Deadline" not in text


def test_notification_states_the_estimation_approach(ledger: Path) -> None:
    rep = _report(ledger, model=MODEL)
    approach = build_form(rep, "eu-notification")["estimation_approach"]
    assert approach["approach"] == rep.method["approach"]
    assert approach["U_measured"] == rep.method["U_measured"]
    said = "\n".join(approach["approximations"])
    for needed in ("N = ", "H = 989.4 TFLOP/s", "model FLOP", "executed FLOP",
                   "sampling gaps: 0.00%", "gpm_tensor 100.0%", "6 x P x D"):
        assert needed in said, needed


def test_run_form_lists_its_models_notification(ledger: Path) -> None:
    doc = build_form(_report(ledger, run=RUN), "eu-notification")
    assert doc["subject"]["type"] == "run"
    assert _art51(doc)["subject"] == f"model {MODEL}"


def _two_kinds(tmp_path: Path, hours: int) -> Path:
    """The run with half its GPU groups on H100 PCIe cards."""
    path = tmp_path / "ledger.sqlite"
    book = Ledger(path, "n", load_or_create_key(tmp_path / "node.key"))
    for h, flop in enumerate(hourly_flop_per_gpu(hours)):
        rows = [replace(r, assumptions={**r.assumptions, "spec": "h100_pcie"})
                if r.gpu_index >= 2 else r for r in run_records(h, flop)]
        book.append(rows, T0 + (h + 1) * HOUR_NS, META)
    book.close()
    return path


def test_documentation_hardware_days_per_accelerator_variant_and_energy(tmp_path: Path) -> None:
    path = _two_kinds(tmp_path, 3)
    rep = _report(path, now_ns=T0 + 3 * HOUR_NS, model=MODEL)
    doc = build_form(rep, "eu-model-documentation")
    time_item = doc["items"]["training_time"]
    days = {h["accelerator"]: h for h in time_item["hardware_days"]}
    # 1,024 GPUs for 3 hours, half of them in each variant: 1,536 GPU-hours = 64 days.
    assert set(days) == {"NVIDIA H100 SXM5 80GB", "NVIDIA H100 PCIe 80GB"}
    for name, spec in (("NVIDIA H100 SXM5 80GB", "h100_sxm"), ("NVIDIA H100 PCIe 80GB",
                                                               "h100_pcie")):
        assert days[name]["spec"] == spec
        assert days[name]["days"] == pytest.approx(64.0)
        assert days[name]["text"] == f"64 {name} days"
    assert time_item["wall_clock_days"] == pytest.approx(3 / 24)
    # 0.55 kW x 3,072 GPU-hours = 1.6896 MWh, as the records hold it.
    energy_mj = sum(r.energy_mj for r in iter_records(path))
    assert energy_mj == pytest.approx(1.6896 * 3.6e12, rel=1e-9)
    energy = doc["items"]["training_energy"]
    assert (energy["mwh"], energy["text"], energy["exact_mj"]) == (1.7, "1.7 MWh", energy_mj)
    assert energy["boundary"].startswith("GPU: the boards' own energy as NVML reports it; "
                                         "not the node")
    assert "unknown" in energy["power_limits"]
    text = render_form_markdown(doc)
    assert "- Hardware: **64 NVIDIA H100 PCIe 80GB days**" in text
    assert "- Hardware: **64 NVIDIA H100 SXM5 80GB days**" in text
    assert "- **1.7 MWh** (two significant figures)" in text


def test_documentation_compute_and_what_the_provider_completes(ledger: Path) -> None:
    rep = _report(ledger, model=MODEL)
    doc = build_form(rep, "eu-model-documentation")
    assert doc["items"]["training_time"]["text"] == "6.0 days"
    compute = doc["items"]["training_compute"]
    central = rep.scope_totals["cumulative"]["central"]
    assert compute["exact"]["central"] == central
    assert compute["text"] == "7.1x10^23 FLOP" == f"{sci(central)} FLOP"
    assert compute["flop"] == 7.1e23
    assert compute["order_of_magnitude"]["exponent"] == 23
    assert compute["order_of_magnitude"]["text"] == "10^23 FLOP"
    assert compute["band"]["text"] == (f"{sci(rep.flop.low, 'down')} .. "
                                       f"{sci(rep.flop.high, 'up')} FLOP")
    assert "C = N x L x H x U" in doc["items"]["compute_methodology"]["text"]
    assert "nvmlDeviceGetTotalEnergyConsumption" in doc["items"]["energy_methodology"]["text"]
    completes = "\n".join(doc["provider_completes"])
    for unknown in ("benchmarked inference computation", "PUE", "power limits"):
        assert unknown in completes, unknown
    # Never invented: no item carries a figure for what the ledger cannot know.
    assert not any("inference" in key or "pue" in key for key in doc["items"])
    text = render_form_markdown(doc)
    tail = text.split("## To be completed by the provider")[1]
    assert "- benchmarked inference computation" in tail
    assert "- National authorities (order of magnitude): **10^23 FLOP**" in text


def test_json_keys(ledger: Path) -> None:
    rep = _report(ledger, model=MODEL)
    common = {"form", "title", "basis", "subject", "generated", "generated_ns", "signed_head"}
    notification = json.loads(render_form_json(build_form(rep, "eu-notification")))
    assert set(notification) == common | {"due", "notifications", "none_applies",
                                          "estimation_approach"}
    assert {"regime", "due", "compute", "compute_so_far", "date", "deadline", "threshold",
            "status"} <= set(_art51(notification))
    documentation = json.loads(render_form_json(build_form(rep, "eu-model-documentation")))
    assert set(documentation) == common | {"model", "items", "provider_completes"}
    assert set(documentation["items"]) == {"training_time", "training_compute",
                                           "compute_methodology", "training_energy",
                                           "energy_methodology"}
    with pytest.raises(ValueError, match="unknown form 'x'"):
        build_form(rep, "x")


def test_cited_head_is_the_one_verify_checks(ledger: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["verify", str(ledger)]) == 0
    said = capsys.readouterr().out
    match = re.search(r": (\d+) records, \d+ signed tree heads; key (\w+)", said)
    assert match is not None, said
    head, _ = latest_head(ledger)
    assert head is not None
    for form in FORMS:
        cited = build_form(_report(ledger, model=MODEL), form)["signed_head"]
        assert cited["records"] == int(match.group(1)) == head.size
        assert cited["key_fingerprint"] == match.group(2)
        assert cited["root"] == head.root.hex()
        # Every record of the sample ledger is the model's, and all are sealed.
        assert cited["subject_records"] == head.size
        assert cited["unsealed"] == "none"
        assert f"--key-fingerprint {match.group(2)}" in cited["verify"]
        text = render_form_markdown(build_form(_report(ledger, model=MODEL), form))
        assert (f"signed tree head of {head.size} records, root `{head.root.hex()}`"
                in text.split("## Source of every figure")[1])


@pytest.mark.parametrize("form", FORMS)
def test_cli_form_markdown_and_json(ledger: Path, form: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["report", "--model", MODEL, "--ledger", str(ledger), "--form", form]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# ")
    assert "## Source of every figure" in text
    assert main(["report", "--model", MODEL, "--ledger", str(ledger), "--form", form,
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["form"] == form
    assert main(["report", "--model", MODEL, "--ledger", str(ledger), "--form", form,
                 "--format", "csv"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", "flopledger: report: --form gives --format md or json, not csv\n")
