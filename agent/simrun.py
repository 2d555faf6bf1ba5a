"""Run the simulated source through the accountant on a virtual clock, without threads.

Used by tests, benchmarks and ``flopledger`` demos to measure the estimator against
the simulator's ground truth: the run is reproducible to the nanosecond.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.accounting import Accountant, RunInfo
from agent.clock import VirtualClock
from agent.estimate import EstimatorSettings, GpuAssumptions
from agent.snapshot import Snapshot
from agent.sources.scenarios import Workload
from agent.sources.simulated import SimulatedSource
from agent.specs import SpecTable, load_spec_table


@dataclass(frozen=True, slots=True)
class SimResult:
    """Totals of a simulated run summed over its GPUs, in FLOP."""

    snapshot: Snapshot
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
) -> SimResult:
    """Sample ``seconds`` of simulated time every ``interval_s`` and integrate."""
    specs = specs or load_spec_table()
    settings = settings or EstimatorSettings()
    clock = VirtualClock(start_monotonic_ns=1_000_000_000, start_wall_ns=1_700_000_000 * 10**9)
    source = SimulatedSource(specs, gpu_model, n_gpus, workload, seed=seed, clock=clock)
    devices = source.devices()
    spec = specs[gpu_model]
    assumptions = [
        GpuAssumptions(spec, d.activity_kind, precision=workload.declared_precision,
                       max_sm_clock_mhz=d.max_sm_clock_mhz)
        for d in devices
    ]
    accountant = Accountant(devices, assumptions, settings,
                            [RunInfo("sim-run", "sim-model", "pre-training")] * n_gpus,
                            clock.wall_ns(), source.kind)
    interval_ns = round(interval_s * 1e9)
    end_ns = clock.monotonic_ns() + round(seconds * 1e9)
    while clock.monotonic_ns() <= end_ns:
        accountant.add_batch(source.read())
        if accountant.buffered >= integrate_every:
            accountant.integrate()
        clock.advance_ns(interval_ns)
    accountant.integrate()
    snap = accountant.snapshot()
    return SimResult(
        snapshot=snap,
        true_flop=sum(g.sim_true_flop or 0.0 for g in snap.gpus),
        low=sum(g.flop_low for g in snap.gpus),
        central=sum(g.flop_central for g in snap.gpus),
        high=sum(g.flop_high for g in snap.gpus),
        gap_seconds=sum(g.gap_seconds for g in snap.gpus),
    )
