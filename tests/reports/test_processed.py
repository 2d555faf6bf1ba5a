"""Declared compute for the tokens processed so far against the measured compute up to
the same moment: the check itself, and the report's section (Markdown and JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.compliance.thresholds import load_registry
from agent.reports.forms import build_form
from agent.reports.processed import (
    PROCESSED_FLAG,
    ProcessedTotal,
    declares_no_params,
    measured_until,
    processed_check,
)
from agent.reports.report import Report, build_report, render_markdown
from agent.sources.specs import load_spec_table
from tests.ledger_helpers import SECOND, T0, record
from tests.reports.declared_ledger import (
    MEASURED_CENTRAL,
    PARAMS,
    RUNS,
    TOKENS_AT_NS,
    declared_ledger,
)

NOW_NS = T0 + 60 * SECOND


def report(path: Path, **subject: str) -> Report:
    return build_report({}, load_registry(), load_spec_table(), path, now_ns=NOW_NS,
                        **subject)


# ----------------------------------------------------------------------------- the check


def test_measured_up_to_a_moment_counts_a_straddling_record_pro_rata() -> None:
    records = [record(0, 0, 5), record(0, 5, 10), record(0, 10, 15)]
    band, reached = measured_until(records, T0 + 7_500_000_000)
    assert (band.low, band.central, band.high) == pytest.approx((1.425e15, 1.5e15, 1.575e15))
    assert reached == T0 + 7_500_000_000
    band, reached = measured_until(records, T0 + 60 * SECOND)
    assert band.central == pytest.approx(3e15)
    assert reached == T0 + 15 * SECOND  # the records end before the moment
    assert measured_until(records, T0) == (measured_until([], T0)[0], 0)


def test_declared_compute_with_and_without_the_attention_term() -> None:
    records = [record(0, 0, 10)]
    meta: dict[str, Any] = {"plan.params": 7e9, "progress.tokens": 1000,
                            "progress.updated_ns": T0 + 10 * SECOND}
    check = processed_check("r", meta, records)
    assert check is not None
    assert check.declared == 6 * 7e9 * 1000
    assert check.formula == "6 x P x D"
    assert check.difference == pytest.approx(6 * 7e9 * 1000 / 1e15 - 1)
    meta |= {"plan.layers": 32, "plan.d_model": 4096, "plan.context": 8192}
    check = processed_check("r", meta, records)
    assert check is not None
    assert check.declared == pytest.approx((6 * 7e9 + 12 * 32 * 4096 * 8192) * 1000)
    assert check.formula == "6 x P x D + 12 x layers x d_model x context x D"
    # Part of the architecture only: no attention term.
    del meta["plan.context"]
    check = processed_check("r", meta, records)
    assert check is not None
    assert check.formula == "6 x P x D"


def test_no_check_without_a_parameter_count_or_tokens() -> None:
    records = [record(0, 0, 10)]
    assert processed_check("r", {"progress.tokens": 10}, records) is None
    assert processed_check("r", {"plan.params": 1e9}, records) is None
    assert processed_check("r", {"plan.params": "lots", "progress.tokens": 10}, records) is None
    assert processed_check("r", {"plan.params": 1e9, "progress.tokens": True}, records) is None
    assert declares_no_params({"via": "client", "progress.tokens": 10})
    assert not declares_no_params({"via": "env"})
    assert not declares_no_params({"via": "client", "plan.params": 1e9})


def test_without_a_time_the_tokens_are_compared_with_everything_measured() -> None:
    check = processed_check("r", {"plan.params": 1e9, "progress.tokens": 100},
                            [record(0, 0, 5), record(0, 5, 10)])
    assert check is not None
    assert check.tokens_at_ns == check.measured_until_ns == T0 + 10 * SECOND
    assert check.measured.central == 2e15
    assert check.difference == pytest.approx(6e11 / 2e15 - 1)
    assert check.beyond_eu_margin


def test_no_token_counted_yet_is_no_declared_figure() -> None:
    # A trainer that reports steps only sends 0 tokens: unknown, not zero compute.
    assert processed_check("r", {"plan.params": 1e9, "progress.tokens": 0},
                           [record(0, 0, 5)]) is None


@pytest.mark.parametrize("updated_ns", [10**30, -5, "soon", None])
def test_an_unusable_time_is_the_end_of_the_records(updated_ns: object) -> None:
    check = processed_check("r", {"plan.params": 1e9, "progress.tokens": 100,
                                  "progress.updated_ns": updated_ns}, [record(0, 0, 5)])
    assert check is not None
    assert check.tokens_at_ns == T0 + 5 * SECOND


def test_nothing_measured_is_no_difference_not_agreement() -> None:
    check = processed_check("r", {"plan.params": 1e9, "progress.tokens": 10,
                                  "progress.updated_ns": T0}, [record(0, 0, 5)])
    assert check is not None
    assert check.difference is None
    assert not check.beyond_eu_margin
    assert not check.within_band


def test_the_total_compares_the_sums() -> None:
    records = [record(0, 0, 10)]
    checks = [processed_check(name, {"plan.params": 1e9, "progress.tokens": tokens}, records)
              for name, tokens in (("a", 170_000), ("b", 230_000))]
    total = ProcessedTotal.of(c for c in checks if c is not None)
    assert total.declared == pytest.approx(2.4e15)
    assert total.measured.central == 2e15
    assert total.difference == pytest.approx(0.2)
    assert not total.beyond_eu_margin
    assert not total.within_band  # 2.4e15 is above 2.1e15


# ----------------------------------------------------------------------------- the report


def test_report_agreeing_run_is_within_the_margin_and_the_band(tmp_path: Path) -> None:
    rep = report(declared_ledger(tmp_path), run="agree")
    c = rep.cross_check
    assert c is not None
    assert not c["ran"]  # no planned tokens: the planned comparison is not run
    p = c["processed"]
    (run,) = p["runs"]
    assert run["declared"] == pytest.approx(6 * PARAMS * 510_000)
    assert run["measured"]["central"] == pytest.approx(MEASURED_CENTRAL)
    assert run["tokens_at_ns"] == run["measured_until_ns"] == TOKENS_AT_NS
    assert run["difference"] == pytest.approx(0.02)
    assert (run["beyond_eu_margin"], run["within_band"]) == (False, True)
    assert (p["beyond_eu_margin"], p["within_band"]) == (False, True)
    assert p["difference"] == pytest.approx(0.02)
    text = render_markdown(rep)
    assert "Cross-check on the tokens processed so far" in text
    assert ("(declared - measured) / measured = +2.0%: within the EU's margin, within the "
            "measured band") in text
    assert ("- run `agree`: 5.1e+05 tokens processed by 2025-06-15 15:06:47Z; declared "
            "6 x P x D = 3.1e+15 FLOP (P = 1e+09); measured 3.0e+15 [2.8e+15 .. 3.2e+15] "
            "FLOP up to then; +2.0%: within the EU's margin, within the measured band") in text
    assert PROCESSED_FLAG not in text
    # The planned comparison still says what to declare.
    assert "declared no FLOPLEDGER_PLAN_TOKENS" in text
    doc = json.loads(rep.to_json())["cross_check"]["processed"]
    assert doc["runs"][0]["run"] == "agree"
    assert doc["within_band"] is True
    assert set(doc) == {"runs", "declared", "measured", "difference", "beyond_eu_margin",
                        "within_band"}


def test_report_flags_a_run_40_percent_off(tmp_path: Path) -> None:
    rep = report(declared_ledger(tmp_path), run="off")
    assert rep.cross_check is not None
    p = rep.cross_check["processed"]
    assert p["difference"] == pytest.approx(0.4)
    assert (p["beyond_eu_margin"], p["within_band"]) == (True, False)
    text = render_markdown(rep)
    assert (f"(declared - measured) / measured = +40.0%: **{PROCESSED_FLAG}**, outside the "
            "measured band") in text
    doc = json.loads(rep.to_json())["cross_check"]["processed"]
    assert doc["beyond_eu_margin"] is True
    assert doc["runs"][0]["beyond_eu_margin"] is True
    form = build_form(rep, "eu-model-documentation")
    assert "cross-check on the tokens processed so far" in json.dumps(form)


def test_report_of_a_model_sums_its_runs(tmp_path: Path) -> None:
    runs = {name: RUNS[name] for name in ("agree", "off", "env-only")}
    rep = report(declared_ledger(tmp_path, runs, model="shared"), model="shared")
    assert rep.cross_check is not None
    p = rep.cross_check["processed"]
    assert [r["run"] for r in p["runs"]] == ["agree", "off"]
    assert p["declared"] == pytest.approx(6 * PARAMS * (510_000 + 700_000))
    assert p["measured"]["central"] == pytest.approx(2 * MEASURED_CENTRAL)
    assert p["difference"] == pytest.approx(0.21)
    assert (p["beyond_eu_margin"], p["within_band"]) == (False, False)
    text = render_markdown(rep)
    assert "= +21.0%: within the EU's margin, outside the measured band" in text
    assert f"+40.0%: **{PROCESSED_FLAG}**" in text  # the run on its own line


def test_report_without_processed_tokens_has_no_processed_check(tmp_path: Path) -> None:
    rep = report(declared_ledger(tmp_path, {"env-only": RUNS["env-only"]}), run="env-only")
    assert rep.cross_check is not None
    assert rep.cross_check["processed"] is None
    assert json.loads(rep.to_json())["cross_check"]["processed"] is None
    assert "tokens processed so far" not in render_markdown(rep)


def test_report_says_when_the_signed_records_stop_short(tmp_path: Path) -> None:
    # Tokens counted at 12.5 s; the records under the signed head end at 10 s (the
    # open ones are in no figure of a report).
    late = {"late": {**RUNS["agree"], "progress.updated_ns": T0 + 12_500_000_000}}
    rep = report(declared_ledger(tmp_path, late), run="late")
    assert rep.cross_check is not None
    (run,) = rep.cross_check["processed"]["runs"]
    assert run["measured_until_ns"] == T0 + 10 * SECOND
    assert run["measured"]["central"] == pytest.approx(4e15)
    assert "(the signed records reach only 2025-06-15 15:06:50Z" in render_markdown(rep)
