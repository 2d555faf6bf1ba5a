"""`flopledger report`: the figures a regulator asks for, in four formats."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from agent import figures
from agent.compliance.thresholds import ThresholdSettings, load_registry
from agent.compliance.watcher import ThresholdWatcher
from agent.reports.report import build_report, percent, render_csv, render_markdown
from agent.sources.specs import load_spec_table
from tests.ledger.unsealed import (
    SEALED_PT_CENTRAL,
    UNSEALED_NEW_CENTRAL,
    UNSEALED_PT_CENTRAL,
    interleave_checkpoints,
    open_writer,
    sealed_and_open,
)
from tests.replay.recordings import replayed_smi_ledger, smi_uuid
from tests.sample_ledger import DAY, HOUR_NS, MODEL, RUN, T0, build

HOURS = 6 * DAY


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "ledger.sqlite"
    build(path, HOURS)
    # The agent's watcher stores when "will be met" became known; deadlines count from it.
    ThresholdWatcher(ThresholdSettings(), {}, load_registry(), path,
                     wall_ns=lambda: T0 + HOURS * HOUR_NS).run_once()
    return path


def report(ledger: Path, **kw: str):  # type: ignore[no-untyped-def]
    return build_report({}, load_registry(), load_spec_table(), ledger,
                        now_ns=T0 + HOURS * HOUR_NS, **kw)


def test_report_states_totals_regimes_method_and_verification(ledger: Path) -> None:
    rep = report(ledger, model=MODEL)
    assert rep.flop.low < rep.flop.central < rep.flop.high
    regimes = {r["regime"]: r for r in rep.regimes}
    assert regimes["eu-gpai-indicative"]["met"]
    # A 60-day plan at this scale goes past 1e25: known when the watcher stored it, so
    # the EU clock runs from then.
    assert regimes["eu-art51-systemic-risk"]["will_be_met"]
    assert regimes["eu-art51-systemic-risk"]["deadline"] == figures.when(
        T0 + HOURS * HOUR_NS + 14 * DAY * HOUR_NS)
    assert regimes["eu-art51-systemic-risk"]["deadline_if_known_now"]
    assert rep.method["U_measured"] == pytest.approx(
        rep.flop.central / (rep.gpu_seconds * 989.4e12), rel=1e-9)
    assert rep.cross_check is not None
    text = render_markdown(rep)
    for needed in ("## Total", "## Thresholds", "C = N x L x H x U", "6 x P x D",
                   "## Data quality", "flopledger verify bundle.json --key-fingerprint",
                   "**will be met**"):
        assert needed in text, needed
    doc = json.loads(rep.to_json())
    assert doc["flop"]["central"] == rep.flop.central


def test_data_quality_lists_the_gpus_by_the_basis_of_their_peak(ledger: Path,
                                                                tmp_path: Path) -> None:
    table_only = report(ledger, model=MODEL)
    assert set(table_only.spec_bases) == {"table"}
    assert f"- GPU peaks: all {table_only.gpus} GPU(s) from rows of the spec table" in \
        render_markdown(table_only)
    # A replayed H100 (in the table) and a GPU no table has a row for.
    mixed = replayed_smi_ledger(tmp_path, [("NVIDIA H100 80GB HBM3", 1980),
                                           ("NVIDIA X999", 2000)])
    rep = build_report({}, load_registry(), load_spec_table(), mixed, run="unattributed")
    assert list(rep.spec_bases) == ["ceiling", "table"]
    ceiling = rep.spec_bases["ceiling"]
    assert ceiling["gpus"] == rep.spec_bases["table"]["gpus"] == 1
    assert ceiling["gpu_time_share"] == pytest.approx(0.5)
    (gpu,) = ceiling["not_in_table"]
    assert gpu["gpu"] == smi_uuid(1)
    assert gpu["reason"]
    assert "not_in_table" not in rep.spec_bases["table"]
    text = render_markdown(rep)
    quality = text.split("## Data quality")[1].split("## Verification")[0]
    assert "**GPU peaks not all from the spec table**" in quality
    assert f"  - `{smi_uuid(1)}`: ceiling (spec `{gpu['spec']}`; only a name" in quality
    assert smi_uuid(0) not in quality
    assert "no table peak for 50% of the GPU time (ceiling specs: not in the spec table)" \
        in rep.method["H_source"]
    assert json.loads(rep.to_json())["spec_bases"]["ceiling"]["not_in_table"][0]["gpu"] == \
        smi_uuid(1)


def test_csv_is_the_cumulative_timeline(ledger: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(render_csv(report(ledger, run=RUN)))))
    assert len(rows) == HOURS
    central = [int(r["flop_central"]) for r in rows]
    assert central == sorted(central)
    assert int(rows[-1]["flop_low"]) <= central[-1] <= int(rows[-1]["flop_high"])


def test_unknown_subject_is_a_clear_error(ledger: Path) -> None:
    with pytest.raises(ValueError, match="no records for run nope"):
        report(ledger, run="nope")


def test_cli_writes_markdown_with_its_chart(ledger: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    subprocess.run([sys.executable, "-m", "agent.cli", "report", "--model", MODEL, "--ledger",
                    str(ledger), "-o", str(out), "--chart"], check=True, timeout=120,
                   capture_output=True)
    assert "![cumulative compute](report.png)" in out.read_text()
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 20_000


def test_run_report_lists_the_regimes_of_its_model(ledger: Path) -> None:
    rep = report(ledger, run=RUN)
    assert rep.counts_toward == {"model": MODEL, "category": "pre-training",
                                 "scopes": ["cumulative", "frontier-us", "modification",
                                            "parameter-update"]}
    rows = {r["regime"]: r for r in rep.regimes}
    assert {"eu-art51-systemic-risk", "eu-gpai-indicative", "ca-sb53-frontier"} <= set(rows)
    assert all(r["subject"] == f"model {MODEL}" for r in rows.values())
    # The model's only run: its whole total.
    assert rows["eu-gpai-indicative"]["run_share_central"] == pytest.approx(1.0)
    assert rows["eu-gpai-indicative"]["met"]
    text = render_markdown(rep)
    assert "No enabled regime applies" not in text
    assert f"This run's compute counts toward model `{MODEL}` (pre-training)" in text


def test_run_of_a_category_no_scope_counts_gets_no_regime(tmp_path: Path) -> None:
    from agent.ledger.signing import load_or_create_key
    from agent.ledger.store import Ledger, RunRow
    from tests.sample_ledger import run_records

    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, "n", load_or_create_key(tmp_path / "node.key"))
    rows = [replace(r, run="serve", category="inference") for r in run_records(0, 1e18)]
    ledger.append(rows, T0 + HOUR_NS, {"serve": RunRow("serve", MODEL, "inference")})
    ledger.close()
    rep = build_report({}, load_registry(), load_spec_table(), path, run="serve",
                       now_ns=T0 + HOUR_NS)
    assert rep.regimes == []
    assert rep.counts_toward is not None
    assert rep.counts_toward["scopes"] == []


def test_model_totals_per_scope_inherit_and_agree_with_the_regime_rows(ledger: Path) -> None:
    from agent.compliance.lineage import Flop, ModelInfo

    inherited = 3 * 10**24
    models = {MODEL: ModelInfo(MODEL, ("base",)),
              "base": ModelInfo("base", declared_flop=Flop.exact(inherited))}
    rep = build_report(models, load_registry(), load_spec_table(), ledger, model=MODEL,
                       now_ns=T0 + HOURS * HOUR_NS)
    scopes = rep.scope_totals
    assert scopes["cumulative"]["central"] == rep.flop.central + inherited
    assert scopes["cumulative"]["own_central"] == rep.flop.central
    assert scopes["cumulative"]["inherited_from"] == ["base"]
    # The modification scope does not inherit (the EU one-third rule).
    assert scopes["modification"]["central"] == rep.flop.central
    for row in rep.regimes:
        assert row["fraction_high"] * row["threshold_flop"] == pytest.approx(
            scopes[row["scope"]]["high"], rel=1e-12), row["regime"]
    text = render_markdown(rep)
    assert "| cumulative | fine-tuning, pre-training, rl, synthetic-data-private, unknown | " \
        f"{figures.flop(rep.flop.central + inherited)} |" in text


@pytest.mark.parametrize(("fraction", "text"), [
    (0.737, "74%"), (0.0737, "7.4%"), (0.00737, "0.74%"), (73.7, "7,370%"), (1.0, "100%"),
    (0.0, "0%"),
])
def test_reached_is_a_percentage(fraction: float, text: str) -> None:
    assert percent(fraction) == text


def test_thresholds_table_says_percent_and_internal_titles(ledger: Path, tmp_path: Path) -> None:
    from agent.compliance.lineage import default_thresholds_path

    thresholds = tmp_path / "thresholds.toml"
    thresholds.write_text(default_thresholds_path().read_text() + """
[regimes.internal-budget]
title = "Internal review before 5e23 FLOP"
threshold_flop = 5e23
comparison = "gt"
scope = "cumulative"
subjects = ["model"]
status = "internal"
""")
    rep = build_report({}, load_registry(thresholds), load_spec_table(), ledger, model=MODEL,
                       now_ns=T0 + HOURS * HOUR_NS)
    text = render_markdown(rep)
    row = next(line for line in text.splitlines() if "Internal review" in line)
    assert row.startswith("| Internal review before 5e23 FLOP | internal | cumulative | "
                          "> 5.0e+23 | ")
    fraction = next(r for r in rep.regimes if r["regime"] == "internal-budget")["fraction_high"]
    assert f"| {percent(fraction)} |" in row
    art51 = next(line for line in text.splitlines() if "Art. 51(2)" in line)
    assert "| 7.4% |" in art51


def _ledger_with_meta(tmp_path: Path, meta: dict[str, object], hours: int = 48) -> Path:
    from agent.ledger.signing import load_or_create_key
    from agent.ledger.store import Ledger, RunRow
    from tests.sample_ledger import hourly_flop_per_gpu, run_records

    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, "n", load_or_create_key(tmp_path / "node.key"))
    for h, flop in enumerate(hourly_flop_per_gpu(hours)):
        ledger.append(run_records(h, flop), T0 + (h + 1) * HOUR_NS,
                      {RUN: RunRow(RUN, MODEL, "pre-training", meta)})
    ledger.close()
    return path


def test_cross_check_needs_params_and_tokens(tmp_path: Path) -> None:
    path = _ledger_with_meta(tmp_path, {"plan.duration_s": 60 * 86400.0, "plan.tokens": 28e12})
    rep = build_report({}, load_registry(), load_spec_table(), path, run=RUN,
                       now_ns=T0 + 48 * HOUR_NS)
    assert rep.cross_check is not None
    assert not rep.cross_check["ran"]
    assert rep.cross_check["not_declared"] == {RUN: ["FLOPLEDGER_PLAN_PARAMS"]}
    text = render_markdown(rep)
    assert (f"6 x P x D): not run: run `{RUN}` declared no FLOPLEDGER_PLAN_PARAMS. Declare the "
            "parameter count and the planned training tokens (FLOPLEDGER_PLAN_PARAMS and "
            "FLOPLEDGER_PLAN_TOKENS)") in text


@pytest.mark.parametrize(("tokens", "beyond"), [(28e12, False), (60e12, True)])
def test_cross_check_measures_against_the_reported_estimate(tmp_path: Path, tokens: float,
                                                            beyond: bool) -> None:
    # Six days in: the run at its full scale of 4,096 GPUs.
    path = _ledger_with_meta(tmp_path, {"plan.duration_s": 60 * 86400.0, "plan.params": 70e9,
                                        "plan.tokens": tokens}, hours=HOURS)
    rep = build_report({}, load_registry(), load_spec_table(), path, run=RUN,
                       now_ns=T0 + HOURS * HOUR_NS)
    c = rep.cross_check
    assert c is not None
    assert c["ran"]
    six_pd = 6 * 70e9 * tokens
    assert c["6PD"] == pytest.approx(six_pd)
    # The reported estimate: the hardware-based total at the planned end.
    assert c["reported"] > rep.flop.central
    assert c["disagreement"] == pytest.approx(abs(six_pd - c["reported"]) / c["reported"])
    assert c["beyond_eu_margin"] is beyond
    text = render_markdown(rep)
    assert (f"against the reported estimate of {figures.flop(c['reported'])} FLOP; "
            f"|6PD - reported| / reported = {c['disagreement']:.0%}") in text
    assert ('"within an overall error margin of 30% of the reported estimate" (Commission '
            "Guidelines C(2025) 5045, Annex A)") in text
    assert ("**beyond the EU's margin" in text) is beyond


def test_energy_plausibility_is_in_data_quality(ledger: Path, tmp_path: Path) -> None:
    quality = render_markdown(report(ledger, run=RUN)).split("## Data quality")[1]
    assert "- energy plausibility: no record claims more compute than its GPU's time and " \
        "energy allow" in quality
    # The same run, its energy read a thousandth of what it was (a unit slip).
    from agent.ledger.signing import load_or_create_key
    from agent.ledger.store import Ledger, RunRow
    from tests.sample_ledger import hourly_flop_per_gpu, run_records

    path = tmp_path / "ledger.sqlite"
    book = Ledger(path, "n", load_or_create_key(tmp_path / "node.key"))
    for h, flop in enumerate(hourly_flop_per_gpu(3)):
        rows = [replace(r, energy_mj=r.energy_mj // 1000) for r in run_records(h, flop)]
        book.append(rows, T0 + (h + 1) * HOUR_NS, {RUN: RunRow(RUN, MODEL, "pre-training")})
    book.close()
    rep = build_report({}, load_registry(), load_spec_table(), path, run=RUN,
                       now_ns=T0 + 3 * HOUR_NS)
    (finding,) = rep.energy["findings"]
    assert (finding["check"], finding["records"]) == ("energy", 12)
    quality = render_markdown(rep).split("## Data quality")[1]
    assert "- **energy plausibility: implausible figures**" in quality
    assert "  - energy: 12 record(s) of run frontier-pt (first: record 0)" in quality


def test_chart_labels_are_clean(ledger: Path) -> None:
    import matplotlib.pyplot as plt

    from agent.reports.chart import build_figure, shorten

    fig = build_figure(report(ledger, model=MODEL))
    try:
        fig.canvas.draw()
        (ax,) = fig.axes
        assert ax.get_ylabel() == "cumulative compute [FLOP]"
        assert ax.yaxis.get_offset_text().get_text() == ""
        y_ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert y_ticks
        assert all(t.startswith(r"$\mathdefault{10^{") for t in y_ticks), y_ticks
        x_ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert x_ticks
        assert not any("e+" in t or "." in t for t in x_ticks), x_ticks
        assert ax.xaxis.get_offset_text().get_text().startswith("2026")
        legend = ax.get_legend()
        assert legend is not None
        labels = [t.get_text() for t in legend.get_texts()]
        assert r"$1.0 \times 10^{25}$ FLOP: EU AI Act Art. 51(2): presumed high-impact" \
            " capabilities (systemic\u2026" in labels
        assert "e+" not in ax.get_title()
    finally:
        plt.close(fig)
    assert shorten("a b c", 10) == "a b c"
    assert shorten("abc defgh ijk", 10) == "abc defgh\u2026"


def test_the_total_is_what_the_cited_head_covers_and_unsealed_records_are_apart(
        tmp_path: Path) -> None:
    path = sealed_and_open(tmp_path)
    rep = build_report({}, load_registry(), load_spec_table(), path, model="base")
    # Model base: pt's sealed record only; pt's and new's open records are stated apart.
    assert rep.flop.central == SEALED_PT_CENTRAL
    assert rep.runs == ["pt"]
    assert rep.ledger["records"] == 2
    assert rep.ledger["subject_records"] == 1
    unsealed = rep.ledger["unsealed"]
    assert (unsealed["records"], unsealed["runs"]) == (2, ["new", "pt"])
    assert unsealed["flop_central"] == UNSEALED_PT_CENTRAL + UNSEALED_NEW_CENTRAL
    # The scope totals and the regime rows measure the same records as the Total.
    assert rep.scope_totals["cumulative"]["central"] == SEALED_PT_CENTRAL
    eu = next(r for r in rep.regimes if r["regime"] == "eu-art51-systemic-risk")
    assert eu["fraction_high"] == pytest.approx(rep.flop.high / eu["threshold_flop"])
    text = render_markdown(rep)
    total = text.split("## Total")[1].split("## Thresholds")[0]
    assert ("This is the total of the 1 record(s) of this model under the ledger's signed "
            "tree head of 2 records, signed ") in total
    assert "Not yet sealed: 2 record(s), FLOP 3.1e+14 [2.9e+14 .. 3.3e+14], up to " in total
    verification = text.split("## Verification")[1]
    assert "every figure of this report is of the 1 record(s) of this model it covers" \
        in verification
    assert "Not yet sealed: 2 record(s), FLOP 3.1e+14" in verification
    # Nothing awaiting sealing is said so, too.
    assert "No record of it awaits sealing." in render_markdown(
        build_report({}, load_registry(), load_spec_table(), path, run="ft"))


def test_a_report_read_during_checkpoints_is_of_one_moment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.ledger import query

    writer = open_writer(tmp_path)
    done = interleave_checkpoints(monkeypatch, query, writer)
    try:
        rep = build_report({}, load_registry(), load_spec_table(), writer.path, run="pt")
    finally:
        writer.close()
    # Checkpoints were committed during the read; the report is of the moment before them.
    assert done[0] >= 3
    assert (rep.ledger["records"], rep.flop.central) == (2, SEALED_PT_CENTRAL)
    assert rep.ledger["unsealed"]["flop_central"] == UNSEALED_PT_CENTRAL


def test_a_run_with_no_sealed_record_is_not_reported(tmp_path: Path) -> None:
    path = sealed_and_open(tmp_path)
    with pytest.raises(ValueError, match="no record of run new is under the signed head"):
        build_report({}, load_registry(), load_spec_table(), path, run="new")
