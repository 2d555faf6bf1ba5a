"""`make gpu-check`: the agent's FLOP band against exactly counted work on real GPUs.

On every GPU PyTorch sees, a child process (:mod:`benchmarks.gpu_workloads`) runs
phases of exactly known FLOP while this process samples all GPUs with the agent's own
NVML source, accountant and sampling loop (:class:`~agent.sampler.Sampler`, without a
ledger, committing at every tick). The phases, at ``--scale 1``: dense bf16 matrix
products 60 s, fp8 scaled matrix products 60 s (compute capability 8.9+), tf32 matrix
products 30 s, float32 copies 20 s (memory-bound: known bytes, zero FLOP), idle 15 s;
with set-up and the waits between phases the whole run takes about four minutes
(``--scale 0.1``: under one). No run declares the work, so the agent estimates it as
it would any undeclared job: default estimator settings, matmul precision undeclared.

Each phase's window on the agent's side runs from the last tick before the work started
to the first tick after it ended, and the GPUs do nothing else in between (buffers are
allocated and warmed up before that first tick), so the agent's totals over the window
must hold the exact FLOP. The table gives per phase and GPU: the exact FLOP, the
agent's central [low .. high], the central's error, whether the band holds the exact
figure, the mean GPM tensor activity seen, the estimator and the spec it used, and the
NVML + GPM cost: the time spent in the source's ``read()`` per tick, divided by the
number of GPUs. Exit status: 0 if every band measured holds its exact FLOP, 1 if one
does not, 2 if the check could not run (no NVML, a bad spec table), 130 on Ctrl-C.
Run it on an otherwise idle machine: other work on a GPU is counted by the agent but
not by the check.

Without PyTorch (or with ``--dry-run``) every workload phase says it was skipped and
why; the idle phase and the NVML + GPM cost are still measured.

Requirements: Python 3.11+, numba, numpy, nvidia-ml-py, prometheus-client, psutil, and
PyTorch with CUDA for the workloads. cryptography, bcrypt, PyYAML and matplotlib are not
needed: nothing on this path imports them. Run from the repository root, with the
project's venv (``make gpu-check``) or with packages installed system-wide and no
venv (``PYTHON=python3 make gpu-check``, which runs ``python3 -m benchmarks.gpu_check``
as is). Options after ``ARGS=``, e.g. ``make gpu-check ARGS="--scale 0.1"``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent import figures
from agent.accounting.accountant import Accountant
from agent.accounting.band import Band
from agent.accounting.estimate import EstimatorSettings
from agent.accounting.integrate import warm_up
from agent.accounting.records import LedgerRecord
from agent.configfile import ConfigError
from agent.sampler import Sampler
from agent.sources.base import DeviceInfo, GpuSource, SampleBatch, SourceError
from agent.sources.clock import RealClock
from agent.sources.nvml import NvmlSource
from agent.sources.specs import ResolvedSpec, SpecBasis, SpecTable, load_spec_table
from benchmarks.gpu_workloads import CHILD_GRACE_S, WorkloadError, WorkloadProcess


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float  # at --scale 1
    what: str


PHASES = (
    Phase("bf16", 60.0, "dense bf16 matrix products"),
    Phase("fp8", 60.0, "fp8 scaled matrix products"),
    Phase("tf32", 30.0, "tf32 matrix products"),
    Phase("memory", 20.0, "float32 copies: memory-bound, 0 FLOP"),
    Phase("idle", 15.0, "nothing"),
)


class CheckError(Exception):
    """The check cannot go on; the message is one line for the operator."""


class TimedSource:
    """A source whose ``read()`` is timed: the NVML + GPM cost of a tick."""

    def __init__(self, source: GpuSource) -> None:
        self.source = source
        self.last_read_s = 0.0

    @property
    def kind(self) -> str:
        return self.source.kind

    def devices(self) -> Sequence[DeviceInfo]:
        return self.source.devices()

    def read(self) -> SampleBatch:
        started = time.perf_counter()
        batch = self.source.read()
        self.last_read_s = time.perf_counter() - started
        return batch

    def close(self) -> None:
        self.source.close()


@dataclass
class Tick:
    """What one tick committed, per GPU position."""

    first_ns: int  # monotonic time of the tick's first GPU read
    read_s: float
    batch: SampleBatch
    flop: list[Band[int]]
    estimators: list[Counter[str]]


class Timeline:
    """Every tick's committed records, per GPU, for windows taken afterwards.

    ``on_commit`` is the sampler's commit hook: with a checkpoint at every tick, the
    records a tick commits are exactly what it added.
    """

    def __init__(self, accountant: Accountant, source: TimedSource) -> None:
        self.accountant = accountant
        self.source = source
        self.positions = {d.uuid: i for i, d in enumerate(accountant.devices)}
        self.ticks: list[Tick] = []
        self.stopped = False
        self._cond = threading.Condition()

    def on_commit(self, records: Sequence[LedgerRecord]) -> None:
        batch = self.accountant.last_batch
        if batch is None:
            return
        with self._cond:
            if not self.ticks or self.ticks[-1].batch is not batch:
                n = batch.n_gpus
                self.ticks.append(Tick(int(batch.timestamp_ns.min()), self.source.last_read_s,
                                       batch, [Band(0, 0, 0)] * n,
                                       [Counter() for _ in range(n)]))
            # The final checkpoint may commit again for the last batch: same tick.
            tick = self.ticks[-1]
            for r in records:
                pos = self.positions[r.gpu_uuid]
                tick.flop[pos] = tick.flop[pos] + r.flop
                used = r.assumptions.get("estimators")
                if isinstance(used, dict):
                    tick.estimators[pos].update({str(k): int(v) for k, v in used.items()})
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self.stopped = True
            self._cond.notify_all()

    def wait_past(self, mono_ns: int, timeout_s: float, ticks: int = 1) -> None:
        """Wait until ``ticks`` ticks have read every GPU after ``mono_ns``.

        Raises:
            CheckError: the sampler stopped or no tick came within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while sum(1 for t in self.ticks if t.first_ns >= mono_ns) < ticks:
                left = deadline - time.monotonic()
                if self.stopped or left <= 0:
                    raise CheckError("the sampler stopped ticking" if self.stopped else
                                     f"no sample within {timeout_s:.0f} s")
                self._cond.wait(min(left, 0.5))

    def window(self, pos: int, start_ns: int, end_ns: int) -> Measured | None:
        """GPU ``pos``'s totals from the last tick before ``start_ns`` to the first
        tick after ``end_ns``; None if no tick brackets the span."""
        with self._cond:
            ticks = list(self.ticks)
        read_ns = [int(t.batch.timestamp_ns[pos]) for t in ticks]
        before = [k for k, ns in enumerate(read_ns) if ns <= start_ns]
        after = [k for k, ns in enumerate(read_ns) if ns >= end_ns]
        if not before or not after:
            return None
        inside = ticks[before[-1] + 1: after[0] + 1]
        flop: Band[int] = Band(0, 0, 0)
        used: Counter[str] = Counter()
        for t in inside:
            flop = flop + t.flop[pos]
            used.update(t.estimators[pos])
        tensor = np.array([t.batch.tensor_any_pct[pos] for t in inside], dtype=np.float64)
        seen = tensor[~np.isnan(tensor)]
        n_gpus = inside[0].batch.n_gpus
        return Measured(flop, used, float(seen.mean()) if seen.size else None,
                        sum(t.read_s for t in inside) / len(inside) / n_gpus * 1e6)


@dataclass(frozen=True)
class Measured:
    """The agent's view of one GPU over one window."""

    flop: Band[int]
    estimators: Counter[str]
    tensor_any_pct: float | None
    read_us_per_gpu: float

    def estimator(self) -> str:
        total = sum(self.estimators.values())
        if not total:
            return "none"
        return "+".join(f"{name}" if count == total else f"{name} {100 * count / total:.0f}%"
                        for name, count in self.estimators.most_common())


@dataclass
class Row:
    phase: str
    gpu: str
    note: str = ""  # a skipped row says why, and nothing else
    exact_flop: int = 0
    measured: Measured | None = None
    spec: str = ""
    work: str = ""

    @property
    def holds(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured.flop.low <= self.exact_flop <= self.measured.flop.high


def resolve_specs(devices: Sequence[DeviceInfo], table: SpecTable
                  ) -> list[tuple[ResolvedSpec, str]]:
    """Each device's peak model, resolved from what the driver says of it as the live
    agent resolves it, and its basis in words for the table."""
    out: list[tuple[ResolvedSpec, str]] = []
    for d in devices:
        r = table.resolve(d.name, pci_device_id=d.pci_device_id,
                          compute_capability=d.compute_capability, sm_count=d.sm_count,
                          max_sm_clock_mhz=d.max_sm_clock_mhz)
        basis = f"{r.basis} {r.spec.key}"
        out.append((r, basis if r.basis == SpecBasis.TABLE else f"{basis}: {r.reason}"))
    return out


def match_devices(cuda: Sequence[dict[str, object]], nvml: Sequence[DeviceInfo]
                  ) -> dict[int, int]:
    """CUDA device index -> NVML position: by UUID, else by position where CUDA's order
    is NVML's (the child sets PCI bus order; no CUDA_VISIBLE_DEVICES) and names agree."""
    by_uuid = {d.uuid.lower().removeprefix("gpu-"): pos for pos, d in enumerate(nvml)}
    out: dict[int, int] = {}
    by_index = "CUDA_VISIBLE_DEVICES" not in os.environ and len(cuda) == len(nvml)
    for c in cuda:
        index = int(str(c["cuda_index"]))
        uuid = c.get("uuid")
        pos = by_uuid.get(str(uuid).lower().removeprefix("gpu-")) if uuid else None
        if pos is None and by_index and nvml[index].name == c.get("name"):
            pos = index
        if pos is not None:
            out[index] = pos
    return out


def run_phases(args: argparse.Namespace, timeline: Timeline, devices: Sequence[DeviceInfo],
               bases: Sequence[str], workload: WorkloadProcess | None, why_not: str
               ) -> list[Row]:
    interval_s = float(args.interval_s)
    tick_wait_s = 10 * interval_s + 10
    timeline.wait_past(time.monotonic_ns(), tick_wait_s, ticks=2)  # GPM needs two samples
    cuda = [] if workload is None else list(_devices_of(workload.hello))
    matched = match_devices(cuda, devices)
    rows: list[Row] = []
    for phase in PHASES:
        seconds = max(phase.seconds * args.scale, 0.05)
        if phase.name == "idle" or workload is not None:
            print(f"  {phase.name}: {phase.what}, {seconds:.3g} s", file=sys.stderr, flush=True)
        if phase.name == "idle":
            timeline.wait_past(time.monotonic_ns(), tick_wait_s)
            start_ns = time.monotonic_ns()
            time.sleep(seconds)
            end_ns = time.monotonic_ns()
            timeline.wait_past(end_ns, tick_wait_s)
            for pos, d in enumerate(devices):
                rows.append(Row(phase.name, str(d.index), exact_flop=0, spec=bases[pos],
                                measured=timeline.window(pos, start_ns, end_ns)))
            continue
        if workload is None:
            rows.append(Row(phase.name, "-", note=f"skipped: {why_not}"))
            continue
        ready = workload.request({"cmd": "prepare", "phase": phase.name, "seconds": seconds,
                                  "matrix_n": args.matrix_n}, CHILD_GRACE_S)
        skipped = ready.get("skipped")
        for index, why in (skipped.items() if isinstance(skipped, dict) else ()):
            rows.append(Row(phase.name, f"cuda:{index}", note=f"skipped: {why}"))
        if isinstance(skipped, dict) and len(skipped) == len(cuda):
            continue
        # The next tick is the window's start: nothing of the set-up falls inside it.
        timeline.wait_past(time.monotonic_ns(), tick_wait_s)
        done = workload.request({"cmd": "go"}, seconds + CHILD_GRACE_S)
        results = done.get("devices")
        results = results if isinstance(results, list) else []
        if not results:
            rows.append(Row(phase.name, "-", note="skipped: the workload ran on no device"))
            continue
        timeline.wait_past(max(int(r["end_ns"]) for r in results), tick_wait_s)
        for r in results:
            index = int(r["cuda_index"])
            at = matched.get(index)
            if at is None:
                rows.append(Row(phase.name, f"cuda:{index}",
                                note="skipped: matched to no NVML GPU by UUID or PCI order"))
                continue
            moved = int(r["bytes"])
            rows.append(Row(phase.name, str(devices[at].index), exact_flop=int(r["flop"]),
                            spec=bases[at],
                            measured=timeline.window(at, int(r["start_ns"]), int(r["end_ns"])),
                            work=f"{int(r['ops'])} ops" + (f", {moved:.3e} B" if moved else "")))
    return rows


def _devices_of(hello: dict[str, object]) -> list[dict[str, object]]:
    devices = hello.get("devices")
    return [d for d in devices if isinstance(d, dict)] if isinstance(devices, list) else []


def print_table(rows: Sequence[Row], read_us: Sequence[float], n_gpus: int) -> None:
    header = ("phase", "gpu", "exact FLOP", "agent central [low .. high]", "error",
              "holds", "tensor %", "estimator (spec)", "NVML+GPM us/GPU/tick", "work")
    lines: list[tuple[str, ...]] = []
    for r in rows:
        m = r.measured
        if r.note:
            lines.append((r.phase, r.gpu, r.note))
        elif m is None:
            lines.append((r.phase, r.gpu, "no tick brackets the phase: not measured"))
        else:
            error = ("n/a (exact 0)" if r.exact_flop == 0
                     else f"{100 * (m.flop.central / r.exact_flop - 1):+.1f}%")
            exact = f"{r.exact_flop:.4e}" if r.exact_flop else "0"
            lines.append((r.phase, r.gpu, exact, figures.band(*m.flop), error,
                          "yes" if r.holds else "NO",
                          "n/a" if m.tensor_any_pct is None else f"{m.tensor_any_pct:.1f}",
                          f"{m.estimator()} ({r.spec})", f"{m.read_us_per_gpu:.0f}", r.work))
    widths = [max(len(header[k]), *(len(line[k]) for line in lines if len(line) > 3 or k < 2))
              for k in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for line in lines:
        if len(line) == 3:  # phase, gpu, a note spanning the rest
            print(f"{line[0].ljust(widths[0])}  {line[1].ljust(widths[1])}  {line[2]}")
        else:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    if read_us:
        per_gpu = np.array(read_us) / n_gpus
        print(f"NVML + GPM cost per GPU per tick (time in the source's read() / GPUs): "
              f"mean {per_gpu.mean():.1f} us, median {np.median(per_gpu):.1f} us, "
              f"max {per_gpu.max():.1f} us, over {len(read_us)} ticks of {n_gpus} GPU(s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every phase's length (0.1: a smoke run)")
    parser.add_argument("--interval-s", type=float, default=1.0,
                        help="the sampling interval (the agent's default: 1 s)")
    parser.add_argument("--matrix-n", type=int, default=8192,
                        help="matrix size n of the n x n x n products")
    parser.add_argument("--dry-run", action="store_true",
                        help="no workloads even if PyTorch is installed: idle and cost only")
    args = parser.parse_args(argv)
    if not (args.scale > 0 and math.isfinite(args.scale)) or not 0.1 <= args.interval_s <= 5:
        parser.error("--scale must be > 0 and --interval-s within [0.1, 5]")
    if args.matrix_n < 16 or args.matrix_n % 16:
        parser.error("--matrix-n must be a positive multiple of 16 (fp8 needs it)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return check(args)
    except (CheckError, WorkloadError, SourceError, ConfigError) as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpu-check: interrupted", file=sys.stderr)
        return 130


def check(args: argparse.Namespace) -> int:
    table = load_spec_table()
    source = TimedSource(NvmlSource(table))
    workload: WorkloadProcess | None = None
    why_not = "--dry-run"
    try:
        devices = list(source.devices())
        specs = resolve_specs(devices, table)
        for d, (_spec, basis) in zip(devices, specs, strict=True):
            print(f"GPU {d.index}: {d.name} ({d.uuid}), {basis}, "
                  f"tensor activity from {d.activity_kind.name}")
        warm_up()
        clock = RealClock()
        accountant = Accountant(devices, [s for s, _ in specs], EstimatorSettings(),
                                clock.wall_ns(), source.kind, node=socket.gethostname())
        timeline = Timeline(accountant, source)
        sampler = Sampler(source, accountant, clock, args.interval_s, checkpoint_ticks=1,
                          record_s=None, on_commit=timeline.on_commit, publish_s=None)
        thread = threading.Thread(target=sampler.run, name="sampler", daemon=True)
        thread.start()
        try:
            if not args.dry_run:
                workload = WorkloadProcess()
                if workload.hello.get("why"):
                    why_not = str(workload.hello["why"])
                    if workload.hello.get("torch") is None:
                        why_not = "torch not installed"
                    workload.close()
                    workload = None
            using = (f"torch {workload.hello.get('torch')}" if workload is not None
                     else f"none ({why_not})")
            print(f"workloads: {using}", file=sys.stderr)
            rows = run_phases(args, timeline, devices, [b for _, b in specs], workload,
                              why_not)
        finally:
            if workload is not None:
                workload.close()
            sampler.stop_event.set()
            thread.join()
            timeline.stop()
        if sampler.failure is not None:
            raise CheckError(f"the sampler failed: {sampler.failure}")
    finally:
        source.close()
    print_table(rows, [t.read_s * 1e6 for t in timeline.ticks], len(devices))
    missed = [f"{r.phase} on GPU {r.gpu}" for r in rows if r.holds is False]
    skipped = list(dict.fromkeys(r.phase for r in rows if r.note))
    if skipped:
        print(f"skipped: {', '.join(skipped)}")
    if missed:
        print(f"THE BAND MISSES THE EXACT FLOP: {', '.join(missed)}")
        return 1
    print("every band measured holds the exact FLOP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
