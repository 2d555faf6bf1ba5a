"""The release gate: may this model be released in this mode, on the ledger's evidence?

A release policy (TOML, see docs/release-gate.md) lists tiers from the most capable
down. A tier is reached through a regime of the threshold registry (the model's total in
the regime's scope, at the policy's estimate, at or above the regime's threshold; for a
fraction-of-base regime, the threshold the registry's evaluation gives this model) or
through its own ``min_flop`` in a named scope. The model's tier is the first it reaches,
else the policy's ``[default]``. Each tier allows some release modes, ordered from the
least to the most restricted (:data:`MODES`), and requires evaluations per mode; an
evaluation may set a ``min_score``.

The decision (:func:`decide`): exit 0 when the requested mode is allowed and every
evaluation it requires has a latest attestation that passes; 3 when the mode is not
allowed (the least restricted allowed mode that is more restricted than the one asked
for is named, with the evaluations it needs); 4 when evaluations are missing or failed,
or when part of the model's compute is of unknown amount and could place it in a more
capable tier than the one its measured compute reaches.

An unknown amount never counts as less: records not yet under a signed head are
counted, and with them, or with compute of unknown amount, the high end of the band is
used whatever the policy's estimate. Nothing here reads the ledger; the policy file is
the only file read.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import figures
from agent.accounting.names import name_problem, printable
from agent.accounting.records import LedgerRecord, is_compute
from agent.compliance.attestations import KIND, Attestation, Attested, from_statement
from agent.compliance.evaluate import is_systemic
from agent.compliance.lineage import Flop, ModelInfo, model_view
from agent.compliance.thresholds import MAX_FLOP, Registry, Subject, regime_threshold
from agent.configfile import (
    ConfigError,
    Problems,
    check_keys,
    drop_bad_values,
    in_range,
    is_number,
    range_text,
)
from agent.ledger.query import RunSummary, spec_basis

# Release modes, from the least to the most restricted (Seger et al. 2023).
MODES = ("open-weights", "staged", "structured-access", "internal")
ESTIMATES = ("low", "central", "high")
DECISION_FORMAT = "flopledger-gate-1"

EXIT_ALLOWED = 0
EXIT_NOT_ALLOWED = 3
EXIT_EVALUATIONS = 4

_POLICY_KEYS = ("description", "estimate", "default", "tiers", "evaluations")
_TIER_KEYS = ("name", "description", "regime", "min_flop", "scope", "modes", "evaluations")
_DEFAULT_KEYS = ("name", "description", "modes", "evaluations")
_EVALUATION_KEYS = ("description", "min_score")
_MAX_SCORE = 1e300


@dataclass(frozen=True, slots=True)
class EvaluationRule:
    """``[evaluations.NAME]``: what passing means beyond a ``pass`` result."""

    name: str
    min_score: float | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class Tier:
    """One tier of a policy (or its ``[default]``: no ``regime``, no ``min_flop``)."""

    name: str
    modes: tuple[str, ...]
    evaluations: Mapping[str, tuple[str, ...]]  # mode -> required evaluation names
    regime: str | None = None
    min_flop: float | None = None
    scope: str | None = None
    description: str = ""

    def required(self, mode: str) -> tuple[str, ...]:
        return self.evaluations.get(mode, ())


@dataclass(frozen=True, slots=True)
class Policy:
    path: Path
    sha256: str
    estimate: str
    tiers: tuple[Tier, ...]
    default: Tier
    evaluations: Mapping[str, EvaluationRule]
    description: str = ""

    def rule(self, evaluation: str) -> EvaluationRule:
        return self.evaluations.get(evaluation, EvaluationRule(evaluation))


def mode_rank(mode: str) -> int:
    return MODES.index(mode)


def load_policy(path: Path, registry: Registry) -> Policy:
    """Read and check a policy file against the threshold registry.

    Raises:
        ConfigError: naming the file, every bad key and what was expected.
    """
    what = "a release policy in TOML"
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(path, [("-", f"{what} (not found)")]) from e
    except OSError as e:
        raise ConfigError(path, [("-", f"{what} ({e.strerror or e})")]) from e
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(path, [("-", f"valid TOML in UTF-8 (byte {e.start} is not "
                                       "UTF-8)")]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [("-", f"valid TOML: {e}")]) from e
    except (RecursionError, ValueError) as e:
        raise ConfigError(path, [("-", f"valid TOML ({e})")]) from e
    return parse_policy(raw, registry, path, hashlib.sha256(data).hexdigest())


def parse_policy(raw: Mapping[str, Any], registry: Registry, path: Path,
                 sha256: str = "") -> Policy:
    """Check a parsed policy; every problem is reported at once.

    Raises:
        ConfigError: naming the file, every bad key and what was expected.
    """
    problems = Problems(path)
    doc = drop_bad_values(problems, raw)
    check_keys(problems, doc, _POLICY_KEYS)
    estimate = doc.get("estimate", "high")
    if estimate not in ESTIMATES:
        problems.add("estimate", f"one of {list(ESTIMATES)}")
        estimate = "high"
    description = _text(problems, doc, "description", "")
    rules = _parse_rules(problems, doc.get("evaluations", {}))
    default_raw = doc.get("default")
    if not isinstance(default_raw, dict):
        problems.add("default", "a [default] table: the modes and evaluations of a model "
                                "that reaches no tier")
        default_raw = {"modes": list(MODES)}
    default = _parse_tier(problems, "default", default_raw, registry, is_default=True)
    tiers: list[Tier] = []
    tiers_raw = doc.get("tiers", [])
    if not isinstance(tiers_raw, list):
        problems.add("tiers", "a list of [[tiers]] tables, the most capable first")
        tiers_raw = []
    for i, spec in enumerate(tiers_raw):
        where = f"tiers[{i}]"
        if not isinstance(spec, dict):
            problems.add(where, "a [[tiers]] table")
            continue
        tiers.append(_parse_tier(problems, where, spec, registry, is_default=False))
    names = [t.name for t in tiers] + [default.name]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.add("tiers", f"tier names used once each ({name!r} is used twice)")
    problems.raise_if_any()
    return Policy(path, sha256, str(estimate), tuple(tiers), default, rules, description)


def _text(problems: Problems, table: Mapping[str, Any], key: str, default: str,
          where: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        problems.add(f"{where}.{key}" if where else key, "a string")
        return default
    return value


def _name(problems: Problems, where: str, value: object, what: str) -> str | None:
    if not isinstance(value, str):
        problems.add(where, what)
        return None
    problem = name_problem(value)
    if problem is not None:
        problems.add(where, f"{what} (it {problem})")
        return None
    return value


def _parse_rules(problems: Problems, table: object) -> dict[str, EvaluationRule]:
    if not isinstance(table, dict):
        problems.add("evaluations", "a table of [evaluations.<name>]")
        return {}
    rules: dict[str, EvaluationRule] = {}
    for name, spec in table.items():
        where = f"evaluations.{name}"
        if _name(problems, where, name, "an evaluation name") is None:
            continue
        if not isinstance(spec, dict):
            problems.add(where, "a table with min_score and/or description")
            continue
        check_keys(problems, spec, _EVALUATION_KEYS, where)
        min_score = spec.get("min_score")
        if min_score is not None and not in_range(min_score, -_MAX_SCORE, _MAX_SCORE):
            problems.add(f"{where}.min_score", "a finite number")
            min_score = None
        rules[name] = EvaluationRule(name, float(min_score) if min_score is not None else None,
                                     _text(problems, spec, "description", "", where))
    return rules


def _parse_modes(problems: Problems, where: str, value: object) -> tuple[str, ...]:
    expected = f"a non-empty list of release modes, each once, of {list(MODES)}"
    if (not isinstance(value, list) or not value or any(m not in MODES for m in value)
            or len(set(value)) != len(value)):
        problems.add(f"{where}.modes", expected)
        return ()
    return tuple(sorted(value, key=mode_rank))


def _parse_names(problems: Problems, where: str, value: object) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        problems.add(where, "a list of evaluation names")
        return None
    names = []
    for i, item in enumerate(value):
        name = _name(problems, f"{where}[{i}]", item, "an evaluation name")
        if name is not None and name not in names:
            names.append(name)
    return tuple(names)


def _parse_evaluations(problems: Problems, where: str, value: object,
                       modes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """A list (required for every allowed mode) or a table {mode -> list}."""
    where = f"{where}.evaluations"
    if value is None:
        return {}
    if isinstance(value, list):
        names = _parse_names(problems, where, value)
        return {m: names for m in modes} if names else {}
    if not isinstance(value, dict):
        problems.add(where, "a list of evaluation names, or a table of release mode -> list "
                            "of evaluation names")
        return {}
    out: dict[str, tuple[str, ...]] = {}
    for mode, names_raw in value.items():
        if mode not in MODES:
            problems.add(f"{where}.{mode}", f"a release mode, one of {list(MODES)}")
            continue
        if modes and mode not in modes:
            problems.add(f"{where}.{mode}", f"a mode this tier allows ({', '.join(modes)})")
            continue
        names = _parse_names(problems, f"{where}.{mode}", names_raw)
        if names:
            out[mode] = names
    return out


def _parse_tier(problems: Problems, where: str, spec: Mapping[str, Any], registry: Registry,
                *, is_default: bool) -> Tier:
    check_keys(problems, spec, _DEFAULT_KEYS if is_default else _TIER_KEYS, where)
    name: str | None = "default"
    if "name" in spec or not is_default:
        name = _name(problems, f"{where}.name", spec.get("name"), "a tier name")
    modes = _parse_modes(problems, where, spec.get("modes"))
    evaluations = _parse_evaluations(problems, where, spec.get("evaluations"), modes)
    description = _text(problems, spec, "description", "", where)
    tier = Tier(name or where, modes, evaluations, description=description)
    if is_default:
        return tier
    regime_key, min_flop, scope = spec.get("regime"), spec.get("min_flop"), spec.get("scope")
    if regime_key is not None:
        if min_flop is not None or scope is not None:
            problems.add(where, "either regime, or min_flop with scope (not both: a regime "
                                "has its own scope)")
        regime = registry.regimes.get(regime_key) if isinstance(regime_key, str) else None
        if regime is None:
            problems.add(f"{where}.regime", f"one of the regimes of {registry.path}: "
                                            f"{sorted(registry.regimes)}")
        elif regime.threshold_flop is None and regime.threshold_fraction_of_base is None:
            problems.add(f"{where}.regime", f"a regime with a FLOP threshold ({regime.key} "
                                            "has only a cost threshold)")
        elif "model" not in regime.subjects:
            problems.add(f"{where}.regime", f"a regime evaluated for models ({regime.key} is "
                                            f"evaluated for {', '.join(regime.subjects)})")
        return Tier(tier.name, modes, evaluations, regime=str(regime_key),
                    description=description)
    if min_flop is None:
        problems.add(where, 'regime = "<key of the threshold registry>", or min_flop = X '
                            'with scope = "<scope>"')
        return tier
    if not in_range(min_flop, 0, MAX_FLOP, above=True):
        problems.add(f"{where}.min_flop", range_text("a number of FLOP", 0, MAX_FLOP,
                                                     above=True))
        min_flop = None
    if not isinstance(scope, str) or scope not in registry.scopes:
        problems.add(f"{where}.scope", f"one of the scopes of {registry.path}: "
                                       f"{sorted(registry.scopes)}")
        scope = None
    return Tier(tier.name, modes, evaluations,
                min_flop=float(min_flop) if is_number(min_flop) else None, scope=scope,
                description=description)


# ---------------------------------------------------------------------------------------
# What the gate knows of a model's compute.


@dataclass(frozen=True, slots=True)
class ModelFigures:
    """A model's compute as the regimes see it.

    Attributes:
        subject: the model's FLOP per scope (with lineage), role and base figures.
        ancestors: the models its weights descend from, nearest first.
        own_records: compute records of the model itself.
        unsealed_records: records of the model and its ancestors that no signed head
            covers yet; counted in ``subject``.
        unmeasured: why part of its compute is of unknown amount (empty: none is).
    """

    subject: Subject
    ancestors: tuple[str, ...] = ()
    own_records: int = 0
    unsealed_records: int = 0
    unmeasured: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        return self.subject.name


def model_figures(model: str, sealed: Iterable[LedgerRecord],
                  unsealed: Iterable[LedgerRecord],
                  run_meta: Mapping[str, Mapping[str, object]],
                  models: Mapping[str, ModelInfo], registry: Registry) -> ModelFigures:
    """The figures of ``model`` from records already read (a ledger's sealed and
    unsealed records, or a bundle's), the runs' declared metadata and the config's
    ``[models.*]`` lineage; the same model view ``flopledger models`` and ``report``
    use, with the base figures the threshold evaluation uses."""
    sealed_rows = [r for r in sealed if is_compute(r)]
    unsealed_rows = [r for r in unsealed if is_compute(r)]
    summaries: dict[str, RunSummary] = {}
    for r in [*sealed_rows, *unsealed_rows]:
        summaries.setdefault(r.run, RunSummary(r.run)).add(r)
    for name, summary in summaries.items():
        summary.meta = dict(run_meta.get(name, {}))

    def counted(family: frozenset[str]) -> FamilyCounts:
        counts = FamilyCounts.of(model, family, sealed_rows)
        counts.add(model, family, unsealed_rows, unsealed=True)
        return counts

    return figures_of(model, summaries, models, registry, counted)


@dataclass(slots=True)
class FamilyCounts:
    """What the gate counts of the compute records of a model and its ancestors.

    Attributes:
        own: records of the model itself.
        unsealed: records of the family no signed head covers yet.
        blind: records of the family on GPUs with no spec at all (counted as 0 FLOP).
        measured: the models of the family with at least one record.
    """

    own: int = 0
    unsealed: int = 0
    blind: int = 0
    measured: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, model: str, family: frozenset[str],
           records: Iterable[LedgerRecord]) -> FamilyCounts:
        counts = cls()
        counts.add(model, family, records)
        return counts

    def add(self, model: str, family: frozenset[str], records: Iterable[LedgerRecord], *,
            unsealed: bool = False) -> None:
        """Count ``records`` (a stream will do; those outside ``family`` are skipped)."""
        for r in records:
            if r.model not in family:
                continue
            self.measured.add(r.model)
            self.own += r.model == model
            self.unsealed += unsealed
            self.blind += spec_basis(r) == "none"


def figures_of(model: str, summaries: Mapping[str, RunSummary],
               models: Mapping[str, ModelInfo], registry: Registry,
               counted: Callable[[frozenset[str]], FamilyCounts]) -> ModelFigures:
    """The figures of ``model`` from every run's sums with its declared metadata
    (``summaries``: a node's, summed from its records, or the cluster store's kept
    totals) and the counts of the records of the model and its ancestors, which
    ``counted`` gives once the lineage names them."""
    view = model_view(models, registry.scopes, summaries)
    lineage = view.lineage
    info = lineage.models.get(model, ModelInfo(model))
    ancestors = tuple(lineage.ancestors(model))
    base_flop: dict[str, Flop | None] = {}
    for scope in registry.scopes:
        known = [view.totals(b)[scope] for b in info.base_models]
        known = [b for b in known if b.high > 0]
        base_flop[scope] = max(known, key=lambda f: f.low) if known else None
    base_systemic = any(is_systemic(lineage.models.get(b, ModelInfo(b)), view.totals(b),
                                     registry) for b in info.base_models)
    subject = Subject("model", model, view.totals(model), {}, info.role, base_flop,
                      base_systemic)
    counts = counted(frozenset({model, *ancestors}))
    unmeasured = []
    if not counts.own and info.declared_flop is None:
        unmeasured.append(f"no compute records for {model}")
    for name in ancestors:
        if name not in counts.measured and lineage.models.get(
                name, ModelInfo(name)).declared_flop is None:
            unmeasured.append(f"base model {name}: no compute records here and no "
                              f"declared_flop ([models.\"{name}\"] in the agent config)")
    if counts.blind:
        unmeasured.append(f"{counts.blind} record(s) of {model} or its base models rest on "
                          "GPUs with no spec at all (counted as 0 FLOP)")
    return ModelFigures(subject, ancestors, counts.own, counts.unsealed, tuple(unmeasured))


# ---------------------------------------------------------------------------------------
# Attestations recorded on several nodes (the cluster store).


@dataclass(frozen=True, slots=True)
class NodeAttestation(Attestation):
    """An attestation read from the cluster store: the node whose ledger recorded it,
    and when that node recorded it (its statement's time, by the node's clock)."""

    node: str = ""
    recorded_ns: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**Attestation.to_json(self), "node": self.node,
                "recorded_ns": self.recorded_ns}


def record_text(a: Attestation) -> str:
    """``record 12``, or ``record 12 of node node-1`` for one of the cluster store."""
    if isinstance(a, NodeAttestation):
        return f"record {a.seq} of node {printable(a.node)}"
    return f"record {a.seq}"


def latest_across_nodes(records: Iterable[LedgerRecord], model: str) -> Attested:
    """Per evaluation, the latest attestation of ``model`` among statements recorded on
    several nodes: ordered by (the time the node recorded it, node, record number).

    A node's record numbers order its own statements only; the nodes share no sequence,
    so the time their agents recorded each statement is the order they have in common
    (the node's clock, not the attester's: as a record number, it is the node's word,
    signed under its head). The node's name, then the record number, break a tie the
    same way on every read.
    """
    latest: dict[str, tuple[tuple[int, str, int], NodeAttestation]] = {}
    malformed: list[str] = []
    for record in records:
        if record.kind != KIND or record.model != model:
            continue
        try:
            a = from_statement(record)
        except ValueError as e:
            malformed.append(f"node {record.node}: {e}")
            continue
        here = NodeAttestation(a.model, a.evaluation, a.result, a.score, a.evidence, a.by,
                               a.time_ns, a.message_id, a.seq, record.node, record.start_ns)
        order = (record.start_ns, record.node, record.seq)
        current = latest.get(a.evaluation)
        if current is None or order > current[0]:
            latest[a.evaluation] = (order, here)
    return Attested({name: a for name, (_, a) in sorted(latest.items())}, tuple(malformed))


# ---------------------------------------------------------------------------------------
# Placement and decision.


@dataclass(frozen=True, slots=True)
class TierCheck:
    """Whether the model reaches one tier, and on what figures."""

    tier: Tier
    reached: bool
    threshold_flop: float | None  # None: the tier's regime does not apply to this model
    scope: str
    total: Flop
    title: str  # the regime's title, or "min_flop"
    note: str = ""

    def to_json(self, estimate: str) -> dict[str, Any]:
        return {"tier": self.tier.name, "reached": self.reached,
                "regime": self.tier.regime, "title": self.title,
                "min_flop": self.tier.min_flop, "threshold_flop": self.threshold_flop,
                "comparison": "at or above", "scope": self.scope,
                # Floats: whole FLOP of a frontier model run to 27 digits, more than a
                # spool message's integers may hold; the exact figures are the ledger's.
                "total": {"low": float(self.total.low), "central": float(self.total.central),
                          "high": float(self.total.high)},
                "value": float(getattr(self.total, estimate)), "estimate": estimate,
                "note": self.note}

    def text(self, estimate: str) -> str:
        total = self.total
        band = figures.band(total.low, total.central, total.high)
        basis = (f"{self.title} ({self.tier.regime})" if self.tier.regime
                 else f"min_flop {figures.flop(self.tier.min_flop or 0)}")
        if self.threshold_flop is None:
            return (f"{self.tier.name}: {basis} does not apply to this model "
                    f"({self.note}); scope {self.scope}, total {band}")
        verb = "reached" if self.reached else "not reached"
        note = f"; {self.note}" if self.note else ""
        return (f"{self.tier.name}: {verb}: {basis}, threshold {figures.flop(self.threshold_flop)}"
                f" FLOP (at or above) in scope {self.scope}; the model's total {band} "
                f"(central [low .. high]), {estimate} end "
                # Three significant figures: the band above is rounded outwards to two.
                f"{float(getattr(total, estimate)):.3g} used{note}")


def check_tier(tier: Tier, fig: ModelFigures, registry: Registry, estimate: str) -> TierCheck:
    """Whether ``fig`` reaches ``tier`` at ``estimate`` (at or above its threshold)."""
    if tier.regime is None:
        scope = tier.scope or ""
        total = fig.subject.flop.get(scope, Flop.exact(0))
        floor = tier.min_flop or 0.0
        return TierCheck(tier, float(getattr(total, estimate)) >= floor, floor, scope, total,
                         "min_flop")
    regime = registry.regimes[tier.regime]
    total = fig.subject.flop.get(regime.scope, Flop.exact(0))
    threshold = regime_threshold(regime, fig.subject)
    if threshold is None:
        role = fig.subject.role
        why = (f"it concerns models of role {regime.applies_to}, this one's is {role}"
               if role != regime.applies_to else "its base model is not of systemic risk")
        return TierCheck(tier, False, None, regime.scope, total, regime.title, why)
    note = ""
    if regime.threshold_fraction_of_base is not None:
        base = (fig.subject.base_flop.get(regime.base_scope)
                if regime.base_scope is not None else None)
        note = (f"{regime.threshold_fraction_of_base:.3g} of the base model's low bound "
                f"{figures.flop(base.low)}" if base is not None and base.low > 0 else
                "the registry's fallback: the base model's compute is unknown")
    return TierCheck(tier, float(getattr(total, estimate)) >= threshold, threshold,
                     regime.scope, total, regime.title, note)


@dataclass(frozen=True, slots=True)
class Finding:
    """One required evaluation, judged on its latest attestation."""

    evaluation: str
    status: str  # passes | missing | failed | below-min | no-score | no-min
    attestation: Attestation | None
    min_score: float | None

    @property
    def passes(self) -> bool:
        return self.status == "passes"

    def short(self) -> str:
        """``NAME missing``, ``NAME failed``, ``NAME score below min (0.6 < 0.8)``..."""
        a, name, bar = self.attestation, self.evaluation, self.min_score
        if self.status == "below-min" and a is not None and a.score is not None \
                and bar is not None:
            return f"{name} score below min ({a.score:g} < {bar:g})"
        if self.status == "no-score" and bar is not None:
            return f"{name} has no score (the policy requires a score >= {bar:g})"
        if self.status == "no-min":
            return f"{name} is a score, but the policy sets no min_score for it to pass"
        return f"{name} {self.status}"

    def text(self) -> str:
        a = self.attestation
        if a is None:
            return f"{self.evaluation}: missing (no attestation)"
        result = f"score {a.score:g}" if a.score is not None else a.result
        return (f"{self.short()}: {result} by {printable(a.by)}, evidence "
                f"{printable(a.evidence, 400)}, {record_text(a)}")

    def to_json(self) -> dict[str, Any]:
        return {"evaluation": self.evaluation, "status": self.status,
                "min_score": self.min_score,
                "attestation": self.attestation.to_json() if self.attestation else None}


def judge(rule: EvaluationRule, attestation: Attestation | None) -> Finding:
    """Whether an evaluation passes: a ``pass`` result, or with a ``min_score`` in the
    policy, a score at or above it (a bare ``pass`` then carries no score to hold to
    it, and does not pass)."""
    if attestation is None:
        return Finding(rule.name, "missing", None, rule.min_score)
    if attestation.result == "fail":
        status = "failed"
    elif rule.min_score is None:
        # Without a bar in the policy a score is a measurement, not a verdict.
        status = "passes" if attestation.result == "pass" else "no-min"
    elif attestation.score is None:
        status = "no-score"
    else:
        status = "passes" if attestation.score >= rule.min_score else "below-min"
    return Finding(rule.name, status, attestation, rule.min_score)


@dataclass(frozen=True, slots=True)
class Decision:
    """The gate's answer and everything it rests on."""

    model: str
    mode: str
    exit_code: int
    verdict: str  # allowed | mode-not-allowed | evaluations-missing | unmeasured
    headline: str
    policy: Policy
    tier: Tier
    checks: tuple[TierCheck, ...]
    estimate: str
    estimate_reason: str
    figures: ModelFigures
    findings: tuple[Finding, ...] = ()
    suggested_mode: str | None = None
    suggested: tuple[Finding, ...] = ()
    attested: Attested = field(default_factory=lambda: Attested({}))
    allow_unmeasured: bool = False

    def to_json(self) -> dict[str, Any]:
        fig = self.figures
        return {
            "format": DECISION_FORMAT, "model": self.model, "mode": self.mode,
            "exit_code": self.exit_code, "verdict": self.verdict, "headline": self.headline,
            "policy": {"path": str(self.policy.path), "sha256": self.policy.sha256},
            "tier": {"name": self.tier.name, "modes": list(self.tier.modes),
                     "required": list(self.tier.required(self.mode))},
            "estimate": self.estimate, "estimate_reason": self.estimate_reason,
            "checks": [c.to_json(self.estimate) for c in self.checks],
            "ancestors": list(fig.ancestors), "own_records": fig.own_records,
            "unsealed_records": fig.unsealed_records, "unmeasured": list(fig.unmeasured),
            "allow_unmeasured": self.allow_unmeasured,
            "evaluations": [f.to_json() for f in self.findings],
            "missing": [f.evaluation for f in self.findings if not f.passes],
            "suggested_mode": self.suggested_mode,
            "suggested_evaluations": [f.to_json() for f in self.suggested],
            "attestations": [a.to_json() for a in self.attested.latest.values()],
            "malformed_attestations": list(self.attested.malformed),
        }

    def lines(self) -> list[str]:
        """The justification, one fact a line."""
        out = [f"policy    {printable(str(self.policy.path), 400)} (sha256 "
               f"{self.policy.sha256[:16]}...)"]
        if any(c.reached for c in self.checks):
            out.append(f"tier      {self.tier.name}: the first tier the model reaches (tiers "
                       "checked from the most capable down)")
        else:
            out.append(f"tier      {self.tier.name}: the policy's default; the model reaches "
                       "no tier")
        for c in self.checks:
            out.append(f"          {c.text(self.estimate)}")
        out.append(f"estimate  {self.estimate_reason}")
        if self.figures.ancestors:
            out.append(f"lineage   descends from {printable(', '.join(self.figures.ancestors))}")
        for why in self.figures.unmeasured:
            out.append(f"UNMEASURED {printable(why, 400)}")
        out.append(f"modes     {self.tier.name} allows {', '.join(self.tier.modes)}")
        for a in self.attested.latest.values():
            result = f"score {a.score:g}" if a.score is not None else a.result
            out.append(f"attested  {printable(a.evaluation)}: {result} by {printable(a.by)}, "
                       f"evidence {printable(a.evidence, 400)}, {record_text(a)}")
        for bad in self.attested.malformed:
            out.append(f"WARNING   not counted: {printable(bad, 400)}")
        for f in self.findings:
            out.append(f"required  {printable(f.text(), 800)}")
        if self.suggested_mode is not None:
            out.append(f"instead   {self.suggested_mode}, which needs "
                       + ("no evaluation" if not self.suggested else
                          f"{len(self.suggested)} evaluation(s):"))
            for f in self.suggested:
                out.append(f"          {printable(f.text(), 800)}")
        word = {EXIT_ALLOWED: "ALLOWED", EXIT_NOT_ALLOWED: "NOT ALLOWED"}.get(
            self.exit_code, "BLOCKED")
        out.append(f"decision  {word} (exit {self.exit_code}): {printable(self.headline, 800)}")
        return out


def choose_estimate(policy: Policy, fig: ModelFigures) -> tuple[str, str]:
    """The end of the band the tiers are judged at, and why."""
    if fig.unsealed_records:
        return "high", (f"high: {fig.unsealed_records} record(s) of the model or its base "
                        "models are not yet under a signed head; they are counted, at the "
                        f"conservative end (the policy's estimate is {policy.estimate})")
    if fig.unmeasured:
        return "high", ("high: part of the compute is of unknown amount, so the conservative "
                        f"end is used (the policy's estimate is {policy.estimate})")
    return policy.estimate, f"{policy.estimate}: the policy's estimate"


def decide(policy: Policy, registry: Registry, fig: ModelFigures, mode: str,
           attested: Attested, *, allow_unmeasured: bool = False) -> Decision:
    """The decision for releasing ``fig``'s model in ``mode``.

    Raises:
        ValueError: for a mode not in :data:`MODES`.
    """
    if mode not in MODES:
        raise ValueError(f"release mode {mode!r}: expected one of {', '.join(MODES)}")
    estimate, estimate_reason = choose_estimate(policy, fig)
    checks = tuple(check_tier(t, fig, registry, estimate) for t in policy.tiers)
    reached = next((c for c in checks if c.reached), None)
    tier = reached.tier if reached is not None else policy.default
    model = fig.model

    def made(exit_code: int, verdict: str, headline: str, *,
             findings: tuple[Finding, ...] = (), suggested_mode: str | None = None,
             suggested: tuple[Finding, ...] = ()) -> Decision:
        return Decision(model, mode, exit_code, verdict, headline, policy, tier, checks,
                        estimate, estimate_reason, fig, findings, suggested_mode, suggested,
                        attested, allow_unmeasured)

    on_top = bool(checks) and checks[0].reached
    if fig.unmeasured and checks and not on_top and not allow_unmeasured:
        # Compute of unknown amount could reach a more capable tier than the measured.
        return made(EXIT_EVALUATIONS, "unmeasured",
                    f"{fig.unmeasured[0]}: the gate cannot place {model} below any tier (its "
                    f"measured compute reaches {tier.name}); record or declare its compute, "
                    "or pass --allow-unmeasured")
    if mode not in tier.modes:
        stricter = [m for m in tier.modes if mode_rank(m) > mode_rank(mode)]
        suggested = stricter[0] if stricter else None
        headline = (f"mode {mode} is not allowed for tier {tier.name} (allowed: "
                    f"{', '.join(tier.modes)})")
        if suggested is None:
            return made(EXIT_NOT_ALLOWED, "mode-not-allowed",
                        headline + "; no more restricted mode is allowed either")
        needs = tuple(judge(policy.rule(e), attested.latest.get(e))
                      for e in tier.required(suggested))
        names = ", ".join(tier.required(suggested)) or "no evaluation"
        return made(EXIT_NOT_ALLOWED, "mode-not-allowed",
                    f"{headline}; the least restricted allowed mode is {suggested}, which "
                    f"needs {names}", suggested_mode=suggested, suggested=needs)
    findings = tuple(judge(policy.rule(e), attested.latest.get(e))
                     for e in tier.required(mode))
    failing = [f for f in findings if not f.passes]
    if failing:
        listed = "; ".join(f.short() for f in failing)
        return made(EXIT_EVALUATIONS, "evaluations-missing",
                    f"mode {mode} is allowed for tier {tier.name}, but {listed}",
                    findings=findings)
    passed = ", ".join(f.evaluation for f in findings)
    return made(EXIT_ALLOWED, "allowed",
                f"mode {mode} is allowed for tier {tier.name}"
                + (f"; every required evaluation passes ({passed})" if findings
                   else "; it requires no evaluation"), findings=findings)
