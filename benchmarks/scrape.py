"""Scrape latency of /metrics, side by side with prometheus-client's plain exposition
of the same number of series served the same way; and /metrics of the agent's wiring
(snapshot, threshold state, notification status) while another connection holds the
ledger's write lock and the agent's writers wait on it."""

from __future__ import annotations

import contextlib
import sqlite3
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from agent.accounting.accountant import Accountant
from agent.accounting.estimate import EstimatorSettings
from agent.accounting.records import LedgerRecord
from agent.accounting.runs import GpuAttribution, GpuShare, RunMeta
from agent.accounting.snapshot import Snapshot
from agent.compliance.thresholds import ThresholdSettings, load_registry
from agent.compliance.watcher import ThresholdWatcher
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from agent.notify.dispatcher import Dispatcher
from agent.notify.message import Notification
from agent.notify.outbox import Outbox
from agent.sources.clock import VirtualClock
from agent.sources.scenarios import SCENARIOS
from agent.sources.simulated import SimulatedSource
from agent.sources.specs import load_spec_table
from exporters.collector import FlopledgerCollector
from exporters.web.server import start_metrics_server

LOCKED_SCRAPES = 5


@dataclass(frozen=True)
class ScrapeResult:
    series: int
    bytes: int
    ours_ms: tuple[float, float]
    plain_ms: tuple[float, float]
    locked_ms: tuple[float, float]  # median, worst

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("series per node (8 GPUs, 4 runs)", f"{self.series} ({self.bytes:,} bytes)"),
            ("flopledger /metrics",
             f"median {self.ours_ms[0]:.2f} ms, p99 {self.ours_ms[1]:.2f} ms"),
            ("plain prometheus-client, same series",
             f"median {self.plain_ms[0]:.2f} ms, p99 {self.plain_ms[1]:.2f} ms"),
            ("ratio (median)", f"{self.ours_ms[0] / self.plain_ms[0]:.2f}x"),
            ("flopledger /metrics, ledger write-locked",
             f"median {self.locked_ms[0]:.2f} ms, worst {self.locked_ms[1]:.2f} ms "
             f"({LOCKED_SCRAPES} scrapes; BEGIN EXCLUSIVE held by another connection, "
             "a checkpoint and an enqueue waiting on it)"),
        ]


def _accountant(gpus: int = 8, runs: int = 4) -> tuple[Accountant, list[LedgerRecord]]:
    """An accountant after 20 s of 8 simulated GPUs, and the records it closed."""
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
    records = acc.take_records()[0]
    acc.commit(records)
    return acc, records


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
    acc, records = _accountant()
    snapshot = acc.snapshot()
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
    return ScrapeResult(series, len(text.encode()), ours_ms, plain_ms,
                        bench_locked_scrape(snapshot, records))


@contextlib.contextmanager
def _write_locked(path: Path) -> Iterator[None]:
    """Another connection holds the ledger's write lock for the duration.

    The ledger is in WAL mode and the agent keeps its connections open; an open WAL
    connection holds a shared lock on the file, so ``PRAGMA locking_mode=EXCLUSIVE``
    is never granted to another connection while the agent runs. ``BEGIN EXCLUSIVE``
    and a write hold what can be held: every writer waits.
    """
    holder = sqlite3.connect(path, isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE IF NOT EXISTS bench_lock (x INTEGER)")
    holder.execute("INSERT INTO bench_lock VALUES (1)")
    try:
        probe = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            raise RuntimeError("the ledger is not locked")
        except sqlite3.OperationalError:
            pass
        finally:
            probe.close()
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def bench_locked_scrape(snapshot: Snapshot, records: list[LedgerRecord],
                        scrapes: int = LOCKED_SCRAPES) -> tuple[float, float]:
    """Median and worst latency (ms) of ``scrapes`` scrapes of the agent's collectors
    served by the agent's server, with a real ledger whose write lock another connection
    holds while a checkpoint and a notification enqueue wait on it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.sqlite"
        ledger = Ledger(path, "bench-node-001", load_or_create_key(Path(tmp) / "node.key"))
        end_ns = max(r.end_ns for r in records)
        ledger.append(records, end_ns)
        outbox = Outbox(path, ["hook"])
        dispatcher = Dispatcher(outbox, {})
        watcher = ThresholdWatcher(ThresholdSettings(), {}, load_registry(), path,
                                   wall_ns=lambda: end_ns)
        watcher.run_once()
        dispatcher.start()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FlopledgerCollector(lambda: snapshot, lambda: watcher.state,
                                              lambda: dispatcher.status))
        server = start_metrics_server(registry, "127.0.0.1", 0)
        url = server.url
        deadline = time.monotonic() + 30
        while dispatcher.status is None and time.monotonic() < deadline:
            time.sleep(0.01)
        _latencies(url, 5)
        note = Notification(key="model:llama-70b|eu-art51-systemic-risk|level:0.5",
                            kind="level", subject_type="model", subject="llama-70b",
                            regime="eu-art51-systemic-risk", level=0.5, severity="info",
                            created_ns=end_ns, payload={})
        waiting = [
            # A checkpoint (it replaces the open records) and a notification enqueue.
            threading.Thread(target=_quietly, args=(ledger.append, [], end_ns + 1),
                             kwargs={"still_open": records}),
            threading.Thread(target=_quietly, args=(outbox.enqueue, note)),
        ]
        with _write_locked(path):
            for thread in waiting:
                thread.start()
            time.sleep(0.2)  # let both writers reach the lock
            dispatcher.wake()
            times = []
            for _ in range(scrapes):
                start = time.perf_counter()
                with urllib.request.urlopen(url, timeout=60) as r:
                    body = r.read()
                times.append((time.perf_counter() - start) * 1e3)
                if r.status != 200 or b"flopledger_gpu_flop_total{" not in body:
                    raise RuntimeError("a scrape under the lock lost the GPU counters")
            if not all(thread.is_alive() for thread in waiting):
                raise RuntimeError("a writer did not wait on the lock: nothing was measured")
        for thread in waiting:
            thread.join()
        server.shutdown()
        dispatcher.stop()
        outbox.close()
        ledger.close()
    return statistics.median(times), max(times)


def _quietly(write: Callable[..., object], *args: object, **kwargs: object) -> None:
    # A writer that waited past its busy timeout: expected here, not a result.
    with contextlib.suppress(sqlite3.Error):
        write(*args, **kwargs)
