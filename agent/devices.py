"""The GPUs the agent reads: the source it opens (NVML where a driver and a GPU answer,
else the simulator) and the peak model each device gets.

Apart from the daemon's wiring so that ``flopledger gpus`` opens the same source, with
the same peaks, without loading the accountant, its numba kernels or the exporter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from agent.sources.base import DeviceInfo, GpuSource, SourceError
from agent.sources.clock import Clock, RealClock, VirtualClock
from agent.sources.specs import ResolvedSpec, SpecBasis, SpecTable

if TYPE_CHECKING:
    from agent.config import Config

# The agent's start-up lines: under the daemon's name, where its log has always had them.
log = logging.getLogger("agent.daemon")


def make_clock(config: Config, source_kind: str) -> Clock:
    if source_kind == "simulated" and config.sim.virtual_time:
        return VirtualClock(time_scale=config.sim.time_scale)
    return RealClock()


def open_source(config: Config, specs: SpecTable) -> tuple[GpuSource, Clock]:
    """The configured source; with ``auto``, NVML if it works, else the simulator.

    Raises:
        SourceError: if the requested source cannot start.
    """
    kind = config.agent.source
    if kind in ("auto", "nvml"):
        from agent.sources.nvml import NvmlSource, nvml_unavailable_reason

        reason = nvml_unavailable_reason()
        if reason is None:
            real = RealClock()
            return NvmlSource(specs, clock=real), real
        if kind == "nvml":
            raise SourceError(f"NVML source requested but unavailable: {reason}")
        log.warning(
            "NO NVIDIA GPU USABLE (%s): running on SIMULATED GPUs (%d x %s, scenario %s). "
            "Totals below are from the simulator, not from hardware.",
            reason, config.sim.gpus, config.sim.gpu_model, config.sim.scenario,
        )
    from agent.sources.simulated import SimulatedSource

    clock = make_clock(config, "simulated")
    epoch = config.sim.epoch_unix_s
    source = SimulatedSource(
        specs, config.sim.gpu_model, config.sim.gpus, config.sim.workload,
        seed=config.sim.seed, clock=clock, jobs=config.sim.jobs,
        epoch_wall_ns=round(epoch * 1e9) if epoch is not None else None,
    )
    return source, clock


def specs_for(devices: Sequence[DeviceInfo], specs: SpecTable) -> list[ResolvedSpec]:
    """The peak model of each device, from what the driver says of it (name, PCI device
    ID, compute capability, SM count, maximum clock). A device the table has no row for
    is still accounted, on a derived or ceiling spec with a wider band, and said once
    per GPU in the log."""
    out: list[ResolvedSpec] = []
    for d in devices:
        resolved = specs.resolve(d.name, pci_device_id=d.pci_device_id,
                                 compute_capability=d.compute_capability, sm_count=d.sm_count,
                                 max_sm_clock_mhz=d.max_sm_clock_mhz)
        if resolved.basis != SpecBasis.TABLE and d.spec_key and d.spec_key in specs:
            # The source knew its row where the facts did not lead to one (the
            # simulator names its GPUs after the row, not as a driver would).
            resolved = ResolvedSpec(specs[d.spec_key], SpecBasis.TABLE)
        if resolved.basis != SpecBasis.TABLE:
            log.warning("GPU %d (%s) is not in the spec table %s: accounted on a %s spec "
                        "(%s; low x%.3g, high x%.3g of its FLOP per clock), band widened: %s",
                        d.index, d.name, specs.path, resolved.basis, resolved.spec.key,
                        resolved.low_factor, resolved.high_factor, resolved.reason)
        out.append(resolved)
    return out
