"""Configuration problems, collected and reported all at once with file and key."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    """One or more problems in a configuration file.

    Attributes:
        path: the file the problems are in.
        problems: (key, what was expected) pairs, in the order found.
    """

    def __init__(self, path: Path | str, problems: list[tuple[str, str]]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        lines = [f"{self.path}: {len(self.problems)} problem(s)"]
        lines += [f"  {key}: expected {expected}" for key, expected in self.problems]
        super().__init__("\n".join(lines))


class ConfigFilesError(ConfigError):
    """Problems in several files, found in one pass: one :class:`ConfigError` per file
    in ``errors`` (``path`` and ``problems`` are the first file's and all of them)."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = list(errors)
        Exception.__init__(self, "\n".join(str(e) for e in self.errors))
        self.path = self.errors[0].path
        self.problems = [p for e in self.errors for p in e.problems]


class ErrorCollector:
    """Loads several files and keeps the ConfigError of each, so a start-up check
    reports every file's problems at once instead of stopping at the first file."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def attempt(self, load: Callable[[], T]) -> T | None:
        """``load()``, or None with its ConfigError kept."""
        try:
            return load()
        except ConfigFilesError as e:
            self.errors.extend(e.errors)
        except ConfigError as e:
            self.errors.append(e)
        return None

    def raise_if_any(self) -> None:
        """Raises the one ConfigError kept, or ConfigFilesError for several."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigFilesError(self.errors)


class Problems:
    """A collector of problems for one file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.items: list[tuple[str, str]] = []
        # Keys whose value drop_bad_values removed: a parser that then finds the key
        # (or a part of a table or list around it) missing has nothing to add to the
        # problem already recorded.
        self.dropped: set[str] = set()

    def add(self, key: str, expected: str) -> None:
        if not any(d == key or d.startswith((key + ".", key + "[")) for d in self.dropped):
            self.items.append((key, expected))

    def __bool__(self) -> bool:
        return bool(self.items)

    def has(self, key: str) -> bool:
        """Whether a problem was recorded for ``key``."""
        return any(k == key for k, _ in self.items)

    def raise_if_any(self) -> None:
        """Raises ConfigError if any problem was added."""
        if self.items:
            raise ConfigError(self.path, self.items)


def is_number(value: object) -> TypeGuard[int | float]:
    """An int or a float, never a bool (TOML and YAML keep them apart; Python does not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def show_number(x: float) -> str:
    """A bound as a person writes it: 86400, 0.1, 1e+40."""
    if isinstance(x, int) or (x.is_integer() and abs(x) < 1e15):
        return str(int(x))
    return f"{x:g}"


def range_text(what: str, low: float, high: float, *, above: bool = False) -> str:
    """``"a number of seconds >= 0.1 and <= 3600"``: what a range check expects."""
    return f"{what} {'>' if above else '>='} {show_number(low)} and <= {show_number(high)}"


def in_range(value: object, low: float, high: float, *, integer: bool = False,
             above: bool = False) -> bool:
    """Whether ``value`` is a finite number (an int if ``integer``) with
    ``low <= value <= high`` (``low < value`` if ``above``). NaN is in no range."""
    if not is_number(value) or (integer and not isinstance(value, int)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return (value > low if above else value >= low) and value <= high


NOT_FINITE = "a finite number (nan and inf mean nothing here)"


# TOML's integers are 64-bit; Python's tomllib reads longer ones, which then overflow
# wherever they meet a float.
INT64 = 2**63 - 1
TOO_LONG = "an integer within 64 bits (TOML's range)"


NUL_IN_TEXT = "text without NUL characters"


def drop_bad_values(problems: Problems, doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a parsed document without its NaN, infinite and over-long numbers and
    its strings holding NUL, each reported with its key.

    TOML spells them ``nan``, ``inf`` and ``"\u0000"``; no setting means any of them.
    NaN compares false with every bound, so a range check written as ``if value < low``
    lets it through, and a NUL makes every os call on a path raise ValueError. Dropping
    them here, once per file, leaves each parser its default (the problem is already
    recorded, so the file is refused anyway).
    """

    def drop(where: str, expected: str) -> tuple[bool, Any]:
        problems.add(where, expected)
        problems.dropped.add(where)
        return False, None

    def clean(value: Any, where: str) -> tuple[bool, Any]:
        if isinstance(value, float) and not math.isfinite(value):
            return drop(where, NOT_FINITE)
        if isinstance(value, int) and not -INT64 - 1 <= value <= INT64:
            return drop(where, TOO_LONG)
        if isinstance(value, str) and "\0" in value:
            return drop(where, NUL_IN_TEXT)
        if isinstance(value, dict):
            return True, clean_table(value, where)
        if isinstance(value, list):
            kept = [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
            return True, [v for ok, v in kept if ok]
        return True, value

    def clean_table(table: Mapping[str, Any], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in table.items():
            ok, kept = clean(value, f"{where}.{key}" if where else str(key))
            if ok:
                out[key] = kept
        return out

    return clean_table(doc, "")


def path_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a file or directory path, or None."""
    if not isinstance(value, str) or not value.strip():
        return "a non-empty path"
    if "\0" in value:
        # os calls raise ValueError on an embedded NUL rather than OSError.
        return "a path without NUL characters"
    return None


def read_toml(path: Path, what: str = "a readable TOML file") -> dict[str, Any]:
    """Parse a TOML file.

    Raises:
        ConfigError: naming the file, for a missing, unreadable or malformed one.
    """
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(path, [("-", f"{what} (not found)")]) from e
    except OSError as e:
        raise ConfigError(path, [("-", f"{what} ({e.strerror or e})")]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [("-", f"valid TOML: {e}")]) from e
    except UnicodeDecodeError as e:
        problem = f"valid TOML in UTF-8 (byte {e.start} is not UTF-8)"
        raise ConfigError(path, [("-", problem)]) from e
    except RecursionError as e:
        raise ConfigError(path, [("-", "valid TOML nested less deeply")]) from e
    except ValueError as e:
        # An integer of more than 4300 digits: Python refuses to convert it.
        raise ConfigError(path, [("-", f"valid TOML ({e})")]) from e


def check_keys(problems: Problems, table: Mapping[str, Any], known: Iterable[str],
               where: str = "") -> None:
    """Report every key of ``table`` that is not in ``known``: as ``where.key``, or,
    for the top level of a file (``where`` empty), as a table name."""
    names = sorted(known)
    for key in table:
        if key in names:
            continue
        if where:
            problems.add(f"{where}.{key}", f"one of the known keys {names}")
        else:
            problems.add(key, f"one of the tables {names}")


class TableReader:
    """Typed access to one table of a config file, recording problems instead of
    raising; unknown keys are reported on construction."""

    def __init__(self, problems: Problems, table: dict[str, Any], where: str,
                 known: Iterable[str]) -> None:
        self.problems = problems
        self.table = table
        self.where = where
        check_keys(problems, table, known, where)

    @classmethod
    def section(cls, problems: Problems, raw: Mapping[str, Any], name: str,
                known: Iterable[str]) -> TableReader:
        """The reader of the top-level table ``[name]`` of a parsed document (empty if
        absent; reported and read as empty if it is not a table)."""
        value = raw.get(name, {})
        if not isinstance(value, dict):
            problems.add(name, "a table")
            value = {}
        return cls(problems, value, name, known)

    def add(self, key: str, expected: str) -> None:
        self.problems.add(f"{self.where}.{key}", expected)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, expect: str) -> Any:
        """The value of ``key`` if it has type ``kind`` (a bool is never a number), else
        ``default`` with a problem recorded."""
        if key not in self.table:
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            self.add(key, expect)
            return default
        return value

    def number(self, key: str, default: Any, low: float, high: float, *,
               what: str = "a number", integer: bool = False, above: bool = False) -> Any:
        """The value of ``key`` if it is a finite number in the range (see
        :func:`in_range`), else ``default`` with a problem that states the range."""
        if key not in self.table:
            return default
        if not in_range(self.table[key], low, high, integer=integer, above=above):
            self.add(key, range_text(what, low, high, above=above))
            return default
        return self.table[key]

    def path(self, key: str, expect: str) -> str | None:
        """The value of ``key`` as a path string (None if absent or bad, reported)."""
        if key not in self.table:
            return None
        problem = path_problem(self.table[key])
        if problem is not None:
            self.add(key, f"{expect} ({problem})" if isinstance(self.table[key], str)
                     else expect)
            return None
        value: str = self.table[key]
        return value


# The data files the program reads (the GPU spec table, the threshold registry) live
# inside the package, so a wheel carries them and they are found from any working
# directory; ``pyproject.toml`` lists them as package data.
DATA_DIR = Path(__file__).resolve().parent / "data"


def bundled_config(name: str) -> Path:
    """The data file ``name`` shipped with the package, ``agent/data/<name>``. The path
    may not exist (the caller's reader reports that, naming the path)."""
    return DATA_DIR / name
