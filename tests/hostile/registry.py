"""Every hostile case of every area, in one list."""

from __future__ import annotations

import importlib
import pkgutil

import tests.hostile
from tests.hostile.harness import Case


def all_cases() -> list[tuple[str, Case]]:
    """(area, case) for every ``CASES`` list in a ``cases_*`` module of this package."""
    out: list[tuple[str, Case]] = []
    for info in sorted(pkgutil.iter_modules(tests.hostile.__path__), key=lambda m: m.name):
        if info.name.startswith("cases_"):
            module = importlib.import_module(f"tests.hostile.{info.name}")
            area = info.name.removeprefix("cases_")
            out.extend((area, case) for case in module.CASES)
    names = [f"{area}/{case.name}" for area, case in out]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"hostile case names used twice: {sorted(duplicates)}")
    return out
