"""End to end: `flopledger run` on simulated GPUs, scraped over HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agentproc import agent, scrape, total, wait_for

pytestmark = pytest.mark.e2e


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_live_agent_serves_growing_totals_close_to_truth(tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.toml", f"""
[agent]
interval_s = 0.2
integrate_every = 3
checkpoint_s = 1
state_dir = "{tmp_path}/state"
source = "simulated"
[sim]
scenario = "pretrain-bf16"
gpus = 4
""")
    with agent(config) as (proc, url):
        first = wait_for(url, proc)
        while total(first, "flopledger_gpu_flop_total") == 0:
            time.sleep(0.2)
            first = scrape(url)
        time.sleep(4)
        second = scrape(url)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    grown = total(second, "flopledger_gpu_flop_total")
    assert grown > total(first, "flopledger_gpu_flop_total") > 0
    for key, truth in second.items():
        if key[0] != "flopledger_sim_true_flop_total":
            continue
        labels = key[1]
        central = second[("flopledger_gpu_flop_total", labels)]
        low = second[("flopledger_gpu_flop_low_total", labels)]
        high = second[("flopledger_gpu_flop_high_total", labels)]
        assert truth > 0
        assert abs(central / truth - 1) < 0.02, (labels, central, truth)
        assert low <= truth <= high, (labels, low, truth, high)
    assert total(second, "flopledger_run_flop_total") == total(second, "flopledger_gpu_flop_total")
    up = [v for (name, _labels), v in second.items() if name == "flopledger_gpu_up"]
    assert up == [1.0] * 4


def run_to_summary(tmp_path: Path, name: str, interval: float, every: int) -> dict[str, object]:
    config = write_config(tmp_path / f"{name}.toml", f"""
[agent]
state_dir = "{tmp_path}/{name}-state"
interval_s = {interval}
integrate_every = {every}
source = "simulated"
exit_after_s = 1800
[sim]
scenario = "finetune-bursty"
gpus = 2
virtual_time = true
time_scale = 0
""")
    summary = tmp_path / f"{name}.json"
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(config), "--listen",
         "127.0.0.1:0", "--summary", str(summary)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    doc: dict[str, object] = json.loads(summary.read_text())
    return doc


def test_same_samples_same_totals_whatever_the_chunking_and_interval(tmp_path: Path) -> None:
    a = run_to_summary(tmp_path, "a", 1.0, 5)
    b = run_to_summary(tmp_path, "b", 1.0, 13)
    c = run_to_summary(tmp_path, "c", 0.5, 4)
    assert a["gpus"] == b["gpus"]  # bit-identical, every field
    for summary in (a, c):
        gpus = summary["gpus"]
        assert isinstance(gpus, list)
        truth = sum(g["sim_true_flop"] for g in gpus)
        central = sum(g["flop_central"] for g in gpus)
        assert abs(central / truth - 1) < 0.02
        assert sum(g["flop_low"] for g in gpus) <= truth <= sum(g["flop_high"] for g in gpus)


def test_sigterm_flushes_and_exits_cleanly(tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.toml", f"""
[agent]
interval_s = 0.1
integrate_every = 1000
checkpoint_s = 1000
record_s = 1000
state_dir = "{tmp_path}/state"
source = "simulated"
""")
    summary = tmp_path / "summary.json"
    with agent(config, "--summary", str(summary)) as (proc, url):
        wait_for(url, proc)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    doc = json.loads(summary.read_text())
    # Neither integrate_every nor checkpoint_s is reached: everything here came from
    # the final flush.
    assert sum(g["flop_central"] for g in doc["gpus"]) > 0
