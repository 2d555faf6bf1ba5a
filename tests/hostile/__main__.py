"""``python -m tests.hostile``: run every hostile case and print the table of outcomes."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from tests.hostile.harness import run_case, table
from tests.hostile.registry import all_cases


def main() -> int:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="flopledger-hostile-") as tmp:
        for k, (area, case) in enumerate(all_cases()):
            outcome = run_case(case, Path(tmp) / f"{k:03d}")
            outcomes.append(replace(outcome, case=replace(case, name=f"{area}/{case.name}")))
    print(table(outcomes))
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
