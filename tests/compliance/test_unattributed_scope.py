"""Unattributed compute counts in every regulatory scope, whatever category its records
claim: a job that named itself ``unattributed`` (an older agent let it) must not take
real unattributed compute out of the scopes its category skips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.accounting.runs import CATEGORIES
from agent.compliance.evaluate import evaluate
from agent.compliance.lineage import Flop, Lineage, RunFigures, load_scopes, model_totals
from agent.compliance.thresholds import load_registry
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from tests.ledger_helpers import SECOND, T0, record

SCOPES = load_scopes()


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_scope_counts_unattributed_compute_of_any_category(category: str) -> None:
    for scope in SCOPES.values():
        assert scope.counts("unattributed", category), (scope.name, category)
    # A real run is judged by its category, as before.
    assert not SCOPES["cumulative"].counts("eval-run", "evaluation")
    assert SCOPES["cumulative"].counts("pt-run", "pre-training")


def test_model_totals_keep_unattributed_compute_claimed_as_evaluation() -> None:
    runs = [RunFigures("unattributed", "m", "evaluation", Flop(5, 6, 7)),
            RunFigures("eval-run", "m", "evaluation", Flop(100, 100, 100))]
    totals = model_totals("m", runs, Lineage(), SCOPES)
    assert set(totals) == set(SCOPES)
    assert all(f == Flop(5, 6, 7) for f in totals.values()), totals


def test_evaluate_counts_an_old_ledgers_claimed_unattributed_compute_everywhere(
        tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, "node-1", load_or_create_key(tmp_path / "node.key"))
    claimed = dataclasses.replace(record(0, 0, 5, run="unattributed", model="m",
                                         central=10**18), category="evaluation")
    ledger.append([claimed], T0 + 5 * SECOND,
                  {"unattributed": RunRow("unattributed", "m", "evaluation", {})})
    ledger.close()
    snap = evaluate({}, load_registry(), path, T0 + 10 * SECOND)
    model = [e.assessment for e in snap.evaluations if e.assessment.subject.kind == "model"]
    assert model
    for a in model:
        assert a.subject.name == "m"
        assert a.value.high == claimed.flop_high, a.regime.key
        assert all(s > 0 for s in a.subject.gpu_seconds.values())
    # Never judged as a run of its own.
    assert not [e for e in snap.evaluations if e.assessment.subject.kind == "run"]
