"""Human-readable figures: FLOP to two significant figures (as the EU asks), times."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal


def flop(value: float, rounding: str = "nearest") -> str:
    """``2.3e+25``: two significant figures, rounded to nearest, ``down`` or ``up``."""
    if value == 0:
        return "0"
    if rounding == "nearest":
        return f"{value:.1e}"
    exponent = math.floor(math.log10(abs(value))) - 1
    exact = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    scaled = exact / (Decimal(10) ** exponent)
    digits = math.floor(scaled) if rounding == "down" else math.ceil(scaled)
    return f"{float(digits * Decimal(10) ** exponent):.1e}"


def band(low: float, central: float, high: float) -> str:
    """``central [low .. high]``; the bounds are rounded outwards so the printed band
    still contains what the exact one does."""
    return f"{flop(central)} [{flop(low, 'down')} .. {flop(high, 'up')}]"


def when(ns: int | float | None) -> str:
    """UTC time of a wall-clock nanosecond stamp, to the second."""
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def energy(mj: int | float) -> str:
    joules = mj / 1e3
    if joules >= 3.6e9:
        return f"{joules / 3.6e9:.2f} MWh"
    return f"{joules / 3.6e6:.2f} kWh"
