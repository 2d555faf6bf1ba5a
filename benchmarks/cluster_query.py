"""Cluster ledger queries at scale: a run's cluster-wide total and every model's totals
per regulatory scope, over a store of many records; and storage per GPU-day.

The store is filled in PostgreSQL itself (``generate_series``): ``records`` rows of
``fl_records`` spread over ``nodes`` nodes, each a real record body of the default
length (60 s of one GPU, the body the agent writes), and the per-(run, node) totals
the replicator keeps beside them (``fl_run_totals``, ``runs`` runs of ``models``
models, some fine-tunes of others). The queries are the ones the commands and the
cluster service run: one run's total summed over its nodes, and the per-run totals and
runs rows from which every model's totals per scope are built (lineage included),
timed end to end in Python. Storage per GPU-day: the size of ``fl_records`` with its
indexes, per record, times the 1,440 records a GPU closes in a day.

    python -m benchmarks.cluster_query --records 100000000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

from agent.accounting.band import Band
from agent.compliance.lineage import load_scopes, model_view
from agent.ledger.pgconn import connect, ensure_schema
from agent.ledger.query import RunSummary
from benchmarks.cluster_ingest import T0_NS, _record
from benchmarks.pgserver import PgServer

RECORDS_PER_GPU_DAY = 86400 // 60


@dataclass(frozen=True)
class QueryResult:
    records: int
    nodes: int
    runs: int
    fill_s: float
    run_total_ms: tuple[float, float]  # median, p99
    scopes_ms: tuple[float, float]
    bytes_per_record: float
    pass_window_ms: tuple[float, float]  # the leader's evaluation, the window's records
    pass_every_record_ms: float  # the same evaluation reading every record
    window_records: int

    def rows(self) -> list[tuple[str, str]]:
        gb_day = self.bytes_per_record * RECORDS_PER_GPU_DAY
        return [
            ("store", f"{self.records:,} records of {self.nodes} nodes, {self.runs} runs "
                      f"(filled in {self.fill_s:.0f} s)"),
            ("run total", f"median {self.run_total_ms[0]:.2f} ms, p99 "
                          f"{self.run_total_ms[1]:.2f} ms (one run, summed over its nodes)"),
            ("model totals per scope", f"median {self.scopes_ms[0]:.1f} ms, p99 "
                                       f"{self.scopes_ms[1]:.1f} ms (every model, every "
                                       "scope, lineage; from the kept totals)"),
            ("storage", f"{self.bytes_per_record:.0f} bytes per record with indexes: "
                        f"{gb_day / 1024:.0f} KiB per GPU-day"),
            ("service pass", f"median {self.pass_window_ms[0]:.0f} ms, p99 "
                             f"{self.pass_window_ms[1]:.0f} ms (the leader's threshold "
                             f"evaluation: stored totals, the {self.window_records:,} "
                             "records of the last hour's rate window, milestones)"),
            ("same, every record read",
             f"{self.pass_every_record_ms:,.0f} ms ("
             f"{self.pass_every_record_ms / self.pass_window_ms[0]:.0f}x the windowed pass;"
             " grows with the history)"),
        ]


def _fill(conn: object, records: int, nodes: int, runs: int, models: int) -> None:
    import psycopg

    assert isinstance(conn, psycopg.Connection)
    body = _record("node-0000", 0, T0_NS).encode()
    conn.execute(
        "INSERT INTO fl_nodes (node_key, node, origin, public_key, records, first_seen_ns,"
        " last_seen_ns) SELECT md5(n::text) || md5((n + 1)::text), 'node-' || n,"
        " 'node-' || n, '\\x00'::bytea, %s, 0, 0 FROM generate_series(0, %s - 1) n",
        (records // nodes, nodes))
    per_node = records // nodes
    # One statement per node keeps each transaction's memory small.
    for n in range(nodes):
        conn.execute(
            "INSERT INTO fl_records (node_key, seq, body, leaf_hash, kind, run, model,"
            " category, gpu_uuid, start_ns, end_ns, flop_low, flop_central, flop_high,"
            " energy_mj) SELECT md5(%s::text) || md5((%s + 1)::text), s, %s,"
            " sha256(int8send(s)), 'interval', 'run-' || ((s / 8) %% %s), 'model-' ||"
            " ((s / 8) %% %s %% %s), 'pre-training', 'GPU-' || (s %% 8), %s + s * 60000000000,"
            " %s + s * 60000000000 + 60000000000, 58948140000000000, 61481472000000000,"
            " 64785180000000000, 41481468 FROM generate_series(0, %s - 1) s",
            (n, n, body, runs, runs, models, T0_NS, T0_NS, per_node))
        conn.commit()
    conn.execute(
        "INSERT INTO fl_run_totals SELECT r.run, n.node_key, 'model-' || (r.i %% %s),"
        " 'pre-training', 5.9e16 * %s, 6.1e16 * %s, 6.5e16 * %s, 4.1e7 * %s, 60 * %s,"
        " 6e10 * %s, 0, %s, %s, %s FROM (SELECT 'run-' || i AS run, i FROM"
        " generate_series(0, %s - 1) i) r CROSS JOIN fl_nodes n",
        (models, *(per_node // runs,) * 6, per_node // runs, T0_NS, T0_NS + 10**15, runs))
    # Every tenth model is a fine-tune of model-0: lineage to follow.
    conn.execute(
        "INSERT INTO fl_runs SELECT n.node_key, 'run-' || i, 'model-' || (i %% %s),"
        " 'pre-training', CASE WHEN i %% %s %% 10 = 9 THEN %s ELSE %s END"
        " FROM generate_series(0, %s - 1) i CROSS JOIN fl_nodes n",
        (models, models, json.dumps({"via": "env", "base_models": ["model-0"]}),
         json.dumps({"via": "env"}), runs))
    conn.commit()
    conn.execute("ANALYZE")
    conn.commit()


def _timed(fn: object, repeat: int) -> tuple[float, float]:
    assert callable(fn)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.99 * len(times)))]


def bench_cluster_query(records: int = 1_000_000, nodes: int = 64, runs: int = 200,
                        models: int = 50, repeat: int = 50) -> QueryResult:
    server = PgServer()
    try:
        url = server.create_database("query")
        with connect(url) as conn:
            ensure_schema(conn)
            conn.commit()
            start = time.perf_counter()
            _fill(conn, records, nodes, runs, models)
            fill_s = time.perf_counter() - start
            scopes = load_scopes()

            def run_total() -> None:
                conn.execute("SELECT sum(flop_low), sum(flop_central), sum(flop_high),"
                             " count(*) FROM fl_run_totals WHERE run = %s",
                             ("run-17",)).fetchone()

            def model_scopes() -> None:
                rows = conn.execute(
                    "SELECT t.run, min(t.model), min(t.category), sum(t.flop_low),"
                    " sum(t.flop_central), sum(t.flop_high), min(r.meta) FROM fl_run_totals"
                    " t JOIN fl_runs r ON r.node_key = t.node_key AND r.run = t.run"
                    " GROUP BY t.run").fetchall()
                summaries = {}
                for run, model, category, low, central, high, meta in rows:
                    s = RunSummary(run, model=model, category=category,
                                   flop=Band(int(low), int(central), int(high)))
                    s.meta = json.loads(meta)
                    summaries[run] = s
                view = model_view({}, scopes, summaries)
                for m in {s.model for s in summaries.values()}:
                    view.totals(m)

            run_ms = _timed(run_total, repeat)
            scope_ms = _timed(model_scopes, max(5, repeat // 5))
            window_ms, every_ms, window_records = _service_pass(url, records // nodes)
            size = conn.execute("SELECT pg_total_relation_size('fl_records')").fetchone()
            assert size is not None
            bytes_per_record = int(size[0]) / records
    finally:
        server.destroy()
    return QueryResult(records, nodes, runs, fill_s, run_ms, scope_ms, bytes_per_record,
                       window_ms, every_ms, window_records)


def _service_pass(url: str, per_node: int) -> tuple[tuple[float, float], float, int]:
    """The cluster service leader's evaluation at the end of the history (every node's
    last record ends then), as it runs it (the window's records), and the same with
    every record read, as a pass did before the window."""
    from agent.cluster.evaluator import ClusterWatcher, StoreMilestones
    from agent.cluster.reading import cluster_head, compute_records, read_milestones
    from agent.compliance.evaluate import evaluate
    from agent.compliance.thresholds import ThresholdSettings, load_registry
    from agent.ledger.pg_query import ClusterView

    now_ns = T0_NS + per_node * 60 * 10**9
    settings = ThresholdSettings()
    registry = load_registry()
    with connect(url, autocommit=True) as write:
        watcher = ClusterWatcher(settings, {}, registry, StoreMilestones(lambda: write),
                                 wall_ns=lambda: now_ns)

        def windowed() -> None:
            with ClusterView.open(url) as view:
                watcher.evaluate_view(view, view.run_summaries())

        def every_record() -> None:
            with ClusterView.open(url) as view:
                evaluate({}, registry, None, now_ns, records=compute_records(view),
                         milestones=read_milestones(view), summaries=view.run_summaries(),
                         tree_head=cluster_head(view))

        window_ms = _timed(windowed, 5)
        every_ms = _timed(every_record, 1)[0]
        with ClusterView.open(url) as view:
            cut = now_ns - round(settings.window_s * 1e9)
            window_records = sum(1 for _ in compute_records(view, ends_after_ns=cut))
    return window_ms, every_ms, window_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    result = bench_cluster_query(args.records, args.nodes, args.runs)
    width = max(len(k) for k, _ in result.rows())
    for key, value in result.rows():
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
