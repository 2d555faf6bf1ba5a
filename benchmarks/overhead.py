"""Agent CPU and memory at 10 Hz on 8 simulated GPUs, measured from outside (the
scheduler's CPU account, psutil), and how soon after its start the agent answers on
/metrics.

A first, short run of the agent (not measured) fills the numba cache and compiles the
agent's bytecode, as any earlier start on the machine (or installing the package) has:
the start measured is the everyday one, not the first ever.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.footprint import resident_bytes
from benchmarks.commands import compiled_env
from tests.agentproc import free_port, scrape, total

_WINDOWS = 4


@dataclass(frozen=True)
class OverheadResult:
    interval_s: float
    gpus: int
    seconds: float
    cpu_percent_of_core: float
    rss_mb: float
    private_mb: float  # USS: what the agent alone holds (no shared library pages)
    llvm_mb: float  # resident pages of LLVM's library (numba), shared and clean
    ticks: float
    first_metrics_s: float
    source: str = "simulated"
    cpu_window_percents: tuple[float, ...] = ()  # the same, per quarter of the time

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("agent", f"{self.gpus} {self.source} GPUs at {1 / self.interval_s:g} Hz, "
                      f"{self.seconds:.0f} s measured after warm-up, {self.ticks:.0f} ticks"),
            ("CPU", f"{self.cpu_percent_of_core:.2f} % of one core " + (
                "(includes simulating the GPUs)" if self.source == "simulated" else
                "(includes the NVML calls)") + (
                f"; {len(self.cpu_window_percents)} windows of "
                f"{self.seconds / len(self.cpu_window_percents):.0f} s: "
                f"{min(self.cpu_window_percents):.2f}-{max(self.cpu_window_percents):.2f} %"
                if self.cpu_window_percents else "")),
            ("RSS", f"{self.rss_mb:.0f} MiB, of which {self.llvm_mb:.0f} MiB are LLVM's "
                    "library (numba's kernels load through it at start; the agent then "
                    "gives its pages back)"),
            ("private memory", f"{self.private_mb:.0f} MiB (USS: freed when the agent "
                               "stops)"),
            ("first /metrics", f"{self.first_metrics_s:.2f} s after the process started "
                               "(numba cache warm), with the first tick's counters"),
        ]


def _config(path: Path, state_dir: Path, interval_s: float, gpus: int,
            source: str = "simulated") -> Path:
    path.write_text(f"""
[agent]
interval_s = {interval_s}
source = "{source}"
state_dir = "{state_dir}"
[sim]
gpus = {gpus}
""")
    return path


def _agent_argv(config: Path, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "--log-level", "WARNING", "run", "--config",
            str(config), "--listen", f"127.0.0.1:{port}", *args]


def _first_metrics(url: str, proc: subprocess.Popen[str], started: float,
                   timeout_s: float = 60.0) -> float:
    """Seconds from ``started`` to the first scrape with a tick counted in it (polled
    every 20 ms)."""
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if total(scrape(url), "flopledger_sampler_ticks_total") > 0:
                return time.monotonic() - started
        time.sleep(0.02)
    raise TimeoutError(f"no metrics at {url}")


def bench_overhead(seconds: float = 20.0, interval_s: float = 0.1, gpus: int = 8,
                   source: str = "simulated") -> OverheadResult:
    """The agent measured from outside; ``source`` "nvml" on a machine with GPUs (then
    ``gpus`` is what the machine has, and the CPU figure includes the NVML calls)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**compiled_env(Path(tmp) / "pycache"), "PYTHONUNBUFFERED": "1"}
        warm = _config(Path(tmp) / "warm.toml", Path(tmp) / "warm", interval_s, gpus, source)
        subprocess.run(_agent_argv(warm, free_port(), "--exit-after", "1"), env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
                       check=True)
        config = _config(Path(tmp) / "agent.toml", Path(tmp) / "var", interval_s, gpus, source)
        port = free_port()
        started = time.monotonic()
        proc = subprocess.Popen(
            _agent_argv(config, port),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=env,
        )
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            first_metrics_s = _first_metrics(url, proc, started)
            time.sleep(3.0)  # past start-up: imports, kernel loading, first integrations
            p = psutil.Process(proc.pid)
            before = _cpu_s(p)
            ticks_before = _ticks(url)
            start = time.monotonic()
            # The whole and its quarters: how much the figure moves on this machine.
            marks = [(start, before)]
            for _ in range(_WINDOWS):
                time.sleep(seconds / _WINDOWS)
                marks.append((time.monotonic(), _cpu_s(p)))
            after = marks[-1][1]
            elapsed = marks[-1][0] - start
            ticks = _ticks(url) - ticks_before
            rss = p.memory_info().rss
            private = p.memory_full_info().uss
            llvm = resident_bytes(pid=proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    cpu = after - before
    windows = tuple(100.0 * (c1 - c0) / (t1 - t0)
                    for (t0, c0), (t1, c1) in itertools.pairwise(marks))
    return OverheadResult(interval_s, gpus, elapsed, 100.0 * cpu / elapsed, rss / 2**20,
                          private / 2**20, llvm / 2**20, ticks,
                          first_metrics_s, source, windows)


def _cpu_s(p: psutil.Process) -> float:
    """CPU seconds of the process's threads: from the scheduler's nanosecond account
    (``/proc/PID/task/*/schedstat``) where there is one. ``cpu_times`` counts in clock
    ticks of 10 ms: 0.05% of a core over 20 s, a twentieth of the figure measured."""
    try:
        tasks = list(Path(f"/proc/{p.pid}/task").iterdir())
    except OSError:
        times = p.cpu_times()
        return float(times.user + times.system)
    ns = 0
    for task in tasks:
        # A thread that ended since the listing is skipped, not a reason to switch to
        # the other account between two readings.
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            ns += int((task / "schedstat").read_text().split()[0])
    return ns / 1e9


def _ticks(url: str) -> float:
    return total(scrape(url), "flopledger_sampler_ticks_total")
