"""Pytest fixtures that put the stand-in ``libnvidia-ml`` under the real ``pynvml``.

``pynvml`` loads the library once into ``pynvml.nvmlLib`` and caches every symbol it
looks up in ``_nvmlGetFunctionPointer_cache``; the fixture sets the one to the stub and
clears the other, and puts both back afterwards. Everything above the C ABI (pynvml's
wrappers, its ctypes structs, its error classes) then runs for real.

Import the fixture into a test module (``from tests.fake_nvml.fixtures import ...``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pynvml
import pytest

from agent.sources.base import SampleBatch
from agent.sources.clock import VirtualClock
from agent.sources.nvml import NvmlSource
from tests.fake_nvml import FakeNvmlUnavailableError, Scenario, build_fake_nvml

SECOND_NS = 1_000_000_000


@dataclass(frozen=True)
class GpmStats:
    """What the stub recorded about one GPU's GPM use."""

    samples_taken: int
    metrics_calls: int
    last_interval: tuple[int, int]  # sample numbers of the last nvmlGpmMetricsGet


@dataclass
class FakeNvml:
    """The loaded stub, the scenario file it reads at init, and its test hooks."""

    lib_path: Path
    lib: ctypes.CDLL
    scenario_path: Path
    baseline_live_samples: int

    def use(self, scenario: Scenario) -> Scenario:
        """Make ``scenario`` the one the next ``nvmlInit`` reads."""
        scenario.write(self.scenario_path)
        return scenario

    def live_gpm_samples(self) -> int:
        """GPM samples allocated and not freed since this test started."""
        return int(self.lib.fakeNvml_liveGpmSamples()) - self.baseline_live_samples

    def refcount(self) -> int:
        """How many nvmlInit calls are not yet matched by nvmlShutdown."""
        return int(self.lib.fakeNvml_refcount())

    def reset_gpu(self, index: int) -> None:
        """A driver reset of GPU ``index``: a lost GPU answers again through a handle
        fetched after it (old handles stay lost)."""
        if self.lib.fakeNvml_resetGpu(ctypes.c_uint(index)) != 0:
            raise IndexError(f"the fake NVML has no GPU {index}")

    def uuid_lookups(self, index: int) -> int:
        """How many times GPU ``index`` was looked up by its UUID since NVML started."""
        self.lib.fakeNvml_uuidLookups.restype = ctypes.c_longlong
        count = int(self.lib.fakeNvml_uuidLookups(ctypes.c_uint(index)))
        if count < 0:
            raise IndexError(f"the fake NVML has no GPU {index}")
        return count

    def gpm_stats(self, index: int) -> GpmStats:
        taken, calls, seq1, seq2 = (ctypes.c_ulonglong() for _ in range(4))
        rc = self.lib.fakeNvml_gpmStats(
            ctypes.c_uint(index), ctypes.byref(taken), ctypes.byref(calls),
            ctypes.byref(seq1), ctypes.byref(seq2),
        )
        if rc != 0:
            raise IndexError(f"the fake NVML has no GPU {index}")
        return GpmStats(int(taken.value), int(calls.value), (int(seq1.value), int(seq2.value)))

    def mig_gpm_stats(self, gpu: int, mig: int) -> GpmStats:
        """GPM use of the GPU instance whose samples MIG device ``mig`` of ``gpu`` keeps."""
        taken, calls, seq1, seq2 = (ctypes.c_ulonglong() for _ in range(4))
        rc = self.lib.fakeNvml_migGpmStats(
            ctypes.c_uint(gpu), ctypes.c_uint(mig), ctypes.byref(taken), ctypes.byref(calls),
            ctypes.byref(seq1), ctypes.byref(seq2),
        )
        if rc != 0:
            raise IndexError(f"the fake NVML has no MIG device {gpu}/{mig}")
        return GpmStats(int(taken.value), int(calls.value), (int(seq1.value), int(seq2.value)))

    def set_mig_present(self, gpu: int, mig: int, present: bool) -> None:
        """MIG device ``mig`` of GPU ``gpu`` is created (True) or destroyed (False)."""
        if self.lib.fakeNvml_setMigPresent(ctypes.c_uint(gpu), ctypes.c_uint(mig),
                                           ctypes.c_int(int(present))) != 0:
            raise IndexError(f"the fake NVML has no MIG device {gpu}/{mig}")

    def set_mig_mode(self, gpu: int, enabled: bool) -> None:
        """The MIG mode of GPU ``gpu`` becomes ``enabled`` (current and pending)."""
        if self.lib.fakeNvml_setMigMode(ctypes.c_uint(gpu), ctypes.c_int(int(enabled))) != 0:
            raise IndexError(f"the fake NVML has no GPU {gpu}")

    def reset_mig(self, gpu: int, mig: int) -> None:
        """As :meth:`reset_gpu`, for MIG device ``mig`` of GPU ``gpu``."""
        if self.lib.fakeNvml_resetMig(ctypes.c_uint(gpu), ctypes.c_uint(mig)) != 0:
            raise IndexError(f"the fake NVML has no MIG device {gpu}/{mig}")


def _install(
    legacy: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeNvml]:
    try:
        lib_path = build_fake_nvml(legacy)
    except FakeNvmlUnavailableError as e:
        pytest.skip(str(e))
    scenario_path = tmp_path / "fake_nvml_scenario.txt"
    scenario_path.write_text("")
    monkeypatch.setenv("FAKE_NVML_SCENARIO", str(scenario_path))
    lib = ctypes.CDLL(str(lib_path))
    saved_lib = pynvml.nvmlLib
    saved_cache = dict(pynvml._nvmlGetFunctionPointer_cache)
    pynvml._nvmlGetFunctionPointer_cache.clear()
    pynvml.nvmlLib = lib
    try:
        yield FakeNvml(lib_path, lib, scenario_path, int(lib.fakeNvml_liveGpmSamples()))
    finally:
        # A test that failed before close() leaves NVML initialised in the stub, whose
        # state outlives the test; shut it down so the next test reads its own scenario.
        while int(lib.fakeNvml_refcount()) > 0:
            lib.nvmlShutdown()
        pynvml.nvmlLib = saved_lib
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml._nvmlGetFunctionPointer_cache.update(saved_cache)


@pytest.fixture
def fake_nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    """The stub loaded as pynvml's library; write a scenario with ``.use()`` first."""
    yield from _install(False, tmp_path, monkeypatch)


@pytest.fixture
def fake_nvml_legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    """As ``fake_nvml``, for a driver without ``nvmlDeviceGetCurrentClocksEventReasons``."""
    yield from _install(True, tmp_path, monkeypatch)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start_monotonic_ns=5 * SECOND_NS, start_wall_ns=1_700_000_000 * SECOND_NS)


def tick(source: NvmlSource, clock: VirtualClock, n: int = 1) -> list[SampleBatch]:
    """``n`` reads one second apart; the batches, in order."""
    batches: list[SampleBatch] = []
    for _ in range(n):
        clock.advance_ns(SECOND_NS)
        batches.append(source.read())
    return batches
