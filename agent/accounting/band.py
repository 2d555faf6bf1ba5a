"""The one (low, central, high) type: every figure the agent states comes with its band.

Rates, integrated totals, ledger sums, summaries, forecasts and reports all carry their
figures as a :class:`Band`; only the unit differs, and the type parameter says which:
``Band[int]`` for whole FLOP (or FLOP units), ``Band[float]`` for FLOP/s,
``Band[FloatArray]`` for a column of per-sample rates. ``low <= central <= high`` holds
wherever the estimate is honest, but the type does not enforce it: a band is also what
a caller builds before checking it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")


# No slots: calling a parametrised alias (``Flop = Band[int]; Flop(1, 2, 3)``) sets
# ``__orig_class__`` on the instance, which a frozen slotted dataclass turns into a
# TypeError on Python 3.11.
@dataclass(frozen=True)
class Band(Generic[T]):
    """A central estimate with its lower and upper bounds, in one unit."""

    low: T
    central: T
    high: T

    @classmethod
    def exact(cls, value: T) -> Band[T]:
        """A figure known exactly: all three the same (zero, a declared figure)."""
        return cls(value, value, value)

    def map(self, f: Callable[[T], U]) -> Band[U]:
        """``f`` applied to each of the three (a unit change, a conversion)."""
        return Band(f(self.low), f(self.central), f(self.high))

    def combine(self, other: Band[T], f: Callable[[T, T], U]) -> Band[U]:
        """``f`` of the two bands' lows, centrals and highs."""
        return Band(f(self.low, other.low), f(self.central, other.central),
                    f(self.high, other.high))

    def __add__(self, other: Band[T]) -> Band[T]:
        """Bounds add: the sum of two figures lies within the sum of their bands."""
        return self.combine(other, operator.add)

    def __mul__(self, factor: float) -> Band[float]:
        """Each of the three times ``factor`` (>= 0: the order of the bounds is kept)."""
        return self.map(lambda x: operator.mul(x, factor))

    def __truediv__(self, divisor: float) -> Band[float]:
        """Each of the three divided by ``divisor`` (> 0)."""
        return self.map(lambda x: operator.truediv(x, divisor))

    def __iter__(self) -> Iterator[T]:
        """``low, central, high = band``, and ``f(*band)`` for the three in that order."""
        yield self.low
        yield self.central
        yield self.high


class FlopColumns:
    """``flop_low``, ``flop_central`` and ``flop_high`` read from a ``flop: Band[int]``
    attribute: the ledger's column names, for readers that take the bounds one at a
    time."""

    __slots__ = ()
    flop: Band[int]

    @property
    def flop_low(self) -> int:
        return self.flop.low

    @property
    def flop_central(self) -> int:
        return self.flop.central

    @property
    def flop_high(self) -> int:
        return self.flop.high
