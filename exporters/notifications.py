"""Notification series: the outbox's delivery counts per channel, dead letters included.

Built from the dispatcher's latest published :class:`NotifyStatus` (an immutable
value swapped by reference): a scrape never runs SQL and never takes the outbox's
lock. Nothing is exported before the dispatcher's first read of the outbox.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.notify.status import NotifyStatus

__all__ = ["NotificationCollector"]

# (metric name suffix, ChannelStatus attribute, help)
_COUNTS = (
    ("pending", "pending", "Notifications pending, per channel."),
    ("delivered", "delivered", "Notifications delivered, per channel."),
    ("failed_attempts", "failed_attempts", "Notifications failed attempts, per channel."),
    ("dead", "dead", "Notifications that cannot be delivered as things stand (HTTP 4xx, "
     "unencodable, not executable), kept as dead letters and not retried, per channel."),
)


class NotificationCollector(Collector):
    """Per-channel notification counts from the status ``get_status`` returns."""

    def __init__(self, get_status: Callable[[], NotifyStatus | None]) -> None:
        self._get_status = get_status

    def collect(self) -> Iterator[Metric]:
        status = self._get_status()
        if status is None:
            return
        for name, attr, text in _COUNTS:
            family = GaugeMetricFamily(f"flopledger_notifications_{name}", text,
                                       labels=["channel"])
            for channel in sorted(status.channels):
                family.add_metric([channel], float(getattr(status.channels[channel], attr)))
            yield family
