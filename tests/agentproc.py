"""Start the agent as a subprocess and scrape it, as an operator would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str, timeout: float = 5.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def wait_for(url: str, proc: subprocess.Popen[str], timeout: float = 60.0) -> Samples:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            samples = scrape(url)
            if total(samples, "flopledger_sampler_ticks_total") > 0:
                return samples
        time.sleep(0.1)
    raise TimeoutError(f"no metrics at {url}")


@contextlib.contextmanager
def agent(
    config: Path, *args: str, log: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run ``flopledger run`` with a config; yields the process and its /metrics URL."""
    port = free_port()
    log_file = (log or config.with_suffix(".log")).open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(config),
         "--listen", f"127.0.0.1:{port}", *args],
        stdout=log_file, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield proc, f"http://127.0.0.1:{port}/metrics"
    finally:
        stop(proc, 30)
        log_file.close()


def stop(proc: subprocess.Popen[str], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
