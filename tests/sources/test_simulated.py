"""The simulated source's lost GPU: silent as NVML makes a lost GPU, working unseen,
and back after a while with no GPM interval across the loss."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from agent.configfile import Problems
from agent.sources.base import FLOAT_FIELDS, SampleBatch, SourceError
from agent.sources.clock import VirtualClock
from agent.sources.scenarios import SCENARIOS, Workload, workload_from_table
from agent.sources.simulated import SimulatedSource
from agent.sources.specs import load_spec_table

SPECS = load_spec_table()
S = 10**9
LOST = dataclasses.replace(SCENARIOS["pretrain-bf16"], lost_gpu=2, lost_at_s=10.0,
                           lost_for_s=5.0)


def reads(workload: Workload, seconds: int, n_gpus: int = 3) -> list[SampleBatch]:
    """One read per simulated second, from 0 to ``seconds`` - 1."""
    clock = VirtualClock(start_monotonic_ns=S)
    source = SimulatedSource(SPECS, "h100_sxm", n_gpus, workload, clock=clock)
    out = []
    for _ in range(seconds):
        out.append(source.read())
        clock.advance_ns(S)
    return out


def test_a_lost_gpu_reads_as_nvml_gives_it_and_keeps_working_unseen() -> None:
    batches = reads(LOST, 20)
    for t, b in enumerate(batches):
        lost = 10 <= t < 15
        assert bool(b.up[2]) is not lost, t
        assert b.up[:2].all()
        if lost:
            assert all(math.isnan(getattr(b, name)[2]) for name in FLOAT_FIELDS)
            assert b.processes[2] == ()
            assert b.throttle_reasons[2] == -1
        else:
            assert b.processes[2]
    truth = np.array([b.sim_true_flop_total[2] for b in batches])  # type: ignore[index]
    assert (np.diff(truth[9:16]) > 0).all()  # the work goes on while nobody sees it


def test_the_first_read_after_the_loss_has_no_gpm_interval() -> None:
    batches = reads(LOST, 17)
    assert not math.isnan(batches[9].tensor_any_pct[2])
    assert math.isnan(batches[15].tensor_any_pct[2])  # GPM starts over, as after a reset
    assert not math.isnan(batches[16].tensor_any_pct[2])
    assert not math.isnan(batches[15].tensor_any_pct[1])


def test_lost_for_zero_means_for_good() -> None:
    batches = reads(dataclasses.replace(LOST, lost_for_s=0.0), 40)
    assert [bool(b.up[2]) for b in batches] == [True] * 10 + [False] * 30


def test_a_lost_gpu_beyond_the_node_is_refused() -> None:
    with pytest.raises(SourceError, match="loses GPU 5"):
        SimulatedSource(SPECS, "h100_sxm", 3, dataclasses.replace(LOST, lost_gpu=5))


def test_the_loss_is_a_workload_setting_checked_like_the_others() -> None:
    problems = Problems("agent.toml")
    workload = workload_from_table(SCENARIOS["pretrain-bf16"],
                                   {"lost_gpu": 1, "lost_at_s": 60, "lost_for_s": 30},
                                   problems, "sim.workload")
    assert not problems.items
    assert (workload.lost_gpu, workload.lost_at_s, workload.lost_for_s) == (1, 60.0, 30.0)
    workload_from_table(SCENARIOS["pretrain-bf16"], {"lost_gpu": -2, "lost_at_s": -1.0},
                        problems, "sim.workload")
    assert sorted(k for k, _ in problems.items) == ["sim.workload.lost_at_s",
                                                     "sim.workload.lost_gpu"]


def test_the_float_fields_are_the_rows_of_one_block() -> None:
    for batch in reads(LOST, 14):
        block = batch.float_rows()
        assert block is not None
        for k, name in enumerate(FLOAT_FIELDS):
            assert np.shares_memory(block[k], getattr(batch, name))
            assert np.array_equal(block[k], getattr(batch, name), equal_nan=True)
