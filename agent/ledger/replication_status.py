"""What the agent's replication to the cluster store last published (read by /metrics).

An immutable value swapped by reference after every attempt, so that a scrape never
waits on the replication thread or runs SQL.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReplicationStatus:
    """The latest state of shipping this node's ledger to the cluster store.

    Attributes:
        up: the last attempt reached the store (and was not refused by its witness).
        backlog_records: sealed records not yet in the store (None before the first
            successful attempt: unknown, not zero).
        shipped_records: records this agent shipped since it started.
        failed_attempts: attempts that could not reach the store since it started.
        last_success_wall_seconds: when the store last acknowledged a batch.
        flagged: why the store's witness refuses this node (None while it is sound).
    """

    up: bool = False
    backlog_records: int | None = None
    shipped_records: int = 0
    failed_attempts: int = 0
    last_success_wall_seconds: float | None = None
    flagged: str | None = None
