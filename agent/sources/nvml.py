"""The NVIDIA GPUs of this machine, read through NVML (``pynvml``).

:class:`NvmlSource` implements :class:`~agent.sources.base.GpuSource`. Values keep
NVML's units: SM clock in MHz, ``utilization.gpu`` and GPM activity in percent (0-100),
the energy counter in millijoules, power in milliwatts.

Failures are isolated field by field, then GPU by GPU (STYLE.md points 4-6): every NVML
call goes through :meth:`NvmlSource._call`, which turns "not supported" into an unknown
value logged once, a lost GPU into ``up=False`` until it answers again, and any other
failure into NaN for that field this tick plus an entry in ``SampleBatch.errors``.

A lost GPU is looked for again every :data:`REACQUIRE_EVERY_NS` by its UUID: after a
driver reset its old handle is stale and its index may name another GPU, so only the
UUID finds it again, without restarting the agent. A GPU whose UUID was never read (lost
at start) cannot be told from another and is left down until a restart.

GPM (Hopper and newer) reports activity over the interval between two samples, so each
GPM GPU keeps the sample of its previous read; the first read has no interval and leaves
the GPM fields NaN.

Each device's PCI device ID, compute capability and SM count are read at start, for
matching the spec table and for deriving a peak where no row matches; the per-device
state lives in :mod:`agent.sources.nvml_device`.

A GPU with MIG on is accounted per MIG device (:mod:`agent.sources.nvml_mig` says what
they share with their GPU: clock, energy and power, GPM per GPU instance). Its MIG
layout is read at start and looked at again every :data:`MIG_LAYOUT_CHECK_EVERY_NS`, as
is the MIG mode of every GPU that has one: a change is logged as an error, because the
new layout is accounted only after a restart.

``CUDA_VISIBLE_DEVICES`` is deliberately not applied: the agent accounts for the whole
node, and CUDA's default device order (fastest first) differs from NVML's (PCI bus), so
"honouring" it would need the CUDA runtime to get right.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pynvml

from agent.sources.base import (
    FLOAT_FIELDS,
    ActivityKind,
    DeviceInfo,
    GpuProcess,
    SampleBatch,
    SourceError,
)
from agent.sources.clock import Clock, RealClock
from agent.sources.nvml_device import (
    GPM_METRICS,
    DeviceFacts,
    Gate,
    GpmBuffers,
    GpuLostError,
    NvmlDevice,
    SharedReadings,
    read_facts,
)
from agent.sources.nvml_errors import (
    NO_SAMPLES_CODES,
    NVML_ERROR_FUNCTION_NOT_FOUND,
    UNSUPPORTED_CODES,
    Failure,
    OnceLog,
    classify,
    classify_code,
    describe,
    init_failure_reason,
    none_for,
    nvml_code,
)
from agent.sources.nvml_mig import MIG_ENABLED, check_mig_layout, open_mig
from agent.sources.specs import SpecTable

log = logging.getLogger(__name__)

T = TypeVar("T")

# The NVML GPM docs ask for samples taken more than 100 ms apart; a shorter interval
# gives noisy or zero metrics.
GPM_MIN_INTERVAL_NS = 100_000_000
# Two calls cost milliseconds of CPU each where the others cost tens of microseconds
# (measured on an H200, driver 580: the total-energy counter 3.4 ms, per-process
# utilization 2.8 ms): at 10 Hz they were nearly all of the agent's NVML cost. Both
# are read at most about once a second. The energy counter is cumulative, so a sample
# without a reading loses nothing: the next reading's difference covers the span
# exactly (agent.accounting.integrate). Per-process utilization is the driver's newest
# sample per process, which it takes a few times a second anyway. At the default
# 1 s interval every tick still reads both (the threshold leaves room for jitter).
ENERGY_EVERY_NS = 950_000_000
PROCESS_UTIL_EVERY_NS = 950_000_000
# How often a lost GPU is looked for again: a handle lookup is cheap, but a driver in
# the middle of a reset is better left alone than asked at every tick.
REACQUIRE_EVERY_NS = 10_000_000_000
# How often MIG modes and layouts are read again (about 2 + 5 per MIG device calls):
# often enough that a reconfiguration is reported within seconds.
MIG_LAYOUT_CHECK_EVERY_NS = 10_000_000_000

# Exceptions pynvml raises for a failed call: NVMLError and its per-code subclasses, and
# NVMLLibraryMismatchError, which its unversioned wrappers raise for FUNCTION_NOT_FOUND.
_NVML_EXCEPTIONS: tuple[type[BaseException], ...] = (
    pynvml.NVMLError,
    pynvml.NVMLLibraryMismatchError,
)


class NvmlSource:
    """Every GPU NVML reports on this machine.

    Args:
        specs: the GPU spec table; each device's name is matched against it.
        clock: where read times come from (``RealClock`` by default).

    Raises:
        SourceError: if NVML cannot be initialised (library missing, driver not loaded,
            no permission), cannot count the GPUs, or reports none.
    """

    def __init__(self, specs: SpecTable, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or RealClock()
        self._once = OnceLog(log)
        self._unsupported: set[tuple[int, str]] = set()
        self._errors: list[tuple[int, str]] = []
        # Drivers before R535 only know nvmlDeviceGetCurrentClocksThrottleReasons.
        self._use_throttle_name = False
        self._closed = False
        try:
            pynvml.nvmlInit()
        except _NVML_EXCEPTIONS as e:
            raise SourceError(f"cannot start NVML: {init_failure_reason(e)}") from e
        try:
            self._physical, self._gpus, self._devices = self._open_devices(specs)
        except BaseException:
            with contextlib.suppress(*_NVML_EXCEPTIONS):
                pynvml.nvmlShutdown()
            raise

    @property
    def kind(self) -> str:
        return "nvml"

    def devices(self) -> Sequence[DeviceInfo]:
        """The GPUs in NVML index order, the order of every batch's arrays; a GPU with
        MIG on is replaced by its MIG devices, which keep its index."""
        return self._devices

    # -- start-up ----------------------------------------------------------------------

    def _open_devices(
        self, specs: SpecTable
    ) -> tuple[list[NvmlDevice], list[NvmlDevice], tuple[DeviceInfo, ...]]:
        """The physical GPUs, the devices in batch order, and the latter's facts."""
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except _NVML_EXCEPTIONS as e:
            raise SourceError(f"NVML cannot count the GPUs: {describe(e)}") from e
        if count == 0:
            raise SourceError("NVML reports no GPUs")
        physical: list[NvmlDevice] = []
        rows: list[NvmlDevice] = []
        infos: list[DeviceInfo] = []
        for index in range(count):
            gpu, gpu_infos = self._open_device(len(rows), index, specs)
            physical.append(gpu)
            rows.extend(gpu.children or [gpu])
            infos.extend(gpu_infos)
        return physical, rows, tuple(infos)

    def _open_device(
        self, pos: int, index: int, specs: SpecTable
    ) -> tuple[NvmlDevice, list[DeviceInfo]]:
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except _NVML_EXCEPTIONS as e:
            # Kept as a down GPU rather than dropped, so the gap is visible as up=0.
            log.warning("GPU %d: no NVML handle (%s); reported as down", index, describe(e))
            handle = None
        gpu = NvmlDevice(pos, index, handle)
        gpu.layout_check_ns = self._clock.monotonic_ns() + MIG_LAYOUT_CHECK_EVERY_NS
        name = "unknown"
        spec_key: str | None = None
        max_clock_mhz: float | None = None
        activity = ActivityKind.NONE
        facts = DeviceFacts()
        infos: list[DeviceInfo] = []
        if gpu.up:
            try:
                name = str(self._call(gpu, "name", pynvml.nvmlDeviceGetName, handle) or name)
                uuid = self._call(gpu, "uuid", pynvml.nvmlDeviceGetUUID, handle)
                gpu.uuid = str(uuid or gpu.uuid)
                gpu.identified = bool(uuid)
                facts = read_facts(self._gate(gpu), gpu)
                spec = specs.match(name, facts.pci_device_id)
                spec_key = None if spec is None else spec.key
                max_clock = self._call(
                    gpu, "max_sm_clock_mhz", pynvml.nvmlDeviceGetMaxClockInfo, handle,
                    pynvml.NVML_CLOCK_SM,
                )
                max_clock_mhz = None if max_clock is None else float(max_clock)
                mode = self._call(gpu, "mig_mode",
                                  none_for(UNSUPPORTED_CODES, pynvml.nvmlDeviceGetMigMode), handle)
                gpu.mig_mode = None if mode is None else int(mode[0])
                if gpu.mig_mode == MIG_ENABLED:
                    infos = open_mig(gpu, self._gate(gpu), self._gpm_supported(gpu),
                                     self._alloc_gpm, facts, max_clock_mhz, specs)
                else:
                    gpu.gpm = self._open_gpm(gpu)
                if gpu.gpm is not None:
                    activity = ActivityKind.GPM
            except GpuLostError as lost:
                self._mark_lost(gpu, lost.cause)
        self._errors.clear()  # start-up failures are logged, not carried into a batch
        if not gpu.children:
            infos = [DeviceInfo(
                index=index, uuid=gpu.uuid, name=name, spec_key=spec_key,
                max_sm_clock_mhz=max_clock_mhz, activity_kind=activity, source="nvml",
                pci_device_id=facts.pci_device_id,
                compute_capability=facts.compute_capability, sm_count=facts.sm_count,
            )]
        return gpu, infos

    def _gate(self, gpu: NvmlDevice) -> Gate:
        def gate(field: str, fn: Callable[..., T], /, *args: Any) -> T | None:
            return self._call(gpu, field, fn, *args)
        return gate

    def _gpm_supported(self, gpu: NvmlDevice) -> bool:
        support = self._call(gpu, "gpm", pynvml.nvmlGpmQueryDeviceSupport, gpu.handle)
        return support is not None and bool(support.isSupportedDevice)

    def _open_gpm(self, gpu: NvmlDevice) -> GpmBuffers | None:
        return self._alloc_gpm(gpu) if self._gpm_supported(gpu) else None

    def _alloc_gpm(self, gpu: NvmlDevice) -> GpmBuffers | None:
        prev = self._call(gpu, "gpm", pynvml.nvmlGpmSampleAlloc)
        nxt = self._call(gpu, "gpm", pynvml.nvmlGpmSampleAlloc) if prev is not None else None
        if prev is None or nxt is None:
            if prev is not None:
                self._free_sample(prev)
            log.warning("GPU %d (%s): GPM sample buffers unavailable; no tensor activity",
                        gpu.index, gpu.uuid)
            return None
        return GpmBuffers(prev, nxt)

    # -- the one gate every NVML call goes through --------------------------------------

    def _call(self, gpu: NvmlDevice, field: str, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)``, or None when the value is unsupported or failed this tick.

        Raises:
            GpuLostError: the GPU is gone; the caller marks it down.
        """
        if (gpu.key, field) in self._unsupported:
            return None
        try:
            return fn(*args)
        except _NVML_EXCEPTIONS as e:
            self._failed(gpu, field, e)
            return None

    def _failed(self, gpu: NvmlDevice, field: str, exc: BaseException) -> None:
        kind = classify(exc)
        if kind is Failure.LOST:
            raise GpuLostError(exc) from exc
        self._failed_code(gpu, field, kind, describe(exc))

    def _failed_code(self, gpu: NvmlDevice, field: str, kind: Failure, why: str) -> None:
        if kind is Failure.UNSUPPORTED:
            # Asked no more: a driver that does not support a value now will not later.
            self._unsupported.add((gpu.key, field))
            self._once.log(("unsupported", gpu.key, field), logging.INFO,
                           "%s (%s): %s not available (%s); reported as unknown",
                           gpu.label, gpu.uuid, field, why)
            return
        self._errors.extend((row, field) for row in gpu.rows)
        if not self._once.log(("error", gpu.key, field, why), logging.WARNING,
                              "%s (%s): reading %s failed: %s", gpu.label, gpu.uuid, field,
                              why):
            log.debug("%s (%s): reading %s failed again: %s", gpu.label, gpu.uuid, field, why)

    def _mark_lost(self, gpu: NvmlDevice, cause: BaseException | str) -> None:
        gpu.up = False
        gpu.retry_ns = None
        why = cause if isinstance(cause, str) else describe(cause)
        mig = f" with its {len(gpu.children)} MIG devices" if gpu.children else ""
        self._once.log(("lost", gpu.key, gpu.losses), logging.WARNING,
                       "%s (%s) is lost (%s): reported as down%s, and its high bound "
                       "grows at its peak rate, until it answers again%s",
                       gpu.label, gpu.uuid, why, mig,
                       "" if gpu.identified else " (its UUID is unknown: restart the agent)")

    def _reacquire(self, gpu: NvmlDevice, now_ns: int) -> bool:
        """Look a lost GPU up again by its UUID (at most every REACQUIRE_EVERY_NS); True
        if it answers, with a fresh handle and its GPM interval started over."""
        if not gpu.identified:
            return False
        if gpu.retry_ns is None:
            gpu.retry_ns = now_ns + REACQUIRE_EVERY_NS
        if now_ns < gpu.retry_ns:
            return False
        gpu.retry_ns = now_ns + REACQUIRE_EVERY_NS
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
            # A handle alone does not prove the GPU answers: ask it who it is.
            answered = str(pynvml.nvmlDeviceGetUUID(handle))
        except _NVML_EXCEPTIONS as e:
            log.debug("GPU %d (%s) still lost: %s", gpu.index, gpu.uuid, describe(e))
            return False
        if answered != gpu.uuid:
            log.debug("GPU %d: looking up %s found %s", gpu.index, gpu.uuid, answered)
            return False
        gpu.handle = handle
        gpu.up = True
        gpu.losses += 1
        for device in gpu.children or [gpu]:
            if device.gpm is not None:
                # Its counters may have restarted with the driver: no interval across it.
                device.gpm.prev_ns = None
        # A reset is when a MIG mode change takes effect, and MIG handles are stale.
        gpu.layout_check_ns = now_ns
        log.warning("GPU %d (%s) answers again: re-acquired by its UUID", gpu.index, gpu.uuid)
        return True

    def _check_layout(self, gpu: NvmlDevice, now_ns: int) -> None:
        """Read the MIG mode (and layout) of a GPU again (:func:`check_mig_layout`).

        Raises:
            GpuLostError: the GPU is gone.
        """
        gpu.layout_check_ns = now_ns + MIG_LAYOUT_CHECK_EVERY_NS
        check_mig_layout(gpu, self._gate(gpu), self._once, self._mark_lost)

    # -- sampling ----------------------------------------------------------------------

    def read(self) -> SampleBatch:
        """Sample every GPU once; never raises for a single GPU's failure.

        Returns:
            a batch whose ``timestamp_ns`` is the clock's monotonic time when each GPU
            was read, ``up=False`` for lost GPUs (all their fields NaN), and ``errors``
            listing fields that failed this tick for a reason other than "unsupported".

        Raises:
            SourceError: if the source was closed.
        """
        if self._closed:
            raise SourceError("NvmlSource.read() after close()")
        self._errors = []
        n = len(self._gpus)
        batch = SampleBatch.empty(n, self._clock.monotonic_ns(), self._clock.wall_ns())
        processes: list[tuple[GpuProcess, ...]] = [() for _ in range(n)]
        for gpu in self._physical:
            now_ns = self._clock.monotonic_ns()
            if gpu.children:
                self._read_mig_gpu(gpu, batch, processes, now_ns)
                continue
            batch.timestamp_ns[gpu.pos] = now_ns
            if not gpu.up and not self._reacquire(gpu, now_ns):
                batch.up[gpu.pos] = False
                continue
            try:
                processes[gpu.pos] = self._read_gpu(gpu, batch, now_ns)
                if gpu.mig_mode is not None and now_ns >= gpu.layout_check_ns:
                    self._check_layout(gpu, now_ns)
            except GpuLostError as lost:
                self._mark_lost(gpu, lost.cause)
                self._blank(batch, gpu.pos)
            except Exception as e:  # noqa: BLE001 - read() must not raise for one GPU
                self._unexpected(gpu, batch, e)
        batch.processes = tuple(processes)
        batch.errors = tuple(self._errors)
        return batch

    def _read_mig_gpu(self, gpu: NvmlDevice, batch: SampleBatch,
                      processes: list[tuple[GpuProcess, ...]], now_ns: int) -> None:
        """A GPU with MIG on: what its MIG devices share, then each of them."""
        try:
            if not gpu.up and not self._reacquire(gpu, now_ns):
                shared = None
            else:
                if now_ns >= gpu.layout_check_ns:
                    self._check_layout(gpu, now_ns)
                shared = self._read_shared(gpu, now_ns)
        except GpuLostError as lost:
            self._mark_lost(gpu, lost.cause)
            shared = None
        except Exception as e:  # noqa: BLE001 - read() must not raise for one GPU
            for child in gpu.children:
                batch.timestamp_ns[child.pos] = now_ns
            self._unexpected(gpu, batch, e)
            return
        for child in gpu.children:
            child_ns = self._clock.monotonic_ns()
            batch.timestamp_ns[child.pos] = child_ns
            if shared is None or not child.up:
                self._blank(batch, child.pos)
                continue
            try:
                processes[child.pos] = self._read_gpu(child, batch, child_ns, shared)
            except GpuLostError as lost:
                self._mark_lost(child, lost.cause)
                self._blank(batch, child.pos)
            except Exception as e:  # noqa: BLE001 - read() must not raise for one device
                self._unexpected(child, batch, e)

    def _unexpected(self, gpu: NvmlDevice, batch: SampleBatch, e: Exception) -> None:
        self._once.log(("unexpected", gpu.key, type(e).__name__), logging.ERROR,
                       "%s (%s): unexpected failure while reading: %r", gpu.label, gpu.uuid, e)
        for row in gpu.rows:
            self._blank(batch, row)
            self._errors.append((row, "read"))

    def _blank(self, batch: SampleBatch, pos: int) -> None:
        batch.up[pos] = False
        for name in FLOAT_FIELDS:
            getattr(batch, name)[pos] = math.nan
        batch.throttle_reasons[pos] = -1
        self._errors = [e for e in self._errors if e[0] != pos]

    def _read_gpu(self, gpu: NvmlDevice, batch: SampleBatch, now_ns: int,
                  shared: SharedReadings | None = None) -> tuple[GpuProcess, ...]:
        """One row: a whole GPU, or a MIG device given its GPU's ``shared`` values."""
        pos = gpu.pos
        # GPM first: its interval ends at the sample, which should be as close to
        # timestamp_ns as possible.
        if gpu.gpm is not None:
            self._read_gpm(gpu, gpu.gpm, batch, now_ns)
        if shared is None:
            shared = self._read_shared(gpu, now_ns)
        batch.sm_clock_mhz[pos] = shared.sm_clock_mhz
        # Unsupported on MIG devices (nvml.h): asked once, then known as unsupported.
        util = self._call(gpu, "gpu_util_pct", pynvml.nvmlDeviceGetUtilizationRates,
                          gpu.handle)
        if util is not None:
            batch.gpu_util_pct[pos] = float(util.gpu)
        batch.energy_mj[pos] = shared.energy_mj * gpu.energy_share
        batch.power_mw[pos] = shared.power_mw * gpu.energy_share
        batch.throttle_reasons[pos] = shared.throttle_reasons
        return self._read_processes(gpu, now_ns)

    def _read_shared(self, gpu: NvmlDevice, now_ns: int) -> SharedReadings:
        """A physical GPU's clock, energy (at most every ENERGY_EVERY_NS; NaN between
        readings), power and clock-event reasons."""
        h = gpu.handle
        clock_mhz = self._call(gpu, "sm_clock_mhz", pynvml.nvmlDeviceGetClockInfo, h,
                               pynvml.NVML_CLOCK_SM)
        energy_mj = None
        if gpu.energy_read_ns is None or now_ns - gpu.energy_read_ns >= ENERGY_EVERY_NS:
            energy_mj = self._call(gpu, "energy_mj",
                                   pynvml.nvmlDeviceGetTotalEnergyConsumption, h)
            gpu.energy_read_ns = now_ns
        power_mw = self._call(gpu, "power_mw", pynvml.nvmlDeviceGetPowerUsage, h)
        reasons = self._read_clock_event_reasons(gpu)
        return SharedReadings(
            math.nan if clock_mhz is None else float(clock_mhz),
            math.nan if energy_mj is None else float(energy_mj),
            math.nan if power_mw is None else float(power_mw),
            -1 if reasons is None else int(reasons),
        )

    def _read_clock_event_reasons(self, gpu: NvmlDevice) -> int | None:
        """The clock-event (throttle) bitmask, from whichever name the driver has."""
        field = "throttle_reasons"
        if not self._use_throttle_name and (gpu.key, field) not in self._unsupported:
            try:
                return int(pynvml.nvmlDeviceGetCurrentClocksEventReasons(gpu.handle))
            except _NVML_EXCEPTIONS as e:
                if nvml_code(e) != NVML_ERROR_FUNCTION_NOT_FOUND:
                    self._failed(gpu, field, e)
                    return None
                self._use_throttle_name = True
        return self._call(gpu, field, pynvml.nvmlDeviceGetCurrentClocksThrottleReasons,
                          gpu.handle)

    def _read_gpm(self, gpu: NvmlDevice, gpm: GpmBuffers, batch: SampleBatch, now_ns: int) -> None:
        if gpm.prev_ns is not None and now_ns - gpm.prev_ns < GPM_MIN_INTERVAL_NS:
            # Too soon for a meaningful interval: no sample now, and the previous one is
            # kept so the next interval covers the whole span.
            return
        if gpu.parent is None:
            taken = self._call(gpu, "gpm", pynvml.nvmlGpmSampleGet, gpu.handle, gpm.next)
        else:
            taken = self._call(gpu, "gpm", pynvml.nvmlGpmMigSampleGet, gpu.parent.handle,
                               gpu.gi_id, gpm.next)
        if taken is None:
            return  # the previous sample stays the interval's start
        if gpm.prev_ns is not None:
            self._fill_gpm(gpu, gpm, batch)
        gpm.prev, gpm.next = gpm.next, gpm.prev
        gpm.prev_ns = now_ns

    def _fill_gpm(self, gpu: NvmlDevice, gpm: GpmBuffers, batch: SampleBatch) -> None:
        request = gpm.request
        request.sample1 = gpm.prev
        request.sample2 = gpm.next
        for i in range(len(GPM_METRICS)):
            request.metrics[i].value = math.nan
            request.metrics[i].nvmlReturn = 0
        if self._call(gpu, "gpm", pynvml.nvmlGpmMetricsGet, request) is None:
            return
        for i, (field, _metric_id) in enumerate(GPM_METRICS):
            metric = request.metrics[i]
            code = int(metric.nvmlReturn)
            if code == 0:
                getattr(batch, field)[gpu.pos] = float(metric.value)
            elif (gpu.key, field) not in self._unsupported:
                kind = classify_code(code)
                if kind is Failure.LOST:
                    kind = Failure.ERROR  # the sample itself was taken; the GPU answered
                self._failed_code(gpu, field, kind, f"GPM metric return code {code}")

    def _read_processes(self, gpu: NvmlDevice, now_ns: int) -> tuple[GpuProcess, ...]:
        procs = self._call(gpu, "processes", pynvml.nvmlDeviceGetComputeRunningProcesses,
                           gpu.handle)
        if not procs:
            return ()
        if (gpu.proc_util_read_ns is None
                or now_ns - gpu.proc_util_read_ns >= PROCESS_UTIL_EVERY_NS):
            gpu.proc_util = self._read_process_sm_util(gpu)
            gpu.proc_util_read_ns = now_ns
        sm_util = gpu.proc_util
        out = []
        for p in procs:
            pid = int(p.pid)
            mem = p.usedGpuMemory  # None where the driver hides it (pynvml maps N/A)
            out.append(GpuProcess(pid=pid, used_memory_bytes=None if mem is None else int(mem),
                                  sm_util_pct=sm_util.get(pid)))
        return tuple(out)

    def _read_process_sm_util(self, gpu: NvmlDevice) -> dict[int, float]:
        """Per-process SM utilization (percent) from samples newer than the last read."""
        field = "process_sm_util"
        if (gpu.key, field) in self._unsupported:
            return {}
        try:
            samples = pynvml.nvmlDeviceGetProcessUtilization(gpu.handle, gpu.proc_util_last_us)
        except _NVML_EXCEPTIONS as e:
            if nvml_code(e) not in NO_SAMPLES_CODES:
                self._failed(gpu, field, e)
            return {}
        newest: dict[int, tuple[int, float]] = {}
        for s in samples:
            stamp_us, pid = int(s.timeStamp), int(s.pid)
            if pid not in newest or stamp_us >= newest[pid][0]:
                newest[pid] = (stamp_us, float(s.smUtil))
            gpu.proc_util_last_us = max(gpu.proc_util_last_us, stamp_us)
        return {pid: util for pid, (_stamp, util) in newest.items()}

    # -- shutdown ----------------------------------------------------------------------

    def close(self) -> None:
        """Free the GPM samples and shut NVML down; safe to call twice, never raises."""
        if self._closed:
            return
        self._closed = True
        for gpu in self._gpus:
            if gpu.gpm is not None:
                self._free_sample(gpu.gpm.prev)
                self._free_sample(gpu.gpm.next)
                gpu.gpm = None
        try:
            pynvml.nvmlShutdown()
        except _NVML_EXCEPTIONS as e:
            log.debug("nvmlShutdown failed: %s", describe(e))

    @staticmethod
    def _free_sample(sample: Any) -> None:
        try:
            pynvml.nvmlGpmSampleFree(sample)
        except _NVML_EXCEPTIONS as e:
            log.debug("nvmlGpmSampleFree failed: %s", describe(e))


def nvml_unavailable_reason() -> str | None:
    """None if NVML initialises and reports at least one GPU, else a short reason.

    The daemon calls this to choose between NVML and the simulator. NVML is shut down
    again before returning (its init is reference-counted, so an open source survives).
    """
    try:
        pynvml.nvmlInit()
    except _NVML_EXCEPTIONS as e:
        return init_failure_reason(e)
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except _NVML_EXCEPTIONS as e:
        return f"nvmlDeviceGetCount failed: {describe(e)}"
    finally:
        with contextlib.suppress(*_NVML_EXCEPTIONS):
            pynvml.nvmlShutdown()
    return None if count > 0 else "no GPUs"
