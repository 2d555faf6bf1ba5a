"""The interface every GPU source implements, and the data it returns.

A source returns one :class:`SampleBatch` per tick: a struct of NumPy arrays with one
entry per GPU. Vendor units are kept (MHz, percent 0-100, millijoules, milliwatts);
conversion to base units happens at the export edge. A value the GPU does not report
is NaN in float arrays (``-1`` in integer arrays); ``SampleBatch.errors`` says which
fields failed this tick so the exporter can count them.

Interval metrics (GPM tensor and pipe activity) are averages over the interval that
ends at the sample's ``timestamp_ns`` and starts at the previous sample of the same
GPU; instantaneous metrics (SM clock, power, energy counter) are read at
``timestamp_ns``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# Names for the type checker only: the commands that read configs and ledgers import
# this module's errors and device facts without paying for NumPy.
FloatArray: TypeAlias = "npt.NDArray[np.float64]"
IntArray: TypeAlias = "npt.NDArray[np.int64]"
BoolArray: TypeAlias = "npt.NDArray[np.bool_]"


class SourceError(Exception):
    """A source failed as a whole (library missing, driver not loaded, bad scenario)."""


class ActivityKind(enum.IntEnum):
    """Where a GPU's tensor-pipe activity comes from; decides the estimator."""

    NONE = 0
    GPM = 1  # NVML GPM metrics, Hopper and newer
    DCGM = 2  # DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, fed in by replay


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Static facts about one GPU.

    Attributes:
        index: NVML device index (or the virtual index of a simulated GPU).
        uuid: ``GPU-...`` identifier, stable across reboots.
        name: the marketing name as the driver reports it.
        spec_key: key of the matching row in the GPU spec table, None if unknown.
        max_sm_clock_mhz: highest SM clock the GPU can run at, None if unreported.
        activity_kind: which tensor-activity counters this GPU provides.
        source: ``nvml``, ``simulated`` or ``replay``.
        pci_device_id: the 16-bit PCI device ID (0x2330 for an H100 SXM5), None if
            unknown; matches the spec table before the name does.
        compute_capability: CUDA compute capability as "major.minor", None if unknown.
        sm_count: multiprocessors as the driver reports them (a MIG instance's own).
        mig_parent_uuid: the physical GPU's UUID when this device is a MIG instance.
    """

    index: int
    uuid: str
    name: str
    spec_key: str | None
    max_sm_clock_mhz: float | None
    activity_kind: ActivityKind
    source: str
    pci_device_id: int | None = None
    compute_capability: str | None = None
    sm_count: int | None = None
    mig_parent_uuid: str | None = None


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A compute process seen on a GPU.

    Attributes:
        pid: process id in the agent's PID namespace.
        used_memory_bytes: framebuffer memory in use, None if the driver hides it.
        sm_util_pct: the process's share of SM time over the last interval (0-100),
            None where ``nvmlDeviceGetProcessUtilization`` is unsupported.
    """

    pid: int
    used_memory_bytes: int | None = None
    sm_util_pct: float | None = None


# Float fields of a SampleBatch, in the order they are documented. Each is one float64
# array per batch, one entry per GPU, NaN where unsupported or unreadable.
FLOAT_FIELDS: tuple[str, ...] = (
    "sm_clock_mhz",
    "gpu_util_pct",
    "tensor_any_pct",
    "tensor_hmma_pct",
    "tensor_imma_pct",
    "tensor_dmma_pct",
    "tensor_dfma_pct",
    "fp16_pct",
    "fp32_pct",
    "fp64_pct",
    "sm_util_pct",
    "sm_occupancy_pct",
    "energy_mj",
    "power_mw",
)


@dataclass(slots=True)
class SampleBatch:
    """One tick of samples for every GPU of a source.

    Attributes:
        timestamp_ns: monotonic read time per GPU (int64 nanoseconds).
        wall_time_ns: wall-clock time of the tick (nanoseconds since the epoch).
        up: False for a GPU that is lost or could not be read at all this tick.
        sm_clock_mhz: current SM clock.
        gpu_util_pct: ``utilization.gpu``: percent of time one or more kernels ran.
        tensor_any_pct: percent of time SMs did any tensor op (GPM ANY_TENSOR_UTIL or
            DCGM PIPE_TENSOR_ACTIVE x 100), averaged over the interval.
        tensor_hmma_pct, tensor_imma_pct, tensor_dmma_pct, tensor_dfma_pct: the same
            split by tensor instruction kind (GPM).
        fp16_pct, fp32_pct, fp64_pct: non-tensor FP pipe activity (GPM).
        sm_util_pct, sm_occupancy_pct: GPM SM utilization and occupancy.
        energy_mj: total energy counter since driver load (millijoules).
        power_mw: power draw (milliwatts).
        throttle_reasons: NVML clock-event bitmask, -1 if unknown.
        processes: compute processes per GPU.
        errors: (gpu position, field name) for every field that failed this tick for a
            reason other than "not supported".
        sim_true_flop_total: cumulative FLOP the simulated GPUs really executed; None
            for real hardware.
        float_block: the array whose rows the float fields are, in ``FLOAT_FIELDS``
            order, when the source built them so (None: each its own array); see
            :meth:`float_rows`.
    """

    timestamp_ns: IntArray
    wall_time_ns: int
    up: BoolArray
    sm_clock_mhz: FloatArray
    gpu_util_pct: FloatArray
    tensor_any_pct: FloatArray
    tensor_hmma_pct: FloatArray
    tensor_imma_pct: FloatArray
    tensor_dmma_pct: FloatArray
    tensor_dfma_pct: FloatArray
    fp16_pct: FloatArray
    fp32_pct: FloatArray
    fp64_pct: FloatArray
    sm_util_pct: FloatArray
    sm_occupancy_pct: FloatArray
    energy_mj: FloatArray
    power_mw: FloatArray
    throttle_reasons: IntArray
    processes: tuple[tuple[GpuProcess, ...], ...]
    errors: tuple[tuple[int, str], ...] = ()
    sim_true_flop_total: FloatArray | None = None
    float_block: FloatArray | None = None

    @property
    def n_gpus(self) -> int:
        return int(self.timestamp_ns.shape[0])

    def float_rows(self) -> FloatArray | None:
        """The float fields as one ``(len(FLOAT_FIELDS), n_gpus)`` array, if they are
        the rows of :attr:`float_block` (a field replaced by another array since: None):
        many ticks then join in one copy."""
        block = self.float_block
        if block is None:
            return None
        owner = block if block.base is None else block.base
        for name in FLOAT_FIELDS:
            if getattr(self, name).base is not owner:
                return None
        return block

    @classmethod
    def empty(cls, n_gpus: int, timestamp_ns: int, wall_time_ns: int) -> SampleBatch:
        """A batch with every GPU up and every field unknown, ready to be filled in."""
        import numpy as np

        # One allocation for all float fields (each a row view of it), filled in place:
        # this runs at every tick.
        block = np.empty((len(FLOAT_FIELDS), n_gpus), dtype=np.float64)
        block.fill(np.nan)
        fields: dict[str, Any] = dict(zip(FLOAT_FIELDS, block, strict=True))
        times = np.empty(n_gpus, dtype=np.int64)
        times.fill(timestamp_ns)
        throttle = np.empty(n_gpus, dtype=np.int64)
        throttle.fill(-1)
        return cls(
            timestamp_ns=times,
            wall_time_ns=wall_time_ns,
            up=np.ones(n_gpus, dtype=np.bool_),
            throttle_reasons=throttle,
            processes=((),) * n_gpus,
            float_block=block,
            **fields,
        )


class GpuSource(Protocol):
    """A place samples come from: NVML, the simulator, or a replayed file."""

    @property
    def kind(self) -> str:
        """``nvml``, ``simulated`` or ``replay``."""
        ...

    def devices(self) -> Sequence[DeviceInfo]:
        """The GPUs this source reports, in the order of every batch's arrays."""
        ...

    def read(self) -> SampleBatch:
        """Sample every GPU once. A lost GPU is ``up=False``, never an exception.

        Raises:
            SourceError: only when the source as a whole cannot go on.
        """
        ...

    def close(self) -> None:
        """Release handles (NVML shutdown, GPM samples)."""
        ...


class ProcessInspector(Protocol):
    """What the OS says about a process; None wherever it cannot say (never raises).

    ``environ``: the environment at exec time; ``cgroup``: the text of
    ``/proc/PID/cgroup``; ``username``: the real user; ``cmdline``: the argv;
    ``pid_namespace``: the inode of the process's PID namespace and its PID in that
    namespace (how a process in a container knows itself).
    """

    def environ(self, pid: int) -> Mapping[str, str] | None: ...

    def cgroup(self, pid: int) -> str | None: ...

    def username(self, pid: int) -> str | None: ...

    def cmdline(self, pid: int) -> Sequence[str] | None: ...

    def pid_namespace(self, pid: int) -> tuple[int, int] | None: ...
