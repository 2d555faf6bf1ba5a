"""Accounting with attribution: several runs, a run change, a shared GPU, idle GPUs."""

from __future__ import annotations

import itertools

import pytest

from agent.simrun import simulate
from agent.sources.scenarios import SCENARIOS, SimJob

JOBS = (
    SimJob(env={"FLOPLEDGER_RUN_ID": "run-a", "FLOPLEDGER_MODEL": "m1",
                "FLOPLEDGER_CATEGORY": "pre-training", "FLOPLEDGER_PRECISION": "bf16"},
           gpus=(0, 1), end_s=300.0),
    SimJob(env={"FLOPLEDGER_RUN_ID": "run-b", "FLOPLEDGER_MODEL": "m2",
                "FLOPLEDGER_CATEGORY": "fine-tuning", "FLOPLEDGER_PRECISION": "bf16"},
           gpus=(0, 1), start_s=300.0),
    SimJob(env={"SLURM_JOB_ID": "4242", "FLOPLEDGER_PRECISION": "bf16"}, gpus=(2,),
           sm_share=0.75),
    SimJob(env={"TORCHELASTIC_RUN_ID": "tr-7", "FLOPLEDGER_PRECISION": "bf16"}, gpus=(2,),
           sm_share=0.25),
    SimJob(env={}, gpus=(3,), cgroup="0::/kubepods.slice/kubepods-burstable.slice/"
           "kubepods-burstable-pod1b4e2f3a_0c1d_4e5f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-x.scope",
           user="nobody"),
)


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    return simulate(SCENARIOS["pretrain-bf16"], 600, jobs=JOBS, n_gpus=5, checkpoint_every=7)


def test_every_flop_is_charged_to_exactly_one_run(result) -> None:  # type: ignore[no-untyped-def]
    runs = {r.run_id: r for r in result.snapshot.runs}
    assert set(runs) == {"run-a", "run-b", "slurm-4242", "torchrun-tr-7",
                         "k8s-pod-1b4e2f3a-0c1d-4e5f-8a9b-0c1d2e3f4a5b", "unattributed"}
    # Exact integers: per run, per GPU, and in total.
    records = result.records
    for field in ("flop_low", "flop_central", "flop_high", "energy_mj"):
        by_gpu = {g: sum(getattr(r, field) for r in records if r.gpu_index == g) for g in range(5)}
        by_run = {run: sum(getattr(r, field) for r in records if r.run == run) for run in runs}
        assert sum(by_gpu.values()) == sum(by_run.values())
    for g, snap in enumerate(result.snapshot.gpus):
        assert snap.flop_central == float(sum(r.flop_central for r in records if r.gpu_index == g))
    assert result.band_contains_truth


def test_a_run_change_splits_the_gpu_in_time(result) -> None:  # type: ignore[no-untyped-def]
    runs = {r.run_id: r for r in result.snapshot.runs}
    # Two GPUs, half the time each: close to equal (the workload is stationary).
    assert runs["run-a"].flop_central == pytest.approx(runs["run-b"].flop_central, rel=0.05)
    end_a = max(r.end_ns for r in result.records if r.run == "run-a")
    start_b = min(r.start_ns for r in result.records if r.run == "run-b")
    assert end_a <= start_b
    assert {r.category for r in result.records if r.run == "run-b"} == {"fine-tuning"}


def test_a_shared_gpu_is_split_by_sm_share(result) -> None:  # type: ignore[no-untyped-def]
    runs = {r.run_id: r for r in result.snapshot.runs}
    slurm, torch = runs["slurm-4242"].flop_central, runs["torchrun-tr-7"].flop_central
    assert slurm / (slurm + torch) == pytest.approx(0.75, abs=0.01)
    splits = {r.assumptions["split"] for r in result.records if r.run == "slurm-4242"}
    assert splits == {"sm_util"}


def test_a_gpu_without_a_process_is_unattributed_never_dropped(result) -> None:  # type: ignore[no-untyped-def]
    gpu4 = result.snapshot.gpus[4]
    runs = {r.run_id: r for r in result.snapshot.runs}
    assert runs["unattributed"].flop_central == gpu4.flop_central > 0
    assert {r.assumptions["split"] for r in result.records if r.gpu_index == 4} == {"none"}


def test_records_tile_each_gpus_time_without_overlap(result) -> None:  # type: ignore[no-untyped-def]
    for gpu in range(5):
        windows = sorted({(r.start_ns, r.end_ns) for r in result.records if r.gpu_index == gpu})
        for (a0, a1), (b0, b1) in itertools.pairwise(windows):
            assert a1 == b0
            assert a0 < a1
            assert b0 < b1
