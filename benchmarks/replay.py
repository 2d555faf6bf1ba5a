"""Replay throughput and memory: a large nvidia-smi log through the whole replay (parse,
estimate, integrate, into a throwaway ledger) side by side with a plain ``csv.reader``
pass over the same file, in one run; and the replay's memory on a 1 M and a 10 M row
log, each in its own process, to show it does not grow with the file: the growth of the
peak RSS over the process's RSS after warm-up (which includes the allocator's and
SQLite's caches), and, in a second run under ``tracemalloc``, the peak of what Python
and NumPy allocated.

Run on its own: ``python -m benchmarks.replay [--rows N]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

GPUS = 8
HEADER = ("timestamp, index, uuid, name, pci.bus_id, utilization.gpu [%], "
          "clocks.current.sm [MHz], clocks.max.sm [MHz], power.draw [W], "
          "clocks_event_reasons.active\n")
START_S = 1_700_000_000  # 2023-11-14: every row of the largest log stays in the past


def write_log(path: Path, rows: int, seed: int = 0) -> int:
    """An nvidia-smi CSV log (with units) of ``rows`` lines, 8 GPUs sampled every second
    with realistic values; returns its size in bytes."""
    import random

    rng = random.Random(seed)
    uuids = [f"GPU-{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-"
             f"{rng.getrandbits(16):04x}-{rng.getrandbits(16):04x}-{rng.getrandbits(48):012x}"
             for _ in range(GPUS)]
    static = [f", {g}, {uuids[g]}, NVIDIA H100 80GB HBM3, 00000000:{0x18 + g:02X}:00.0, "
              for g in range(GPUS)]
    # Values cycle through precomputed variants: generating 10 M lines must not take
    # longer than replaying them.
    variants = [(f"{rng.randint(85, 100)} %, {rng.choice((1980, 1965, 1950, 1755))} MHz, "
                 f"1980 MHz, {rng.uniform(450, 700):.2f} W, "
                 f"{rng.choice(('0x0000000000000000', '0x0000000000000004'))}\n")
                for _ in range(997)]
    with path.open("w") as f:
        f.write(HEADER)
        lines: list[str] = []
        for tick in range(-(-rows // GPUS)):
            t = time.gmtime(START_S + tick)
            stamp = time.strftime("%Y/%m/%d %H:%M:%S", t)
            for g in range(min(GPUS, rows - tick * GPUS)):
                lines.append(f"{stamp}.{(g * 37 + tick) % 1000:03d}{static[g]}"
                             f"{variants[(tick * GPUS + g) % 997]}")
            if len(lines) >= 65536:
                f.write("".join(lines))
                lines.clear()
        f.write("".join(lines))
    return path.stat().st_size


def csv_pass(path: Path) -> tuple[int, float]:
    """Rows and seconds of a plain ``csv.reader`` pass (it only splits rows)."""
    start = time.perf_counter()
    n = 0
    with path.open(newline="") as f:
        for _ in csv.reader(f):
            n += 1
    return n, time.perf_counter() - start


def _child(log: Path, ledger: Path, traced: bool) -> None:
    """In a fresh process: warm up, then replay ``log``; print seconds, RSS (KiB) and,
    if ``traced``, the peak of memory allocated through Python and NumPy (KiB)."""
    from agent.replay.engine import ReplayEngine, ReplayOptions

    warm = log.with_name(f"warm-{os.getpid()}.csv")
    write_log(warm, 64)
    ReplayEngine(ledger.with_name(f"warm-{os.getpid()}.sqlite"), ReplayOptions()).run([warm])
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    summary = ReplayEngine(ledger, ReplayOptions()).run([log])
    seconds = time.perf_counter() - start
    traced_kib = tracemalloc.get_traced_memory()[1] / 1024 if traced else 0.0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "rows": summary.rows, "samples": summary.samples,
                      "bad": summary.bad_count, "base_kib": base_kib, "peak_kib": peak_kib,
                      "traced_kib": traced_kib}))


def _replay_in_child(log: Path, ledger: Path, traced: bool = False) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    flag = ["--traced"] if traced else []
    out = subprocess.run([sys.executable, "-m", "benchmarks.replay", "--child", str(log),
                          str(ledger), *flag], check=True, capture_output=True, text=True,
                         env=env)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@dataclass(frozen=True)
class ReplayResult:
    n_rows: int
    file_bytes: int
    replay_s: float
    csv_s: float
    small_rows: int
    small_growth_kib: float
    big_growth_kib: float
    big_peak_kib: float
    small_traced_kib: float
    big_traced_kib: float

    @property
    def ratio(self) -> float:
        return self.csv_s / self.replay_s

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("nvidia-smi log (8 GPUs, with units)",
             f"{self.n_rows:,} rows, {self.file_bytes / 1e6:,.0f} MB"),
            ("replay (parse+estimate+integrate+ledger)",
             f"{self.replay_s:.2f} s  {self.n_rows / self.replay_s / 1e6:.2f} M rows/s"),
            ("csv.reader pass",
             f"{self.csv_s:.2f} s  {self.n_rows / self.csv_s / 1e6:.2f} M rows/s"),
            ("replay vs csv.reader", f"{self.ratio:.1f}x (target >= 3x)"),
            (f"replay RSS growth, {self.small_rows:,} rows",
             f"{self.small_growth_kib / 1024:.1f} MiB"),
            (f"replay RSS growth, {self.n_rows:,} rows",
             f"{self.big_growth_kib / 1024:.1f} MiB (peak {self.big_peak_kib / 1024:.0f} MiB)"),
            (f"peak traced allocations, {self.small_rows:,} rows",
             f"{self.small_traced_kib / 1024:.1f} MiB"),
            (f"peak traced allocations, {self.n_rows:,} rows",
             f"{self.big_traced_kib / 1024:.1f} MiB"),
        ]


def bench_replay(rows: int = 10_000_000, small_rows: int = 1_000_000) -> ReplayResult:
    """Generate the logs in a temporary directory, time both passes, measure memory."""
    with tempfile.TemporaryDirectory(prefix="flopledger-bench-") as tmp:
        d = Path(tmp)
        big, small = d / "big.csv", d / "small.csv"
        size = write_log(big, rows)
        write_log(small, small_rows, seed=1)
        small_run = _replay_in_child(small, d / "small.sqlite")
        big_run = _replay_in_child(big, d / "big.sqlite")
        small_traced = _replay_in_child(small, d / "small-t.sqlite", traced=True)
        big_traced = _replay_in_child(big, d / "big-t.sqlite", traced=True)
        _, csv_s = csv_pass(big)
        return ReplayResult(
            n_rows=rows, file_bytes=size, replay_s=big_run["seconds"], csv_s=csv_s,
            small_rows=small_rows,
            small_growth_kib=small_run["peak_kib"] - small_run["base_kib"],
            big_growth_kib=big_run["peak_kib"] - big_run["base_kib"],
            big_peak_kib=big_run["peak_kib"], small_traced_kib=small_traced["traced_kib"],
            big_traced_kib=big_traced["traced_kib"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--small-rows", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=2, metavar=("LOG", "LEDGER"), help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(Path(args.child[0]), Path(args.child[1]), args.traced)
        return
    result = bench_replay(args.rows, args.small_rows)
    width = max(len(k) for k, _ in result.rows())
    for key, value in result.rows():
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
