"""Scrape latency of /metrics, side by side with prometheus-client's plain exposition
of the same number of series served the same way."""

from __future__ import annotations

import statistics
import time
import urllib.request
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from agent.accounting.accountant import Accountant
from agent.accounting.estimate import EstimatorSettings
from agent.accounting.runs import GpuAttribution, GpuShare, RunMeta
from agent.sources.clock import VirtualClock
from agent.sources.scenarios import SCENARIOS
from agent.sources.simulated import SimulatedSource
from agent.sources.specs import load_spec_table
from exporters.collector import FlopledgerCollector


@dataclass(frozen=True)
class ScrapeResult:
    series: int
    bytes: int
    ours_ms: tuple[float, float]
    plain_ms: tuple[float, float]

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("series per node (8 GPUs, 4 runs)", f"{self.series} ({self.bytes:,} bytes)"),
            ("flopledger /metrics",
             f"median {self.ours_ms[0]:.2f} ms, p99 {self.ours_ms[1]:.2f} ms"),
            ("plain prometheus-client, same series",
             f"median {self.plain_ms[0]:.2f} ms, p99 {self.plain_ms[1]:.2f} ms"),
            ("ratio (median)", f"{self.ours_ms[0] / self.plain_ms[0]:.2f}x"),
        ]


def _accountant(gpus: int = 8, runs: int = 4) -> Accountant:
    specs = load_spec_table()
    clock = VirtualClock()
    source = SimulatedSource(specs, "h100_sxm", gpus, SCENARIOS["pretrain-bf16"], clock=clock)
    devices = source.devices()
    shares = [
        GpuAttribution((GpuShare(RunMeta(f"run-{i % runs}", f"model-{i % runs}",
                                         "pre-training", "bf16"), 1.0),), "single")
        for i in range(gpus)
    ]
    acc = Accountant(devices, [specs["h100_sxm"]] * gpus, EstimatorSettings(), clock.wall_ns(),
                     source.kind, node="bench")
    for _ in range(20):
        acc.add_batch(source.read(), shares)
        clock.advance_ns(1_000_000_000)
    acc.integrate()
    acc.commit(acc.take_records()[0])
    return acc


def _latencies(url: str, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        with urllib.request.urlopen(url) as r:
            r.read()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def bench_scrape(n: int = 500) -> ScrapeResult:
    snapshot = _accountant().snapshot()
    ours = CollectorRegistry(auto_describe=False)
    ours.register(FlopledgerCollector(lambda: snapshot))
    server, _ = start_http_server(0, addr="127.0.0.1", registry=ours)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    with urllib.request.urlopen(url) as r:
        text = r.read().decode()
    families = list(text_string_to_metric_families(text))
    series = sum(len(f.samples) for f in families)
    # The same series as plain instrumentation: one labelled gauge child per sample
    # line (gauges, so that no extra _created lines are added on this side).
    plain = CollectorRegistry()
    for f in families:
        for k, sample in enumerate(f.samples):
            names = list(sample.labels)
            g = Gauge(f"{sample.name}_plain_{k}", f.documentation or "x", names, registry=plain)
            (g.labels(*sample.labels.values()) if names else g).set(sample.value)
    plain_server, _ = start_http_server(0, addr="127.0.0.1", registry=plain)
    plain_url = f"http://127.0.0.1:{plain_server.server_port}/metrics"
    _latencies(url, 20)
    _latencies(plain_url, 20)
    ours_ms = _latencies(url, n)
    plain_ms = _latencies(plain_url, n)
    server.shutdown()
    plain_server.shutdown()
    return ScrapeResult(series, len(text.encode()), ours_ms, plain_ms)
