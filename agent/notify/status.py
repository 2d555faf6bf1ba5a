"""Delivery counts of the outbox, as an immutable value for readers.

The dispatcher reads the counts from the outbox in its own threads and publishes a
:class:`NotifyStatus` by swapping one reference; /metrics reads that reference and
never the database. This module has no threads and no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["ChannelStatus", "NotifyStatus"]


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """Counts of one channel's deliveries.

    Attributes:
        pending: not yet delivered, or a resolve not yet sent.
        active: delivered and kept alive at the receiver by re-sends.
        delivered: delivered at least once.
        failed_attempts: failed sends in all (each retry counts).
        retrying: pending deliveries whose last attempt failed.
        dead: dead letters: deliveries that failed in a way no retry can cure, kept
            with their reason and not retried until requeued.
        oldest_pending_ns: enqueue time of the oldest pending notification, or None.
        last_error: the error of the most recent failed attempt, or None.
    """

    pending: int = 0
    active: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    retrying: int = 0
    dead: int = 0
    oldest_pending_ns: int | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class NotifyStatus:
    """Every channel's counts as read from the outbox at one moment.

    Attributes:
        channels: channel name -> counts, sorted by name; read-only.
        read_wall_ns: when the counts were read, in ns since the Unix epoch.
    """

    channels: Mapping[str, ChannelStatus]
    read_wall_ns: int

    @classmethod
    def of(cls, channels: Mapping[str, ChannelStatus], read_wall_ns: int) -> NotifyStatus:
        """A status holding a read-only copy of ``channels`` (later changes to the
        mapping passed in do not show)."""
        return cls(MappingProxyType(dict(sorted(channels.items()))), read_wall_ns)
