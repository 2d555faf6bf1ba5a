"""Models, lineage and per-scope totals; the model view of a ledger."""

from __future__ import annotations

from pathlib import Path

from agent.compliance.lineage import (
    Flop,
    Lineage,
    ModelInfo,
    RunFigures,
    load_model_view,
    load_scopes,
    model_totals,
    parse_models,
)
from agent.configfile import Problems
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from tests.ledger_helpers import SECOND, T0, record

SCOPES = load_scopes()


def run(name: str, model: str, category: str, flop: int) -> RunFigures:
    return RunFigures(name, model, category, Flop(flop, flop, flop))


RUNS = [
    run("pt", "base", "pre-training", 8 * 10**24),
    run("synth", "base", "synthetic-data-private", 10**24),
    run("synth-pub", "base", "synthetic-data-public", 10**23),
    run("eval", "base", "evaluation", 5 * 10**22),
    run("ft", "chat", "fine-tuning", 2 * 10**23),
    run("rl", "chat", "rl", 3 * 10**23),
    run("merge-ft", "merged", "fine-tuning", 10**22),
]


def test_scopes_follow_the_category_rules() -> None:
    base = model_totals("base", RUNS, Lineage(), SCOPES)
    # Cumulative: pre-training + private synthetic data; not public data, not evals.
    assert base["cumulative"].central == 9 * 10**24
    # Parameter updates only: no synthetic-data generation.
    assert base["parameter-update"].central == 8 * 10**24


def test_a_fine_tune_inherits_its_base_where_the_scope_says_so() -> None:
    lineage = Lineage({"chat": ModelInfo("chat", ("base",))})
    chat = model_totals("chat", RUNS, lineage, SCOPES)
    assert chat["cumulative"].central == 9 * 10**24 + 5 * 10**23
    assert chat["frontier-us"].central == 8 * 10**24 + 5 * 10**23
    # The one-third rule compares the modification alone.
    assert chat["modification"].central == 5 * 10**23


def test_a_merge_inherits_every_parent_and_a_declared_external_base() -> None:
    lineage = Lineage({
        "merged": ModelInfo("merged", ("chat", "external")),
        "chat": ModelInfo("chat", ("base",)),
        "external": ModelInfo("external", (), Flop(10**23, 2 * 10**23, 3 * 10**23)),
    })
    merged = model_totals("merged", RUNS, lineage, SCOPES)["cumulative"]
    assert merged.central == 10**22 + 5 * 10**23 + 9 * 10**24 + 2 * 10**23
    assert merged.low == 10**22 + 5 * 10**23 + 9 * 10**24 + 10**23


def test_lineage_cycles_do_not_loop() -> None:
    lineage = Lineage({"a": ModelInfo("a", ("b",)), "b": ModelInfo("b", ("a",))})
    assert lineage.ancestors("a") == ["b"]


def test_models_config_reports_every_problem() -> None:
    problems = Problems("agent.toml")
    parse_models({"models": {"x": {"base_models": "y", "declared_flop": {"low": 3, "high": 1},
                                   "colour": 1}}}, problems)
    keys = {k for k, _ in problems.items}
    assert keys == {"models.x.base_models", "models.x.declared_flop", "models.x.colour"}
    assert dict(problems.items)["models.x.colour"].startswith("one of the known keys")


def test_the_model_view_merges_configured_and_declared_lineage(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, "node-1", load_or_create_key(tmp_path / "node.key"))
    ledger.append([record(0, 0, 5, run="pt", model="base"),
                   record(1, 0, 5, run="ft", model="chat", central=10**14)], T0 + 5 * SECOND,
                  {"pt": RunRow("pt", "base", "pre-training", {}),
                   "ft": RunRow("ft", "chat", "fine-tuning", {"base_models": ["base"]})})
    ledger.close()
    external = ModelInfo("external", (), Flop(10**20, 10**20, 10**20))
    view = load_model_view({"base": ModelInfo("base", ("external",)), "external": external},
                           None, path)
    assert view.model_names() == ["base", "chat", "external"]
    # chat's base comes from its run's metadata, base's from the config.
    assert view.lineage.ancestors("chat") == ["base", "external"]
    assert view.totals("chat")["cumulative"].central == 10**14 + 10**15 + 10**20
    assert view.totals("chat")["modification"].central == 10**14
