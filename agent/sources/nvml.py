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
from agent.sources.nvml_errors import (
    NO_SAMPLES_CODES,
    NVML_ERROR_FUNCTION_NOT_FOUND,
    Failure,
    OnceLog,
    classify,
    classify_code,
    describe,
    init_failure_reason,
    nvml_code,
)
from agent.sources.specs import SpecTable

log = logging.getLogger(__name__)

T = TypeVar("T")

# The NVML GPM docs ask for samples taken more than 100 ms apart; a shorter interval
# gives noisy or zero metrics.
GPM_MIN_INTERVAL_NS = 100_000_000
# How often a lost GPU is looked for again: a handle lookup is cheap, but a driver in
# the middle of a reset is better left alone than asked at every tick.
REACQUIRE_EVERY_NS = 10_000_000_000

# Batch field <- GPM metric, all percent 0-100 averaged over the sample interval.
GPM_METRICS: tuple[tuple[str, int], ...] = (
    ("tensor_any_pct", pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL),
    ("tensor_hmma_pct", pynvml.NVML_GPM_METRIC_HMMA_TENSOR_UTIL),
    ("tensor_imma_pct", pynvml.NVML_GPM_METRIC_IMMA_TENSOR_UTIL),
    ("tensor_dmma_pct", pynvml.NVML_GPM_METRIC_DMMA_TENSOR_UTIL),
    ("tensor_dfma_pct", pynvml.NVML_GPM_METRIC_DFMA_TENSOR_UTIL),
    ("fp16_pct", pynvml.NVML_GPM_METRIC_FP16_UTIL),
    ("fp32_pct", pynvml.NVML_GPM_METRIC_FP32_UTIL),
    ("fp64_pct", pynvml.NVML_GPM_METRIC_FP64_UTIL),
    ("sm_util_pct", pynvml.NVML_GPM_METRIC_SM_UTIL),
    ("sm_occupancy_pct", pynvml.NVML_GPM_METRIC_SM_OCCUPANCY),
)

# Exceptions pynvml raises for a failed call: NVMLError and its per-code subclasses, and
# NVMLLibraryMismatchError, which its unversioned wrappers raise for FUNCTION_NOT_FOUND.
_NVML_EXCEPTIONS: tuple[type[BaseException], ...] = (
    pynvml.NVMLError,
    pynvml.NVMLLibraryMismatchError,
)


class _GpuLostError(Exception):
    """Internal: an NVML call said the GPU is gone; carries the NVML exception."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.cause = cause


class _Gpm:
    """A GPM GPU's two sample buffers and its reusable ``nvmlGpmMetricsGet`` request.

    ``prev`` holds the sample of the last interval's end (taken at ``prev_ns``, clock
    nanoseconds, None before the first sample); ``next`` is the buffer the next sample
    goes into. They swap after every sample, so no buffer is allocated per tick.
    """

    __slots__ = ("next", "prev", "prev_ns", "request")

    def __init__(self, prev: Any, nxt: Any) -> None:
        self.prev = prev
        self.next = nxt
        self.prev_ns: int | None = None
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(GPM_METRICS)
        for i, (_field, metric_id) in enumerate(GPM_METRICS):
            request.metrics[i].metricId = metric_id
        self.request = request


class _Gpu:
    """Per-GPU state: the NVML handle, whether it is still up, GPM and process cursors."""

    __slots__ = ("gpm", "handle", "identified", "index", "losses", "pos", "proc_util_last_us",
                 "retry_ns", "up", "uuid")

    def __init__(self, pos: int, index: int, handle: Any) -> None:
        self.pos = pos
        self.index = index
        self.handle = handle
        self.uuid = f"GPU-unknown-{index}"
        self.identified = False  # uuid read from the GPU: it can be looked up again
        self.up = handle is not None
        self.losses = 0
        self.retry_ns: int | None = None  # when to look for it again, once lost
        self.gpm: _Gpm | None = None
        # CPU timestamp (µs) of the newest per-process sample seen; NVML returns only
        # samples newer than the timestamp it is given.
        self.proc_util_last_us = 0


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
            self._gpus, self._devices = self._open_devices(specs)
        except BaseException:
            with contextlib.suppress(*_NVML_EXCEPTIONS):
                pynvml.nvmlShutdown()
            raise

    @property
    def kind(self) -> str:
        return "nvml"

    def devices(self) -> Sequence[DeviceInfo]:
        """The GPUs in NVML index order, the order of every batch's arrays."""
        return self._devices

    # -- start-up ----------------------------------------------------------------------

    def _open_devices(self, specs: SpecTable) -> tuple[list[_Gpu], tuple[DeviceInfo, ...]]:
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except _NVML_EXCEPTIONS as e:
            raise SourceError(f"NVML cannot count the GPUs: {describe(e)}") from e
        if count == 0:
            raise SourceError("NVML reports no GPUs")
        gpus: list[_Gpu] = []
        infos: list[DeviceInfo] = []
        for index in range(count):
            gpu, info = self._open_device(len(gpus), index, specs)
            gpus.append(gpu)
            infos.append(info)
        return gpus, tuple(infos)

    def _open_device(self, pos: int, index: int, specs: SpecTable) -> tuple[_Gpu, DeviceInfo]:
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except _NVML_EXCEPTIONS as e:
            # Kept as a down GPU rather than dropped, so the gap is visible as up=0.
            log.warning("GPU %d: no NVML handle (%s); reported as down", index, describe(e))
            handle = None
        gpu = _Gpu(pos, index, handle)
        name = "unknown"
        spec_key: str | None = None
        max_clock_mhz: float | None = None
        activity = ActivityKind.NONE
        if gpu.up:
            try:
                name = str(self._call(gpu, "name", pynvml.nvmlDeviceGetName, handle) or name)
                uuid = self._call(gpu, "uuid", pynvml.nvmlDeviceGetUUID, handle)
                gpu.uuid = str(uuid or gpu.uuid)
                gpu.identified = bool(uuid)
                spec = specs.match_name(name)
                spec_key = None if spec is None else spec.key
                max_clock = self._call(
                    gpu, "max_sm_clock_mhz", pynvml.nvmlDeviceGetMaxClockInfo, handle,
                    pynvml.NVML_CLOCK_SM,
                )
                max_clock_mhz = None if max_clock is None else float(max_clock)
                gpu.gpm = self._open_gpm(gpu)
                if gpu.gpm is not None:
                    activity = ActivityKind.GPM
            except _GpuLostError as lost:
                self._mark_lost(gpu, lost.cause)
        self._errors.clear()  # start-up failures are logged, not carried into a batch
        info = DeviceInfo(
            index=index, uuid=gpu.uuid, name=name, spec_key=spec_key,
            max_sm_clock_mhz=max_clock_mhz, activity_kind=activity, source="nvml",
        )
        return gpu, info

    def _open_gpm(self, gpu: _Gpu) -> _Gpm | None:
        support = self._call(gpu, "gpm", pynvml.nvmlGpmQueryDeviceSupport, gpu.handle)
        if support is None or not support.isSupportedDevice:
            return None
        prev = self._call(gpu, "gpm", pynvml.nvmlGpmSampleAlloc)
        nxt = self._call(gpu, "gpm", pynvml.nvmlGpmSampleAlloc) if prev is not None else None
        if prev is None or nxt is None:
            if prev is not None:
                self._free_sample(prev)
            log.warning("GPU %d (%s): GPM sample buffers unavailable; no tensor activity",
                        gpu.index, gpu.uuid)
            return None
        return _Gpm(prev, nxt)

    # -- the one gate every NVML call goes through --------------------------------------

    def _call(self, gpu: _Gpu, field: str, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)``, or None when the value is unsupported or failed this tick.

        Raises:
            _GpuLostError: the GPU is gone; the caller marks it down.
        """
        if (gpu.pos, field) in self._unsupported:
            return None
        try:
            return fn(*args)
        except _NVML_EXCEPTIONS as e:
            self._failed(gpu, field, e)
            return None

    def _failed(self, gpu: _Gpu, field: str, exc: BaseException) -> None:
        kind = classify(exc)
        if kind is Failure.LOST:
            raise _GpuLostError(exc) from exc
        self._failed_code(gpu, field, kind, describe(exc))

    def _failed_code(self, gpu: _Gpu, field: str, kind: Failure, why: str) -> None:
        if kind is Failure.UNSUPPORTED:
            # Asked no more: a driver that does not support a value now will not later.
            self._unsupported.add((gpu.pos, field))
            self._once.log(("unsupported", gpu.pos, field), logging.INFO,
                           "GPU %d (%s): %s not available (%s); reported as unknown",
                           gpu.index, gpu.uuid, field, why)
            return
        self._errors.append((gpu.pos, field))
        if not self._once.log(("error", gpu.pos, field, why), logging.WARNING,
                              "GPU %d (%s): reading %s failed: %s", gpu.index, gpu.uuid, field,
                              why):
            log.debug("GPU %d: reading %s failed again: %s", gpu.index, field, why)

    def _mark_lost(self, gpu: _Gpu, cause: BaseException) -> None:
        gpu.up = False
        gpu.retry_ns = None
        self._once.log(("lost", gpu.pos, gpu.losses), logging.WARNING,
                       "GPU %d (%s) is lost (%s): reported as down, and its high bound "
                       "grows at its peak rate, until it answers again%s",
                       gpu.index, gpu.uuid, describe(cause),
                       "" if gpu.identified else " (its UUID is unknown: restart the agent)")

    def _reacquire(self, gpu: _Gpu, now_ns: int) -> bool:
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
        if gpu.gpm is not None:
            # Its counters may have restarted with the driver: no interval across it.
            gpu.gpm.prev_ns = None
        log.warning("GPU %d (%s) answers again: re-acquired by its UUID", gpu.index, gpu.uuid)
        return True

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
        for gpu in self._gpus:
            now_ns = self._clock.monotonic_ns()
            batch.timestamp_ns[gpu.pos] = now_ns
            if not gpu.up and not self._reacquire(gpu, now_ns):
                batch.up[gpu.pos] = False
                continue
            try:
                processes[gpu.pos] = self._read_gpu(gpu, batch, now_ns)
            except _GpuLostError as lost:
                self._mark_lost(gpu, lost.cause)
                self._blank(batch, gpu.pos)
            except Exception as e:  # noqa: BLE001 - read() must not raise for one GPU
                self._once.log(("unexpected", gpu.pos, type(e).__name__), logging.ERROR,
                               "GPU %d (%s): unexpected failure while reading: %r",
                               gpu.index, gpu.uuid, e)
                self._blank(batch, gpu.pos)
                self._errors.append((gpu.pos, "read"))
        batch.processes = tuple(processes)
        batch.errors = tuple(self._errors)
        return batch

    def _blank(self, batch: SampleBatch, pos: int) -> None:
        batch.up[pos] = False
        for name in FLOAT_FIELDS:
            getattr(batch, name)[pos] = math.nan
        batch.throttle_reasons[pos] = -1
        self._errors = [e for e in self._errors if e[0] != pos]

    def _read_gpu(self, gpu: _Gpu, batch: SampleBatch, now_ns: int) -> tuple[GpuProcess, ...]:
        h, pos = gpu.handle, gpu.pos
        # GPM first: its interval ends at the sample, which should be as close to
        # timestamp_ns as possible.
        if gpu.gpm is not None:
            self._read_gpm(gpu, gpu.gpm, batch, now_ns)
        clock_mhz = self._call(gpu, "sm_clock_mhz", pynvml.nvmlDeviceGetClockInfo, h,
                               pynvml.NVML_CLOCK_SM)
        if clock_mhz is not None:
            batch.sm_clock_mhz[pos] = float(clock_mhz)
        util = self._call(gpu, "gpu_util_pct", pynvml.nvmlDeviceGetUtilizationRates, h)
        if util is not None:
            batch.gpu_util_pct[pos] = float(util.gpu)
        energy_mj = self._call(gpu, "energy_mj", pynvml.nvmlDeviceGetTotalEnergyConsumption, h)
        if energy_mj is not None:
            batch.energy_mj[pos] = float(energy_mj)
        power_mw = self._call(gpu, "power_mw", pynvml.nvmlDeviceGetPowerUsage, h)
        if power_mw is not None:
            batch.power_mw[pos] = float(power_mw)
        reasons = self._read_clock_event_reasons(gpu)
        if reasons is not None:
            batch.throttle_reasons[pos] = int(reasons)
        return self._read_processes(gpu)

    def _read_clock_event_reasons(self, gpu: _Gpu) -> int | None:
        """The clock-event (throttle) bitmask, from whichever name the driver has."""
        field = "throttle_reasons"
        if not self._use_throttle_name and (gpu.pos, field) not in self._unsupported:
            try:
                return int(pynvml.nvmlDeviceGetCurrentClocksEventReasons(gpu.handle))
            except _NVML_EXCEPTIONS as e:
                if nvml_code(e) != NVML_ERROR_FUNCTION_NOT_FOUND:
                    self._failed(gpu, field, e)
                    return None
                self._use_throttle_name = True
        return self._call(gpu, field, pynvml.nvmlDeviceGetCurrentClocksThrottleReasons,
                          gpu.handle)

    def _read_gpm(self, gpu: _Gpu, gpm: _Gpm, batch: SampleBatch, now_ns: int) -> None:
        if gpm.prev_ns is not None and now_ns - gpm.prev_ns < GPM_MIN_INTERVAL_NS:
            # Too soon for a meaningful interval: no sample now, and the previous one is
            # kept so the next interval covers the whole span.
            return
        if self._call(gpu, "gpm", pynvml.nvmlGpmSampleGet, gpu.handle, gpm.next) is None:
            return  # the previous sample stays the interval's start
        if gpm.prev_ns is not None:
            self._fill_gpm(gpu, gpm, batch)
        gpm.prev, gpm.next = gpm.next, gpm.prev
        gpm.prev_ns = now_ns

    def _fill_gpm(self, gpu: _Gpu, gpm: _Gpm, batch: SampleBatch) -> None:
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
            elif (gpu.pos, field) not in self._unsupported:
                kind = classify_code(code)
                if kind is Failure.LOST:
                    kind = Failure.ERROR  # the sample itself was taken; the GPU answered
                self._failed_code(gpu, field, kind, f"GPM metric return code {code}")

    def _read_processes(self, gpu: _Gpu) -> tuple[GpuProcess, ...]:
        procs = self._call(gpu, "processes", pynvml.nvmlDeviceGetComputeRunningProcesses,
                           gpu.handle)
        if not procs:
            return ()
        sm_util = self._read_process_sm_util(gpu)
        out = []
        for p in procs:
            pid = int(p.pid)
            mem = p.usedGpuMemory  # None where the driver hides it (pynvml maps N/A)
            out.append(GpuProcess(pid=pid, used_memory_bytes=None if mem is None else int(mem),
                                  sm_util_pct=sm_util.get(pid)))
        return tuple(out)

    def _read_process_sm_util(self, gpu: _Gpu) -> dict[int, float]:
        """Per-process SM utilization (percent) from samples newer than the last read."""
        field = "process_sm_util"
        if (gpu.pos, field) in self._unsupported:
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
