"""Models, their lineage, and per-model totals per regulatory scope.

A model is a name with runs (from the ledger) and possibly base models: a fine-tune
or a merge inherits the compute of the weights it starts from. Which runs count toward
which scope is decided by their category and the scope rules in
``agent/data/thresholds.toml`` (``[scopes.*]``); whether a base model's compute is added
is the scope's ``inherit`` flag. A base model trained elsewhere has no runs here: its
compute is declared in the config (``[models.<name>] declared_flop``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias

from agent.accounting.band import Band
from agent.accounting.names import UNATTRIBUTED_RUN_ID
from agent.accounting.runs import CATEGORIES
from agent.configfile import Problems, bundled_config, check_keys, read_toml
from agent.ledger.query import RunSummary, run_summaries


@dataclass(frozen=True, slots=True)
class Scope:
    """Which run categories count, and whether base models' compute is inherited."""

    name: str
    description: str
    categories: frozenset[str]
    inherit: bool
    source: str = ""

    def counts(self, run: str, category: str) -> bool:
        """Whether a run's compute counts here: its category is in the scope, or it is
        the unattributed compute, which counts in every scope whatever category its
        records claim (an old ledger, a crafted trace)."""
        return run == UNATTRIBUTED_RUN_ID or category in self.categories


# A FLOP figure with its band, in whole FLOP: the one band type, named for its unit.
Flop: TypeAlias = Band[int]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Lineage of one model.

    Attributes:
        name: the model's name, as runs report it.
        base_models: models whose weights it starts from (fine-tune, merge, init).
        declared_flop: compute of a model not trained under this ledger, as declared
            (e.g. from a provider's documentation); None if it has runs here.
        role: "provider", or "modifier" for a downstream actor modifying someone
            else's model (judged by the EU one-third rule, not as a provider).
        systemic_risk: whether the model is a GPAI model with systemic risk; None:
            decide from its compute.
    """

    name: str
    base_models: tuple[str, ...] = ()
    declared_flop: Flop | None = None
    role: str = "provider"
    systemic_risk: bool | None = None


@dataclass(frozen=True, slots=True)
class RunFigures:
    """What per-model totals need of a run."""

    run: str
    model: str
    category: str
    flop: Flop


def default_thresholds_path() -> Path:
    return bundled_config("thresholds.toml")


def parse_scopes(raw: Mapping[str, Any], problems: Problems,
                 categories: Iterable[str]) -> dict[str, Scope]:
    """``[scopes.*]`` tables -> Scope objects, every problem reported."""
    known_categories = set(categories)
    scopes: dict[str, Scope] = {}
    table = raw.get("scopes", {})
    if not isinstance(table, dict) or not table:
        problems.add("scopes", "one or more [scopes.<name>] tables")
        return scopes
    for name, spec in table.items():
        where = f"scopes.{name}"
        if not isinstance(spec, dict):
            problems.add(where, "a table")
            continue
        cats = spec.get("categories")
        if not isinstance(cats, list) or not cats or any(
                not isinstance(c, str) or c not in known_categories for c in cats):
            problems.add(f"{where}.categories", f"a non-empty list of {sorted(known_categories)}")
            cats = []
        inherit = spec.get("inherit")
        if not isinstance(inherit, bool):
            problems.add(f"{where}.inherit", "true or false")
            inherit = True
        scopes[name] = Scope(name, str(spec.get("description", "")), frozenset(cats), inherit,
                             str(spec.get("source", "")))
    return scopes


def load_scopes(path: Path | None = None) -> dict[str, Scope]:
    """Raises: ConfigError naming the file and every bad key."""
    path = path or default_thresholds_path()
    raw = read_toml(path)
    problems = Problems(path)
    scopes = parse_scopes(raw, problems, CATEGORIES)
    problems.raise_if_any()
    return scopes


def parse_models(raw: Mapping[str, Any], problems: Problems) -> dict[str, ModelInfo]:
    """``[models.<name>]`` config tables: ``base_models``, ``declared_flop``."""
    models: dict[str, ModelInfo] = {}
    table = raw.get("models", {})
    if not isinstance(table, dict):
        problems.add("models", "a table of [models.<name>]")
        return models
    for name, spec in table.items():
        where = f"models.{name}"
        if not isinstance(spec, dict):
            problems.add(where, "a table")
            continue
        check_keys(problems, spec, ("base_models", "declared_flop", "role", "systemic_risk"),
                   where)
        role = spec.get("role", "provider")
        if role not in ("provider", "modifier"):
            problems.add(f"{where}.role", "\"provider\" or \"modifier\"")
            role = "provider"
        systemic = spec.get("systemic_risk")
        if systemic is not None and not isinstance(systemic, bool):
            problems.add(f"{where}.systemic_risk", "true or false")
            systemic = None
        bases = spec.get("base_models", [])
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            problems.add(f"{where}.base_models", "a list of model names")
            bases = []
        declared: Flop | None = None
        if "declared_flop" in spec:
            d = spec["declared_flop"]
            if isinstance(d, int | float) and not isinstance(d, bool) and d >= 0:
                declared = Flop(int(d), int(d), int(d))
            elif isinstance(d, dict) and all(
                isinstance(d.get(k), int | float) and d.get(k, -1) >= 0
                for k in ("low", "central", "high")
            ) and d["low"] <= d["central"] <= d["high"]:
                declared = Flop(int(d["low"]), int(d["central"]), int(d["high"]))
            else:
                problems.add(f"{where}.declared_flop", "a number of FLOP or { low, central, "
                             "high } with low <= central <= high")
        models[name] = ModelInfo(name, tuple(bases), declared, role, systemic)
    return models


@dataclass(slots=True)
class Lineage:
    """Models known from the config and from run metadata, with cycle-safe lookups."""

    models: dict[str, ModelInfo] = field(default_factory=dict)

    def add_bases(self, model: str, bases: Iterable[str]) -> None:
        """Merge base models a run declared (``FLOPLEDGER_BASE_MODELS``) into the lineage."""
        current = self.models.get(model, ModelInfo(model))
        merged = tuple(dict.fromkeys([*current.base_models, *bases]))
        self.models[model] = replace(current, base_models=merged)

    def ancestors(self, model: str) -> list[str]:
        """Every model ``model``'s weights descend from, each once, nearest first."""
        seen: list[str] = []
        frontier = list(self.models.get(model, ModelInfo(model)).base_models)
        while frontier:
            name = frontier.pop(0)
            if name == model or name in seen:
                continue
            seen.append(name)
            frontier.extend(self.models.get(name, ModelInfo(name)).base_models)
        return seen


def model_totals(model: str, runs: Iterable[RunFigures], lineage: Lineage,
                 scopes: Mapping[str, Scope]) -> dict[str, Flop]:
    """A model's FLOP per scope: its own runs' in-scope compute, plus its ancestors'
    (their runs here, or their declared compute) where the scope inherits."""
    by_model: dict[str, list[RunFigures]] = {}
    for r in runs:
        by_model.setdefault(r.model, []).append(r)

    def own(name: str, scope: Scope) -> Flop:
        total = Flop.exact(0)
        for r in by_model.get(name, []):
            if scope.counts(r.run, r.category):
                total = total + r.flop
        if name not in by_model:
            declared = lineage.models.get(name, ModelInfo(name)).declared_flop
            if declared is not None:
                total = total + declared
        return total

    out: dict[str, Flop] = {}
    for scope in scopes.values():
        total = own(model, scope)
        if scope.inherit:
            for ancestor in lineage.ancestors(model):
                total = total + own(ancestor, scope)
        out[scope.name] = total
    return out


@dataclass(frozen=True, slots=True)
class ModelView:
    """Runs, lineage and scopes read together from a ledger and the config: what
    ``flopledger models``, the threshold evaluator and reports need of every model."""

    lineage: Lineage
    scopes: Mapping[str, Scope]
    runs: tuple[RunFigures, ...]
    summaries: Mapping[str, RunSummary]

    def model_names(self) -> list[str]:
        return sorted({r.model for r in self.runs if r.model} | set(self.lineage.models))

    def totals(self, model: str) -> dict[str, Flop]:
        return model_totals(model, self.runs, self.lineage, self.scopes)


def model_view(models: Mapping[str, ModelInfo], scopes: Mapping[str, Scope],
               summaries: Mapping[str, RunSummary]) -> ModelView:
    """The configured ``[models.*]`` lineage, merged with the base models each run
    declared, and every run's figures."""
    lineage = Lineage(dict(models))
    runs = []
    for s in summaries.values():
        bases = s.meta.get("base_models")
        if isinstance(bases, list):
            lineage.add_bases(s.model, [str(b) for b in bases])
        runs.append(RunFigures(s.run, s.model, s.category, s.flop))
    return ModelView(lineage, scopes, tuple(runs), summaries)


def load_model_view(models: Mapping[str, ModelInfo], thresholds_file: Path | None,
                    ledger_path: Path) -> ModelView:
    """Raises: LedgerNotFoundError, ConfigError (thresholds file)."""
    return model_view(models, load_scopes(thresholds_file), run_summaries(ledger_path))
