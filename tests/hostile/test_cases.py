"""Runs every hostile case (see :mod:`tests.hostile.harness`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.harness import Case, run_case
from tests.hostile.registry import all_cases

CASES = all_cases()


@pytest.mark.parametrize(("area", "case"), CASES, ids=[f"{a}/{c.name}" for a, c in CASES])
def test_hostile_case(area: str, case: Case, tmp_path: Path) -> None:
    outcome = run_case(case, tmp_path / "case")
    assert outcome.passed, outcome.explain()
