"""An authorised scrape during a storm of wrong-password requests, with the bound on
concurrent bcrypt checks and, side by side, without it."""

from __future__ import annotations

import base64
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import bcrypt
from prometheus_client import CollectorRegistry, Gauge

import exporters.web.server as server_module
from exporters.web.config import parse_web_config

# htpasswd's default cost, as an operator's web-config file would carry.
COST = 10


def _get(url: str, user: str, password: str) -> int:
    request = urllib.request.Request(url)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


@contextmanager
def _bound(limit: int) -> Iterator[None]:
    saved = server_module.MAX_CONCURRENT_HASH_CHECKS
    server_module.MAX_CONCURRENT_HASH_CHECKS = limit
    try:
        yield
    finally:
        server_module.MAX_CONCURRENT_HASH_CHECKS = saved


def _storm_latencies_ms(storm: int, probes: int) -> list[float]:
    """Authorised scrape latencies while ``storm`` wrong-password requests run."""
    registry = CollectorRegistry(auto_describe=False)
    Gauge("bench_value", "A value.", registry=registry).set(1)
    hashed = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(rounds=COST)).decode()
    config = parse_web_config({"basic_auth_users": {"prometheus": hashed}})
    server = server_module.start_metrics_server(registry, "127.0.0.1", 0, config)
    try:
        assert _get(server.url, "prometheus", "correct horse") == 200  # now cached
        threads = [threading.Thread(target=_get, args=(server.url, "prometheus", f"guess {i}"))
                   for i in range(storm)]
        for t in threads:
            t.start()
        time.sleep(0.2)  # let the storm reach the server
        latencies = []
        for _ in range(probes):
            started = time.perf_counter()
            status = _get(server.url, "prometheus", "correct horse")
            latencies.append((time.perf_counter() - started) * 1e3)
            assert status == 200
        for t in threads:
            t.join()
        return latencies
    finally:
        server.shutdown()


@dataclass(frozen=True)
class StormResult:
    storm: int
    bounded_ms: list[float]
    unbounded_ms: list[float]

    def rows(self) -> list[tuple[str, str]]:
        def line(values: list[float]) -> str:
            return f"median {statistics.median(values):.1f} ms, worst {max(values):.1f} ms"

        return [
            ("storm", f"{self.storm} concurrent wrong-password requests, bcrypt cost {COST}"),
            (f"authorised scrape, {server_module.MAX_CONCURRENT_HASH_CHECKS} hash checks at once",
             line(self.bounded_ms)),
            ("authorised scrape, unbounded checks", line(self.unbounded_ms)),
            ("ratio (worst)", f"{max(self.bounded_ms) / max(self.unbounded_ms):.2f}x"),
        ]


def bench_auth_storm(storm: int = 100, probes: int = 5) -> StormResult:
    bounded = _storm_latencies_ms(storm, probes)
    with _bound(10_000):
        unbounded = _storm_latencies_ms(storm, probes)
    return StormResult(storm, bounded, unbounded)
