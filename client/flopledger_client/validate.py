"""The spool format's rules for the values a trainer declares and reports.

The agent rejects a whole file for one bad value (docs/client-spool.md), so every value
is checked here first, where the mistake can still be fixed, and refused with an error
naming the argument. Names follow the agent's name rules: at most
:data:`MAX_NAME_CHARS` characters, no control, format or line-separator character, no
surrounding blanks, and never the reserved run id ``unattributed`` (in any case).
"""

from __future__ import annotations

import math
import numbers
import unicodedata

from flopledger_client.errors import InvalidValueError

CATEGORIES: tuple[str, ...] = (
    "pre-training",
    "fine-tuning",
    "rl",
    "synthetic-data-private",
    "synthetic-data-public",
    "evaluation",
    "failed-experiment",
    "unknown",
)
PRECISIONS: tuple[str, ...] = ("fp64", "tf32", "bf16", "fp16", "fp8", "fp4", "int8")
RECOMPUTE_MODES: tuple[str, ...] = ("none", "full", "selective")
SCOPES: tuple[str, ...] = ("rank", "run")
MAX_NAME_CHARS = 200
RESERVED_NAME = "unattributed"
# Unicode categories the agent refuses in a name: controls (\n forges a log line),
# format characters (U+202E reorders what a reader sees), line and paragraph
# separators, surrogates and unassigned code points.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})


def _fail(argument: str, value: object, expected: str) -> InvalidValueError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return InvalidValueError(f"{argument}: expected {expected}, got {shown}")


def name(argument: str, value: object) -> str:
    """``value`` if it is a valid run or model name, else :class:`InvalidValueError`."""
    rule = (f"a name of 1 to {MAX_NAME_CHARS} characters without control characters "
            "or surrounding blanks")
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise _fail(argument, value, rule)
    if value != value.strip() or any(
            unicodedata.category(c) in _FORBIDDEN_CATEGORIES for c in value):
        raise _fail(argument, value, rule)
    if value.casefold() == RESERVED_NAME:
        raise _fail(argument, value, f"a name other than {RESERVED_NAME!r} (reserved for "
                                     "compute no run claims)")
    return value


def choice(argument: str, value: object, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else :class:`InvalidValueError`."""
    if not isinstance(value, str) or value not in allowed:
        raise _fail(argument, value, f"one of {', '.join(allowed)}")
    return value


def positive(argument: str, value: object, *, minimum: float = 0.0,
             inclusive: bool = False) -> int | float:
    """``value`` as a plain int or float if it is a finite number above ``minimum``
    (or equal to it when ``inclusive``), else :class:`InvalidValueError`. Accepts
    numpy's scalars, which register as :mod:`numbers`."""
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(argument, value, f"a finite number {bound}")
    number: int | float = int(value) if isinstance(value, numbers.Integral) else float(value)
    if not math.isfinite(number) or number < minimum or (number == minimum and not inclusive):
        raise _fail(argument, value, f"a finite number {bound}")
    return number


def count(argument: str, value: object) -> int:
    """``value`` as an int if it is an integer >= 0, else :class:`InvalidValueError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise _fail(argument, value, "an integer >= 0")
    return int(value)
