"""Per-device state of the NVML source, and what a device says about itself at start.

:class:`NvmlDevice` is one device :class:`~agent.sources.nvml.NvmlSource` reads: a GPU,
or a MIG device of one. :class:`GpmBuffers` holds a GPM device's two samples and its
reusable ``nvmlGpmMetricsGet`` request. :func:`read_facts` reads a GPU's PCI device ID,
compute capability and SM count, for matching the spec table and for deriving a peak
where no row matches.

Every NVML call of the source goes through its gate (:class:`Gate`): the value, or None
when it is unsupported or failed (logged once); :class:`GpuLostError` when the device is
gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar

import pynvml

from agent.sources.nvml_errors import UNSUPPORTED_CODES, describe, none_for

log = logging.getLogger(__name__)

T = TypeVar("T")

NVML_PCI_VENDOR_NVIDIA = 0x10DE

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


class Gate(Protocol):
    """The source's gate for one device: ``fn(*args)``, or None when the value is
    unsupported or failed (and logged once).

    Raises:
        GpuLostError: the device is gone.
    """

    def __call__(self, field: str, fn: Callable[..., T], /, *args: Any) -> T | None: ...


class GpuLostError(Exception):
    """An NVML call said the device is gone; carries the NVML exception."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.cause = cause


class GpmBuffers:
    """A GPM device's two sample buffers and its reusable ``nvmlGpmMetricsGet`` request.

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


class NvmlDevice:
    """Per-device state: the NVML handle, whether it is still up, GPM and process cursors.

    A device is a GPU, or a MIG device of one (``parent`` set). A GPU with MIG on has
    ``children``, its MIG devices, which take its place in the batch; it is read only
    for what they share (clock, energy, power).

    ``pos`` is the batch row (a GPU with MIG on has none of its own: ``rows`` are its
    MIG devices'); ``key`` tells devices apart in the once-logs and the unsupported set.
    """

    __slots__ = ("children", "energy_read_ns", "energy_share", "gi_id", "gpm", "handle",
                 "identified", "index", "key", "layout_check_ns", "losses", "mig_mode",
                 "parent", "pos", "proc_util", "proc_util_last_us", "proc_util_read_ns",
                 "retry_ns", "up", "uuid")

    def __init__(self, pos: int, index: int, handle: Any,
                 parent: NvmlDevice | None = None) -> None:
        self.pos = pos
        self.index = index
        self.handle = handle
        self.parent = parent
        self.key = pos if parent is not None else -1 - index
        self.uuid = f"GPU-unknown-{index}"
        self.identified = False  # uuid read from the GPU: it can be looked up again
        self.up = handle is not None
        self.losses = 0
        self.retry_ns: int | None = None  # when to look for it again, once lost
        self.gpm: GpmBuffers | None = None
        # CPU timestamp (µs) of the newest per-process sample seen; NVML returns only
        # samples newer than the timestamp it is given.
        self.proc_util_last_us = 0
        # When the energy counter and the per-process utilization were last read (see
        # ENERGY_EVERY_NS and PROCESS_UTIL_EVERY_NS in agent.sources.nvml), and the
        # latter's result, used until the next read.
        self.energy_read_ns: int | None = None
        self.proc_util_read_ns: int | None = None
        self.proc_util: dict[int, float] = {}
        self.children: list[NvmlDevice] = []
        self.mig_mode: int | None = None  # at start; None where the GPU has no MIG
        self.layout_check_ns = 0  # when to read its MIG mode and layout again
        self.gi_id: int | None = None  # a MIG device's GPU instance
        self.energy_share = 1.0  # of its GPU's energy and power

    @property
    def rows(self) -> tuple[int, ...]:
        """The batch rows this device's values go to."""
        return tuple(c.pos for c in self.children) if self.children else (self.pos,)

    @property
    def label(self) -> str:
        return f"GPU {self.index}" + (" MIG device" if self.parent is not None else "")


class DeviceFacts(NamedTuple):
    """What a GPU says about itself at start, for spec matching and derivation."""

    pci_device_id: int | None = None
    compute_capability: str | None = None
    sm_count: int | None = None


class SharedReadings(NamedTuple):
    """A GPU's values its MIG devices share, read once per tick (NaN, -1: unknown)."""

    sm_clock_mhz: float
    energy_mj: float
    power_mw: float
    throttle_reasons: int


def read_facts(gate: Gate, device: NvmlDevice) -> DeviceFacts:
    """The PCI device ID, compute capability and SM count of a GPU; None where unknown.

    Raises:
        GpuLostError: the GPU is gone.
    """
    h = device.handle
    pci = gate("pci_device_id", pynvml.nvmlDeviceGetPciInfo, h)
    pci_device_id = None
    if pci is not None:
        # nvml.h: pciDeviceId is the 16-bit device ID above the 16-bit vendor ID.
        combined = int(pci.pciDeviceId)
        if combined & 0xFFFF == NVML_PCI_VENDOR_NVIDIA and combined >> 16:
            pci_device_id = combined >> 16 & 0xFFFF
        else:
            log.info("%s (%s): PCI ID %#010x is not an NVIDIA device ID; ignored",
                     device.label, device.uuid, combined)
    cc = gate("compute_capability", pynvml.nvmlDeviceGetCudaComputeCapability, h)
    compute_capability = None if cc is None or int(cc[0]) <= 0 else f"{cc[0]}.{cc[1]}"
    # NVML answers the SM count of MIG devices only (nvml.h): None for a whole GPU, and
    # not logged as unsupported.
    attributes = gate("sm_count", none_for(UNSUPPORTED_CODES, pynvml.nvmlDeviceGetAttributes), h)
    sm_count = None if attributes is None else int(attributes.multiprocessorCount) or None
    return DeviceFacts(pci_device_id, compute_capability, sm_count)
