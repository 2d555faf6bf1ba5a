"""A ledger whose runs declared their size and reported the tokens they processed, for
the declared-against-measured checks of ``status`` and ``report``.

Every run has two GPUs, each with records of 1e15 FLOP central (band 0.95 .. 1.05) over
[0, 5] s and [5, 10] s after T0, sealed, and one still open over [10, 15] s. Every run
counted its tokens at 7.5 s: the measured compute up to then is the first two records
and half of the next two, 3e15 FLOP [2.85e15 .. 3.15e15].
"""

from __future__ import annotations

from pathlib import Path

from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from tests.ledger_helpers import SECOND, T0, record

PARAMS = 1e9
TOKENS_AT_NS = T0 + 7_500_000_000
MEASURED_CENTRAL = 3e15
# The runs: their declared metadata. agree: 6 x 1e9 x 510,000 = 3.06e15, 2% above the
# measured figure and inside its band; off: 4.2e15, 40% above.
RUNS: dict[str, dict[str, object]] = {
    "agree": {"via": "client", "plan.params": PARAMS, "progress.tokens": 510_000,
              "progress.steps": 10, "progress.updated_ns": TOKENS_AT_NS},
    "off": {"via": "client", "plan.params": PARAMS, "progress.tokens": 700_000,
            "progress.steps": 14, "progress.updated_ns": TOKENS_AT_NS},
    "no-params": {"via": "client", "progress.tokens": 700_000,
                  "progress.updated_ns": TOKENS_AT_NS},
    "env-only": {"via": "env", "plan.tokens": 1e12},
}


def declared_ledger(tmp_path: Path, runs: dict[str, dict[str, object]] | None = None,
                    model: str | None = None) -> Path:
    """The ledger of ``runs`` (default :data:`RUNS`), each training ``<run>-model``, or
    all of them ``model``."""
    runs = RUNS if runs is None else runs
    models = {name: model or f"{name}-model" for name in runs}
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, "node-1", load_or_create_key(tmp_path / "node.key"))
    rows = {name: RunRow(name, models[name], "pre-training", meta)
            for name, meta in runs.items()}
    for i, start in enumerate((0, 5)):
        drafts = [record(2 * n + g, start, start + 5, run=name, model=models[name])
                  for n, name in enumerate(runs) for g in range(2)]
        still_open = [record(2 * n + g, 10, 15, run=name, model=models[name])
                      for n, name in enumerate(runs) for g in range(2)] if i == 1 else None
        ledger.append(drafts, T0 + (start + 5) * SECOND, rows, still_open)
    ledger.close()
    return path
