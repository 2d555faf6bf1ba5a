"""A GPU that stops answering while the agent runs: its high bound grows at the GPU's
peak rate while it is silent, it keeps its runs, and once it answers again the totals
are those of one gap, as a replay of the same samples gives them."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from agent.accounting.accountant import Accountant
from agent.accounting.attribution import AttributionSettings, Attributor
from agent.accounting.estimate import EstimatorSettings, GpuAssumptions, build_coefficients
from agent.accounting.runs import GpuAttribution
from agent.simrun import SimResult, simulate
from agent.sources.base import FLOAT_FIELDS, ActivityKind, SampleBatch
from agent.sources.clock import VirtualClock
from agent.sources.scenarios import SCENARIOS, Workload
from agent.sources.simulated import SimulatedSource
from agent.sources.specs import load_spec_table

SPECS = load_spec_table()
H100 = SPECS["h100_sxm"]
LOST = SCENARIOS["gpu-lost"]  # GPU 1 silent from 300 s to 900 s
N_GPUS = 4
S = 10**9
# The highest rate an H100 can run at: what a silent second adds to the high bound.
PEAK_FLOPS = float(build_coefficients(
    [GpuAssumptions(H100, ActivityKind.GPM, "bf16", 1.0, H100.max_sm_clock_mhz)],
    EstimatorSettings()).gap_rate_flops[0])
MAX_GAP_S = EstimatorSettings().max_gap_s


def run(seconds: float, workload: Workload = LOST) -> SimResult:
    return simulate(workload, seconds, n_gpus=N_GPUS)


def test_the_scenario_loses_gpu_1_for_ten_minutes() -> None:
    assert (LOST.lost_gpu, LOST.lost_at_s, LOST.lost_for_s) == (1, 300.0, 600.0)
    assert PEAK_FLOPS > 1e15


def test_the_band_holds_the_truth_when_the_agent_stops_while_a_gpu_is_lost() -> None:
    result = run(600)  # stops 300 s into the silence; the GPU works on unseen
    gpu = result.snapshot.gpus[1]
    assert not gpu.up
    assert gpu.sim_true_flop is not None
    assert gpu.flop_low <= gpu.sim_true_flop <= gpu.flop_high
    assert gpu.gap_seconds == pytest.approx(300, abs=2)
    assert result.band_contains_truth


def test_high_grows_at_peak_rate_while_the_gpu_is_silent_and_nothing_else_does() -> None:
    early, late = run(400).snapshot.gpus[1], run(500).snapshot.gpus[1]
    assert late.flop_high - early.flop_high == pytest.approx(PEAK_FLOPS * 100, rel=1e-6)
    assert (late.flop_low, late.flop_central) == (early.flop_low, early.flop_central)
    assert late.gap_seconds - early.gap_seconds == pytest.approx(100)


def test_a_silent_gpu_keeps_its_runs_and_its_records_say_it_was_lost() -> None:
    records = [r for r in run(600).records if r.gpu_index == 1 and "gpu_lost_ns" in r.assumptions]
    assert records
    assert {r.run for r in records} == {"sim-run"}  # not unattributed: nobody said so
    assert all(r.flop_low == r.flop_central == 0 < r.flop_high for r in records)
    assert all(r.samples == 0 and r.estimator == "none" for r in records)
    lost_s = sum(int(r.assumptions["gpu_lost_ns"]) for r in records) / 1e9
    assert lost_s == pytest.approx(300, abs=2)


def test_a_gpu_silent_from_the_first_tick_is_bounded_from_then_on() -> None:
    never = dataclasses.replace(LOST, lost_at_s=0.0, lost_for_s=0.0)
    gpu = run(120, never).snapshot.gpus[1]
    assert gpu.flop_central == 0
    assert gpu.flop_high == pytest.approx(PEAK_FLOPS * 120, rel=0.01)
    assert gpu.sim_true_flop is not None
    assert gpu.sim_true_flop <= gpu.flop_high


def test_after_the_gpu_answers_again_the_band_still_holds_the_truth() -> None:
    result = run(1200)
    gpu = result.snapshot.gpus[1]
    assert gpu.up
    assert gpu.gap_seconds == pytest.approx(600, abs=2)
    assert result.band_contains_truth


# -- live with the loss bound == replay of the same samples, once the GPU is back -------


Tick = tuple[SampleBatch, list[GpuAttribution]]


def simulated_ticks(seconds: int) -> tuple[SimulatedSource, list[Tick]]:
    clock = VirtualClock(start_monotonic_ns=S, start_wall_ns=1_700_000_000 * S)
    source = SimulatedSource(SPECS, "h100_sxm", N_GPUS, LOST, clock=clock)
    attributor = Attributor(AttributionSettings(), source.process_inspector(),
                            clock_ns=clock.monotonic_ns)
    ticks = []
    for _ in range(seconds):
        batch = source.read()
        ticks.append((batch, attributor.attribute(source.devices(), batch)))
        clock.advance_ns(S)
    return source, ticks


def accountant(source: SimulatedSource) -> Accountant:
    return Accountant(source.devices(), [H100] * N_GPUS, EstimatorSettings(), 0, "simulated")


def live(source: SimulatedSource, ticks: Sequence[Tick]) -> tuple[Accountant, list[int]]:
    """The ticks through add_batch, checkpointed every 23 ticks; the committed high of
    GPU 1 (open records included) after each checkpoint."""
    acc = accountant(source)
    highs = []
    for k, (batch, attributions) in enumerate(ticks):
        acc.add_batch(batch, attributions)
        if acc.buffered >= 5:
            acc.integrate()
        if k % 23 == 0:
            closed, still_open = acc.take_records(batch.wall_time_ns, 30 * S)
            acc.commit(closed, still_open)
            highs.append(int(acc.snapshot().gpus[1].flop_high))
    acc.integrate()
    closed, _ = acc.take_records()
    acc.commit(closed)
    return acc, highs


def replayed(source: SimulatedSource, ticks: Sequence[Tick]) -> Accountant:
    """The same samples as one chunk, silent GPUs left out as a recording has them."""
    rows = [(g, batch, attributions[g]) for batch, attributions in ticks
            for g in np.flatnonzero(batch.up).tolist()]
    table: list[GpuAttribution] = []
    index: dict[int, int] = {}
    for _, _, a in rows:
        index.setdefault(id(a), len(table))
        if len(table) == index[id(a)]:
            table.append(a)
    acc = accountant(source)
    acc.add_samples(
        np.array([g for g, _, _ in rows], dtype=np.int64),
        np.array([int(b.timestamp_ns[g]) for g, b, _ in rows], dtype=np.int64),
        np.array([b.wall_time_ns for _, b, _ in rows], dtype=np.int64),
        {name: np.array([float(getattr(b, name)[g]) for g, b, _ in rows])
         for name in FLOAT_FIELDS},
        run_index=np.array([index[id(a)] for _, _, a in rows], dtype=np.int64),
        run_table=table)
    closed, _ = acc.take_records()
    acc.commit(closed)
    return acc


def totals(acc: Accountant) -> dict[str, tuple[int, ...]]:
    return {u: (*t.flop, t.energy_mj, t.covered_ns, t.gap_ns, t.samples)
            for u, t in acc.gpu_totals.items()}


def test_once_back_the_live_totals_equal_a_replay_of_the_same_samples() -> None:
    source, ticks = simulated_ticks(1000)
    acc, highs = live(source, ticks)
    # While GPU 1 was silent (300 s to 900 s), every checkpoint raised its high bound.
    silent = highs[300 // 23 + 1: 900 // 23]
    assert len(silent) > 20
    assert all(b - a > PEAK_FLOPS * 20 for a, b in itertools.pairwise(silent))
    assert totals(acc) == totals(replayed(source, ticks))
