"""The NVML source through the real ``pynvml`` against a stand-in ``libnvidia-ml``.

The node: 4 x H100 SXM with GPM and 4 x A100 80GB without; power not supported on GPU 5,
GPU 3 lost after three reads, utilization failing with NVML_ERROR_UNKNOWN on GPU 6, one
GPM metric unsupported on GPU 1 and one failing on GPU 2, and a few compute processes.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pynvml
import pytest

from agent.sources.base import FLOAT_FIELDS, ActivityKind, SourceError
from agent.sources.clock import VirtualClock
from agent.sources.nvml import NvmlSource, nvml_unavailable_reason
from agent.sources.nvml_device import GPM_METRICS
from agent.sources.specs import SpecTable, load_spec_table
from tests.fake_nvml import Scenario
from tests.fake_nvml import fixtures as fake_fixtures
from tests.fake_nvml.fixtures import FakeNvml
from tests.paths import REPO

# Bound by assignment, not import, so test parameters of the same name are not flagged
# as redefinitions.
fake_nvml = fake_fixtures.fake_nvml
clock = fake_fixtures.clock
tick = fake_fixtures.tick
fake_nvml_legacy = fake_fixtures.fake_nvml_legacy

SPECS = load_spec_table()
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
NVML_ERROR_UNKNOWN = 999
SECOND_NS = 1_000_000_000
GIB = 1 << 30

# GPM values scripted on the H100s, by batch field.
GPM_VALUES = {
    "tensor_any_pct": 55.5, "tensor_hmma_pct": 54.0, "tensor_imma_pct": 1.5,
    "tensor_dmma_pct": 0.0, "tensor_dfma_pct": 0.25, "fp16_pct": 3.0, "fp32_pct": 2.0,
    "fp64_pct": 0.5, "sm_util_pct": 91.0, "sm_occupancy_pct": 42.0,
}
_SCENARIO_KEYS = {
    "tensor_any_pct": "any_tensor", "tensor_hmma_pct": "hmma", "tensor_imma_pct": "imma",
    "tensor_dmma_pct": "dmma", "tensor_dfma_pct": "dfma", "fp16_pct": "fp16",
    "fp32_pct": "fp32", "fp64_pct": "fp64", "sm_util_pct": "sm_util",
    "sm_occupancy_pct": "sm_occupancy",
}
GPM_FIELDS = tuple(GPM_VALUES)


def uuid_of(i: int) -> str:
    return f"GPU-{i:08x}-0000-4000-8000-00000000feed"


def node_scenario() -> Scenario:
    s = Scenario()
    gpm_keys = {_SCENARIO_KEYS[k]: v for k, v in GPM_VALUES.items()}
    for i in range(4):
        s.gpu(uuid_of(i), name=H100, sm_clock=1980 - i, max_sm_clock=1980, util=97,
              energy_start_mj=1_000_000 * i, energy_step_mj=700, power_mw=650_000,
              event_reasons=0x4 if i == 0 else 0, gpm=1, **gpm_keys)
    for i in range(4, 8):
        s.gpu(uuid_of(i), name=A100, sm_clock=1410, max_sm_clock=1410, util=60,
              energy_step_mj=400, power_mw=300_000, gpm=0)
    s.unsupported(5, "power")
    s.lost(3, after_reads=3)
    s.error(6, "util", NVML_ERROR_UNKNOWN)
    s.metric(1, pynvml.NVML_GPM_METRIC_SM_OCCUPANCY, 0.0, ret=pynvml.NVML_ERROR_NOT_SUPPORTED)
    s.metric(2, pynvml.NVML_GPM_METRIC_FP64_UTIL, 0.0, ret=NVML_ERROR_UNKNOWN)
    s.process(0, 1234, 8 * GIB, 80)
    s.process(0, 1235, None, None)
    s.process(4, 2000, GIB, 50)
    s.error(4, "process_util", NVML_ERROR_UNKNOWN)
    s.process(7, 3000, 2 * GIB, None)
    return s



@pytest.fixture
def node(fake_nvml: FakeNvml, clock: VirtualClock) -> Iterator[NvmlSource]:
    fake_nvml.use(node_scenario())
    source = NvmlSource(SPECS, clock=clock)
    yield source
    source.close()



# -- devices -----------------------------------------------------------------------------


def test_devices_have_names_uuids_spec_keys_and_activity_kinds(node: NvmlSource) -> None:
    assert node.kind == "nvml"
    devices = node.devices()
    assert [d.index for d in devices] == list(range(8))
    assert [d.uuid for d in devices] == [uuid_of(i) for i in range(8)]
    assert [d.name for d in devices] == [H100] * 4 + [A100] * 4
    assert [d.spec_key for d in devices] == ["h100_sxm"] * 4 + ["a100_80gb"] * 4
    assert [d.activity_kind for d in devices] == [ActivityKind.GPM] * 4 + [ActivityKind.NONE] * 4
    assert [d.max_sm_clock_mhz for d in devices] == [1980.0] * 4 + [1410.0] * 4
    assert {d.source for d in devices} == {"nvml"}


def test_devices_carry_pci_id_compute_capability_and_sm_count(
    fake_nvml: FakeNvml, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources.nvml")
    fake_nvml.use(Scenario()
                  .gpu(uuid_of(0), name="NVIDIA Graphics Device", pci_device_id=0x2330, cc="9.0")
                  .gpu(uuid_of(1), name=A100, pci_device_id=0x20B2, cc="8.0", sm_count=108)
                  .gpu(uuid_of(2), name=H100, cc="9.0", pci_device_id=0x2330)
                  .unsupported(2, "pci").error(2, "cc", NVML_ERROR_UNKNOWN))
    source = NvmlSource(SPECS)
    try:
        first, second, third = source.devices()
    finally:
        source.close()
    # the 16-bit device ID above NVIDIA's vendor ID; it finds the row the name cannot
    assert (first.pci_device_id, first.compute_capability, first.spec_key) == (
        0x2330, "9.0", "h100_sxm")
    # NVML gives the SM count of MIG devices only: None for a whole GPU, unless it answers
    assert first.sm_count is None
    assert (second.pci_device_id, second.compute_capability, second.sm_count) == (
        0x20B2, "8.0", 108)
    # unsupported or failing: unknown, and the device is still matched by its name
    assert (third.pci_device_id, third.compute_capability, third.spec_key) == (
        None, None, "h100_sxm")
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "sm_count" in m or "mig_mode" in m]
    assert sum("pci_device_id not available" in m for m in messages) == 1
    assert sum("reading compute_capability failed" in m for m in messages) == 1


# -- values and units ----------------------------------------------------------------------


def test_first_read_has_instant_values_in_vendor_units_and_no_gpm(
    node: NvmlSource, clock: VirtualClock
) -> None:
    clock.advance_ns(SECOND_NS)
    b = node.read()
    assert b.n_gpus == 8
    assert b.up.all()
    assert (b.timestamp_ns == clock.monotonic_ns()).all()
    assert b.wall_time_ns == clock.wall_ns()
    np.testing.assert_array_equal(b.sm_clock_mhz, [1980, 1979, 1978, 1977] + [1410] * 4)
    np.testing.assert_array_equal(b.gpu_util_pct[:6], [97] * 4 + [60] * 2)
    np.testing.assert_array_equal(b.energy_mj, [700, 1_000_700, 2_000_700, 3_000_700] + [400] * 4)
    np.testing.assert_array_equal(b.power_mw[[0, 1, 2, 3, 4, 6, 7]], [650_000] * 4 + [300_000] * 3)
    assert list(b.throttle_reasons) == [0x4] + [0] * 7
    for name in GPM_FIELDS:  # no interval before the first sample
        assert np.isnan(getattr(b, name)).all(), name


def test_gpm_fields_fill_from_the_second_read_on_gpm_gpus_only(
    node: NvmlSource, clock: VirtualClock
) -> None:
    _first, second, _third = tick(node, clock, 3)
    for name, value in GPM_VALUES.items():
        column = getattr(second, name)
        assert np.isnan(column[4:]).all(), f"{name} on a GPU without GPM"
        for gpu in range(4):
            if (gpu, name) in {(1, "sm_occupancy_pct"), (2, "fp64_pct")}:
                assert math.isnan(column[gpu]), (gpu, name)
            else:
                assert column[gpu] == value, (gpu, name)


def test_energy_counter_grows_by_the_scripted_step(node: NvmlSource, clock: VirtualClock) -> None:
    batches = tick(node, clock, 3)
    energy = np.array([b.energy_mj for b in batches])
    np.testing.assert_array_equal(np.diff(energy[:, 4:], axis=0), 400.0)
    np.testing.assert_array_equal(np.diff(energy[:, :3], axis=0), 700.0)


def test_each_gpu_is_stamped_when_it_is_read(fake_nvml: FakeNvml) -> None:
    class SteppingClock:
        """Moves 1 ms on every read of the monotonic clock."""

        def __init__(self) -> None:
            self.now_ns = 0

        def monotonic_ns(self) -> int:
            self.now_ns += 1_000_000
            return self.now_ns

        def wall_ns(self) -> int:
            return 1_700_000_000 * SECOND_NS

        def sleep_until(self, monotonic_deadline_ns: int, stop: threading.Event) -> bool:
            return True

    fake_nvml.use(node_scenario())
    source = NvmlSource(SPECS, clock=SteppingClock())
    try:
        stamps = source.read().timestamp_ns
    finally:
        source.close()
    assert (np.diff(stamps) > 0).all()


# -- unsupported, errors, lost -------------------------------------------------------------


def test_unsupported_field_is_nan_not_an_error_and_logged_once(
    node: NvmlSource, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources.nvml")
    batches = tick(node, clock, 3)
    for b in batches:
        assert math.isnan(b.power_mw[5])
        assert (5, "power_mw") not in b.errors
        assert not any(gpu == 1 and f == "sm_occupancy_pct" for gpu, f in b.errors)
    power_logs = [r for r in caplog.records if "power_mw" in r.getMessage()]
    assert len(power_logs) == 1
    assert power_logs[0].levelno == logging.INFO
    assert uuid_of(5) in power_logs[0].getMessage()
    occupancy_logs = [r for r in caplog.records if "sm_occupancy_pct" in r.getMessage()]
    assert len(occupancy_logs) == 1


def test_other_nvml_errors_are_nan_and_listed_every_tick(
    node: NvmlSource, clock: VirtualClock
) -> None:
    for b in tick(node, clock, 3):
        assert math.isnan(b.gpu_util_pct[6])
        assert b.sm_clock_mhz[6] == 1410
        assert (6, "gpu_util_pct") in b.errors
        assert (4, "process_sm_util") in b.errors
    _first, second = tick(node, clock, 2)
    assert (2, "fp64_pct") in second.errors
    assert set(second.errors) == {
        (6, "gpu_util_pct"), (4, "process_sm_util"), (2, "fp64_pct")
    }


def test_lost_gpu_is_down_from_then_on_while_the_others_go_on(
    node: NvmlSource, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources.nvml")
    batches = tick(node, clock, 6)
    for i, b in enumerate(batches):
        up = b.up
        others = np.delete(up, 3)
        assert others.all(), i
        if i < 3:
            assert up[3], i
            assert b.sm_clock_mhz[3] == 1977
        else:
            assert not up[3], i
            for name in FLOAT_FIELDS:
                assert math.isnan(getattr(b, name)[3]), (i, name)
            assert b.throttle_reasons[3] == -1
            assert b.processes[3] == ()
            assert not [e for e in b.errors if e[0] == 3]
        assert b.tensor_any_pct[0] == 55.5 or i == 0
    lost_logs = [r for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost_logs) == 1
    assert lost_logs[0].levelno == logging.WARNING


def test_a_lost_gpu_is_re_acquired_by_its_uuid_after_a_driver_reset(
    node: NvmlSource, fake_nvml: FakeNvml, clock: VirtualClock,
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources.nvml")
    old_handle = pynvml.nvmlDeviceGetHandleByIndex(3)
    assert not tick(node, clock, 5)[-1].up[3]
    # Still lost: looked for by UUID now and then, not at every tick.
    before = fake_nvml.uuid_lookups(3)
    assert not any(b.up[3] for b in tick(node, clock, 25))
    assert 2 <= fake_nvml.uuid_lookups(3) - before <= 3
    fake_nvml.reset_gpu(3)
    # The handle from before the reset stays stale: only a fresh lookup brings it back.
    with pytest.raises(pynvml.NVMLError) as stale:
        pynvml.nvmlDeviceGetClockInfo(old_handle, pynvml.NVML_CLOCK_SM)
    assert stale.value.value == pynvml.NVML_ERROR_GPU_IS_LOST
    before = fake_nvml.uuid_lookups(3)
    batches = tick(node, clock, 12)
    back = next(k for k, b in enumerate(batches) if b.up[3])
    assert fake_nvml.uuid_lookups(3) == before + 1
    assert all(b.up[3] for b in batches[back:])
    first, second = batches[back], batches[back + 1]
    assert first.sm_clock_mhz[3] == 1977
    assert math.isnan(first.tensor_any_pct[3])  # GPM starts over: no interval across it
    assert second.tensor_any_pct[3] == 55.5
    back_logs = [r for r in caplog.records if "re-acquired" in r.getMessage()]
    assert len(back_logs) == 1
    assert uuid_of(3) in back_logs[0].getMessage()


def test_a_gpu_lost_before_its_uuid_was_read_is_not_looked_for(
    fake_nvml: FakeNvml, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources.nvml")
    fake_nvml.use(Scenario().gpu(uuid_of(0), name=H100).gpu(uuid_of(1), name=H100)
                  .error(1, "uuid", pynvml.NVML_ERROR_GPU_IS_LOST))
    source = NvmlSource(SPECS, clock=clock)
    try:
        assert source.devices()[1].uuid == "GPU-unknown-1"
        assert [bool(b.up[1]) for b in tick(source, clock, 25)] == [False] * 25
        assert fake_nvml.uuid_lookups(1) == 0
    finally:
        source.close()
    assert any("restart the agent" in r.getMessage() for r in caplog.records)


def test_unexpected_exception_downs_one_gpu_for_one_tick(
    node: NvmlSource, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pynvml.nvmlDeviceGetPowerUsage
    calls = 0

    def flaky(handle: object) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("bindings bug")
        return int(real(handle))

    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", flaky)
    first, second = tick(node, clock, 2)
    assert list(first.up) == [False] + [True] * 7
    assert (0, "read") in first.errors
    assert math.isnan(first.sm_clock_mhz[0])
    assert second.up[0]
    assert second.power_mw[0] == 650_000


# -- processes ---------------------------------------------------------------------------


def test_processes_carry_memory_and_per_process_sm_util(
    node: NvmlSource, clock: VirtualClock
) -> None:
    for b in tick(node, clock, 2):
        procs = {p.pid: p for p in b.processes[0]}
        assert set(procs) == {1234, 1235}
        assert procs[1234].used_memory_bytes == 8 * GIB
        assert procs[1234].sm_util_pct == 80.0
        assert procs[1235].used_memory_bytes is None  # NVML_VALUE_NOT_AVAILABLE
        assert procs[1235].sm_util_pct is None
        # utilization read failed: the process is still listed, without its share
        (p4,) = b.processes[4]
        assert (p4.pid, p4.used_memory_bytes, p4.sm_util_pct) == (2000, GIB, None)
        # no utilization sample at all (NOT_FOUND): no share, and not an error
        (p7,) = b.processes[7]
        assert (p7.pid, p7.sm_util_pct) == (3000, None)
        assert (7, "process_sm_util") not in b.errors
        assert b.processes[1] == ()


# -- GPM intervals -----------------------------------------------------------------------


def test_gpm_sample_younger_than_100ms_is_not_an_interval(
    node: NvmlSource, fake_nvml: FakeNvml, clock: VirtualClock
) -> None:
    node.read()
    assert fake_nvml.gpm_stats(0).samples_taken == 1
    clock.advance_ns(50_000_000)
    b = node.read()
    assert np.isnan(b.tensor_any_pct).all()
    stats = fake_nvml.gpm_stats(0)
    assert (stats.samples_taken, stats.metrics_calls) == (1, 0)
    clock.advance_ns(60_000_000)
    b = node.read()
    assert b.tensor_any_pct[0] == 55.5
    # the interval runs from the first sample, kept across the short tick
    assert fake_nvml.gpm_stats(0) == fake_fixtures.GpmStats(2, 1, (1, 2))
    clock.advance_ns(SECOND_NS)
    node.read()
    assert fake_nvml.gpm_stats(0) == fake_fixtures.GpmStats(3, 2, (2, 3))
    assert fake_nvml.gpm_stats(5).samples_taken == 0


def test_gpm_metrics_get_with_a_wrong_version_raises(
    node: NvmlSource, fake_nvml: FakeNvml
) -> None:
    s1, s2 = pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        pynvml.nvmlGpmSampleGet(handle, s1)
        pynvml.nvmlGpmSampleGet(handle, s2)
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION + 1
        request.numMetrics = 1
        request.sample1, request.sample2 = s1, s2
        request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL
        with pytest.raises(pynvml.NVMLError) as raised:
            pynvml.nvmlGpmMetricsGet(request)
        assert raised.value.value == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        assert isinstance(raised.value, pynvml.NVMLError_ArgumentVersionMismatch)
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        pynvml.nvmlGpmMetricsGet(request)
        assert request.metrics[0].nvmlReturn == 0
        assert request.metrics[0].value == 55.5
    finally:
        pynvml.nvmlGpmSampleFree(s1)
        pynvml.nvmlGpmSampleFree(s2)


def test_gpm_request_asks_every_metric_in_one_call() -> None:
    ids = [metric_id for _field, metric_id in GPM_METRICS]
    assert len(set(ids)) == len(ids) == 10
    assert {field for field, _id in GPM_METRICS} == set(GPM_FIELDS)


# -- clock-event reasons on an older driver ------------------------------------------------


def test_throttle_reasons_fall_back_to_the_old_symbol(
    fake_nvml_legacy: FakeNvml, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources.nvml")
    fake_nvml_legacy.use(node_scenario())
    assert not hasattr(fake_nvml_legacy.lib, "nvmlDeviceGetCurrentClocksEventReasons")
    source = NvmlSource(SPECS, clock=clock)
    try:
        for b in tick(source, clock, 2):
            assert list(b.throttle_reasons[:3]) == [0x4, 0, 0]
            assert not [e for e in b.errors if e[1] == "throttle_reasons"]
    finally:
        source.close()
    assert not [r for r in caplog.records if "throttle_reasons" in r.getMessage()]


# -- lifecycle -----------------------------------------------------------------------------


def test_close_frees_every_gpm_sample_and_shuts_nvml_down(
    fake_nvml: FakeNvml, clock: VirtualClock
) -> None:
    fake_nvml.use(node_scenario())
    source = NvmlSource(SPECS, clock=clock)
    assert fake_nvml.live_gpm_samples() == 8  # two per GPM GPU, allocated once
    tick(source, clock, 3)
    assert fake_nvml.live_gpm_samples() == 8
    assert fake_nvml.refcount() == 1
    source.close()
    assert fake_nvml.live_gpm_samples() == 0
    assert fake_nvml.refcount() == 0
    source.close()  # twice is harmless
    with pytest.raises(SourceError, match="after close"):
        source.read()


def test_init_failures_raise_source_error(fake_nvml: FakeNvml) -> None:
    fake_nvml.use(Scenario().raw("init_error 9"))
    with pytest.raises(SourceError, match="driver not loaded"):
        NvmlSource(SPECS)
    fake_nvml.use(Scenario().gpu(uuid_of(0), name=H100).raw("count_error 999"))
    with pytest.raises(SourceError, match="cannot count"):
        NvmlSource(SPECS)
    assert fake_nvml.refcount() == 0
    fake_nvml.use(Scenario())
    with pytest.raises(SourceError, match="no GPUs"):
        NvmlSource(SPECS)
    assert fake_nvml.refcount() == 0


def test_unknown_gpu_has_no_spec_key(fake_nvml: FakeNvml) -> None:
    fake_nvml.use(Scenario().gpu(uuid_of(0), name="NVIDIA Imaginary X1", gpm=1))
    source = NvmlSource(SpecTable(path=Path("none")))
    try:
        (device,) = source.devices()
        assert device.spec_key is None
        assert device.activity_kind is ActivityKind.GPM
    finally:
        source.close()


# -- availability probe --------------------------------------------------------------------


def test_unavailable_reason_is_none_with_the_stub(fake_nvml: FakeNvml) -> None:
    fake_nvml.use(node_scenario())
    assert nvml_unavailable_reason() is None
    assert fake_nvml.refcount() == 0


def test_unavailable_reason_says_why(fake_nvml: FakeNvml) -> None:
    fake_nvml.use(Scenario())
    assert nvml_unavailable_reason() == "no GPUs"
    fake_nvml.use(Scenario().raw("init_error 9"))
    reason = nvml_unavailable_reason()
    assert reason is not None
    assert "driver not loaded" in reason
    assert fake_nvml.refcount() == 0


def test_unavailable_reason_without_a_library(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(name: str, *args: object, **kwargs: object) -> ctypes.CDLL:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "CDLL", no_library)
    reason = nvml_unavailable_reason()
    assert reason is not None
    assert "libnvidia-ml.so.1 not found" in reason
    with pytest.raises(SourceError, match=r"libnvidia-ml\.so\.1 not found"):
        NvmlSource(SPECS)


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [(node_scenario(), "None"), (Scenario(), "no GPUs")],
    ids=["eight-gpus", "no-gpus"],
)
def test_unavailable_reason_finds_the_library_by_its_soname(
    fake_nvml: FakeNvml, tmp_path: Path, scenario: Scenario, expected: str
) -> None:
    """A fresh interpreter loads the stub through pynvml's own CDLL("libnvidia-ml.so.1")."""
    scenario_path = scenario.write(tmp_path / "subprocess_scenario.txt")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(fake_nvml.lib_path.parent), env.get("LD_LIBRARY_PATH", "")) if p
    )
    env["FAKE_NVML_SCENARIO"] = str(scenario_path)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-c",
         "from agent.sources.nvml import nvml_unavailable_reason; "
         "print(nvml_unavailable_reason())"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


def test_failing_gpm_sample_is_counted_and_the_gpu_stays_up(
    fake_nvml: FakeNvml, clock: VirtualClock
) -> None:
    fake_nvml.use(Scenario().gpu(uuid_of(0), name=H100, gpm=1, any_tensor=10)
                  .error(0, "gpm_sample", NVML_ERROR_UNKNOWN))
    source = NvmlSource(SPECS, clock=clock)
    try:
        for b in tick(source, clock, 3):
            assert b.up[0]
            assert math.isnan(b.tensor_any_pct[0])
            assert b.errors == ((0, "gpm"),)
    finally:
        source.close()
    assert fake_nvml.live_gpm_samples() == 0


def test_at_10_hz_the_energy_counter_and_process_utilization_are_read_once_a_second(
        node: NvmlSource, clock: VirtualClock) -> None:
    """The two costly calls (milliseconds each on an H200) are read about once a second
    at 10 Hz; between readings the energy is NaN, which the accountant bridges exactly
    with the next reading's difference, and a process keeps its last utilization."""
    batches = []
    for _ in range(25):
        clock.advance_ns(SECOND_NS // 10)
        batches.append(node.read())
    energy = np.array([b.energy_mj[0] for b in batches])
    read = np.flatnonzero(~np.isnan(energy))
    # The first read, then one at least 0.95 s after the previous one: ticks 0, 10, 20.
    assert read.tolist() == [0, 10, 20]
    # The fake's counter steps once per call: three calls in 2.5 s.
    np.testing.assert_array_equal(np.diff(energy[read]), [700.0, 700.0])
    for b in batches:
        assert {p.pid: p.sm_util_pct for p in b.processes[0]}[1234] == 80.0
    # At 1 s intervals every tick reads both, as before.
    for b in tick(node, clock, 3):
        assert not np.isnan(b.energy_mj[0])


def test_energy_read_once_a_second_integrates_to_the_counters_difference(
        node: NvmlSource, clock: VirtualClock) -> None:
    from agent.accounting.integrate import integrate_energy

    stamps, readings = [], []
    for _ in range(31):
        clock.advance_ns(SECOND_NS // 10)
        b = node.read()
        stamps.append(int(b.timestamp_ns[0]))
        readings.append(float(b.energy_mj[0]))
    result = integrate_energy(np.array([0, len(stamps)], np.int64),
                              np.array(stamps, np.int64), np.array(readings),
                              np.full(len(stamps), 650_000.0), np.full(1, -1, np.int64),
                              np.full(1, np.nan))
    known = [e for e in readings if not np.isnan(e)]
    assert len(known) == 4
    assert int(result.energy_mj[0]) == known[-1] - known[0]
