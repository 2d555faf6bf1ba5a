"""Configuration problems, collected and reported all at once with file and key."""

from __future__ import annotations

from pathlib import Path


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
