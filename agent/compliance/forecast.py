"""Rates, projected totals and ETAs, from a run's ledger records.

The rate is the compute of the last ``window_s`` divided by that window (or by the
run's age, if younger): a stall of a few minutes moves it by a few percent, not to
zero. A run's projection goes to its planned end, from whichever the run declared
(``FLOPLEDGER_PLAN_*``): an end time, a duration, a GPU count (the measured rate per
GPU times the planned GPUs), or parameters and tokens (6 x P x D as the planned total).
Without a plan, the projection looks ``horizon_s`` ahead; such a projection is shown
as an ETA "at the current rate" and never makes a threshold "known to be met"
(:attr:`RunForecast.planned`). Planned GPUs alone scale the rate but fix no end, so
they do not make a run planned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.accounting.band import Band
from agent.accounting.records import LedgerRecord
from agent.compliance.lineage import Flop

DEFAULT_WINDOW_S = 3600.0
DEFAULT_HORIZON_S = 14 * 86400.0


@dataclass(frozen=True, slots=True)
class RunForecast:
    """Where a run is heading."""

    run: str
    current: Flop
    rate: Band[float]  # FLOP/s
    gpus: int
    first_ns: int
    last_ns: int
    end_ns: int | None  # planned end, None if no plan says
    plan: str  # how the end or total was planned
    planned_total: Flop | None  # from 6 x P x D, when declared

    @property
    def planned(self) -> bool:
        """The run declared where it ends: an end time, a duration, or its size (6PD)."""
        return self.end_ns is not None or self.planned_total is not None

    @property
    def observed_s(self) -> float:
        """How long the ledger has seen the run, first record to last."""
        return max(0.0, (self.last_ns - self.first_ns) / 1e9)

    def remaining_s(self, now_ns: int, horizon_s: float) -> float:
        if self.end_ns is None:
            return horizon_s
        return max(0.0, (self.end_ns - now_ns) / 1e9)


@dataclass(frozen=True, slots=True)
class RunSpan:
    """What a caller that keeps a run's sums knows of all its records: the first
    start, the last end and the total."""

    first_ns: int
    last_ns: int
    flop: Flop


def _number(plan: Mapping[str, object], key: str) -> float | None:
    value = plan.get(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) and number > 0 else None
    return None


def run_forecast(run: str, records: Iterable[LedgerRecord], plan: Mapping[str, object],
                 now_ns: int, window_s: float = DEFAULT_WINDOW_S, *,
                 known: RunSpan | None = None) -> RunForecast:
    """The rate of the run over the last ``window_s`` and its planned end.

    ``records`` are the run's records; with ``known`` (the run's first start, last end
    and total, kept by the caller) only those that end after ``now_ns - window_s`` are
    needed: older ones change nothing here but those three figures.
    """
    rows = list(records)
    if known is not None:
        first, last, current = known.first_ns, known.last_ns, known.flop
    elif not rows:
        return RunForecast(run, Flop.exact(0), Band.exact(0.0), 0, 0, 0, None, "none", None)
    else:
        first = min(r.start_ns for r in rows)
        last = max(r.end_ns for r in rows)
        current = sum((r.flop for r in rows), Flop.exact(0))
    window_start = max(first, now_ns - round(window_s * 1e9))
    span_s = max(1.0, (min(now_ns, last) - window_start) / 1e9) if last > window_start else 0.0
    in_window = Band.exact(0.0)
    gpus: set[str] = set()
    for r in rows:
        if r.end_ns <= window_start:
            continue
        # A record straddling the window start counts pro rata.
        share = 1.0
        if r.start_ns < window_start < r.end_ns:
            share = (r.end_ns - window_start) / (r.end_ns - r.start_ns)
        in_window = in_window + r.flop * share
        if r.kind == "interval":
            gpus.add(r.gpu_uuid)
    rate = in_window / span_s if span_s else Band.exact(0.0)
    # A run that stopped reporting long ago is not running now.
    if now_ns - last > 2 * window_s * 1e9:
        rate = Band.exact(0.0)

    end_ns: int | None = None
    how = "horizon"
    end_time = _number(plan, "end_time")
    duration = _number(plan, "duration_s")
    planned_gpus = _number(plan, "gpus")
    if end_time is not None:
        end_ns, how = round(end_time * 1e9), "planned end time"
    elif duration is not None:
        end_ns, how = first + round(duration * 1e9), "planned duration"
    if planned_gpus is not None and gpus:
        # The measured rate per GPU, at the planned scale.
        scale = planned_gpus / len(gpus)
        rate = rate * scale
        how += f", {planned_gpus:g} planned GPUs"
    planned_total = None
    params, tokens = _number(plan, "params"), _number(plan, "tokens")
    if params is not None and tokens is not None:
        total = 6.0 * params * tokens
        planned_total = Flop.exact(int(total))
        how += ", 6PD"
    return RunForecast(run, current, rate, len(gpus), first, last, end_ns, how, planned_total)


@dataclass(frozen=True, slots=True)
class Projection:
    """A subject's projected total and time to a threshold."""

    current: Flop
    rate: Band[float]  # FLOP/s
    projected: Flop
    eta_s: dict[str, float | None]  # per estimate: seconds until the threshold, None: never


def project(current: Flop, forecasts: Iterable[RunForecast], now_ns: int,
            threshold: float | None, horizon_s: float = DEFAULT_HORIZON_S) -> Projection:
    """Current total plus what the active runs will add until their planned ends."""
    rate = Band.exact(0.0)
    added = Band.exact(0.0)
    for f in forecasts:
        rate = rate + f.rate
        run = f.rate * f.remaining_s(now_ns, horizon_s)
        if f.planned_total is not None:
            # A declared 6PD total is a second estimate of where the run ends: take
            # whichever reaches further, so "will be met" is never late.
            left = f.planned_total.combine(f.current, lambda planned, now: float(planned - now))
            run = Band(run.low, max(run.central, left.central), max(run.high, left.high))
        added = added + run
    projected = current + added.map(int)
    eta: dict[str, float | None] = {}
    for name in ("low", "central", "high"):
        value = float(getattr(current, name))
        r = float(getattr(rate, name))
        if threshold is None:
            eta[name] = None
        elif value > threshold:
            eta[name] = 0.0
        else:
            eta[name] = (threshold - value) / r if r > 0 else None
    return Projection(current, rate, projected, eta)


def planned_projection(current: Flop, forecasts: Iterable[RunForecast], now_ns: int) -> Flop:
    """Current total plus what the planned runs add until their declared ends, at their
    measured rates. A declared size (6PD) is a second estimate of where a run ends: it
    ends a run that declared no end there, and reaches further when it says more. Runs
    without a plan add nothing: an open-ended run is no evidence of where it stops."""
    added = {"low": 0.0, "central": 0.0, "high": 0.0}
    for f in forecasts:
        if not f.planned:
            continue
        for name in added:
            run = (float(getattr(f.rate, name)) * f.remaining_s(now_ns, 0.0)
                   if f.end_ns is not None else 0.0)
            if f.planned_total is not None:
                left = float(f.planned_total.central - getattr(f.current, name))
                run = max(run, left)
            added[name] += max(0.0, run)
    return Flop(current.low + int(added["low"]), current.central + int(added["central"]),
                current.high + int(added["high"]))
