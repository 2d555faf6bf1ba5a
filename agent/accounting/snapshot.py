"""Immutable views of the agent's totals, handed from the sampler to the readers.

The sampler thread is the only writer; it builds a new :class:`Snapshot` and swaps a
reference, so a scrape always sees one consistent state without taking a lock.
Values here are already in base units (FLOP, joules, seconds).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    """One GPU's totals and latest readings.

    ``spec_key`` is the key of the spec its peak comes from, ``spec_basis`` how that
    spec was found (``table``, ``derived`` or ``ceiling``: a SpecBasis value) and
    ``spec_reason`` why the table was not enough ("" for ``table``).
    """

    index: int
    uuid: str
    name: str
    spec_key: str
    source: str
    up: bool
    flop_low: float
    flop_central: float
    flop_high: float
    energy_joules: float
    covered_seconds: float
    gap_seconds: float
    rate_flops: float
    estimator: str
    sm_clock_hz: float | None = None
    utilization_ratio: float | None = None
    tensor_activity_ratio: float | None = None
    power_watts: float | None = None
    sim_true_flop: float | None = None
    spec_basis: str = "table"
    spec_reason: str = ""


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """A run's totals on this node."""

    run_id: str
    model: str
    category: str
    flop_low: float
    flop_central: float
    flop_high: float
    energy_joules: float
    gpus: int
    created_wall_seconds: float


@dataclass(frozen=True, slots=True)
class DeclaredRunSnapshot:
    """What a run's trainer declared through the client spool, and the compute that
    declaration implies so far (``declared_flop``: 6 x params x tokens processed, plus
    12 x layers x d_model x context x tokens when the architecture was declared; None
    without a declared parameter count)."""

    run_id: str
    model: str
    tokens: int
    steps: int
    planned_tokens: float | None
    params: float | None
    declared_flop: float | None
    formula: str
    updated_wall_seconds: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a scrape, a status command or an alert evaluator reads."""

    source_kind: str
    started_wall_seconds: float
    gpus: tuple[GpuSnapshot, ...] = ()
    runs: tuple[RunSnapshot, ...] = ()
    sample_errors: tuple[tuple[int, str, str, int], ...] = ()  # (index, uuid, field, count)
    last_sample_wall_seconds: float | None = None
    ticks: int = 0
    overruns: int = 0
    integrations: int = 0
    rejected_samples: int = 0
    last_tick_duration_seconds: float = 0.0
    declared: tuple[DeclaredRunSnapshot, ...] = ()
