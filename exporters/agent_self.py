"""The agent's own series: build, start time, and the sampler's health.

So that a stalled sampler is alertable while the endpoint still answers
(``flopledger_last_sample_timestamp_seconds`` stops moving). Built from one accounting
snapshot per scrape; ``flopledger_build_info`` is exported even before the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.accounting.snapshot import Snapshot

__all__ = ["AgentCollector"]


class AgentCollector(Collector):
    """Build info, and the sampler's self-metrics from the snapshot ``get_snapshot``
    returns."""

    def __init__(self, get_snapshot: Callable[[], Snapshot | None]) -> None:
        self._get_snapshot = get_snapshot

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily(
            "flopledger_build_info", "Build of the agent; always 1.", labels=["version"]
        )
        build.add_metric([__version__], 1.0)
        yield build
        snap = self._get_snapshot()
        if snap is None:
            return
        if snap.last_sample_wall_seconds is not None:
            last = GaugeMetricFamily(
                "flopledger_last_sample_timestamp_seconds",
                "Wall-clock time of the last sample, in seconds since the epoch.",
            )
            last.add_metric([], snap.last_sample_wall_seconds)
            yield last
        created = snap.started_wall_seconds
        for name, doc, value in (
            ("flopledger_sampler_ticks", "Sampling ticks completed.", snap.ticks),
            ("flopledger_sampler_overruns",
             "Ticks skipped because sampling took longer than the interval.", snap.overruns),
            ("flopledger_integrations", "Integration chunks folded into the totals.",
             snap.integrations),
            ("flopledger_rejected_samples",
             "Samples rejected because their timestamp did not advance.",
             snap.rejected_samples),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(value), created=created)
            yield family
        tick = GaugeMetricFamily(
            "flopledger_sampler_tick_duration_seconds",
            "Time the last sampling tick took, in seconds.",
        )
        tick.add_metric([], snap.last_tick_duration_seconds)
        yield tick
        start = GaugeMetricFamily(
            "flopledger_start_time_seconds",
            "When the agent started accounting, in seconds since the epoch.",
        )
        start.add_metric([], snap.started_wall_seconds)
        yield start
