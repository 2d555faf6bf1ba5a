"""``Accountant.add_samples`` (chunks of many samples) equals ``add_batch`` (one tick at a
time), bit for bit, however the samples are chunked."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.accounting.accountant import Accountant
from agent.accounting.attribution import AttributionSettings, Attributor
from agent.accounting.estimate import EstimatorSettings
from agent.accounting.runs import GpuAttribution
from agent.sources.base import FLOAT_FIELDS, ActivityKind, DeviceInfo, SampleBatch
from agent.sources.clock import VirtualClock
from agent.sources.scenarios import SCENARIOS, SimJob
from agent.sources.simulated import SimulatedSource
from agent.sources.specs import load_spec_table

SPECS = load_spec_table()
# Run changes on GPUs 0-1, a GPU shared by two runs (2), a Kubernetes pod (3), an idle
# GPU (4), and a job that ends while the others go on (5).
JOBS = (
    SimJob(env={"FLOPLEDGER_RUN_ID": "run-a", "FLOPLEDGER_PRECISION": "bf16"}, gpus=(0, 1),
           end_s=90.0),
    SimJob(env={"FLOPLEDGER_RUN_ID": "run-b", "FLOPLEDGER_PRECISION": "fp8"}, gpus=(0, 1),
           start_s=90.0),
    SimJob(env={"SLURM_JOB_ID": "4242"}, gpus=(2,), sm_share=0.75),
    SimJob(env={"TORCHELASTIC_RUN_ID": "tr-7"}, gpus=(2,), sm_share=0.25),
    SimJob(env={}, gpus=(3,), cgroup="0::/kubepods.slice/kubepods-pod1b4e2f3a_0c1d_4e5f_8a9b_"
           "0c1d2e3f4a5b.slice/x.scope"),
    SimJob(env={"FLOPLEDGER_RUN_ID": "run-c"}, gpus=(5,), end_s=60.0),
)
N_GPUS = 6


Tick = tuple[SampleBatch, list[GpuAttribution]]


def simulated_ticks(seconds: int = 200, scenario: str = "pretrain-bf16"
                    ) -> tuple[tuple[DeviceInfo, ...], list[Tick]]:
    clock = VirtualClock(start_monotonic_ns=10**9, start_wall_ns=1_700_000_000 * 10**9)
    source = SimulatedSource(SPECS, "h100_sxm", N_GPUS, SCENARIOS[scenario], clock=clock,
                             jobs=JOBS)
    attributor = Attributor(AttributionSettings(), source.process_inspector(),
                            clock_ns=clock.monotonic_ns)
    devices = tuple(source.devices())
    ticks = []
    for t in range(seconds):
        batch = source.read()
        if 50 <= t < 53:  # GPU 4 lost for three ticks: a gap when it comes back
            batch = dataclasses.replace(batch, up=batch.up.copy())
            batch.up[4] = False
        ticks.append((batch, attributor.attribute(devices, batch)))
        clock.advance_ns(10**9 if t % 37 else 7 * 10**9)  # now and then a sampling gap
    return devices, ticks


DEVICES, TICKS = simulated_ticks()


def accountant(devices: Sequence[DeviceInfo] = DEVICES) -> Accountant:
    return Accountant(devices, [SPECS["h100_sxm"]] * len(devices), EstimatorSettings(), 0,
                      "simulated")


def live(every: int = 5, snapshot_each: bool = False) -> Accountant:
    acc = accountant()
    for k, (batch, attributions) in enumerate(TICKS):
        acc.add_batch(batch, attributions)
        if snapshot_each:
            acc.snapshot()  # estimates every tick kept back, at once
        if acc.buffered >= every:
            acc.integrate()
        if k % 23 == 0:
            closed, still_open = acc.take_records(batch.wall_time_ns, 30 * 10**9)
            acc.commit(closed, still_open)
    acc.integrate()
    closed, _ = acc.take_records()
    acc.commit(closed)
    return acc


def flatten() -> tuple[dict[str, npt.NDArray[Any]], list[GpuAttribution]]:
    """The ticks as per-sample columns (tick-major), down GPUs left out as a recording
    would have them; attributions as indices into a table."""
    table: list[GpuAttribution] = []
    index: dict[int, int] = {}
    cols: dict[str, list[object]] = {n: [] for n in ("gpu", "ts", "wall", "run", *FLOAT_FIELDS)}
    for batch, attributions in TICKS:
        for g in np.flatnonzero(batch.up).tolist():
            a = attributions[g]
            if id(a) not in index:
                index[id(a)] = len(table)
                table.append(a)
            cols["gpu"].append(g)
            cols["ts"].append(int(batch.timestamp_ns[g]))
            cols["wall"].append(batch.wall_time_ns)
            cols["run"].append(index[id(a)])
            for name in FLOAT_FIELDS:
                cols[name].append(float(getattr(batch, name)[g]))
    out = {k: np.array(v, dtype=np.int64 if k in ("gpu", "ts", "wall", "run") else np.float64)
           for k, v in cols.items()}
    return out, table


COLS, TABLE = flatten()


def chunked(cuts: Sequence[int]) -> Accountant:
    acc = accountant()
    n = COLS["gpu"].shape[0]
    bounds = sorted({0, n, *(c % n for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        acc.add_samples(COLS["gpu"][a:b], COLS["ts"][a:b], COLS["wall"][a:b],
                        {name: COLS[name][a:b] for name in FLOAT_FIELDS},
                        run_index=COLS["run"][a:b], run_table=TABLE)
        closed, still_open = acc.take_records(int(COLS["wall"][b - 1]), 30 * 10**9)
        acc.commit(closed, still_open)
    closed, _ = acc.take_records()
    acc.commit(closed)
    return acc


def gpu_totals(acc: Accountant) -> dict[str, tuple[int, ...]]:
    return {u: (*t.flop, t.energy_mj, t.covered_ns, t.gap_ns,
                t.samples) for u, t in acc.gpu_totals.items()}


def run_totals(acc: Accountant, skip: frozenset[str] = frozenset()) -> dict[str, tuple[int, ...]]:
    return {r: (*t.flop, t.energy_mj)
            for r, t in acc.run_totals.items() if r not in skip}


LIVE = live()
# GPU 2 is shared: how its integer totals split between the two runs depends on where
# integrations fall (largest remainder per integration), in the live agent too.
SHARED = frozenset({"slurm-4242", "torchrun-tr-7"})


def test_the_scenario_exercises_what_it_should() -> None:
    runs = set(LIVE.run_totals)
    assert {"run-a", "run-b", "run-c", "slurm-4242", "torchrun-tr-7", "unattributed"} <= runs
    assert any(t.gap_ns > 0 for t in LIVE.gpu_totals.values())
    assert LIVE.rejected == 0


@pytest.mark.parametrize("chunk", [1, 5, 6, 7, 64, 1000, 10**9])
def test_fixed_chunks_equal_the_tick_path(chunk: int) -> None:
    acc = chunked(list(range(chunk, COLS["gpu"].shape[0], chunk)))
    assert gpu_totals(acc) == gpu_totals(LIVE)
    assert run_totals(acc, SHARED) == run_totals(LIVE, SHARED)
    assert sum(run_totals(acc)[r][1] for r in SHARED) == sum(
        run_totals(LIVE)[r][1] for r in SHARED)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 10**6), max_size=30))
def test_any_chunking_equals_the_tick_path(cuts: list[int]) -> None:
    acc = chunked(cuts)
    assert gpu_totals(acc) == gpu_totals(LIVE)
    assert run_totals(acc, SHARED) == run_totals(LIVE, SHARED)


def test_ticks_kept_back_equal_ticks_estimated_one_by_one() -> None:
    """add_batch keeps the usual tick back and estimates it with the next ones as one
    chunk at the next integration; a snapshot after every tick makes it estimate each
    alone. Integrations fall on the same ticks either way, so every total is the same,
    the shared GPU's split included, and so is every snapshot along the way."""
    one_by_one = live(snapshot_each=True)
    assert one_by_one.integrations == LIVE.integrations
    assert gpu_totals(one_by_one) == gpu_totals(LIVE)
    assert run_totals(one_by_one) == run_totals(LIVE)
    kept, alone = accountant(), accountant()
    for k, (batch, attributions) in enumerate(TICKS[:400]):
        kept.add_batch(batch, attributions)
        alone.add_batch(batch, attributions)
        alone.snapshot()
        if k % 5 == 4:
            kept.integrate()
            alone.integrate()
        if k % 11 == 0:
            assert kept.snapshot() == alone.snapshot()


def test_integration_cadence_does_not_matter_to_gpu_totals() -> None:
    assert gpu_totals(live(every=1)) == gpu_totals(LIVE) == gpu_totals(live(every=17))


def test_ticks_then_chunks_mix() -> None:
    acc = accountant()
    half = len(TICKS) // 2
    for batch, attributions in TICKS[:half]:
        acc.add_batch(batch, attributions)
    first = int(sum(b.up.sum() for b, _ in TICKS[:half]))
    acc.add_samples(COLS["gpu"][first:], COLS["ts"][first:], COLS["wall"][first:],
                    {n: COLS[n][first:] for n in FLOAT_FIELDS}, run_index=COLS["run"][first:],
                    run_table=TABLE)
    closed, _ = acc.take_records()
    acc.commit(closed)
    assert gpu_totals(acc) == gpu_totals(LIVE)


def test_a_run_change_closes_the_record_at_the_change() -> None:
    acc = accountant()
    acc.add_samples(COLS["gpu"], COLS["ts"], COLS["wall"], {n: COLS[n] for n in FLOAT_FIELDS},
                    run_index=COLS["run"], run_table=TABLE)
    closed, _ = acc.take_records()
    gpu0 = [r for r in closed if r.gpu_index == 0]
    a = [r for r in gpu0 if r.run == "run-a"]
    b = [r for r in gpu0 if r.run == "run-b"]
    assert a
    assert b
    assert max(r.end_ns for r in a) <= min(r.start_ns for r in b)
    assert {r.assumptions["precision"] for r in b} == {"fp8"}
    assert {r.assumptions["precision"] for r in a} == {"bf16"}


def test_one_attribution_per_gpu_and_missing_fields() -> None:
    devices = tuple(DeviceInfo(i, f"GPU-{i}", "NVIDIA A100-SXM4-80GB", "a100_80gb", 1410.0,
                               ActivityKind.NONE, "replay") for i in range(2))
    specs = [SPECS["a100_80gb"]] * 2
    n = 2000
    gpu = np.tile(np.arange(2), n // 2).astype(np.int64)
    ts = np.repeat(np.arange(n // 2, dtype=np.int64), 2) * 10**9
    util = np.linspace(0, 100, n)
    one = Accountant(devices, specs, EstimatorSettings(), 0, "replay")
    one.add_samples(gpu, ts, ts, {"gpu_util_pct": util})
    many = Accountant(devices, specs, EstimatorSettings(), 0, "replay")
    for a in range(0, n, 333):
        many.add_samples(gpu[a:a + 333], ts[a:a + 333], ts[a:a + 333],
                         {"gpu_util_pct": util[a:a + 333]})
    for acc in (one, many):
        closed, _ = acc.take_records()
        acc.commit(closed)
    assert gpu_totals(one) == gpu_totals(many)
    assert all(t.flop.central > 0 for t in one.gpu_totals.values())
    assert {r.estimator for r in closed} == {"utilization"}


def test_ten_million_samples_in_a_few_seconds() -> None:
    devices = tuple(DeviceInfo(i, f"GPU-{i}", "H100", "h100_sxm", 1980.0, ActivityKind.NONE,
                               "replay") for i in range(8))
    acc = Accountant(devices, [SPECS["h100_sxm"]] * 8, EstimatorSettings(), 0, "replay")
    n, chunk = 10_000_000, 1 << 17
    rng = np.random.default_rng(0)
    gpu = np.tile(np.arange(8, dtype=np.int64), n // 8)
    ts = np.repeat(np.arange(n // 8, dtype=np.int64), 8) * 10**9 + gpu
    fields = {"sm_clock_mhz": rng.uniform(1200, 1980, n), "gpu_util_pct": rng.uniform(0, 100, n),
              "power_mw": rng.uniform(1e5, 7e5, n)}
    acc.add_samples(gpu[:chunk], ts[:chunk], ts[:chunk], {k: v[:chunk] for k, v in fields.items()})
    start = time.perf_counter()
    for a in range(chunk, n, chunk):
        acc.add_samples(gpu[a:a + chunk], ts[a:a + chunk], ts[a:a + chunk],
                        {k: v[a:a + chunk] for k, v in fields.items()})
    assert time.perf_counter() - start < 10.0  # measured ~0.5 s; generous for slow CI
