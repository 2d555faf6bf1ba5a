"""Runs: what a training run is and declares, and how a GPU's time is shared among runs.

The shared types of accounting, used by attribution, the accountant, the ledger writer,
replay and compliance: :class:`RunMeta`, :class:`GpuShare`, :class:`GpuAttribution`,
the categories that decide what a run's compute counts toward, and the recompute
factors that turn hardware FLOP into model FLOP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.accounting.names import UNATTRIBUTED_RUN_ID

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

RECOMPUTE_FACTORS: dict[str, float] = {
    # Hardware FLOP per model FLOP. Full activation recomputation repeats the forward
    # pass: 1 forward + 2 backward + 1 forward again = 4/3 of the model's 3 passes.
    "none": 1.0,
    "full": 4.0 / 3.0,
}

RECOMPUTE_MODES = (*RECOMPUTE_FACTORS, "selective")
VIAS = ("env", "slurm", "slurm-file", "torchrun", "kubernetes", "static", "client",
        "unattributed")
SPLITS = ("single", "sm_util", "even", "none")


@dataclass(frozen=True, slots=True)
class RunMeta:
    """A training run and what it declares about itself.

    Attributes:
        run_id: the run's identity in every total and metric label.
        model: the model being trained ("" if undeclared).
        category: one of :data:`CATEGORIES`.
        precision: declared matmul precision (a key of ``MATMUL_PRECISIONS``), None if
            undeclared.
        recompute: ``none``, ``full`` or ``selective`` activation recomputation.
        recompute_factor: hardware FLOP per model FLOP: 1.0, 4/3, or as declared.
        recompute_declared: whether the run said how it recomputes activations; when
            it did not, the low bound allows for full recomputation.
        plan: free-form plan fields (``gpus``, ``duration_s``, ``end_time``, ``params``,
            ``tokens``...): floats where the value parses as a finite number, else text.
        base_models: models this one is derived from (lineage).
        via: how the run was found, one of :data:`VIAS`.
    """

    run_id: str
    model: str = ""
    category: str = "unknown"
    precision: str | None = None
    recompute: str = "none"
    recompute_factor: float = 1.0
    recompute_declared: bool = False
    plan: dict[str, float | str] = field(default_factory=dict, hash=False)
    base_models: tuple[str, ...] = ()
    via: str = "unattributed"

    def __post_init__(self) -> None:
        # The reserved id is compute nobody claimed: it declares nothing, whatever built
        # it (a replayed trace, an old ledger's run table). A category claimed for it
        # would take real unattributed compute out of every scope that category skips.
        if self.run_id == UNATTRIBUTED_RUN_ID:
            for name, value in (("model", ""), ("category", "unknown"), ("precision", None),
                                ("recompute", "none"), ("recompute_factor", 1.0),
                                ("recompute_declared", False),
                                ("plan", {}), ("base_models", ()), ("via", "unattributed")):
                object.__setattr__(self, name, value)


UNATTRIBUTED = RunMeta(run_id=UNATTRIBUTED_RUN_ID, via="unattributed")


@dataclass(frozen=True, slots=True)
class GpuShare:
    """A run's share (0-1) of one GPU's time and work over a tick."""

    run: RunMeta
    weight: float


@dataclass(frozen=True, slots=True)
class GpuAttribution:
    """Who one GPU's tick is charged to; weights sum to 1 (within float rounding).

    ``split``: ``single`` (one run), ``sm_util`` (by per-process SM utilization),
    ``even`` (evenly per run) or ``none`` (no process: one UNATTRIBUTED share).
    """

    shares: tuple[GpuShare, ...]
    split: str
