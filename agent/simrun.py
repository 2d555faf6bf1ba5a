"""Run the simulated source through the accountant on a virtual clock, without threads.

Used by tests, benchmarks and ``flopledger`` demos to measure the estimator against
the simulator's ground truth: the run is reproducible to the nanosecond.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.accounting.accountant import Accountant
from agent.accounting.attribution import AttributionSettings, Attributor
from agent.accounting.estimate import EstimatorSettings
from agent.accounting.snapshot import Snapshot
from agent.ledger.records import LedgerRecord
from agent.sources.clock import VirtualClock
from agent.sources.scenarios import SimJob, Workload
from agent.sources.simulated import SimulatedSource
from agent.sources.specs import SpecTable, load_spec_table


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
    clock = VirtualClock(start_monotonic_ns=1_000_000_000, start_wall_ns=1_700_000_000 * 10**9)
    source = SimulatedSource(specs, gpu_model, n_gpus, workload, seed=seed, clock=clock,
                             jobs=jobs)
    devices = source.devices()
    accountant = Accountant(devices, [specs[gpu_model]] * n_gpus, settings, clock.wall_ns(),
                            source.kind, node="sim")
    attributor = Attributor(AttributionSettings(), source.process_inspector(),
                            clock_ns=clock.monotonic_ns)
    interval_ns = round(interval_s * 1e9)
    end_ns = clock.monotonic_ns() + round(seconds * 1e9)
    ticks = 0
    all_records = []
    while clock.monotonic_ns() <= end_ns:
        batch = source.read()
        accountant.add_batch(batch, attributor.attribute(devices, batch))
        if accountant.buffered >= integrate_every:
            accountant.integrate()
        ticks += 1
        if ticks % checkpoint_every == 0:
            accountant.integrate()
            records, _open = accountant.take_records()
            all_records.extend(records)
            accountant.commit(records)
        clock.advance_ns(interval_ns)
    accountant.integrate()
    records, _open = accountant.take_records()
    all_records.extend(records)
    accountant.commit(records)
    snap = accountant.snapshot()
    return SimResult(
        snapshot=snap,
        records=tuple(all_records),
        true_flop=sum(g.sim_true_flop or 0.0 for g in snap.gpus),
        low=sum(g.flop_low for g in snap.gpus),
        central=sum(g.flop_central for g in snap.gpus),
        high=sum(g.flop_high for g in snap.gpus),
        gap_seconds=sum(g.gap_seconds for g in snap.gpus),
    )
