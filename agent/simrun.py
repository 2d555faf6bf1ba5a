"""Simulated runs on a virtual clock, without threads, through the one sampling loop.

:func:`simulate` measures the estimator against the simulator's ground truth (tests,
benchmarks, ``flopledger`` demos); :func:`record_trace` writes what the simulator gave
to a trace file. Both are reproducible to the nanosecond and share their clock, source
and attribution, so a trace recorded with the same arguments holds the very samples a
simulation accounts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.accounting.accountant import Accountant
from agent.accounting.attribution import AttributionSettings, Attributor
from agent.accounting.estimate import EstimatorSettings
from agent.accounting.records import LedgerRecord
from agent.accounting.runs import GpuAttribution
from agent.accounting.snapshot import Snapshot
from agent.replay.readers.trace import TraceWriter
from agent.sampler import Sampler, beyond_s
from agent.sources.base import DeviceInfo, SampleBatch
from agent.sources.clock import VirtualClock
from agent.sources.scenarios import SimJob, Workload
from agent.sources.simulated import SimulatedSource
from agent.sources.specs import ResolvedSpec, SpecBasis, SpecTable, load_spec_table


@dataclass(frozen=True, slots=True)
class SimResult:
    """Totals of a simulated run summed over its GPUs, in FLOP."""

    snapshot: Snapshot
    records: tuple[LedgerRecord, ...]
    true_flop: float
    low: float
    central: float
    high: float
    gap_seconds: float

    @property
    def central_error(self) -> float:
        """(central - truth) / truth."""
        return self.central / self.true_flop - 1.0

    @property
    def band_contains_truth(self) -> bool:
        return self.low <= self.true_flop <= self.high


def simulate(
    workload: Workload,
    seconds: float,
    *,
    interval_s: float = 1.0,
    integrate_every: int = 5,
    gpu_model: str = "h100_sxm",
    n_gpus: int = 8,
    seed: int = 1,
    settings: EstimatorSettings | None = None,
    specs: SpecTable | None = None,
    jobs: tuple[SimJob, ...] | None = None,
    checkpoint_every: int = 10,
) -> SimResult:
    """Sample ``seconds`` of simulated time every ``interval_s``, attribute, integrate
    and commit (without a ledger file) every ``checkpoint_every`` ticks."""
    specs = specs or load_spec_table()
    settings = settings or EstimatorSettings()
    clock, source, attributor = _simulated(specs, gpu_model, n_gpus, workload, seed, jobs)
    # The simulator runs a table row by construction.
    table_row = ResolvedSpec(specs[gpu_model], SpecBasis.TABLE)
    accountant = Accountant(source.devices(), [table_row] * n_gpus, settings,
                            clock.wall_ns(), source.kind, node="sim")
    records: list[LedgerRecord] = []
    Sampler(source, accountant, clock, interval_s, integrate_every, attributor=attributor,
            checkpoint_ticks=checkpoint_every, record_s=None, until=beyond_s(seconds),
            step=True, on_commit=records.extend, publish_s=None).sample()
    snap = accountant.snapshot()
    return SimResult(
        snapshot=snap,
        records=tuple(records),
        true_flop=sum(g.sim_true_flop or 0.0 for g in snap.gpus),
        low=sum(g.flop_low for g in snap.gpus),
        central=sum(g.flop_central for g in snap.gpus),
        high=sum(g.flop_high for g in snap.gpus),
        gap_seconds=sum(g.gap_seconds for g in snap.gpus),
    )


@dataclass(frozen=True, slots=True)
class Recording:
    """What :func:`record_trace` wrote."""

    path: Path
    ticks: int
    rows: int
    devices: tuple[DeviceInfo, ...]


def record_trace(
    path: Path, workload: Workload, seconds: float, *, interval_s: float = 1.0,
    gpu_model: str = "h100_sxm", n_gpus: int = 8, seed: int = 1,
    jobs: tuple[SimJob, ...] | None = None, specs: SpecTable | None = None,
    on_batch: Callable[[SampleBatch, list[GpuAttribution]], None] | None = None,
    block_rows: int = 65536,
) -> Recording:
    """Run the simulator on a virtual clock for ``seconds`` of simulated time, sampling
    every ``interval_s``, and write every batch with its processes' runs to a trace.

    The clock and attribution are those of :func:`simulate`; ``on_batch`` sees each
    batch and its attributions as they are written (to feed a live accountant the very
    same samples).

    Raises:
        SourceError: for an unknown GPU model or a bad job.
        OSError: if the trace cannot be written.
    """
    clock, source, attributor = _simulated(specs or load_spec_table(), gpu_model, n_gpus,
                                           workload, seed, jobs)
    devices = tuple(source.devices())
    meta = {"gpu_model": gpu_model, "seed": seed, "interval_s": interval_s,
            "seconds": seconds}
    with TraceWriter(path, devices, source.kind, meta, block_rows) as writer:

        def write(batch: SampleBatch, attributions: list[GpuAttribution] | None) -> None:
            writer.write(batch, attributions)
            if on_batch is not None:
                on_batch(batch, attributions if attributions is not None else [])

        sampler = Sampler(source, None, clock, interval_s, attributor=attributor,
                          until=beyond_s(seconds), step=True, hooks=(write,))
        sampler.sample()
    return Recording(path, sampler.ticks, writer.rows, devices)


def _simulated(specs: SpecTable, gpu_model: str, n_gpus: int, workload: Workload,
               seed: int, jobs: tuple[SimJob, ...] | None
               ) -> tuple[VirtualClock, SimulatedSource, Attributor]:
    """The clock, source and attribution every simulated run starts from.

    Raises:
        SourceError: for an unknown GPU model or a bad job.
    """
    clock = VirtualClock(start_monotonic_ns=1_000_000_000, start_wall_ns=1_700_000_000 * 10**9)
    source = SimulatedSource(specs, gpu_model, n_gpus, workload, seed=seed, clock=clock,
                             jobs=jobs)
    attributor = Attributor(AttributionSettings(), source.process_inspector(),
                            clock_ns=clock.monotonic_ns)
    return clock, source, attributor
