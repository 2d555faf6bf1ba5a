"""Run categories: which kind of compute a run is, deciding what it counts toward."""

from __future__ import annotations

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
