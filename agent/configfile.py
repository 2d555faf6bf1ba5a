"""Configuration problems, collected and reported all at once with file and key."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


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


class Problems:
    """A collector of problems for one file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.items: list[tuple[str, str]] = []

    def add(self, key: str, expected: str) -> None:
        self.items.append((key, expected))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        """Raises ConfigError if any problem was added."""
        if self.items:
            raise ConfigError(self.path, self.items)


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
        raise ConfigError(path, [("-", f"{what} ({e})")]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [("-", f"valid TOML: {e}")]) from e


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


def bundled_config(name: str) -> Path:
    """``configs/<name>`` of the checkout, or the copy installed with the package
    (``agent/data/<name>``)."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "configs" / name
    if checkout.is_file():
        return checkout
    return package / "data" / name
