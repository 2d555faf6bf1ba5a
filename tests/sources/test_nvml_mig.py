"""MIG through the real ``pynvml`` against the stand-in ``libnvidia-ml``.

The node: GPU 0 an A100-SXM4-40GB split 3g.20gb + 2g.10gb + 1g.5gb + 1g.5gb (no GPM, as
on every Ampere GPU), GPU 1 an H100 SXM split 3g.40gb + 2g.20gb + 1g.10gb + 1g.10gb
with GPM activity per GPU instance, and GPU 2 a whole H100 with MIG off. SM counts are
those ``nvidia-smi mig -lgip`` lists for these profiles.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.devices import specs_for
from agent.replay.engine import ReplayEngine, ReplayOptions
from agent.replay.readers.base import GpuKey
from agent.sources.base import ActivityKind
from agent.sources.clock import VirtualClock
from agent.sources.nvml import MIG_LAYOUT_CHECK_EVERY_NS, NvmlSource
from agent.sources.specs import ResolvedSpec, load_spec_table
from tests.fake_nvml import Scenario, mig_of
from tests.fake_nvml import fixtures as fake_fixtures
from tests.fake_nvml.fixtures import FakeNvml

fake_nvml = fake_fixtures.fake_nvml
clock = fake_fixtures.clock
tick = fake_fixtures.tick

SPECS = load_spec_table()
A100 = "NVIDIA A100-SXM4-40GB"
H100 = "NVIDIA H100 80GB HBM3"
SECOND_NS = 1_000_000_000
GIB = 1 << 30
CHECKS_S = MIG_LAYOUT_CHECK_EVERY_NS // SECOND_NS

# (profile, GPU instance ID, SMs, GPM ANY_TENSOR percent) per MIG device.
A100_LAYOUT = (("3g.20gb", 2, 42, 0.0), ("2g.10gb", 3, 28, 0.0), ("1g.5gb", 9, 14, 0.0),
               ("1g.5gb", 10, 14, 0.0))
H100_LAYOUT = (("3g.40gb", 1, 60, 40.0), ("2g.20gb", 5, 32, 20.0), ("1g.10gb", 13, 16, 0.0),
               ("1g.10gb", 14, 16, 75.0))
A100_POWER_MW = 245_000
A100_ENERGY_STEP_MJ = 1_000


def mig_uuid(gpu: int, k: int) -> str:
    return f"MIG-{gpu:04x}{k:04x}-0000-5000-8000-00000000beef"


def gpu_uuid(gpu: int) -> str:
    return f"GPU-{gpu:08x}-0000-4000-8000-00000000feed"


def node_scenario(a100_gpm: bool = False) -> Scenario:
    s = Scenario()
    s.gpu(gpu_uuid(0), name=A100, pci_device_id=0x20B0, cc="8.0", mig=1, gpm=int(a100_gpm),
          sm_clock=1410, energy_start_mj=5_000_000, energy_step_mj=A100_ENERGY_STEP_MJ,
          power_mw=A100_POWER_MW, event_reasons=0x1, util=33)
    s.gpu(gpu_uuid(1), name=H100, pci_device_id=0x2330, cc="9.0", mig=1, gpm=1,
          sm_clock=1755, max_sm_clock=1980, energy_step_mj=2_000, power_mw=400_000)
    s.gpu(gpu_uuid(2), name=H100, pci_device_id=0x2330, cc="9.0", mig=0, gpm=1,
          sm_clock=1980, util=90, energy_step_mj=700, power_mw=650_000, any_tensor=55.5)
    for gpu, layout in ((0, A100_LAYOUT), (1, H100_LAYOUT)):
        for k, (profile, gi, sms, tensor) in enumerate(layout):
            s.mig(gpu, mig_uuid(gpu, k), profile=profile, gi=gi, sm_count=sms,
                  any_tensor=tensor)
    s.process(mig_of(0, 0), 100, 8 * GIB, None)
    s.process(mig_of(0, 2), 300, GIB, None)
    s.process(mig_of(1, 1), 500, 4 * GIB, None)
    s.process(mig_of(1, 1), 501, 2 * GIB, None)
    s.process(2, 900, 16 * GIB, 70)
    return s



@pytest.fixture
def node(fake_nvml: FakeNvml, clock: VirtualClock) -> Iterator[NvmlSource]:
    fake_nvml.use(node_scenario())
    source = NvmlSource(SPECS, clock=clock)
    yield source
    source.close()



def open_source(fake: FakeNvml, scenario: Scenario, clock: VirtualClock) -> NvmlSource:
    fake.use(scenario)
    return NvmlSource(SPECS, clock=clock)


# -- discovery -----------------------------------------------------------------------------


def test_a_mig_gpu_is_one_device_per_instance_with_its_sms_and_parent(
    node: NvmlSource,
) -> None:
    devices = node.devices()
    assert len(devices) == 9
    assert [d.uuid for d in devices] == [mig_uuid(0, k) for k in range(4)] + [
        mig_uuid(1, k) for k in range(4)] + [gpu_uuid(2)]
    assert [d.name for d in devices[:4]] == [f"{A100} MIG {p}" for p, *_ in A100_LAYOUT]
    assert devices[4].name == f"{H100} MIG 3g.40gb"
    assert [d.sm_count for d in devices] == [sms for _p, _gi, sms, _t in A100_LAYOUT] + [
        sms for _p, _gi, sms, _t in H100_LAYOUT] + [None]
    assert [d.mig_parent_uuid for d in devices] == [gpu_uuid(0)] * 4 + [gpu_uuid(1)] * 4 + [
        None]
    # a MIG device keeps its GPU's NVML index; its UUID tells it apart
    assert [d.index for d in devices] == [0] * 4 + [1] * 4 + [2]
    assert [d.spec_key for d in devices] == ["a100_40gb"] * 4 + ["h100_sxm"] * 5
    assert [d.pci_device_id for d in devices] == [0x20B0] * 4 + [0x2330] * 5
    assert [d.compute_capability for d in devices] == ["8.0"] * 4 + ["9.0"] * 5
    # no GPM on Ampere; the H100 instances and the whole H100 have it
    assert [d.activity_kind for d in devices] == [ActivityKind.NONE] * 4 + [
        ActivityKind.GPM] * 5
    assert [d.max_sm_clock_mhz for d in devices] == [1410.0] * 4 + [1980.0] * 5


def test_the_agent_gives_each_mig_device_the_peak_of_its_own_sms(node: NvmlSource) -> None:
    resolved = specs_for(node.devices(), SPECS)
    assert [r.spec.sm_count for r in resolved] == [
        sms for _p, _gi, sms, _t in A100_LAYOUT + H100_LAYOUT] + [132]
    a100 = SPECS["a100_40gb"]
    assert resolved[0].spec.flop_per_clock("bf16_tensor") == (
        a100.flop_per_clock("bf16_tensor") * 42 // 108)


def test_gpm_is_sampled_per_gpu_instance_through_the_mig_call(
    node: NvmlSource, fake_nvml: FakeNvml, clock: VirtualClock
) -> None:
    first, second, third = tick(node, clock, 3)
    assert np.isnan(first.tensor_any_pct).all()  # no interval before the first sample
    for b in (second, third):
        np.testing.assert_array_equal(b.tensor_any_pct[4:8], [t for *_, t in H100_LAYOUT])
        assert b.tensor_any_pct[8] == 55.5
        assert np.isnan(b.tensor_any_pct[:4]).all()  # Ampere: no GPM
    for k in range(4):
        assert fake_nvml.mig_gpm_stats(1, k) == fake_fixtures.GpmStats(3, 2, (2, 3))
    # the GPU with MIG on is never sampled whole; the whole H100 is
    assert fake_nvml.gpm_stats(1).samples_taken == 0
    assert fake_nvml.gpm_stats(2).samples_taken == 3


def test_clock_is_shared_utilization_unknown_and_energy_counted_once(
    node: NvmlSource, clock: VirtualClock
) -> None:
    batches = tick(node, clock, 3)
    for b in batches:
        assert b.up.all()
        np.testing.assert_array_equal(b.sm_clock_mhz, [1410] * 4 + [1755] * 4 + [1980])
        assert list(b.throttle_reasons[:4]) == [0x1] * 4
        assert np.isnan(b.gpu_util_pct[:8]).all()  # not reported per MIG device
        assert b.gpu_util_pct[8] == 90
        assert not b.errors  # unsupported is a value, not an error
        a100_sms = np.array([sms for _p, _gi, sms, _t in A100_LAYOUT], dtype=float)
        np.testing.assert_allclose(b.power_mw[:4], A100_POWER_MW * a100_sms / a100_sms.sum())
        assert b.power_mw[8] == 650_000  # a whole GPU keeps its own
    energy = np.array([b.energy_mj for b in batches])
    # the GPU's counter, split by SMs: its instances add up to it, never to more
    np.testing.assert_allclose(energy[:, :4].sum(axis=1),
                               [5_000_000 + A100_ENERGY_STEP_MJ * k for k in (1, 2, 3)])
    np.testing.assert_allclose(np.diff(energy[:, :4].sum(axis=1)), A100_ENERGY_STEP_MJ)
    np.testing.assert_allclose(np.diff(energy[:, 4:8].sum(axis=1)), 2_000)
    np.testing.assert_array_equal(np.diff(energy[:, 8]), 700)


def test_processes_are_attributed_to_their_instance_only(
    node: NvmlSource, clock: VirtualClock
) -> None:
    for b in tick(node, clock, 2):
        pids = [sorted(p.pid for p in procs) for procs in b.processes]
        assert pids == [[100], [], [300], [], [], [500, 501], [], [], [900]]
        (p100,) = b.processes[0]
        assert p100.used_memory_bytes == 8 * GIB
        assert p100.sm_util_pct is None  # NVML has no per-process utilization under MIG
        assert b.processes[8][0].sm_util_pct == 70.0


def test_mig_devices_and_a_whole_gpu_log_what_they_lack_once(
    fake_nvml: FakeNvml, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources")
    source = open_source(fake_nvml, node_scenario(), clock)
    try:
        tick(source, clock, 3)
    finally:
        source.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("has MIG on" in m and "3g.20gb (GPU instance 2, compute instance 0, 42 SMs"
               in m for m in messages) == 1
    no_gpm = [m for m in messages if "no GPM on this GPU" in m]
    assert len(no_gpm) == 1
    assert gpu_uuid(0) in no_gpm[0]
    util = [m for m in messages if "gpu_util_pct not available" in m]
    assert len(util) == 8  # once per MIG device, not per tick
    assert not [m for m in messages if "sm_count not available" in m or "mig_mode" in m]


# -- loss and layout changes ----------------------------------------------------------------


def test_a_lost_mig_device_is_down_while_its_siblings_go_on_and_comes_back(
    fake_nvml: FakeNvml, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources")
    source = open_source(fake_nvml, node_scenario().lost(mig_of(1, 0), after_reads=2), clock)
    try:
        batches = tick(source, clock, 2 * CHECKS_S)
        for i, b in enumerate(batches):
            assert bool(b.up[4]) is (i < 2), i
            assert np.delete(b.up, 4).all(), i
        down = batches[-1]
        assert math.isnan(down.tensor_any_pct[4])
        assert down.processes[4] == ()
        assert down.tensor_any_pct[5] == 20.0
        fake_nvml.reset_mig(1, 0)
        back = tick(source, clock, CHECKS_S + 1)
        first = next(k for k, b in enumerate(back) if b.up[4])
        assert all(b.up[4] for b in back[first:])
        assert math.isnan(back[first].tensor_any_pct[4])  # no GPM interval across the loss
        assert back[first + 1].tensor_any_pct[4] == 40.0
    finally:
        source.close()
    messages = [r.getMessage() for r in caplog.records]
    lost = [m for m in messages if "is lost" in m]
    assert len(lost) == 1
    assert mig_uuid(1, 0) in lost[0]
    assert sum("answers again: found in its GPU's MIG layout" in m and mig_uuid(1, 0) in m
               for m in messages) == 1


def test_a_lost_gpu_takes_its_mig_devices_down_and_back(
    fake_nvml: FakeNvml, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources")
    source = open_source(fake_nvml, node_scenario().lost(0, after_reads=2), clock)
    try:
        batches = tick(source, clock, 4)
        assert [bool(b.up[:4].any()) for b in batches] == [True, True, False, False]
        assert all(b.up[4:].all() for b in batches)
        assert all(np.isnan(b.energy_mj[:4]).all() for b in batches[2:])
        fake_nvml.reset_gpu(0)
        back = tick(source, clock, CHECKS_S + 1)
        assert back[-1].up.all()
        np.testing.assert_array_equal(back[-1].sm_clock_mhz[:4], 1410)
        assert [sorted(p.pid for p in procs) for procs in back[-1].processes[:4]] == [
            [100], [], [300], []]
    finally:
        source.close()
    lost = [r.getMessage() for r in caplog.records if "is lost" in r.getMessage()]
    assert len(lost) == 1
    assert "with its 4 MIG devices" in lost[0]


def test_a_changed_layout_is_detected_logged_and_the_gone_device_is_down(
    fake_nvml: FakeNvml, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources")
    scenario = node_scenario().mig(1, mig_uuid(1, 9), profile="1g.10gb", gi=11, sm_count=16,
                                   present=0)
    source = open_source(fake_nvml, scenario, clock)
    try:
        assert len(source.devices()) == 9  # a MIG device that does not exist yet is not one
        tick(source, clock, 2)
        # 1g.10gb (GPU instance 13) destroyed and another created: indices shift, so
        # the devices that stay are found by their UUID.
        fake_nvml.set_mig_present(1, 2, False)
        fake_nvml.set_mig_present(1, 4, True)
        batches = tick(source, clock, CHECKS_S + 2)
        assert not batches[-1].up[6]
        assert batches[-1].up[[4, 5, 7]].all()
        np.testing.assert_array_equal(batches[-1].tensor_any_pct[[4, 5, 7]], [40, 20, 75])
        assert batches[-1].n_gpus == 9
    finally:
        source.close()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    text = errors[0].getMessage()
    assert "MIG layout changed" in text
    assert "restart the agent" in text
    assert mig_uuid(1, 9) in text
    assert gpu_uuid(1) in text
    assert sum("no longer in its GPU's MIG layout" in r.getMessage()
               for r in caplog.records) == 1


def test_mig_turned_on_for_a_whole_gpu_asks_for_a_restart(
    fake_nvml: FakeNvml, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources")
    source = open_source(fake_nvml, node_scenario(), clock)
    try:
        tick(source, clock, 2)
        assert not [r for r in caplog.records if r.levelno == logging.ERROR]
        fake_nvml.set_mig_mode(2, True)
        batches = tick(source, clock, 3 * CHECKS_S)
        assert batches[-1].up[8]  # still read whole, utilization now unknown
        assert math.isnan(batches[-1].gpu_util_pct[8])
    finally:
        source.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "MIG is now on" in errors[0]
    assert "restart the agent to account it per MIG device" in errors[0]


# -- layouts NVML gives less about -----------------------------------------------------------


def test_a_gpu_instance_with_several_compute_instances_has_no_gpm_per_device(
    fake_nvml: FakeNvml, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources")
    s = Scenario().gpu(gpu_uuid(0), name=H100, mig=1, gpm=1)
    s.mig(0, mig_uuid(0, 0), profile="1c.3g.40gb", gi=1, ci=0, sm_count=16, any_tensor=90)
    s.mig(0, mig_uuid(0, 1), profile="2c.3g.40gb", gi=1, ci=1, sm_count=32)
    s.mig(0, mig_uuid(0, 2), profile="3g.40gb", gi=2, ci=0, sm_count=60, any_tensor=30)
    source = open_source(fake_nvml, s, clock)
    try:
        assert [d.activity_kind for d in source.devices()] == [ActivityKind.NONE] * 2 + [
            ActivityKind.GPM]
        assert fake_nvml.live_gpm_samples() == 2
        b = tick(source, clock, 2)[-1]
        assert np.isnan(b.tensor_any_pct[:2]).all()
        assert b.tensor_any_pct[2] == 30
    finally:
        source.close()
    assert fake_nvml.live_gpm_samples() == 0
    assert any("cannot be split" in r.getMessage() for r in caplog.records)


def test_mig_on_without_mig_devices_is_one_gpu_without_activity(
    fake_nvml: FakeNvml, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources")
    source = open_source(fake_nvml, Scenario().gpu(gpu_uuid(0), name=H100, mig=1, gpm=1,
                                                   any_tensor=50), clock)
    try:
        (device,) = source.devices()
        assert (device.uuid, device.mig_parent_uuid) == (gpu_uuid(0), None)
        assert device.activity_kind is ActivityKind.NONE
        b = tick(source, clock, 2)[-1]
        assert b.up[0]
        assert math.isnan(b.tensor_any_pct[0])
        assert math.isnan(b.gpu_util_pct[0])
    finally:
        source.close()
    assert any("no MIG device exists" in r.getMessage() for r in caplog.records)


def test_close_frees_the_gpm_samples_of_every_mig_device(
    fake_nvml: FakeNvml, clock: VirtualClock
) -> None:
    source = open_source(fake_nvml, node_scenario(a100_gpm=True), clock)
    assert fake_nvml.live_gpm_samples() == 2 * 9
    tick(source, clock, 2)
    source.close()
    assert fake_nvml.live_gpm_samples() == 0
    assert fake_nvml.refcount() == 0


# -- live against replay ------------------------------------------------------------------


def live_and_replayed(fake: FakeNvml, clock: VirtualClock, tmp_path: Path, parent: str,
                      profile: str, live_sms: int) -> tuple[ResolvedSpec, ResolvedSpec]:
    """The peak model of one MIG device read live (NVML's SM count) and of the same
    instance in a replayed dcgm-exporter scrape (name and GPU_I_PROFILE only)."""
    s = Scenario().gpu(gpu_uuid(0), name=parent, mig=1, gpm=1)
    s.mig(0, mig_uuid(0, 0), profile=profile, gi=1, sm_count=live_sms)
    source = open_source(fake, s, clock)
    try:
        (device,) = source.devices()
    finally:
        source.close()
    assert device.sm_count == live_sms
    live = SPECS.resolve(device.name, pci_device_id=device.pci_device_id,
                         compute_capability=device.compute_capability,
                         sm_count=device.sm_count, max_sm_clock_mhz=device.max_sm_clock_mhz)
    assert live.spec.sm_count == live_sms
    replayed = ReplayEngine(tmp_path / "ledger.sqlite", ReplayOptions())._spec_of(
        GpuKey(key=f"{gpu_uuid(0)}/mig:1", name=parent, mig_profile=profile))
    return live, replayed


PRECISIONS = ("fp64_tensor", "tf32_tensor", "bf16_tensor", "int8_tensor", "fp32")


@pytest.mark.parametrize(
    ("parent", "profile", "live_sms"),
    [
        # SM counts NVIDIA lists per profile (nvidia-smi mig -lgip).
        (A100, "3g.20gb", 42),
        (A100, "2g.10gb", 28),
        (A100, "1g.5gb", 14),
        (A100, "7g.40gb", 98),
        (H100, "3g.40gb", 60),
        (H100, "2g.20gb", 32),
        (H100, "1g.10gb", 16),
        (H100, "1g.20gb", 26),
        (H100, "7g.80gb", 132),
    ],
)
def test_live_mig_peak_lies_in_the_replayed_band(
    fake_nvml: FakeNvml, clock: VirtualClock, tmp_path: Path, parent: str, profile: str,
    live_sms: int,
) -> None:
    """NVML's count is exact; the replay knows only the profile, so its band must hold
    the live peak, and be no wider than the spread of real counts makes it."""
    live, replayed = live_and_replayed(fake_nvml, clock, tmp_path, parent, profile, live_sms)
    for precision in PRECISIONS:
        live_fpc = live.spec.flop_per_clock(precision)
        replay_fpc = replayed.spec.flop_per_clock(precision)
        assert live_fpc > 0, precision
        assert replay_fpc * replayed.low_factor <= live_fpc, precision
        assert live_fpc <= replay_fpc * replayed.high_factor, precision
        assert replayed.high_factor / replayed.low_factor <= 1.75 / 0.84 + 1e-9, precision
    assert "MIG" in replayed.reason
