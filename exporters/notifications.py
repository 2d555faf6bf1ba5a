"""Notification series: the outbox's delivery counts per channel, dead letters included.

Built from the dispatcher's latest published :class:`NotifyStatus` (an immutable
value swapped by reference): a scrape never runs SQL and never takes the outbox's
lock. Nothing is exported before the dispatcher's first read of the outbox.

Deliveries made and failed attempts only ever grow, so they are counters
(``_delivered_total``, ``_failed_attempts_total``): they are counted from the outbox's
rows, which keep them across restarts and requeues, so ``rate()`` and ``increase()``
see no reset when the agent restarts. Pending and dead deliveries go down again when
delivered or requeued: gauges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.notify.status import NotifyStatus

__all__ = ["NotificationCollector"]

# (metric name, ChannelStatus attribute, help)
_GAUGES = (
    ("pending", "pending", "Notifications not yet delivered, or whose resolve is not yet "
     "sent, per channel."),
    ("dead", "dead", "Notifications that cannot be delivered as things stand (HTTP 4xx, "
     "unencodable, not executable), kept as dead letters and not retried, per channel."),
)
# Exported with the _total suffix prometheus_client adds to a counter's samples.
_COUNTERS = (
    ("delivered", "delivered", "Notifications delivered at least once, per channel."),
    ("failed_attempts", "failed_attempts", "Failed attempts to deliver a notification "
     "(each retry counts), per channel."),
)


class NotificationCollector(Collector):
    """Per-channel notification counts from the status ``get_status`` returns."""

    def __init__(self, get_status: Callable[[], NotifyStatus | None]) -> None:
        self._get_status = get_status

    def collect(self) -> Iterator[Metric]:
        status = self._get_status()
        if status is None:
            return
        channels = sorted(status.channels)
        for name, attr, text in _GAUGES:
            gauge = GaugeMetricFamily(f"flopledger_notifications_{name}", text,
                                      labels=["channel"])
            for channel in channels:
                gauge.add_metric([channel], float(getattr(status.channels[channel], attr)))
            yield gauge
        for name, attr, text in _COUNTERS:
            counter = CounterMetricFamily(f"flopledger_notifications_{name}", text,
                                          labels=["channel"])
            for channel in channels:
                counter.add_metric([channel], float(getattr(status.channels[channel], attr)))
            yield counter
