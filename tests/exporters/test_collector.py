"""The Prometheus collector: metric contract, golden exposition, promtool."""

from __future__ import annotations

import math
import os
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.accounting.snapshot import GpuSnapshot, RunSnapshot, Snapshot
from exporters.collector import FlopledgerCollector
from tests.paths import FIXTURES

GOLDEN = FIXTURES / "metrics.golden.prom"
VOLATILE = ("flopledger_collector_duration_seconds", "flopledger_build_info")


def sample_snapshot() -> Snapshot:
    gpus = (
        GpuSnapshot(index=0, uuid="GPU-00000000-0000-0000-0000-000000000000",
                    name="NVIDIA H100 80GB HBM3", spec_key="h100_sxm", source="nvml", up=True,
                    flop_low=9.5e18, flop_central=1.0e19, flop_high=1.05e19,
                    energy_joules=123456.789, covered_seconds=3600.0, gap_seconds=0.0,
                    rate_flops=5.3e14, estimator="gpm_tensor", sm_clock_hz=1.98e9,
                    utilization_ratio=0.97, tensor_activity_ratio=0.55, power_watts=612.5),
        GpuSnapshot(index=1, uuid="GPU-11111111-1111-1111-1111-111111111111",
                    name="NVIDIA H100 80GB HBM3", spec_key="h100_sxm", source="nvml", up=False,
                    flop_low=1.0e18, flop_central=2.0e18, flop_high=4.0e18,
                    energy_joules=2000.0, covered_seconds=300.0, gap_seconds=12.5,
                    rate_flops=0.0, estimator="none", sm_clock_hz=None,
                    utilization_ratio=None, tensor_activity_ratio=None, power_watts=None),
    )
    runs = (RunSnapshot(run_id="llama-70b-pt", model="llama-70b", category="pre-training",
                        flop_low=1.05e19, flop_central=1.2e19, flop_high=1.45e19,
                        energy_joules=125456.789, gpus=2, created_wall_seconds=1.7e9),)
    return Snapshot(source_kind="nvml", started_wall_seconds=1.7e9, gpus=gpus, runs=runs,
                    sample_errors=((1, gpus[1].uuid, "power_mw", 3),),
                    last_sample_wall_seconds=1.7e9 + 3600, ticks=3600, overruns=2,
                    integrations=720, rejected_samples=0, last_tick_duration_seconds=0.0012)


def exposition(snap: Snapshot | None) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlopledgerCollector(lambda: snap))
    return generate_latest(registry).decode()


def stable(text: str) -> str:
    return "".join(
        line + "\n" for line in text.splitlines() if not any(v in line for v in VOLATILE)
    )


def test_exposition_matches_the_golden_file() -> None:
    text = stable(exposition(sample_snapshot()))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "run with UPDATE_GOLDEN=1 after a deliberate change"


def test_contract_metric_names_and_labels() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlopledgerCollector(sample_snapshot))
    gpu0 = {"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000"}
    get = registry.get_sample_value
    assert get("flopledger_gpu_flop_total", gpu0) == 1.0e19
    assert get("flopledger_gpu_flop_low_total", gpu0) == 9.5e18
    assert get("flopledger_gpu_flop_high_total", gpu0) == 1.05e19
    assert get("flopledger_gpu_flop_per_second", gpu0) == 5.3e14
    assert get("flopledger_gpu_energy_joules_total", gpu0) == 123456.789
    assert get("flopledger_gpu_up", gpu0) == 1.0
    run = {"run": "llama-70b-pt", "model": "llama-70b", "category": "pre-training"}
    assert get("flopledger_run_flop_total", run) == 1.2e19
    assert get("flopledger_run_flop_low_total", run) == 1.05e19
    assert get("flopledger_run_flop_high_total", run) == 1.45e19
    assert get("flopledger_run_flop_created", run) == 1.7e9
    assert get("flopledger_sample_errors_total", {"gpu": "1", "field": "power_mw"}) == 3
    assert get("flopledger_last_sample_timestamp_seconds") == 1.7e9 + 3600
    assert get("flopledger_gpu_info", {**gpu0, "name": "NVIDIA H100 80GB HBM3",
                                        "source": "nvml", "spec": "h100_sxm",
                                        "estimator": "gpm_tensor"}) == 1.0
    assert get("flopledger_build_info", {"version": __import__("agent").__version__}) == 1.0


def test_unknown_readings_are_left_out_never_nan() -> None:
    text = exposition(sample_snapshot())
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert not math.isnan(s.value), s
    assert 'flopledger_gpu_sm_clock_hertz{gpu="1"' not in text
    assert "hostname" not in text


def test_no_snapshot_yet_still_answers() -> None:
    text = exposition(None)
    assert "flopledger_build_info" in text
    assert "flopledger_gpu_flop_total" not in text


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool missing: `make test` installs Debian's prometheus")
def test_promtool_accepts_the_exposition() -> None:
    for text in (GOLDEN.read_text(), exposition(sample_snapshot())):
        result = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                                capture_output=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "", result.stdout
        assert result.stderr.strip() == "", result.stderr
