"""The MIG devices of a GPU, as NVML lists them, and what they share with their GPU.

With MIG (Multi-Instance GPU) on, a GPU is split into GPU instances, each holding one or
more compute instances. NVML gives every compute instance a *MIG device* handle with its
own UUID (``MIG-...``), name (``NVIDIA A100-SXM4-40GB MIG 3g.20gb``), SM count
(``nvmlDeviceGetAttributes``) and running processes; :class:`~agent.sources.nvml.NvmlSource`
accounts per MIG device, and this module says how:

* **Clocks, power, energy** exist only per physical GPU (a MIG handle answers
  NOT_SUPPORTED). Every MIG device reads its GPU's SM clock and clock-event reasons. The
  GPU's energy counter and power draw are split between its MIG devices in proportion
  to their SM counts (:func:`energy_shares`): the node's total stays that of its GPUs and
  no joule is counted twice. The split is an attribution, not a measurement: NVML cannot
  say which instance drew the power.
* **Utilization** (``utilization.gpu``) is not reported for MIG devices, nor for a GPU
  with MIG on: unknown (NaN), so the estimate rests on GPM.
* **GPM** activity is per GPU instance, read through ``nvmlGpmMigSampleGet(<GPU handle>,
  <GPU instance ID>)`` (Hopper and newer). A GPU instance holding several compute
  instances gives one figure for all of them, which cannot be split between them: those
  MIG devices get no tensor activity, so their band spans 0 to their peak
  (:func:`shared_gpu_instances`). On a GPU without GPM (Ampere: A100, A30) a MIG device
  has no activity counter at all, and the same wide band.
* **SMs**: NVML's count per MIG device is exact (42 for an A100 3g.20gb, 60 for an H100
  3g.40gb); the spec table's row is resolved with it.
* **Processes** are listed per MIG device handle, so a run is attributed to the
  instance it runs on only.
* **Index**: a MIG device keeps its GPU's NVML index; its UUID tells it apart.
* **Layout changes**: the batch has one row per MIG device listed at start
  (:func:`open_mig`). The source reads the MIG mode of every GPU that has one, and the
  layout of every GPU with MIG on, again now and then (:func:`check_mig_layout`): a MIG
  device gone is reported down, one created since is not accounted, and an error line
  asks for a restart. So does MIG turned on or off on a GPU.

Every call goes through the source's gate (:class:`~agent.sources.nvml_device.Gate`), so
an unsupported or failing value is None and logged as everywhere else.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pynvml

from agent.sources.base import ActivityKind, DeviceInfo
from agent.sources.nvml_device import DeviceFacts, Gate, GpmBuffers, NvmlDevice
from agent.sources.nvml_errors import (
    NVML_ERROR_NOT_FOUND,
    Failure,
    OnceLog,
    classify,
    nvml_code,
)
from agent.sources.specs import SpecTable

log = logging.getLogger(__name__)

T = TypeVar("T")

MIG_ENABLED = 1  # NVML_DEVICE_MIG_ENABLE, the current mode of nvmlDeviceGetMigMode
_PROFILE = re.compile(r"\bMIG\s+(\S+)\s*$")


@dataclass(frozen=True, slots=True)
class MigDevice:
    """One MIG device (compute instance) as NVML lists it under its GPU.

    Attributes:
        handle: its NVML handle; valid until the layout changes.
        uuid: ``MIG-...``.
        name: as NVML gives it, ``NVIDIA A100-SXM4-40GB MIG 3g.20gb``.
        gpu_instance_id: the GPU instance it belongs to, None if unreadable.
        compute_instance_id: its compute instance within that GPU instance.
        sm_count: its multiprocessors (``nvmlDeviceGetAttributes``), None if unreadable.
    """

    handle: Any
    uuid: str
    name: str
    gpu_instance_id: int | None
    compute_instance_id: int | None
    sm_count: int | None

    @property
    def profile(self) -> str:
        """The profile part of the name (``3g.20gb``), or the whole name."""
        m = _PROFILE.search(self.name)
        return m.group(1) if m else self.name

    def describe(self) -> str:
        """``3g.20gb (GPU instance 1, compute instance 0, 42 SMs, MIG-...)``."""
        def known(v: int | None) -> str:
            return "?" if v is None else str(v)
        return (f"{self.profile} (GPU instance {known(self.gpu_instance_id)}, compute "
                f"instance {known(self.compute_instance_id)}, {known(self.sm_count)} SMs, "
                f"{self.uuid})")


class _Absent:
    """No MIG device at an index, or one that does not answer: not part of the layout."""


_ABSENT = _Absent()


def _handle_at(parent_handle: Any, index: int) -> Any:
    # Indices without a MIG device answer NOT_FOUND: that is not a failure.
    try:
        return pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent_handle, index)
    except pynvml.NVMLError as e:
        if nvml_code(e) == NVML_ERROR_NOT_FOUND:
            return _ABSENT
        raise


def _answer(fn: Callable[..., T], *args: Any) -> T | _Absent:
    # A MIG device that says it is lost is left out of the layout rather than taking its
    # whole GPU down with it: the GPU's own calls tell whether the GPU is lost.
    try:
        return fn(*args)
    except pynvml.NVMLError as e:
        if classify(e) is Failure.LOST:
            return _ABSENT
        raise


def _uint(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def list_mig_devices(gate: Gate, parent_handle: Any) -> list[MigDevice] | None:
    """Every MIG device of a GPU with MIG on, in NVML's order.

    Returns:
        the devices (empty when MIG is off or no instance exists), or None when NVML
        would not list them (the failure is logged by the gate). A device whose handle
        or UUID cannot be had is left out: it could not be told from another.

    Raises:
        whatever the gate raises for a lost GPU.
    """
    count = gate("mig_devices", pynvml.nvmlDeviceGetMaxMigDeviceCount, parent_handle)
    if count is None:
        return None
    out: list[MigDevice] = []
    for index in range(int(count)):
        handle = gate("mig_devices", _handle_at, parent_handle, index)
        if handle is None:
            return None
        if isinstance(handle, _Absent):
            continue
        uuid = gate("mig_uuid", _answer, pynvml.nvmlDeviceGetUUID, handle)
        if uuid is None or isinstance(uuid, _Absent):
            continue
        name = gate("mig_name", _answer, pynvml.nvmlDeviceGetName, handle)
        attributes = gate("mig_sm_count", _answer, pynvml.nvmlDeviceGetAttributes, handle)
        sm_count = None if attributes is None or isinstance(attributes, _Absent) else int(
            attributes.multiprocessorCount)
        out.append(MigDevice(
            handle=handle,
            uuid=str(uuid),
            name="MIG device" if name is None or isinstance(name, _Absent) else str(name),
            gpu_instance_id=_uint(gate("mig_instance_ids", _answer,
                                       pynvml.nvmlDeviceGetGpuInstanceId, handle)),
            compute_instance_id=_uint(gate("mig_instance_ids", _answer,
                                           pynvml.nvmlDeviceGetComputeInstanceId, handle)),
            sm_count=sm_count if sm_count else None,
        ))
    return out


def energy_shares(sm_counts: Sequence[int | None]) -> list[float]:
    """Each MIG device's share of its GPU's energy and power: its SMs over all of theirs.

    Equal shares when any count is unknown. The shares add up to 1, so the GPU's
    energy is neither lost nor counted twice (SMs outside every instance draw power too;
    their part is spread over the instances in the same proportion).
    """
    if not sm_counts:
        return []
    counts = [c for c in sm_counts if c]
    if len(counts) != len(sm_counts):
        return [1.0 / len(sm_counts)] * len(sm_counts)
    total = math.fsum(counts)
    return [c / total for c in counts]


def shared_gpu_instances(devices: Sequence[MigDevice]) -> frozenset[int]:
    """GPU instances that hold more than one of ``devices``: their GPM activity cannot
    be told apart per device."""
    seen: set[int] = set()
    shared: set[int] = set()
    for d in devices:
        if d.gpu_instance_id is None:
            continue
        (shared if d.gpu_instance_id in seen else seen).add(d.gpu_instance_id)
    return frozenset(shared)


def describe_layout(devices: Sequence[MigDevice]) -> str:
    """One line: every device's profile, instance IDs, SMs and UUID."""
    return "; ".join(d.describe() for d in devices) or "no MIG device"


def open_mig(gpu: NvmlDevice, gate: Gate, gpm: bool,
             alloc_gpm: Callable[[NvmlDevice], GpmBuffers | None], facts: DeviceFacts,
             max_sm_clock_mhz: float | None, specs: SpecTable) -> list[DeviceInfo]:
    """Make the MIG devices of a GPU with MIG on its ``children`` (batch rows from
    ``gpu.pos`` on), with GPM buffers where ``gpm`` and their GPU instance allow.

    Returns:
        their facts in batch order; empty (the GPU is then accounted whole, without
        activity) when NVML lists none.

    Raises:
        GpuLostError: the GPU is gone (before any child is made).
    """
    found = list_mig_devices(gate, gpu.handle)
    if not found:
        log.warning("%s (%s) has MIG on but %s: accounted as one GPU without activity "
                    "counters (its band spans 0 to its peak); restart the agent once its MIG "
                    "devices exist", gpu.label, gpu.uuid,
                    "its MIG devices cannot be listed" if found is None
                    else "no MIG device exists")
        return []
    shared = shared_gpu_instances(found)
    infos: list[DeviceInfo] = []
    for k, (d, share) in enumerate(zip(found, energy_shares([d.sm_count for d in found]),
                                       strict=True)):
        child = NvmlDevice(gpu.pos + k, gpu.index, d.handle, parent=gpu)
        child.uuid = d.uuid
        child.identified = True
        child.gi_id = d.gpu_instance_id
        child.energy_share = share
        if gpm and d.gpu_instance_id is not None and d.gpu_instance_id not in shared:
            child.gpm = alloc_gpm(child)
        spec = specs.match(d.name, facts.pci_device_id)
        infos.append(DeviceInfo(
            index=gpu.index, uuid=d.uuid, name=d.name,
            spec_key=None if spec is None else spec.key, max_sm_clock_mhz=max_sm_clock_mhz,
            activity_kind=ActivityKind.GPM if child.gpm else ActivityKind.NONE,
            source="nvml", pci_device_id=facts.pci_device_id,
            compute_capability=facts.compute_capability, sm_count=d.sm_count,
            mig_parent_uuid=gpu.uuid,
        ))
        gpu.children.append(child)
    log.info("%s (%s) has MIG on: accounted per MIG device (clock shared, energy and power "
             "split by SM count): %s", gpu.label, gpu.uuid, describe_layout(found))
    if shared:
        log.warning("%s (%s): GPU instance(s) %s hold several compute instances; GPM "
                    "activity is per GPU instance and cannot be split between them, so their "
                    "MIG devices report no tensor activity (band 0 to peak)", gpu.label,
                    gpu.uuid, ", ".join(str(i) for i in sorted(shared)))
    if not gpm:
        log.warning("%s (%s): no GPM on this GPU, and NVML gives no utilization per MIG "
                    "device: the FLOP band of its MIG devices spans 0 to their peak",
                    gpu.label, gpu.uuid)
    return infos


def check_mig_layout(gpu: NvmlDevice, gate: Gate, once: OnceLog,
                     mark_gone: Callable[[NvmlDevice, str], None]) -> None:
    """Read the MIG mode (and layout) of a GPU again: log a change as an error once,
    take MIG devices that are gone down (``mark_gone``), give those that are listed new
    handles, and bring back those that answer again.

    Raises:
        GpuLostError: the GPU is gone.
    """
    mode = gate("mig_mode", pynvml.nvmlDeviceGetMigMode, gpu.handle)
    if mode is None:
        return
    enabled = int(mode[0]) == MIG_ENABLED
    found = list_mig_devices(gate, gpu.handle) if enabled else []
    if not gpu.children:
        if enabled != (gpu.mig_mode == MIG_ENABLED) or found:
            once.log(("mig_mode", gpu.key, enabled), logging.ERROR,
                     "%s (%s): MIG is now on%s, but the GPU is accounted whole as at start: "
                     "restart the agent to account it per MIG device" if enabled else
                     "%s (%s): MIG is now off%s, but the GPU is accounted as at start: "
                     "restart the agent to account it whole", gpu.label, gpu.uuid,
                     f" with {describe_layout(found)}" if found else "")
        return
    if found is None:
        return  # not listed this time; the failure is logged
    now = {d.uuid: d for d in found}
    gone = False
    for child in gpu.children:
        d = now.get(child.uuid)
        if d is None:
            # One already down (lost) that does not answer is not a layout change.
            if child.up:
                gone = True
                mark_gone(child, "no longer in its GPU's MIG layout")
            continue
        # NVML may hand out new handles (and reuse old ones) when instances change.
        child.handle = d.handle
        if child.up and d.gpu_instance_id in (child.gi_id, None):
            continue
        child.gi_id = d.gpu_instance_id if d.gpu_instance_id is not None else child.gi_id
        if child.gpm is not None:
            child.gpm.prev_ns = None  # no GPM interval across the change
        if not child.up:
            child.up = True
            child.losses += 1
            log.warning("%s (%s) answers again: found in its GPU's MIG layout",
                        child.label, child.uuid)
    if gone or set(now) - {c.uuid for c in gpu.children}:
        once.log(("mig_layout", gpu.key, frozenset(now)), logging.ERROR,
                 "%s (%s): its MIG layout changed: now %s; accounted since start: %s. MIG "
                 "devices created since are not accounted, those gone are reported as down: "
                 "restart the agent to account the new layout", gpu.label, gpu.uuid,
                 describe_layout(found) if enabled else "MIG off",
                 ", ".join(c.uuid for c in gpu.children))
