"""Cluster ledger ingest: records per second into PostgreSQL from concurrent node streams.

Builds ``nodes`` node ledgers (records of the default length, 60 s, for 8 GPUs of one
run; appended with :meth:`Ledger.append` in big batches, so each ledger has few signed
heads), starts a throwaway PostgreSQL (:mod:`benchmarks.pgserver`, the tests' server),
and replicates all of them at once from ``streams`` threads, each with its own
connection, shipping its nodes one after the other with :class:`Replicator`. The figure
is records stored per second of wall time, compared with the steady rate of a cluster of
2,048 nodes x 8 GPUs closing one record per GPU per 60 s.

    python -m benchmarks.cluster_ingest --nodes 16 --records 20000
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.accounting.records import LedgerRecord
from agent.ledger.pgconn import connect, ensure_schema
from agent.ledger.replicate import Replicator
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from benchmarks.pgserver import PgServer

GPUS = 8
RECORD_S = 60
CLUSTER_NODES = 2048
CLUSTER_RATE = CLUSTER_NODES * GPUS / RECORD_S  # records per second, steady state
T0_NS = 1_764_000_000 * 10**9


@dataclass(frozen=True)
class IngestResult:
    nodes: int
    records: int
    heads: int
    streams: int
    batch_records: int
    seconds: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds

    @property
    def ratio(self) -> float:
        return self.records_per_s / CLUSTER_RATE

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("workload", f"{self.nodes} node ledgers, {self.records} records of {RECORD_S} s "
                         f"x {GPUS} GPUs in all ({self.heads} signed heads), {self.streams} "
                         f"concurrent streams, batches of up to {self.batch_records}"),
            ("ingest", f"{self.records_per_s:,.0f} records/s ({self.seconds:.1f} s), "
                       "leaf hashes, roots and signatures checked, totals kept"),
            ("headroom", f"{self.ratio:,.0f} x the steady rate of {CLUSTER_NODES:,} nodes x "
                         f"{GPUS} GPUs ({CLUSTER_RATE:.0f} records/s)"),
        ]


def _record(node: str, gpu: int, start_ns: int) -> LedgerRecord:
    end_ns = start_ns + RECORD_S * 10**9
    return LedgerRecord(
        seq=-1, kind="interval", node=node, run="llama-70b-pretrain-2026-11",
        model="llama-70b", category="pre-training",
        gpu_uuid=f"GPU-5f1c{gpu:04x}-1a2b-3c4d-5e6f-0123456789ab", gpu_index=gpu,
        start_ns=start_ns, end_ns=end_ns, flop_low=4_912_345_000_000_000 * 12,
        flop_central=5_123_456_000_000_000 * 12, flop_high=5_398_765_000_000_000 * 12,
        energy_mj=41_481_468, samples=60, covered_ns=end_ns - start_ns, gap_ns=0,
        estimator="gpm_tensor",
        assumptions={"spec": "h100_sxm", "precision": "bf16", "undeclared_precisions": None,
                     "recompute_factor": 1.0, "split": "single", "share": 1.0,
                     "estimators": {"gpm_tensor": 60}, "tensor_activity_uncertainty": 0.02,
                     "max_gap_s": 5.0, "via": "env"},
    )


def build_node(state: Path, node: str, records: int, per_append: int = 2000) -> Path:
    """A closed ledger of ``records`` records (8 GPUs, one run, 60 s each) for ``node``
    in ``state``; a signed head every ``per_append`` records."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / "ledger.db"
    ledger = Ledger(path, node, load_or_create_key(state / "node.key"))
    try:
        done = 0
        while done < records:
            n = min(per_append, records - done)
            drafts = [_record(node, (done + i) % GPUS,
                              T0_NS + (done + i) // GPUS * RECORD_S * 10**9)
                      for i in range(n)]
            done += n
            ledger.append(drafts, T0_NS + (done // GPUS + 1) * RECORD_S * 10**9)
    finally:
        ledger.close()
    return path


def _build_one(args: tuple[Path, str, int, int]) -> Path:
    return build_node(*args)


def build_nodes(base: Path, nodes: int, records: int, per_append: int = 2000) -> list[Path]:
    """``nodes`` ledgers under ``base``, built in parallel processes."""
    jobs = [(base / f"node-{i:04d}", f"node-{i:04d}", records, per_append)
            for i in range(nodes)]
    with multiprocessing.get_context("spawn").Pool() as pool:
        return pool.map(_build_one, jobs)


def measure_ingest(server: PgServer, ledgers: list[Path], streams: int,
                   batch_records: int = 5000) -> tuple[int, int, float]:
    """Replicate every ledger into a fresh database from ``streams`` threads at once;
    (records stored, heads accepted, seconds)."""
    url = server.create_database("ingest")
    with connect(url) as conn:  # the schema in place before the clock starts
        ensure_schema(conn)
    shares = [ledgers[k::streams] for k in range(streams)]
    counts: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def stream(paths: list[Path]) -> None:
        try:
            with connect(url) as conn:
                for path in paths:
                    r = Replicator(path, lambda: conn, batch_records=batch_records, url=url)
                    result = r.run_until_caught_up()
                    with lock:
                        counts.append((result.records, result.heads))
        except BaseException as e:  # noqa: BLE001 - reported after the join
            errors.append(e)

    threads = [threading.Thread(target=stream, args=(s,)) for s in shares if s]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(c[0] for c in counts), sum(c[1] for c in counts), seconds


def bench_cluster_ingest(nodes: int = 16, records: int = 20_000, streams: int | None = None,
                         batch_records: int = 5000, per_append: int = 2000) -> IngestResult:
    streams = streams or min(nodes, 8)
    with tempfile.TemporaryDirectory() as tmp:
        ledgers = build_nodes(Path(tmp), nodes, records, per_append)
        server = PgServer()
        try:
            stored, heads, seconds = measure_ingest(server, ledgers, streams, batch_records)
        finally:
            server.destroy()
    if stored != nodes * records:
        raise RuntimeError(f"stored {stored} records, expected {nodes * records}")
    return IngestResult(nodes, stored, heads, streams, batch_records, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--records", type=int, default=20_000, help="records per node")
    parser.add_argument("--streams", type=int, default=None,
                        help="concurrent streams (default: min(nodes, 8))")
    parser.add_argument("--batch", type=int, default=5000, help="records per transaction")
    parser.add_argument("--per-append", type=int, default=2000,
                        help="records per signed head in the built ledgers")
    args = parser.parse_args()
    result = bench_cluster_ingest(args.nodes, args.records, args.streams, args.batch,
                                  args.per_append)
    width = max(len(k) for k, _ in result.rows())
    for key, value in result.rows():
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
