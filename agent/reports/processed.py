"""The compute a run's declaration implies for the tokens it has processed so far,
against the compute measured for it up to the same moment.

A trainer that declares its parameter count (and, for the attention term, its layers,
width and context) and reports the tokens it has processed lets the two methods of the
EU Guidelines (Annex A.2) be compared while the run is still going, not only against
its plan: declared = (6 x P + 12 x layers x d_model x context) x D_processed, measured =
the run's records up to the moment the tokens were counted (``progress.updated_ns``;
without it, the end of the last record), a record straddling that moment counted pro
rata of its time. Their difference is a fraction of the measured central figure, as
:func:`agent.compliance.planner.cross_check` takes it, so the 30% flag is the EU's
margin; "within the band" says the declared figure lies inside the measured band.

Read from a run's metadata in the ledger (``plan.*``, ``progress.*``, ``via``), shared by
``flopledger status`` and ``flopledger report``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.accounting.band import Band
from agent.accounting.records import LedgerRecord

__all__ = ["PROCESSED_FLAG", "ProcessedCheck", "ProcessedTotal", "declares_no_params",
           "measured_until", "processed_check"]

# A wall-clock time in int64 nanoseconds (to 2262): a larger one is no time at all.
_MAX_NS = 2**63

# Said wherever the two differ beyond the EU's margin (status, report).
PROCESSED_FLAG = "FLAG: declared and measured compute differ by more than 30%"


def _count(meta: Mapping[str, Any], key: str) -> int | None:
    """A reported count or time: a whole number >= 0 (JSON may give an integral float),
    or None."""
    value = meta.get(key)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if value >= 0 else None


def measured_until(records: Iterable[LedgerRecord], until_ns: int) -> tuple[Band[float], int]:
    """The FLOP band of ``records`` up to ``until_ns`` (a record straddling it counted in
    proportion to its time before it), and the latest moment they cover up to it (0
    without any)."""
    low = central = high = 0.0
    reached = 0
    for r in records:
        if r.start_ns >= until_ns:
            continue
        span = r.end_ns - r.start_ns
        share = 1.0 if r.end_ns <= until_ns or span <= 0 else (until_ns - r.start_ns) / span
        low += r.flop_low * share
        central += r.flop_central * share
        high += r.flop_high * share
        reached = max(reached, min(r.end_ns, until_ns))
    return Band(low, central, high), reached


def _within(value: float, band: Band[float]) -> bool:
    return band.low <= value <= band.high


@dataclass(frozen=True, slots=True)
class ProcessedCheck:
    """One run: its declared compute for the tokens processed so far against the
    measured compute up to the moment they were counted.

    Attributes:
        formula: how ``declared`` was computed (``6 x P x D``, with the attention
            term when the architecture was declared).
        tokens_at_ns: when the tokens were counted (the measured figure's moment).
        measured_until_ns: the latest moment the run's records reach up to then; before
            ``tokens_at_ns`` when the records read do not reach it yet.
        difference: (declared - measured central) / measured central; None when
            nothing was measured up to then.
    """

    run: str
    tokens: int
    params: float
    formula: str
    declared: float
    measured: Band[float]
    tokens_at_ns: int
    measured_until_ns: int
    difference: float | None
    beyond_eu_margin: bool
    within_band: bool

    def to_json(self) -> dict[str, Any]:
        m = self.measured
        return {"run": self.run, "tokens": self.tokens, "params": self.params,
                "formula": self.formula, "declared": self.declared,
                "measured": {"low": m.low, "central": m.central, "high": m.high},
                "tokens_at_ns": self.tokens_at_ns,
                "measured_until_ns": self.measured_until_ns,
                "difference": self.difference, "beyond_eu_margin": self.beyond_eu_margin,
                "within_band": self.within_band}


def _compare(declared: float, measured: Band[float]) -> tuple[float | None, bool, bool]:
    if measured.central <= 0:
        return None, False, _within(declared, measured)
    from agent.compliance.planner import cross_check

    difference, beyond = cross_check(declared, measured.central)
    return difference, beyond, _within(declared, measured)


def _plan(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("plan."): v for k, v in meta.items() if k.startswith("plan.")}


def declares_no_params(meta: Mapping[str, Any]) -> bool:
    """The run declared itself through the client but gave no parameter count, so its
    declared compute cannot be computed."""
    if meta.get("via") != "client":
        return False
    # The declared-compute rules (and the client spool's modules with them) are loaded
    # only for a run that declared itself: ``status`` on other runs does without.
    from agent.accounting.declared import declared_flop

    return declared_flop(_plan(meta), 0) is None


def processed_check(run: str, meta: Mapping[str, Any],
                    records: Sequence[LedgerRecord]) -> ProcessedCheck | None:
    """The check of one run from its metadata and its records; None unless it declared a
    parameter count and reported its processed tokens.

    The declared figure and its formula are the ones the agent exports
    (:func:`agent.accounting.declared.declared_flop`)."""
    tokens = _count(meta, "progress.tokens")
    # No token counted yet (a trainer that reports steps only) is not zero compute.
    if not tokens:
        return None
    from agent.accounting.declared import declared_flop

    implied = declared_flop(_plan(meta), tokens)
    if implied is None:
        return None
    declared, formula = implied
    at_ns = _count(meta, "progress.updated_ns") or 0
    if not 0 < at_ns < _MAX_NS:
        at_ns = max((r.end_ns for r in records), default=0)
    measured, reached = measured_until(records, at_ns)
    difference, beyond, within = _compare(declared, measured)
    return ProcessedCheck(run, tokens, float(meta["plan.params"]), formula, declared,
                          measured, at_ns, reached, difference, beyond, within)


@dataclass(frozen=True, slots=True)
class ProcessedTotal:
    """The checks of several runs summed: declared against measured, as one."""

    declared: float
    measured: Band[float]
    difference: float | None
    beyond_eu_margin: bool
    within_band: bool

    @classmethod
    def of(cls, checks: Iterable[ProcessedCheck]) -> ProcessedTotal:
        rows = list(checks)
        declared = math.fsum(c.declared for c in rows)
        measured = Band(math.fsum(c.measured.low for c in rows),
                        math.fsum(c.measured.central for c in rows),
                        math.fsum(c.measured.high for c in rows))
        return cls(declared, measured, *_compare(declared, measured))
