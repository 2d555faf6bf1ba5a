"""The regulatory threshold registry (``agent/data/thresholds.toml``) and its evaluation.

Each regime says what it counts (a scope of run categories, with or without inherited
compute), how it compares (most instruments: strictly greater; Korea: at or above),
whom it concerns (providers, downstream modifiers), and what follows. Evaluation
compares a model's (or a run's) figure with the threshold at configurable warning
levels. The figure used is the high bound by default, so a notification is never late
because the central estimate was optimistic.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.compliance.lineage import Flop, Scope, default_thresholds_path, parse_scopes
from agent.configfile import (
    Problems,
    TableReader,
    check_keys,
    drop_bad_values,
    in_range,
    range_text,
    read_toml,
)

STATUSES = ("in-force", "enacted", "guidance", "proposed", "revoked", "vetoed", "internal")
COMPARISONS = ("gt", "ge")
SUBJECTS = ("model", "run")
ROLES = ("provider", "modifier")
ESTIMATES = ("low", "central", "high")
DEFAULT_LEVELS = (0.5, 0.8, 0.9, 1.0)
# Ranges of the numbers: far beyond any real threshold or schedule, tight enough that a
# typo is refused and no value overflows a wait or a nanosecond count.
MAX_FLOP = 1e40
MAX_USD = 1e15
MAX_USD_PER_GPU_HOUR = 1e4
MAX_DAYS = 3660.0
MAX_EVALUATE_EVERY_S = 86400.0
MIN_EVALUATE_EVERY_S = 0.1
MAX_WINDOW_S = 366 * 86400.0


@dataclass(frozen=True, slots=True)
class Regime:
    """One threshold and what it means."""

    key: str
    title: str
    jurisdiction: str
    scope: str
    comparison: str
    subjects: tuple[str, ...]
    applies_to: str
    status: str
    enabled: bool
    threshold_flop: float | None = None
    threshold_usd: float | None = None
    threshold_fraction_of_base: float | None = None
    base_scope: str | None = None
    fallback_flop: float | None = None
    only_if_base_systemic: bool = False
    obligation: str = ""
    deadline_days: float | None = None
    effective: str = ""
    sources: tuple[str, ...] = ()

    def reached(self, value: float, threshold: float) -> bool:
        """The regime's own comparison: strictly greater, or at or above."""
        return value > threshold if self.comparison == "gt" else value >= threshold


@dataclass(frozen=True, slots=True)
class Registry:
    path: Path
    regimes: Mapping[str, Regime]
    scopes: Mapping[str, Scope]
    usd_per_gpu_hour: float | None

    def enabled(self) -> list[Regime]:
        return [r for r in self.regimes.values() if r.enabled]


@dataclass(frozen=True, slots=True)
class ThresholdSettings:
    """The agent config's ``[thresholds]``: how the agent evaluates the regimes."""

    evaluate_every_s: float = 60.0
    estimate: str = "high"
    levels: tuple[float, ...] = DEFAULT_LEVELS
    window_s: float = 3600.0
    horizon_days: float = 14.0
    # "Will be met" needs a declared plan and this much evidence: the planned runs
    # observed for min_observation_s and holding min_observation_fraction of the
    # threshold, whichever comes later.
    min_observation_s: float = 3600.0
    min_observation_fraction: float = 0.01
    # A "will be met" is resolved once the projection (central) stays below
    # (1 - resolve_margin) x threshold for resolve_after evaluations in a row.
    resolve_margin: float = 0.05
    resolve_after: int = 3


def parse_threshold_settings(raw: Mapping[str, Any], problems: Problems) -> ThresholdSettings:
    """Validate the ``[thresholds]`` table of a parsed agent config; a bad value is
    reported and keeps its default."""
    r = TableReader.section(problems, raw, "thresholds", ThresholdSettings.__dataclass_fields__)
    d = ThresholdSettings()

    def seconds_or_days(key: str, default: float, low: float, high: float, what: str) -> float:
        return float(r.number(key, default, low, high, what=what, above=low == 0))

    estimate = r.get("estimate", str, d.estimate, f"one of {list(ESTIMATES)}")
    if estimate not in ESTIMATES:
        r.add("estimate", f"one of {list(ESTIMATES)}")
        estimate = d.estimate
    levels = r.get("levels", list, list(d.levels), "a list of fractions in (0, 1]")
    if not levels or any(not in_range(x, 0, 1, above=True) for x in levels):
        r.add("levels", "a non-empty list of fractions in (0, 1]")
        levels = list(d.levels)
    return ThresholdSettings(
        evaluate_every_s=seconds_or_days("evaluate_every_s", d.evaluate_every_s,
                                         MIN_EVALUATE_EVERY_S, MAX_EVALUATE_EVERY_S,
                                         "a number of seconds"),
        estimate=estimate,
        levels=tuple(sorted(float(x) for x in levels)),
        window_s=seconds_or_days("window_s", d.window_s, 1, MAX_WINDOW_S, "a number of seconds"),
        horizon_days=seconds_or_days("horizon_days", d.horizon_days, 0, MAX_DAYS,
                                     "a number of days"),
        min_observation_s=float(r.number("min_observation_s", d.min_observation_s, 0,
                                         MAX_WINDOW_S, what="a number of seconds")),
        min_observation_fraction=float(r.number(
            "min_observation_fraction", d.min_observation_fraction, 0, 1,
            what="a fraction of the threshold")),
        resolve_margin=float(r.number("resolve_margin", d.resolve_margin, 0, 0.5,
                                      what="a fraction of the threshold")),
        resolve_after=int(r.number("resolve_after", d.resolve_after, 1, 1000,
                                   what="a whole number of evaluations", integer=True)),
    )


def _parse_regime(problems: Problems, key: str, raw: Any, scopes: Mapping[str, Scope],
                  has_pricing: bool) -> Regime | None:
    where = f"regimes.{key}"
    if not isinstance(raw, dict):
        problems.add(where, "a table")
        return None
    before = len(problems.items)
    reader = TableReader(problems, raw, where,
                         (f for f in Regime.__dataclass_fields__ if f != "key"))
    get = reader.get

    def positive(name: str, high: float) -> float | None:
        value = get(name, (int, float), None, "a positive number")
        if value is not None and not in_range(value, 0, high, above=True):
            problems.add(f"{where}.{name}", range_text("a positive number", 0, high,
                                                       above=True))
            return None
        return float(value) if value is not None else None

    def text(name: str) -> str:
        value = get(name, str, "", "a string")
        return value if isinstance(value, str) else ""

    title = get("title", str, key, "a title")
    scope = get("scope", str, "", f"one of the scopes {sorted(scopes)}")
    if scope not in scopes:
        problems.add(f"{where}.scope", f"one of the scopes {sorted(scopes)}")
    comparison = get("comparison", str, "gt", f"one of {COMPARISONS}")
    if comparison not in COMPARISONS:
        problems.add(f"{where}.comparison", f"one of {COMPARISONS}")
    subjects = get("subjects", list, ["model"], f"a non-empty list of {SUBJECTS}")
    if not subjects or any(s not in SUBJECTS for s in subjects):
        problems.add(f"{where}.subjects", f"a non-empty list of {SUBJECTS}")
    applies_to = get("applies_to", str, "provider", f"one of {ROLES}")
    if applies_to not in ROLES:
        problems.add(f"{where}.applies_to", f"one of {ROLES}")
    status = get("status", str, "", f"one of {STATUSES}")
    if status not in STATUSES:
        problems.add(f"{where}.status", f"one of {STATUSES}")
    enabled = get("enabled", bool, status in ("in-force", "enacted", "guidance", "internal"),
                  "true or false")
    flop = positive("threshold_flop", MAX_FLOP)
    usd = positive("threshold_usd", MAX_USD)
    fraction = positive("threshold_fraction_of_base", 1.0)
    fallback = positive("fallback_flop", MAX_FLOP)
    base_scope = get("base_scope", str, None, f"one of the scopes {sorted(scopes)}")
    if base_scope is not None and base_scope not in scopes:
        problems.add(f"{where}.base_scope", f"one of the scopes {sorted(scopes)}")
    if flop is None and usd is None and fraction is None:
        problems.add(where, "threshold_flop, threshold_usd or threshold_fraction_of_base")
    if fraction is not None and (fallback is None or base_scope is None):
        problems.add(where, "fallback_flop and base_scope with threshold_fraction_of_base")
    if usd is not None and not has_pricing:
        problems.add(f"{where}.threshold_usd", "[pricing] usd_per_gpu_hour to be set")
    deadline = get("deadline_days", (int, float), None, "a number of days >= 0")
    if deadline is not None and not in_range(deadline, 0, MAX_DAYS):
        problems.add(f"{where}.deadline_days", range_text("a number of days", 0, MAX_DAYS))
        deadline = None
    jurisdiction = text("jurisdiction")
    obligation = text("obligation")
    only_if_base_systemic = get("only_if_base_systemic", bool, False, "true or false")
    effective = get("effective", str, "", "a date YYYY-MM-DD")
    if effective:
        try:
            dt.date.fromisoformat(effective)
        except ValueError:
            problems.add(f"{where}.effective", "a date YYYY-MM-DD")
    sources = get("sources", list, [], "a list of URLs")
    if not all(isinstance(s, str) for s in sources):
        problems.add(f"{where}.sources", "a list of URLs")
    if len(problems.items) > before:
        return None
    return Regime(
        key=key, title=title, jurisdiction=jurisdiction, scope=scope,
        comparison=comparison, subjects=tuple(subjects), applies_to=applies_to, status=status,
        enabled=enabled, threshold_flop=flop, threshold_usd=usd,
        threshold_fraction_of_base=fraction, base_scope=base_scope, fallback_flop=fallback,
        only_if_base_systemic=only_if_base_systemic, obligation=obligation,
        deadline_days=float(deadline) if deadline is not None else None,
        effective=effective, sources=tuple(str(s) for s in sources),
    )


def load_registry(path: Path | None = None) -> Registry:
    """Read and validate the thresholds file.

    Raises:
        ConfigError: naming the file and every bad key.
    """
    from agent.accounting.runs import CATEGORIES

    path = path or default_thresholds_path()
    problems = Problems(path)
    raw = drop_bad_values(problems, read_toml(path))
    check_keys(problems, raw, ("scopes", "regimes", "pricing"))
    scopes = parse_scopes(raw, problems, CATEGORIES)
    pricing = TableReader.section(problems, raw, "pricing", ("usd_per_gpu_hour",))
    price = pricing.number("usd_per_gpu_hour", None, 0, MAX_USD_PER_GPU_HOUR,
                           what="a positive number of US dollars", above=True)
    regimes: dict[str, Regime] = {}
    table = raw.get("regimes", {})
    if not isinstance(table, dict):
        problems.add("regimes", "a table of [regimes.<key>]")
        table = {}
    for key, spec in table.items():
        regime = _parse_regime(problems, key, spec, scopes, price is not None)
        if regime is not None:
            regimes[key] = regime
    problems.raise_if_any()
    return Registry(path, regimes, scopes, float(price) if price is not None else None)


@dataclass(frozen=True, slots=True)
class Subject:
    """What a regime is evaluated against: a model (with lineage) or a single run."""

    kind: str  # "model" | "run"
    name: str
    flop: Mapping[str, Flop]  # per scope
    gpu_seconds: Mapping[str, float] = field(default_factory=dict)  # per scope, for cost
    role: str = "provider"
    base_flop: Mapping[str, Flop | None] = field(default_factory=dict)  # per scope, None: unknown
    base_systemic: bool = False


@dataclass(frozen=True, slots=True)
class Assessment:
    """Where one subject stands against one regime."""

    regime: Regime
    subject: Subject
    threshold_flop: float | None
    value: Flop
    fraction: dict[str, float]  # per estimate: low, central, high
    cost_usd: float | None
    cost_fraction: float | None
    levels_reached: tuple[float, ...]
    met: bool
    estimate: str

    @property
    def used_fraction(self) -> float:
        """The fraction that decides notifications (of the chosen estimate)."""
        fractions = [self.fraction[self.estimate]] if self.threshold_flop else []
        if self.cost_fraction is not None:
            fractions.append(self.cost_fraction)
        return min(fractions) if fractions else 0.0


def regime_threshold(regime: Regime, subject: Subject) -> float | None:
    """The FLOP threshold for this subject, or None if the regime does not apply.

    A regime applies to subjects of its role: provider regimes to the models (and runs)
    of providers, modifier regimes to models marked ``role = "modifier"``, whose
    threshold is a fraction of their base model's compute.
    """
    role = subject.role if subject.kind == "model" else "provider"
    if role != regime.applies_to:
        return None
    if regime.threshold_fraction_of_base is None:
        return regime.threshold_flop
    if regime.only_if_base_systemic and not subject.base_systemic:
        return None
    assert regime.base_scope is not None
    base = subject.base_flop.get(regime.base_scope)
    if base is None or base.low <= 0:
        return regime.fallback_flop
    # The base's low bound gives the lower threshold, so a notification is not late
    # for want of a precise base figure.
    return regime.threshold_fraction_of_base * base.low


def assess(regime: Regime, subject: Subject, *, estimate: str = "high",
           levels: Sequence[float] = DEFAULT_LEVELS,
           usd_per_gpu_hour: float | None = None) -> Assessment | None:
    """Evaluate one regime for one subject; None if the regime does not apply to it.

    A warning level L (a fraction of the threshold) is reached when the chosen estimate
    is at or above L x threshold; level 1.0 uses the regime's own comparison, so a
    "strictly greater than" threshold is not met by a figure exactly at it.
    """
    if subject.kind not in regime.subjects:
        return None
    threshold = regime_threshold(regime, subject)
    if threshold is None and regime.threshold_usd is None:
        return None
    value = subject.flop.get(regime.scope, Flop.exact(0))
    fractions = {name: (getattr(value, name) / threshold if threshold else 0.0)
                 for name in ESTIMATES}
    cost = cost_fraction = None
    if regime.threshold_usd is not None and usd_per_gpu_hour is not None:
        cost = subject.gpu_seconds.get(regime.scope, 0.0) / 3600.0 * usd_per_gpu_hour
        cost_fraction = cost / regime.threshold_usd
    chosen = float(getattr(value, estimate))
    # Warning levels are fractions written in decimal (0.8): allow for 0.8 x 1e25 not
    # being exactly 8e24 in binary. Level 1.0 compares exactly, as the law does.
    slack = 1 - 1e-12
    reached = []
    for level in sorted(levels):
        ok_flop = True
        if threshold is not None:
            ok_flop = (regime.reached(chosen, threshold) if level >= 1.0
                       else chosen >= level * threshold * slack)
        ok_cost = True
        if cost is not None and regime.threshold_usd is not None:
            ok_cost = (regime.reached(cost, regime.threshold_usd) if level >= 1.0
                       else cost >= level * regime.threshold_usd * slack)
        if ok_flop and ok_cost:
            reached.append(level)
    met = bool(reached) and reached[-1] >= 1.0
    return Assessment(regime, subject, threshold, value, fractions, cost, cost_fraction,
                      tuple(reached), met, estimate)
