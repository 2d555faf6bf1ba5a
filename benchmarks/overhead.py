"""Agent CPU and memory at 10 Hz on 8 simulated GPUs, measured from outside with psutil."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.agentproc import free_port, wait_for


@dataclass(frozen=True)
class OverheadResult:
    interval_s: float
    gpus: int
    seconds: float
    cpu_percent_of_core: float
    rss_mb: float
    ticks: float

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("agent", f"{self.gpus} simulated GPUs at {1 / self.interval_s:g} Hz, "
                      f"{self.seconds:.0f} s measured after warm-up, {self.ticks:.0f} ticks"),
            ("CPU", f"{self.cpu_percent_of_core:.2f} % of one core "
                    "(includes simulating the GPUs)"),
            ("RSS", f"{self.rss_mb:.0f} MB"),
        ]


def bench_overhead(seconds: float = 20.0, interval_s: float = 0.1, gpus: int = 8) -> OverheadResult:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "agent.toml"
        config.write_text(f"""
[agent]
interval_s = {interval_s}
source = "simulated"
state_dir = "{tmp}/var"
[sim]
gpus = {gpus}
""")
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--log-level", "WARNING", "run", "--config",
             str(config), "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            wait_for(url, proc)
            time.sleep(3.0)  # past start-up: imports, kernel loading, first integrations
            p = psutil.Process(proc.pid)
            before = p.cpu_times()
            ticks_before = _ticks(url)
            start = time.monotonic()
            time.sleep(seconds)
            after = p.cpu_times()
            elapsed = time.monotonic() - start
            ticks = _ticks(url) - ticks_before
            rss = p.memory_info().rss
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    cpu = (after.user + after.system) - (before.user + before.system)
    return OverheadResult(interval_s, gpus, elapsed, 100.0 * cpu / elapsed, rss / 2**20, ticks)


def _ticks(url: str) -> float:
    from tests.agentproc import scrape, total

    return total(scrape(url), "flopledger_sampler_ticks_total")
