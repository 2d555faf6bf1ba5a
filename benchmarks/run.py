"""`make bench`: every figure measured side by side in one run."""

from __future__ import annotations

import argparse
import platform

from benchmarks.commands import bench_commands
from benchmarks.overhead import bench_overhead


def section(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n== {title}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description="flopledger benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    print(f"flopledger benchmarks on {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")
    # The agent first, while this process has not loaded numba: the agent gives back
    # the pages of LLVM's library once its kernels are loaded, which the kernel can do
    # only for pages no other process maps (on a node, the agent is alone with them).
    section("agent overhead", bench_overhead(seconds=5 if args.quick else 40).rows())
    section("command latency", bench_commands(runs=3 if args.quick else 10).rows())
    from benchmarks.auth_storm import bench_auth_storm
    from benchmarks.cluster_ingest import bench_cluster_ingest
    from benchmarks.cluster_query import bench_cluster_query
    from benchmarks.kernel import bench_kernel
    from benchmarks.ledger import bench_ledger
    from benchmarks.prom_replay import bench_prom_replay
    from benchmarks.replay import bench_replay
    from benchmarks.scrape import bench_scrape

    section("integration kernel (one core)",
            bench_kernel(samples=800_000 if args.quick else 8_000_000).rows())
    section("/metrics scrape latency", bench_scrape(n=50 if args.quick else 500).rows())
    section("authorised scrape during a wrong-password storm",
            bench_auth_storm(storm=20 if args.quick else 100).rows())
    section("ledger", bench_ledger(hours=0.2 if args.quick else 2.0).rows())
    section("replay of an nvidia-smi log",
            bench_replay(rows=1_000_000 if args.quick else 10_000_000).rows())
    section("replay from Prometheus (dcgm-exporter series of 64 H100s)",
            bench_prom_replay(days=1 if args.quick else 7).rows())
    # A signed head every 8 records: what an agent with 8 GPUs and 60 s records seals at
    # each record window.
    section("cluster ledger ingest (PostgreSQL)",
            bench_cluster_ingest(nodes=4 if args.quick else 16,
                                 records=1000 if args.quick else 4000, per_append=8).rows())
    section("cluster ledger queries (PostgreSQL)",
            bench_cluster_query(records=100_000 if args.quick else 2_000_000).rows())


if __name__ == "__main__":
    main()
