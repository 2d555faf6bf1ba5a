"""`python -m benchmarks.gpu_check` on the stand-in NVML library, without PyTorch.

The check runs as an operator runs it, in its own interpreter, with the packages a GPU
machine may lack made unimportable (a package on PYTHONPATH whose import fails, as a
missing one does): torch, and everything the sampling path must not need. With the
workloads skipped, the idle phase and the NVML + GPM cost are still measured on the
stand-in.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.sources.base import ActivityKind, DeviceInfo
from benchmarks.gpu_check import match_devices
from tests.fake_nvml import FakeNvmlUnavailableError, Scenario, build_fake_nvml
from tests.paths import REPO

pytestmark = pytest.mark.e2e

H100 = "NVIDIA H100 80GB HBM3"
HIDDEN = ("torch", "cryptography", "bcrypt", "yaml", "matplotlib")
WORKLOAD_PHASES = ("bf16", "fp8", "tf32", "memory")


def two_h100s(any_tensor_pct: tuple[float, float]) -> Scenario:
    scenario = Scenario()
    for i, pct in enumerate(any_tensor_pct):
        scenario.gpu(f"GPU-{i}0000000-0000-0000-0000-000000000000", name=H100, sm_clock=1980,
                     gpm=1, any_tensor=pct, hmma=pct, util=100 if pct else 0,
                     power_mw=90_000, energy_step_mj=9_000)
    return scenario


def gpu_check(tmp_path: Path, scenario: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        lib = build_fake_nvml()
    except FakeNvmlUnavailableError as e:
        pytest.skip(str(e))
    hidden = tmp_path / "hidden"
    for name in HIDDEN:
        (hidden / name).mkdir(parents=True)
        (hidden / name / "__init__.py").write_text(
            f'raise ImportError("No module named {name!r} (hidden by the test)")\n')
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(lib.parent), env.get("LD_LIBRARY_PATH", "")) if p)
    env["FAKE_NVML_SCENARIO"] = str(scenario.write(tmp_path / "scenario.txt"))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(hidden), str(REPO), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--scale", "0.02", "--interval-s",
         "0.2", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=180, check=False)


def table_rows(stdout: str, phase: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines()
            if line.split(" ", 1)[0] == phase]


def test_without_torch_every_workload_is_skipped_and_idle_and_cost_are_measured(
    tmp_path: Path,
) -> None:
    done = gpu_check(tmp_path, two_h100s((0.0, 0.0)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for phase in WORKLOAD_PHASES:
        assert table_rows(done.stdout, phase) == [[phase, "-", "skipped: torch not installed"]]
    idle = table_rows(done.stdout, "idle")
    assert [row[1] for row in idle] == ["0", "1"]
    for row in idle:
        # gpu, exact FLOP, band, error, holds, tensor %: nothing ran, and nothing was seen
        assert row[2:7] == ["0", "0 [0 .. 0]", "n/a (exact 0)", "yes", "0.0"]
        assert float(row[8]) > 0  # NVML + GPM microseconds per GPU per tick
    cost = re.search(r"NVML \+ GPM cost per GPU per tick .*: mean ([0-9.]+) us, .* "
                     r"over (\d+) ticks of 2 GPU\(s\)", done.stdout)
    assert cost is not None, done.stdout
    assert float(cost.group(1)) > 0
    assert int(cost.group(2)) >= 3
    assert "skipped: bf16, fp8, tf32, memory" in done.stdout
    assert "every band measured holds the exact FLOP" in done.stdout


def test_a_band_that_excludes_the_exact_flop_fails_the_check(tmp_path: Path) -> None:
    # GPU 1 claims half its tensor pipes busy through a phase in which nothing ran.
    done = gpu_check(tmp_path, two_h100s((0.0, 50.0)), "--dry-run")
    assert done.returncode == 1, done.stdout + done.stderr
    for phase in WORKLOAD_PHASES:
        assert table_rows(done.stdout, phase) == [[phase, "-", "skipped: --dry-run"]]
    idle = {row[1]: row for row in table_rows(done.stdout, "idle")}
    assert idle["0"][5] == "yes"
    assert idle["1"][5] == "NO"
    assert float(idle["1"][6]) == pytest.approx(50.0)
    assert "THE BAND MISSES THE EXACT FLOP: idle on GPU 1" in done.stdout


def test_nvml_that_cannot_start_is_one_line_and_status_2(tmp_path: Path) -> None:
    done = gpu_check(tmp_path, Scenario().raw("init_error 9"))  # NVML_ERROR_DRIVER_NOT_LOADED
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("gpu-check: cannot start NVML")
    assert "Traceback" not in done.stderr


def nvml_device(index: int, uuid: str, name: str = H100) -> DeviceInfo:
    return DeviceInfo(index=index, uuid=uuid, name=name, spec_key=None, max_sm_clock_mhz=None,
                      activity_kind=ActivityKind.GPM, source="nvml")


def test_cuda_devices_are_matched_to_nvml_by_uuid_whatever_their_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    nvml = [nvml_device(i, f"GPU-aaaa000{i}") for i in range(4)]
    cuda: list[dict[str, object]] = [
        {"cuda_index": 0, "name": H100, "uuid": "aaaa0003"},  # torch omits "GPU-"
        {"cuda_index": 1, "name": H100, "uuid": "GPU-AAAA0001"},
    ]
    assert match_devices(cuda, nvml) == {0: 3, 1: 1}


def test_without_uuids_only_the_same_devices_in_the_same_order_are_matched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = [nvml_device(0, "GPU-a"), nvml_device(1, "GPU-b", "NVIDIA A100-SXM4-80GB")]
    cuda: list[dict[str, object]] = [{"cuda_index": 0, "name": H100, "uuid": None},
                                     {"cuda_index": 1, "name": H100, "uuid": None}]
    assert match_devices(cuda, nvml) == {0: 0}  # cuda:1 is no A100: left unmatched
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert match_devices(cuda, nvml) == {}
