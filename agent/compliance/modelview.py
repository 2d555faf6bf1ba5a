"""Runs, lineage and scopes read together from a ledger and the config.

What ``flopledger models``, the threshold evaluator and reports need to compute a
model's totals per regulatory scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.compliance.lineage import Flop, Lineage, RunFigures, Scope, load_scopes, model_totals
from agent.config import Config
from agent.ledger.query import RunSummary, run_summaries


@dataclass(frozen=True, slots=True)
class ModelView:
    lineage: Lineage
    scopes: dict[str, Scope]
    runs: tuple[RunFigures, ...]
    summaries: dict[str, RunSummary]

    def model_names(self) -> list[str]:
        return sorted({r.model for r in self.runs if r.model} | set(self.lineage.models))

    def totals(self, model: str) -> dict[str, Flop]:
        return model_totals(model, self.runs, self.lineage, self.scopes)


def load_model_view(config: Config, ledger_path: Path) -> ModelView:
    """Raises: LedgerNotFoundError, ConfigError (thresholds file)."""
    summaries = run_summaries(ledger_path)
    lineage = Lineage(dict(config.models))
    runs = []
    for s in summaries.values():
        bases = s.meta.get("base_models")
        if isinstance(bases, list):
            lineage.add_bases(s.model, [str(b) for b in bases])
        runs.append(RunFigures(s.run, s.model, s.category,
                               Flop(s.flop_low, s.flop_central, s.flop_high)))
    return ModelView(lineage, load_scopes(config.agent.thresholds_file), tuple(runs), summaries)
