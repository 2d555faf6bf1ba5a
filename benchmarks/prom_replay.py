"""Replay from a real Prometheus: samples per second, and where the time goes.

A week (a day with ``--quick``) of dcgm-exporter series of 64 H100s sampled every 60 s
(:mod:`tests.replay.promdata`; a week rather than the tests' month keeps the backfill
to a minute or two) is backfilled with ``promtool`` into a temporary storage, served
by Prometheus, and replayed into a throwaway ledger with 4 and with 1 query in flight.
The server's time (from each query to the last byte of its answer, summed over the
fetching threads) is set beside ours: decoding the JSON, and accounting (joining,
judging, integrating, writing the ledger) in the main thread.

Run on its own: ``python -m benchmarks.prom_replay [--days N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.replay.engine import ReplayOptions
from agent.replay.remote import RemoteOptions, RemoteStats, ServerReplay
from tests.replay import promdata as pd


@dataclass(frozen=True)
class PromReplayResult:
    days: int
    samples: int
    backfill_s: float
    runs: list[tuple[int, RemoteStats]]  # (parallel, stats)
    skipped: str = ""

    def rows(self) -> list[tuple[str, str]]:
        if self.skipped:
            return [("replay from Prometheus", f"skipped: {self.skipped}")]
        out = [(f"data set ({self.days} d, 64 GPUs, 60 s)",
                f"{self.samples:,} GPU samples, backfilled by promtool in "
                f"{self.backfill_s:.0f} s")]
        for parallel, s in self.runs:
            out += [
                (f"replay, {parallel} in flight",
                 f"{s.wall_s:.1f} s  {self.samples / s.wall_s:,.0f} samples/s  "
                 f"({s.requests} queries, {s.points / 1e6:.1f} M points, "
                 f"{s.bytes_read / 1e6:.0f} MB gzip)"),
                ("  server answering (summed)", f"{s.wait_s:.1f} s"),
                ("  decoding JSON (summed)", f"{s.decode_s:.1f} s"),
                ("  accounting + ledger", f"{s.account_s:.1f} s  "
                                          f"{self.samples / s.account_s:,.0f} samples/s"),
            ]
        return out


def bench_prom_replay(days: int = 7) -> PromReplayResult:
    """Backfill, serve and replay ``days`` of the data set."""
    if pd.PROMETHEUS is None or pd.PROMTOOL is None:
        return PromReplayResult(days, 0, 0.0, [], "no prometheus/promtool (make system-deps)")
    ds = pd.Dataset(days)
    with tempfile.TemporaryDirectory(prefix="flopledger-bench-prom-") as tmp:
        d = Path(tmp)
        started = time.perf_counter()
        pd.backfill(ds, d / "blocks")
        backfill_s = time.perf_counter() - started
        runs = []
        with pd.prometheus(d / "blocks", d) as server:
            for parallel in (4, 1):
                replay = ServerReplay(
                    RemoteOptions(server.url, pd.START_S * 1000, ds.end_s * 1000,
                                  step_ms=60_000, parallel=parallel),
                    d / f"ledger-{parallel}.sqlite", ReplayOptions())
                result = replay.run()
                assert result.summary is not None
                runs.append((parallel, replay.stats))
        return PromReplayResult(days, ds.samples(), backfill_s, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=7)
    result = bench_prom_replay(parser.parse_args().days)
    width = max(len(k) for k, _ in result.rows())
    for key, value in result.rows():
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
