"""Run metadata from a process's environment, its run file, the Slurm prolog's job file
and its cgroup."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.accounting.runmeta import (
    build_run_meta,
    claims_nothing,
    kubernetes_pod_uid,
    read_slurm_job_file,
)
from agent.accounting.runs import UNATTRIBUTED, RunMeta
from agent.sources.base import ActivityKind, DeviceInfo

POD_UID = "0b8c1f6e-4a2d-4c1e-9f3a-1234567890ab"


K8S_V1 = (
    "12:memory:/kubepods/burstable/pod0b8c1f6e-4a2d-4c1e-9f3a-1234567890ab/"
    "3f2a9c0d1e2b3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4\n"
    "11:cpu,cpuacct:/kubepods/burstable/pod0b8c1f6e-4a2d-4c1e-9f3a-1234567890ab/3f2a\n"
)
K8S_V2 = (
    "0::/kubepods.slice/kubepods-burstable.slice/"
    "kubepods-burstable-pod0b8c1f6e_4a2d_4c1e_9f3a_1234567890ab.slice/"
    "cri-containerd-3f2a9c0d1e2b.scope\n"
)
K8S_V2_GUARANTEED = (
    "0::/kubepods.slice/kubepods-pod0B8C1F6E_4A2D_4C1E_9F3A_1234567890AB.slice/"
    "cri-containerd-3f2a.scope\n"
)


@pytest.mark.parametrize("text", [K8S_V1, K8S_V2, K8S_V2_GUARANTEED])
def test_kubernetes_pod_uid_from_cgroup(text: str) -> None:
    assert kubernetes_pod_uid(text) == POD_UID


@pytest.mark.parametrize("text", [
    "0::/user.slice/user-1000.slice/session-3.scope\n",
    "0::/system.slice/docker-0b8c1f6e4a2d4c1e9f3a1234567890ab.scope\n",
    "",
])
def test_no_pod_uid_outside_kubernetes(text: str) -> None:
    assert kubernetes_pod_uid(text) is None


def test_metadata_from_the_environment() -> None:
    run, warnings = build_run_meta("r", "env", {
        "FLOPLEDGER_MODEL": " llama-x ",
        "FLOPLEDGER_CATEGORY": "Fine-Tuning",
        "FLOPLEDGER_PRECISION": "fp8",
        "FLOPLEDGER_RECOMPUTE": "selective",
        "FLOPLEDGER_RECOMPUTE_FACTOR": "1.2",
        "FLOPLEDGER_BASE_MODELS": "base-a, base-b,,",
        "FLOPLEDGER_PLAN_GPUS": "1024",
        "FLOPLEDGER_PLAN_TOKENS": "1.5e12",
        "FLOPLEDGER_PLAN_END_TIME": "2025-06-30T00:00:00Z",
    })
    assert warnings == []
    assert run == RunMeta(
        run_id="r", model="llama-x", category="fine-tuning", precision="fp8",
        recompute="selective", recompute_factor=1.2, recompute_declared=True,
        base_models=("base-a", "base-b"),
        plan={"gpus": 1024.0, "tokens": 1.5e12, "end_time": "2025-06-30T00:00:00Z"},
        via="env")
    full, _ = build_run_meta("r", "env", {"FLOPLEDGER_RECOMPUTE": "full"})
    assert full.recompute_factor == pytest.approx(4 / 3)


def test_metadata_from_a_run_file_with_the_environment_on_top(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text(
        'model = "from-file"\ncategory = "rl"\nprecision = "bf16"\n'
        'recompute = "full"\nbase_models = ["b1"]\n'
        '[plan]\ngpus = 64\nduration_s = 86400.5\nowner = "team-x"\n')
    run, warnings = build_run_meta("r", "env", {
        "FLOPLEDGER_RUN_FILE": str(run_file), "FLOPLEDGER_MODEL": "from-env",
        "FLOPLEDGER_PLAN_GPUS": "128"})
    assert warnings == []
    assert run == RunMeta(
        run_id="r", model="from-env", category="rl", precision="bf16", recompute="full",
        recompute_factor=4 / 3, recompute_declared=True, base_models=("b1",),
        plan={"gpus": 128.0, "duration_s": 86400.5, "owner": "team-x"}, via="env")


def test_recompute_is_declared_only_when_the_run_says_it() -> None:
    silent, _ = build_run_meta("r", "env", {"FLOPLEDGER_MODEL": "m"})
    said_none, _ = build_run_meta("r", "env", {"FLOPLEDGER_RECOMPUTE": "none"})
    garbled, warnings = build_run_meta("r", "env", {"FLOPLEDGER_RECOMPUTE": "sometimes"})
    assert (silent.recompute, silent.recompute_declared) == ("none", False)
    assert (said_none.recompute, said_none.recompute_declared) == ("none", True)
    # A value that is not a mode declares nothing: the band keeps its allowance.
    assert (garbled.recompute_declared, len(warnings)) == (False, 1)


def test_selective_without_a_factor_falls_back_to_one() -> None:
    run, warnings = build_run_meta("r", "env", {"FLOPLEDGER_RECOMPUTE": "selective",
                                                "FLOPLEDGER_PLAN_X": "1", "OTHER": "y"})
    assert (run.recompute, run.recompute_factor, run.plan) == ("selective", 1.0, {"x": 1.0})
    assert len(warnings) == 1
    assert "FLOPLEDGER_RECOMPUTE_FACTOR" in warnings[0]


def test_slurm_job_file_by_index_else_uuid(tmp_path: Path) -> None:
    device = DeviceInfo(3, "GPU-abc", "test", None, None, ActivityKind.NONE, "test")
    assert read_slurm_job_file(tmp_path, device) is None
    (tmp_path / "GPU-abc").write_text("4242\nmodel=m\nplan.tokens = 1e12\nuser=alice\n")
    found = read_slurm_job_file(tmp_path, device)
    assert found is not None
    assert (found.job_id, found.path) == ("4242", tmp_path / "GPU-abc")
    assert found.meta == {"model": "m", "plan.tokens": "1e12", "user": "alice"}
    # The file by index wins; one that does not start with a job id is skipped.
    (tmp_path / "3").write_text("not a job id\n")
    assert read_slurm_job_file(tmp_path, device) == found
    (tmp_path / "3").write_text("77\n")
    by_index = read_slurm_job_file(tmp_path, device)
    assert by_index is not None
    assert by_index.job_id == "77"
    run, warnings = build_run_meta("slurm-4242", "slurm-file", {}, found.meta, str(found.path))
    assert (run.model, run.plan, warnings) == ("m", {"tokens": 1e12}, [])


# -- names: what a run may call itself --------------------------------------------------


@pytest.mark.parametrize("run_id", ["unattributed", "Unattributed", "", "a\nb", "x" * 201])
def test_a_run_id_no_run_may_claim_gives_unattributed_with_one_warning(run_id: str) -> None:
    run, warnings = build_run_meta(run_id, "env", {"FLOPLEDGER_CATEGORY": "evaluation",
                                                   "FLOPLEDGER_MODEL": "m"})
    assert run is UNATTRIBUTED
    assert len(warnings) == 1
    assert "claims nothing" in warnings[0]
    assert "\n" not in warnings[0]


def test_a_model_name_with_a_control_character_is_ignored() -> None:
    run, warnings = build_run_meta("r", "env", {
        "FLOPLEDGER_MODEL": "m\nWARNING forged", "FLOPLEDGER_BASE_MODELS": "ok,b\x1b[2J",
        "FLOPLEDGER_CATEGORY": "rl"})
    assert (run.model, run.base_models, run.category) == ("", (), "rl")
    assert len(warnings) == 2
    assert all("\n" not in w and "\x1b" not in w for w in warnings)
    long_model, warnings = build_run_meta("r", "env", {"FLOPLEDGER_MODEL": "m" * 201})
    assert long_model.model == ""
    assert "200 characters" in warnings[0]


def test_the_reserved_run_declares_nothing_whoever_builds_it() -> None:
    claimed = RunMeta("unattributed", model="m", category="evaluation", precision="fp8",
                      plan={"gpus": 8.0}, base_models=("b",), via="replay-labels")
    assert claimed == UNATTRIBUTED
    assert (claimed.category, claimed.model, claimed.via) == ("unknown", "", "unattributed")
    # Any other id keeps what it declares.
    assert RunMeta("evaluator", category="evaluation").category == "evaluation"


def test_claims_nothing_warns_once_per_id(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.accounting.runmeta"):
        for _ in range(3):
            assert claims_nothing(RunMeta("evil\nid-unique-to-this-test"))
        assert not claims_nothing(RunMeta("fine-id"))
    (record,) = caplog.records
    assert "evil\\nid-unique-to-this-test" in record.getMessage()
