"""What the threshold watcher last found, as an immutable value for readers.

The watcher (``agent.compliance.watcher``) builds a new :class:`ThresholdState` after
each evaluation and swaps its reference; /metrics reads that reference and nothing
else. This module has no threads and no I/O, so readers (the exporters) import the
type without importing the watcher.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.accounting.band import Band

__all__ = ["ThresholdRow", "ThresholdState"]


@dataclass(frozen=True, slots=True)
class ThresholdRow:
    """One (subject, regime, estimate) of an evaluation.

    Attributes:
        fraction: share of the regime's threshold used so far (1.0: reached).
        eta_seconds: seconds until the threshold is reached at the current rate, or
            None if the subject is not moving toward it.
        met: the threshold is reached.
        will_be_met: a "will be met" is known (from a declared plan, at the central
            rate) and not resolved, and the threshold is not met yet.
        deadline_wall_seconds: the legal deadline (seconds since the epoch), counted
            from the stored day the threshold was met or first known to be met; None
            if none applies.
        fraction_band: share of the FLOP threshold reached by each of the low, central
            and high FLOP estimates; None if the regime has no FLOP threshold for the
            subject (a cost threshold only).
    """

    subject_type: str
    subject: str
    regime: str
    estimate: str
    fraction: float
    eta_seconds: float | None
    met: bool
    will_be_met: bool
    deadline_wall_seconds: float | None = None
    fraction_band: Band[float] | None = None


@dataclass(frozen=True, slots=True)
class ThresholdState:
    """What the last evaluation found, for /metrics.

    Attributes:
        evaluated_wall_seconds: when it was evaluated, in seconds since the epoch.
        evaluations: evaluations done since the watcher started.
        rows: one per subject, regime and estimate.
        notifications_enqueued: notifications newly enqueued since the watcher started.
    """

    evaluated_wall_seconds: float
    evaluations: int
    rows: tuple[ThresholdRow, ...]
    notifications_enqueued: int
