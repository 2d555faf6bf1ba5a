"""Replay throughput and memory: a large nvidia-smi log through the whole replay (parse,
estimate, integrate, into a throwaway ledger) on one core (``--jobs 1``, the process
pinned to one CPU) and on all of them (``--jobs`` = the usable cores), side by side in
one run with the plain pandas script of :mod:`benchmarks.pandas_peer` (one core: pandas
uses one) and a plain ``csv.reader`` pass over the same file; MB/s of the log for each.
On one core the replay and pandas run in turn, three times each, and the best of each
counts (on a shared machine, the run least disturbed by others).
Then the replay's memory on a 1 M and a 10 M row log, each in its own process, to show
it does not grow with the file, on one core and on all: the growth of the peak RSS over
the process's RSS after warm-up (which includes the allocator's and SQLite's caches),
and, in a second run under ``tracemalloc``, the peak of what Python and NumPy allocated.

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

from agent.replay.parallel import usable_cores

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


def _pin_to_one_core() -> None:
    """Run this process on one CPU (the first it may use), threads included."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _child(log: Path, ledger: Path, traced: bool, jobs: int) -> None:
    """In a fresh process: warm up, then replay ``log`` with ``jobs`` workers (pinned to
    one core for one); print seconds, RSS (KiB) and, if ``traced``, the peak of memory
    allocated through Python and NumPy (KiB)."""
    from agent.replay.engine import ReplayEngine, ReplayOptions

    if jobs == 1:
        _pin_to_one_core()
    # Two blocks of warm-up: the buffers a block needs are the process's before the
    # measured replay, whose growth is then what the file's length adds.
    warm = log.with_name(f"warm-{os.getpid()}.csv")
    write_log(warm, 100_000)
    ReplayEngine(ledger.with_name(f"warm-{os.getpid()}.sqlite"),
                 ReplayOptions(jobs=jobs)).run([warm])
    base_kib = _peak_rss_kib()
    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    summary = ReplayEngine(ledger, ReplayOptions(jobs=jobs)).run([log])
    seconds = time.perf_counter() - start
    traced_kib = tracemalloc.get_traced_memory()[1] / 1024 if traced else 0.0
    peak_kib = _peak_rss_kib()
    print(json.dumps({"seconds": seconds, "rows": summary.rows, "samples": summary.samples,
                      "bad": summary.bad_count, "base_kib": base_kib, "peak_kib": peak_kib,
                      "traced_kib": traced_kib,
                      "central": str(summary.total.flop.central)}))


def _peak_rss_kib() -> int:
    """This process's peak RSS (KiB): ``VmHWM``, which starts afresh with the program.
    Not ``ru_maxrss``: Linux carries that across ``exec``, so a child of a large parent
    (``make bench`` after the kernel section) starts with the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _pandas_child(log: Path) -> None:
    """In a fresh process pinned to one core: the pandas peer over ``log``; seconds."""
    from benchmarks.pandas_peer import integrate_log

    _pin_to_one_core()
    start = time.perf_counter()
    flop = integrate_log(log)
    print(json.dumps({"seconds": time.perf_counter() - start, "gpus": len(flop)}))


def _in_child(*args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-m", "benchmarks.replay", *args], check=True,
                         capture_output=True, text=True, env=env)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _replay_in_child(log: Path, ledger: Path, jobs: int, traced: bool = False
                     ) -> dict[str, float]:
    return _in_child("--child", str(log), str(ledger), "--jobs", str(jobs),
                     *(["--traced"] if traced else []))


@dataclass(frozen=True)
class ReplayResult:
    n_rows: int
    file_bytes: int
    cores: int
    one_core_s: float
    all_cores_s: float
    pandas_s: float
    csv_s: float
    same_totals: bool
    small_rows: int
    small_growth_kib: float
    big_growth_kib: float
    big_peak_kib: float
    big_growth_all_kib: float
    big_peak_all_kib: float
    small_traced_kib: float
    big_traced_kib: float
    repeats: int = 1

    def _speed(self, seconds: float) -> str:
        return (f"{seconds:.2f} s  {self.file_bytes / seconds / 1e6:,.0f} MB/s  "
                f"{self.n_rows / seconds / 1e6:.2f} M rows/s")

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("nvidia-smi log (8 GPUs, with units)",
             f"{self.n_rows:,} rows, {self.file_bytes / 1e6:,.0f} MB"),
            ("replay, one core (--jobs 1)", f"{self._speed(self.one_core_s)}  (best of "
                                            f"{self.repeats}, in turn with pandas)"),
            (f"replay, all cores (--jobs {self.cores})",
             f"{self._speed(self.all_cores_s)}  (totals "
             f"{'bit-identical' if self.same_totals else 'DIFFERENT'} to --jobs 1)"),
            ("pandas peer (read_csv + integrate, one core)",
             f"{self._speed(self.pandas_s)}  (best of {self.repeats})"),
            ("csv.reader pass (splits rows only)", self._speed(self.csv_s)),
            ("replay vs pandas, one core",
             f"{self.pandas_s / self.one_core_s:.1f}x (target >= 3x)"),
            (f"replay vs pandas, {self.cores} cores",
             f"{self.pandas_s / self.all_cores_s:.1f}x"),
            ("replay vs csv.reader, one core", f"{self.csv_s / self.one_core_s:.1f}x"),
            (f"replay RSS growth, {self.small_rows:,} rows",
             f"{self.small_growth_kib / 1024:.1f} MiB"),
            (f"replay RSS growth, {self.n_rows:,} rows",
             f"{self.big_growth_kib / 1024:.1f} MiB (peak {self.big_peak_kib / 1024:.0f} MiB)"),
            (f"replay RSS growth, {self.n_rows:,} rows, --jobs {self.cores}",
             f"{self.big_growth_all_kib / 1024:.1f} MiB "
             f"(peak {self.big_peak_all_kib / 1024:.0f} MiB)"),
            (f"peak traced allocations, {self.small_rows:,} rows",
             f"{self.small_traced_kib / 1024:.1f} MiB"),
            (f"peak traced allocations, {self.n_rows:,} rows",
             f"{self.big_traced_kib / 1024:.1f} MiB"),
        ]


def bench_replay(rows: int = 10_000_000, small_rows: int = 1_000_000,
                 repeats: int = 3) -> ReplayResult:
    """Generate the logs in a temporary directory, time every pass, measure memory."""
    cores = usable_cores()
    with tempfile.TemporaryDirectory(prefix="flopledger-bench-") as tmp:
        d = Path(tmp)
        big, small = d / "big.csv", d / "small.csv"
        size = write_log(big, rows)
        write_log(small, small_rows, seed=1)
        small_run = _replay_in_child(small, d / "small.sqlite", 1)
        # One core, the replay and the pandas peer in turn, best of ``repeats`` each:
        # on a shared machine the best is the run least disturbed by others.
        ones, pandas_runs = [], []
        for k in range(repeats):
            ones.append(_replay_in_child(big, d / f"big-1-{k}.sqlite", 1))
            pandas_runs.append(_in_child("--pandas", str(big)))
        one = min(ones, key=lambda r: r["seconds"])
        pandas = min(pandas_runs, key=lambda r: r["seconds"])
        every = _replay_in_child(big, d / f"big-{cores}.sqlite", cores)
        small_traced = _replay_in_child(small, d / "small-t.sqlite", 1, traced=True)
        big_traced = _replay_in_child(big, d / "big-t.sqlite", 1, traced=True)
        _, csv_s = csv_pass(big)
        return ReplayResult(
            n_rows=rows, file_bytes=size, cores=cores, one_core_s=one["seconds"],
            all_cores_s=every["seconds"], pandas_s=pandas["seconds"], csv_s=csv_s,
            same_totals=one["central"] == every["central"], small_rows=small_rows,
            small_growth_kib=small_run["peak_kib"] - small_run["base_kib"],
            big_growth_kib=one["peak_kib"] - one["base_kib"], big_peak_kib=one["peak_kib"],
            big_growth_all_kib=every["peak_kib"] - every["base_kib"],
            big_peak_all_kib=every["peak_kib"], small_traced_kib=small_traced["traced_kib"],
            big_traced_kib=big_traced["traced_kib"], repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--small-rows", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=2, metavar=("LOG", "LEDGER"), help=argparse.SUPPRESS)
    parser.add_argument("--pandas", metavar="LOG", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(Path(args.child[0]), Path(args.child[1]), args.traced, args.jobs)
        return
    if args.pandas:
        _pandas_child(Path(args.pandas))
        return
    result = bench_replay(args.rows, args.small_rows)
    width = max(len(k) for k, _ in result.rows())
    for key, value in result.rows():
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
