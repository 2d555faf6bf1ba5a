"""Attribution of GPU processes to runs: against the simulated source and real /proc."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.accounting.attribution import (
    BINDING_IDLE_NS,
    AttributionSettings,
    Attributor,
    StaticRule,
    parse_attribution_config,
)
from agent.accounting.runs import UNATTRIBUTED, GpuAttribution, RunMeta
from agent.configfile import Problems
from agent.sources.base import (
    ActivityKind,
    DeviceInfo,
    GpuProcess,
    ProcessInspector,
    SampleBatch,
    SourceError,
)
from agent.sources.clock import VirtualClock
from agent.sources.procinfo import ProcInspector
from agent.sources.scenarios import SCENARIOS, SimJob, parse_sim_jobs
from agent.sources.simulated import SIM_PID_BASE, SimulatedSource
from agent.sources.specs import SpecTable, load_spec_table
from tests.accounting.test_runmeta import K8S_V1, K8S_V2, POD_UID
from tests.paths import REPO

PROLOG = REPO / "configs" / "slurm" / "prolog.sh"
EPILOG = REPO / "configs" / "slurm" / "epilog.sh"
# Above the kernel's largest pid_max (2^22), so no real process can have it.
NO_SUCH_PID = 2**22 + 12345
S = 1_000_000_000


@pytest.fixture(scope="module")
def specs() -> SpecTable:
    return load_spec_table()


@pytest.fixture
def settings(tmp_path: Path) -> AttributionSettings:
    # Never the machine's real /run/flopledger/slurm: tests must not see its jobs.
    return AttributionSettings(slurm_job_dir=tmp_path / "slurm")


class Sim:
    """A simulated source on a virtual clock, with an attributor over its inspector."""

    def __init__(self, specs: SpecTable, settings: AttributionSettings,
                 jobs: Sequence[SimJob] | None, n_gpus: int = 4,
                 scenario: str = "pretrain-bf16") -> None:
        self.clock = VirtualClock(start_monotonic_ns=S)
        self.source = SimulatedSource(specs, "h100_sxm", n_gpus, SCENARIOS[scenario],
                                      clock=self.clock, jobs=jobs)
        self.attributor = Attributor(settings, self.source.process_inspector(),
                                     self.clock.monotonic_ns)

    def tick(self, advance_s: float = 0.0) -> list[GpuAttribution]:
        self.clock.advance_ns(round(advance_s * S))
        return self.attributor.attribute(self.source.devices(), self.source.read())


def weights(attribution: GpuAttribution) -> dict[str, float]:
    return {share.run.run_id: share.weight for share in attribution.shares}


def only_run(attribution: GpuAttribution) -> RunMeta:
    assert len(attribution.shares) == 1, attribution
    return attribution.shares[0].run


def devices(n: int) -> list[DeviceInfo]:
    return [DeviceInfo(i, f"GPU-test-{i}", "test", None, None, ActivityKind.NONE, "test")
            for i in range(n)]


def batch(*procs: Sequence[GpuProcess]) -> SampleBatch:
    b = SampleBatch.empty(len(procs), 0, 0)
    b.processes = tuple(tuple(p) for p in procs)
    return b


class DictInspector:
    """Process facts from dicts; counts every call per (method, pid)."""

    def __init__(self, env: Mapping[int, Mapping[str, str] | None] | None = None,
                 cgroup: Mapping[int, str] | None = None) -> None:
        self.env = dict(env or {})
        self.cgroups = dict(cgroup or {})
        self.namespaces: dict[int, tuple[int, int]] = {}
        self.calls: Counter[tuple[str, int]] = Counter()

    def environ(self, pid: int) -> Mapping[str, str] | None:
        self.calls["environ", pid] += 1
        return self.env.get(pid)

    def cgroup(self, pid: int) -> str | None:
        self.calls["cgroup", pid] += 1
        return self.cgroups.get(pid)

    def username(self, pid: int) -> str | None:
        self.calls["username", pid] += 1
        return None

    def cmdline(self, pid: int) -> Sequence[str] | None:
        self.calls["cmdline", pid] += 1
        return None

    def pid_namespace(self, pid: int) -> tuple[int, int] | None:
        self.calls["pid_namespace", pid] += 1
        return self.namespaces.get(pid)


# --- identities -----------------------------------------------------------------------


def test_several_runs_by_env_var_and_an_idle_gpu(specs: SpecTable,
                                                 settings: AttributionSettings) -> None:
    sim = Sim(specs, settings, [
        SimJob(env={"FLOPLEDGER_RUN_ID": "a", "FLOPLEDGER_MODEL": "ma"}, gpus=(0, 1)),
        SimJob(env={"FLOPLEDGER_RUN_ID": "b"}, gpus=(2,)),
    ])
    out = sim.tick()
    assert [only_run(a).run_id for a in out] == ["a", "a", "b", "unattributed"]
    assert [a.split for a in out] == ["single", "single", "single", "none"]
    assert only_run(out[0]) == RunMeta(run_id="a", model="ma", via="env")
    assert out[3].shares[0].run is UNATTRIBUTED
    assert out[3].shares[0].weight == 1.0


def test_default_simulation_is_one_declared_run(specs: SpecTable,
                                                settings: AttributionSettings) -> None:
    out = Sim(specs, settings, None).tick()
    run = only_run(out[0])
    assert all(only_run(a) == run for a in out)
    assert (run.run_id, run.model, run.category, run.precision, run.via) == (
        "sim-run", "sim-model", "pre-training", "bf16", "env")
    undeclared = Sim(specs, settings, None, scenario="pretrain-undeclared").tick()
    assert only_run(undeclared[0]).precision is None


def test_slurm_job_id_in_the_environment(specs: SpecTable,
                                         settings: AttributionSettings) -> None:
    sim = Sim(specs, settings, [
        SimJob(env={"SLURM_JOB_ID": "555", "FLOPLEDGER_MODEL": "llm"}, gpus=(0,)),
        # The run's own id beats the scheduler's.
        SimJob(env={"SLURM_JOB_ID": "556", "FLOPLEDGER_RUN_ID": "mine"}, gpus=(1,)),
    ])
    out = sim.tick()
    assert only_run(out[0]) == RunMeta(run_id="slurm-555", model="llm", via="slurm")
    assert only_run(out[1]).run_id == "mine"


def _slurm_script(script: Path, job_dir: Path, **slurm: str) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "FLOPLEDGER_SLURM_DIR": str(job_dir), **slurm}
    subprocess.run(["bash", str(script)], env=env, check=True, timeout=30)


def test_slurm_prolog_files_attribute_and_epilog_removes_them(
        specs: SpecTable, settings: AttributionSettings) -> None:
    job_dir = settings.slurm_job_dir
    _slurm_script(PROLOG, job_dir, SLURM_JOB_ID="4242", SLURM_JOB_GPUS="1,3",
                  SLURM_JOB_USER="alice", SLURM_JOB_ACCOUNT="proj", SLURM_JOB_NAME="pretrain")
    _slurm_script(PROLOG, job_dir, SLURM_JOB_ID="99", CUDA_VISIBLE_DEVICES="0")
    assert sorted(p.name for p in job_dir.iterdir()) == ["0", "1", "3"]  # no temp files left
    assert (job_dir / "1").read_text() == "4242\nuser=alice\naccount=proj\nname=pretrain\n"
    # Processes whose environment says nothing (another user's, unreadable).
    jobs = [SimJob(env={}, gpus=(0, 1, 2, 3))]
    out = Sim(specs, settings, jobs).tick()
    assert [only_run(a).run_id for a in out] == [
        "slurm-99", "slurm-4242", "unattributed", "slurm-4242"]
    assert only_run(out[1]).via == "slurm-file"

    _slurm_script(EPILOG, job_dir, SLURM_JOB_ID="4242")
    assert sorted(p.name for p in job_dir.iterdir()) == ["0"]  # job 99's file is kept
    out = Sim(specs, settings, jobs).tick()
    assert [only_run(a).run_id for a in out] == [
        "slurm-99", "unattributed", "unattributed", "unattributed"]


def test_slurm_job_file_by_uuid_with_metadata(specs: SpecTable,
                                              settings: AttributionSettings) -> None:
    sim = Sim(specs, settings, [SimJob(env={}, gpus=(2,))])
    job_dir = settings.slurm_job_dir
    job_dir.mkdir()
    (job_dir / sim.source.devices()[2].uuid).write_text(
        "123\nuser=bob\nmodel=foo\ncategory=fine-tuning\nplan.tokens=1e12\n")
    run = only_run(sim.tick()[2])
    assert (run.run_id, run.via, run.model, run.category, run.plan) == (
        "slurm-123", "slurm-file", "foo", "fine-tuning", {"tokens": 1e12})


def test_torchrun(specs: SpecTable, settings: AttributionSettings) -> None:
    out = Sim(specs, settings, [
        SimJob(env={"TORCHELASTIC_RUN_ID": "xyz", "FLOPLEDGER_CATEGORY": "rl"}, gpus=(0,)),
        # torchrun's default rendezvous id: shared by unrelated runs, so not an identity.
        SimJob(env={"TORCHELASTIC_RUN_ID": "none"}, gpus=(1,)),
    ]).tick()
    assert only_run(out[0]) == RunMeta(run_id="torchrun-xyz", category="rl", via="torchrun")
    assert only_run(out[1]) is UNATTRIBUTED


def test_kubernetes_through_the_simulated_inspector(specs: SpecTable,
                                                    settings: AttributionSettings) -> None:
    out = Sim(specs, settings, [SimJob(env={}, gpus=(0,), cgroup=K8S_V1),
                                SimJob(env={}, gpus=(1,), cgroup=K8S_V2)]).tick()
    for attribution in out[:2]:
        assert only_run(attribution).run_id == f"k8s-pod-{POD_UID}"
        assert only_run(attribution).via == "kubernetes"


def test_kubernetes_through_proc_inspector_with_a_fake_proc(
        tmp_path: Path, settings: AttributionSettings) -> None:
    proc = tmp_path / "proc"
    (proc / str(NO_SUCH_PID)).mkdir(parents=True)
    (proc / str(NO_SUCH_PID) / "cgroup").write_text(K8S_V2)
    inspector = ProcInspector(proc)
    assert inspector.cgroup(NO_SUCH_PID) == K8S_V2
    assert inspector.cgroup(NO_SUCH_PID + 1) is None
    assert inspector.environ(NO_SUCH_PID) is None  # psutil still reads the real /proc
    out = Attributor(settings, inspector).attribute(devices(1),
                                                    batch([GpuProcess(NO_SUCH_PID)]))
    assert only_run(out[0]).run_id == f"k8s-pod-{POD_UID}"


# --- static rules ---------------------------------------------------------------------


def _rules_settings(settings: AttributionSettings, *rules: StaticRule) -> AttributionSettings:
    return AttributionSettings(slurm_job_dir=settings.slurm_job_dir, rules=rules)


def test_static_rule_by_gpus_claims_idle_and_unidentified(
        specs: SpecTable, settings: AttributionSettings) -> None:
    nightly = RunMeta(run_id="nightly-eval", category="evaluation", via="static")
    rules = _rules_settings(settings, StaticRule(run=nightly, gpus=(1, 2, 3)))
    out = Sim(specs, rules, [SimJob(env={}, gpus=(0, 2)),
                             SimJob(env={"FLOPLEDGER_RUN_ID": "own"}, gpus=(3,))]).tick()
    assert only_run(out[0]) is UNATTRIBUTED  # GPU 0 is not the rule's
    assert (only_run(out[1]), out[1].split) == (nightly, "single")  # no process at all
    assert only_run(out[2]) == nightly  # a process without identity
    assert only_run(out[3]).run_id == "own"  # identity beats a static rule


def test_static_rules_by_user_and_by_cmdline(specs: SpecTable,
                                             settings: AttributionSettings) -> None:
    evals = RunMeta(run_id="evals", via="static")
    serve = RunMeta(run_id="serve", via="static")
    rules = _rules_settings(
        settings,
        StaticRule(run=evals, user="evalbot"),
        StaticRule(run=serve, cmdline_regex=r"serve\.py"),
    )
    out = Sim(specs, rules, [
        SimJob(env={}, gpus=(0,), user="evalbot", cmdline=("python", "serve.py")),
        SimJob(env={}, gpus=(1,), user="alice", cmdline=("python", "serve.py", "--port=1")),
        SimJob(env={}, gpus=(2,), user="alice", cmdline=("python", "train.py")),
    ]).tick()
    assert only_run(out[0]) == evals  # first matching rule wins
    assert only_run(out[1]) == serve
    assert only_run(out[2]) is UNATTRIBUTED
    # A rule combining criteria needs all of them.
    both = _rules_settings(settings, StaticRule(run=evals, gpus=(1,), user="evalbot"))
    out = Sim(specs, both, [SimJob(env={}, gpus=(0, 1), user="evalbot")]).tick()
    assert [only_run(a).run_id for a in out[:3]] == ["unattributed", "evals", "unattributed"]
    assert out[2].split == "none"  # gpus + user does not claim an idle GPU


# --- splitting a shared GPU -----------------------------------------------------------


def test_shared_gpu_split_by_sm_util(specs: SpecTable, settings: AttributionSettings) -> None:
    sim = Sim(specs, settings, [
        SimJob(env={"FLOPLEDGER_RUN_ID": "a"}, gpus=(0,), sm_share=0.75),
        SimJob(env={"FLOPLEDGER_RUN_ID": "b"}, gpus=(0,), sm_share=0.25),
    ])
    first = sim.tick()[0]
    # utilization.gpu is 0 on the very first read: nothing to weigh by.
    assert (first.split, weights(first)) == ("even", {"a": 0.5, "b": 0.5})
    shared = sim.tick(2.0)[0]
    assert shared.split == "sm_util"
    assert weights(shared) == pytest.approx({"a": 0.75, "b": 0.25})
    assert sum(s.weight for s in shared.shares) == pytest.approx(1.0)


def test_shared_gpu_split_evenly_per_run_without_sm_util(
        settings: AttributionSettings) -> None:
    env = {1: {"FLOPLEDGER_RUN_ID": "a"}, 2: {"FLOPLEDGER_RUN_ID": "a"},
           3: {"FLOPLEDGER_RUN_ID": "b"}}
    attributor = Attributor(settings, DictInspector(env))
    out = attributor.attribute(devices(2), batch(
        [GpuProcess(1), GpuProcess(2), GpuProcess(3)],
        # One process without a reading spoils the measurement for the whole GPU.
        [GpuProcess(1, sm_util_pct=60.0), GpuProcess(3, sm_util_pct=None)],
    ))
    assert (out[0].split, weights(out[0])) == ("even", {"a": 0.5, "b": 0.5})
    assert (out[1].split, weights(out[1])) == ("even", {"a": 0.5, "b": 0.5})
    measured = attributor.attribute(devices(1), batch(
        [GpuProcess(1, sm_util_pct=30.0), GpuProcess(2, sm_util_pct=30.0),
         GpuProcess(3, sm_util_pct=20.0)]))[0]
    assert measured.split == "sm_util"
    assert weights(measured) == pytest.approx({"a": 0.75, "b": 0.25})  # summed per run


def test_unidentified_process_and_idle_gpu_are_unattributed(
        specs: SpecTable, settings: AttributionSettings) -> None:
    out = Sim(specs, settings, [SimJob(env={"FLOPLEDGER_MODEL": "no-id"}, gpus=(0,))]).tick()
    assert (only_run(out[0]), out[0].split) == (UNATTRIBUTED, "single")
    assert (only_run(out[1]), out[1].split) == (UNATTRIBUTED, "none")


def test_run_change_over_simulated_time(specs: SpecTable,
                                        settings: AttributionSettings) -> None:
    sim = Sim(specs, settings, [
        SimJob(env={"FLOPLEDGER_RUN_ID": "A"}, gpus=(0,), end_s=10.0),
        SimJob(env={"FLOPLEDGER_RUN_ID": "B"}, gpus=(0,), start_s=10.0),
    ], n_gpus=1)
    seen = [only_run(sim.tick(step)[0]).run_id for step in (0, 5, 4.9, 0.1, 5)]
    assert seen == ["A", "A", "A", "B", "B"]


# --- metadata -------------------------------------------------------------------------


def test_bad_metadata_is_ignored_with_one_warning_per_run(
        specs: SpecTable, settings: AttributionSettings, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    env = {"FLOPLEDGER_RUN_ID": "sloppy", "FLOPLEDGER_MODEL": "m",
           "FLOPLEDGER_CATEGORY": "pretraining", "FLOPLEDGER_PRECISION": "bf17",
           "FLOPLEDGER_RECOMPUTE": "full", "FLOPLEDGER_RECOMPUTE_FACTOR": "2",
           "FLOPLEDGER_RUN_FILE": str(tmp_path / "missing.toml")}
    sim = Sim(specs, settings, [SimJob(env=env, gpus=(0, 1))])
    with caplog.at_level(logging.WARNING, logger="agent.accounting.attribution"):
        for step in (0, 1, 20, 1):  # 20 s: past refresh_s, every pid is read again
            run = only_run(sim.tick(step)[0])
    assert run == RunMeta(run_id="sloppy", model="m", recompute="full",
                          recompute_factor=4 / 3, recompute_declared=True, via="env")
    records = [r for r in caplog.records if r.name == "agent.accounting.attribution"]
    assert len(records) == 1, records
    message = records[0].getMessage()
    for label in ("FLOPLEDGER_CATEGORY", "FLOPLEDGER_PRECISION", "FLOPLEDGER_RECOMPUTE_FACTOR",
                  "FLOPLEDGER_RUN_FILE"):
        assert label in message


# --- configuration --------------------------------------------------------------------


def test_parse_attribution_config() -> None:
    problems = Problems("agent.toml")
    got = parse_attribution_config({"attribution": {
        "slurm_job_dir": "/var/run/fl", "refresh_s": 5,
        "rules": [
            {"run": "nightly-eval", "model": "m", "category": "evaluation",
             "precision": "bf16", "gpus": [6, 7], "plan": {"gpus": 2}},
            {"run": "bots", "user": "evalbot", "cmdline_regex": r"eval\.py",
             "recompute": "selective", "recompute_factor": 1.1, "base_models": ["b"]},
        ]}}, problems)
    assert not problems, problems.items
    assert got == AttributionSettings(
        slurm_job_dir=Path("/var/run/fl"), refresh_s=5.0, rules=(
            StaticRule(run=RunMeta(run_id="nightly-eval", model="m", category="evaluation",
                                   precision="bf16", plan={"gpus": 2.0}, via="static"),
                       gpus=(6, 7)),
            StaticRule(run=RunMeta(run_id="bots", recompute="selective", recompute_factor=1.1,
                                   recompute_declared=True, base_models=("b",), via="static"),
                       user="evalbot", cmdline_regex=r"eval\.py"),
        ))
    assert parse_attribution_config({}, problems) == AttributionSettings()
    assert not problems


def test_parse_attribution_config_reports_every_problem_at_once() -> None:
    problems = Problems("agent.toml")
    got = parse_attribution_config({"attribution": {
        "refresh_s": 0, "slurm_job_dir": 3, "typo": 1,
        "rules": [
            {"run": "x", "category": "pretraining", "precision": "bf17", "gpus": [0]},
            {"model": "no-run-no-criteria"},
            {"run": "y", "cmdline_regex": "(", "recompute": "selective"},
            {"run": "z", "gpus": [-1, "a"], "recompute_factor": 2, "plan": {"k": [1]}},
            {"run": "w", "gpus": [1, 2]},
            {"run": "v", "gpus": [2]},
            "not a table",
        ]}}, problems)
    keys = [key for key, _ in problems.items]
    assert sorted(keys) == sorted([
        "attribution.refresh_s", "attribution.slurm_job_dir", "attribution.typo",
        "attribution.rules[0].category", "attribution.rules[0].precision",
        "attribution.rules[1].run", "attribution.rules[1]",
        "attribution.rules[2].cmdline_regex", "attribution.rules[2].recompute_factor",
        "attribution.rules[3].gpus", "attribution.rules[3].recompute_factor",
        "attribution.rules[3].plan.k",
        "attribution.rules[5].gpus",  # GPU 2 already claimed by rules[4]
        "attribution.rules[6]",
    ])
    assert "one of" in dict(problems.items)["attribution.rules[0].category"]
    assert got.refresh_s == 10.0
    assert [r.run.run_id for r in got.rules] == ["w", "v"]


def test_parse_sim_jobs() -> None:
    problems = Problems("agent.toml")
    jobs = parse_sim_jobs([
        {"env": {"FLOPLEDGER_RUN_ID": "a", "FLOPLEDGER_PLAN_GPUS": 8}, "gpus": [0, 1],
         "end_s": 10, "sm_share": 0.5, "user": "u", "cmdline": "python train.py"},
        {"env": {"X": "1"}, "gpus": [], "start_s": -1, "end_s": 0, "sm_share": 2,
         "cgroup": 5, "cmdline": [1], "bogus": True},
    ], problems)
    assert jobs == (SimJob(env={"FLOPLEDGER_RUN_ID": "a", "FLOPLEDGER_PLAN_GPUS": "8"},
                           gpus=(0, 1), end_s=10.0, sm_share=0.5, user="u",
                           cmdline=("python", "train.py")),)
    assert sorted(k for k, _ in problems.items) == sorted(
        f"sim.jobs[1].{k}" for k in
        ("gpus", "start_s", "end_s", "sm_share", "cgroup", "cmdline", "bogus"))
    problems = Problems("agent.toml")
    assert parse_sim_jobs({"gpus": [0]}, problems) == ()
    assert [k for k, _ in problems.items] == ["sim.jobs"]


# --- the simulated source's processes ------------------------------------------------


def test_simulated_pids_are_stable_and_the_inspector_knows_only_them(
        specs: SpecTable) -> None:
    job = SimJob(env={"K": "v"}, gpus=(1, 2), cgroup=K8S_V1, user="u", cmdline=("a", "b"))
    source = SimulatedSource(specs, "h100_sxm", 4, SCENARIOS["pretrain-bf16"],
                             clock=VirtualClock(), jobs=[SimJob(env={}, gpus=(0,)), job])
    pids = [[p.pid for p in procs] for procs in source.read().processes]
    assert pids == [[SIM_PID_BASE], [SIM_PID_BASE + 1001], [SIM_PID_BASE + 1002], []]
    assert [[p.pid for p in procs] for procs in source.read().processes] == pids
    inspector: ProcessInspector = source.process_inspector()
    assert inspector.environ(SIM_PID_BASE + 1001) == {"K": "v"}
    assert inspector.cgroup(SIM_PID_BASE + 1002) == K8S_V1
    assert inspector.username(SIM_PID_BASE + 1002) == "u"
    assert inspector.cmdline(SIM_PID_BASE + 1002) == ("a", "b")
    for method in (inspector.environ, inspector.cgroup, inspector.username,
                   inspector.cmdline):
        assert method(SIM_PID_BASE + 3) is None
    with pytest.raises(SourceError, match="GPU 4"):
        SimulatedSource(specs, "h100_sxm", 4, SCENARIOS["pretrain-bf16"],
                        jobs=[SimJob(env={}, gpus=(4,))])


# --- the per-pid cache ----------------------------------------------------------------


def test_each_pid_is_read_once_per_refresh_and_forgotten_when_gone(
        settings: AttributionSettings) -> None:
    now = [0]
    inspector = DictInspector({1: {"FLOPLEDGER_RUN_ID": "a"}, 2: None})
    attributor = Attributor(settings, inspector, lambda: now[0])
    both = batch([GpuProcess(1), GpuProcess(2)], [GpuProcess(1)])
    for t_s in (0, 1, 2, 9.9):
        now[0] = round(t_s * S)
        attributor.attribute(devices(2), both)
    # pid 1 is on two GPUs and still read once; pid 2 has no identity, so its cgroup too.
    assert inspector.calls == {("environ", 1): 1, ("environ", 2): 1, ("cgroup", 2): 1}
    now[0] = 10 * S  # refresh_s = 10: read again
    attributor.attribute(devices(2), both)
    assert inspector.calls["environ", 1] == 2
    now[0] = 11 * S
    attributor.attribute(devices(2), batch([GpuProcess(2)], []))  # pid 1 exits
    now[0] = 12 * S
    attributor.attribute(devices(2), both)  # a new process with the same pid
    assert inspector.calls["environ", 1] == 3
    assert inspector.calls["environ", 2] == 2


def test_an_answer_is_reused_only_while_nothing_it_depends_on_changed(
        settings: AttributionSettings) -> None:
    """The same processes give the last answer again, until a pid it read is due for a
    refresh, a run is declared, a process is bound, or the processes change."""
    now = [0]
    inspector = DictInspector({1: {"FLOPLEDGER_RUN_ID": "a"}, 2: {"FLOPLEDGER_RUN_ID": "z"}})
    attributor = Attributor(settings, inspector, lambda: now[0])
    both = batch([GpuProcess(1)], [GpuProcess(1)])

    def runs(b: SampleBatch = both) -> list[str]:
        return [only_run(a).run_id for a in attributor.attribute(devices(2), b)]

    assert runs() == ["a", "a"]
    inspector.env[1] = {"FLOPLEDGER_RUN_ID": "b"}
    now[0] = 5 * S
    assert runs() == ["a", "a"]  # pid 1 is not read again before refresh_s (10 s)
    now[0] = 10 * S
    assert runs() == ["b", "b"]
    attributor.declare(RunMeta("b", model="declared-model", via="client"))
    now[0] = 11 * S
    assert [only_run(a).model for a in attributor.attribute(devices(2), both)] == [
        "declared-model"] * 2
    assert runs(batch([GpuProcess(1)], [GpuProcess(2)])) == ["b", "z"]
    attributor.bind(1, None, "bound-run")
    now[0] = 12 * S
    assert runs() == ["bound-run", "bound-run"]
    inspector.env[1] = {"FLOPLEDGER_RUN_ID": "c"}
    now[0] = 12 * S + BINDING_IDLE_NS + 1  # pid 1 gone long enough: its binding lapses
    attributor.attribute(devices(2), batch([GpuProcess(2)], []))
    now[0] += 1
    assert runs() == ["c", "c"]  # back, and read afresh


def test_a_tick_of_cached_pids_reads_nothing(specs: SpecTable,
                                             settings: AttributionSettings) -> None:
    sim = Sim(specs, settings, None, n_gpus=8)
    counting = DictInspector()
    real = sim.source.process_inspector()
    counting.env = {SIM_PID_BASE + g: real.environ(SIM_PID_BASE + g) for g in range(8)}
    attributor = Attributor(settings, counting, sim.clock.monotonic_ns)
    devs = sim.source.devices()
    attributor.attribute(devs, sim.source.read())
    calls = sum(counting.calls.values())
    assert calls == 8
    for _ in range(50):  # 5 s at 10 Hz
        sim.clock.advance_ns(S // 10)
        assert {only_run(a).run_id for a in attributor.attribute(devs, sim.source.read())} == {
            "sim-run"}
    assert sum(counting.calls.values()) == calls


# --- the real /proc -------------------------------------------------------------------


def test_proc_inspector_reads_a_real_process(settings: AttributionSettings) -> None:
    env = {**os.environ, "FLOPLEDGER_RUN_ID": "proc-run", "FLOPLEDGER_MODEL": "pm"}
    child = subprocess.Popen(["sleep", "30"], env=env)
    try:
        inspector = ProcInspector()
        # Popen may return (vfork) a moment before the kernel shows the new image's
        # environment and command line: wait for the exec to be visible.
        deadline = time.monotonic() + 10
        while inspector.cmdline(child.pid) != ("sleep", "30") and time.monotonic() < deadline:
            time.sleep(0.01)
        environ = inspector.environ(child.pid)
        assert environ is not None
        assert environ["FLOPLEDGER_RUN_ID"] == "proc-run"
        assert inspector.cmdline(child.pid) == ("sleep", "30")
        assert inspector.username(child.pid) == psutil.Process().username()
        assert inspector.cgroup(child.pid) is not None or not Path("/proc/self/cgroup").exists()
        out = Attributor(settings, inspector).attribute(
            devices(1), batch([GpuProcess(child.pid)]))
        assert only_run(out[0]) == RunMeta(run_id="proc-run", model="pm", via="env")
    finally:
        child.kill()
        child.wait(timeout=10)
    for method in (inspector.environ, inspector.cgroup, inspector.username,
                   inspector.cmdline):
        assert method(child.pid) is None  # reaped: gone


def test_environ_access_denied_is_logged_once(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    class Denied:
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def environ(self) -> dict[str, str]:
            raise psutil.AccessDenied(self.pid)

        def username(self) -> str:
            raise psutil.ZombieProcess(self.pid)

        def cmdline(self) -> list[str]:
            raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr("agent.sources.procinfo.psutil.Process", Denied)
    inspector = ProcInspector()
    with caplog.at_level(logging.WARNING, logger="agent.sources.procinfo"):
        results: list[Any] = [inspector.environ(pid) for pid in (10, 11, 12)]
        results += [inspector.username(10), inspector.cmdline(10)]
    assert results == [None] * 5
    assert len(caplog.records) == 1
    assert "CAP_SYS_PTRACE" in caplog.records[0].getMessage()



# --- names no run may claim -----------------------------------------------------------


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "agent.accounting.attribution" and "claims nothing" in r.getMessage()]


@pytest.mark.parametrize("env", [
    # The attack: real unattributed compute would go into "evaluation" with this job's.
    {"FLOPLEDGER_RUN_ID": "unattributed", "FLOPLEDGER_CATEGORY": "evaluation"},
    {"FLOPLEDGER_RUN_ID": " Unattributed ", "FLOPLEDGER_MODEL": "m"},
    # Set but empty: a process that named no run, not one Slurm may name for it.
    {"FLOPLEDGER_RUN_ID": "", "SLURM_JOB_ID": "77"},
    {"FLOPLEDGER_RUN_ID": "  ", "TORCHELASTIC_RUN_ID": "t1"},
    {"FLOPLEDGER_RUN_ID": "run\n2025-01-01 WARNING forged line"},
    {"FLOPLEDGER_RUN_ID": "x" * 201},
    {"SLURM_JOB_ID": "12\x1b[2J"},
    {"TORCHELASTIC_RUN_ID": "t" * 300},
], ids=["reserved", "reserved-any-case", "empty-beats-slurm", "blank-beats-torchrun",
        "newline", "too-long", "slurm-control-char", "torchrun-too-long"])
def test_a_process_claiming_a_forbidden_run_id_is_unattributed_with_one_warning(
        specs: SpecTable, settings: AttributionSettings, caplog: pytest.LogCaptureFixture,
        env: dict[str, str]) -> None:
    sim = Sim(specs, settings, [SimJob(env=env, gpus=(0, 1))])
    with caplog.at_level(logging.WARNING, logger="agent.accounting.attribution"):
        for step in (0, 1, 20, 1):  # 20 s: past refresh_s, every pid is read again
            out = sim.tick(step)
            assert only_run(out[0]) is UNATTRIBUTED
            assert only_run(out[1]) is UNATTRIBUTED
    (message,) = _refusals(caplog)
    assert "\n" not in message
    assert "\x1b" not in message
    assert len(message) < 600


def test_an_over_long_job_id_in_a_slurm_job_file_is_refused(
        specs: SpecTable, settings: AttributionSettings) -> None:
    sim = Sim(specs, settings, [SimJob(env={}, gpus=(0,))])
    settings.slurm_job_dir.mkdir()
    (settings.slurm_job_dir / "0").write_text("9" * 300 + "\ncategory=evaluation\n")
    assert only_run(sim.tick()[0]) is UNATTRIBUTED


def test_a_static_rule_cannot_name_a_forbidden_run_id() -> None:
    problems = Problems("agent.toml")
    got = parse_attribution_config({"attribution": {"rules": [
        {"run": "unattributed", "category": "evaluation", "gpus": [0]},
        {"run": "a\nb", "gpus": [1]},
        {"run": "ok", "gpus": [2], "model": "m\x07"},
        {"run": "fine", "gpus": [3]},
    ]}}, problems)
    found = dict(problems.items)
    assert "reserved" in found["attribution.rules[0].run"]
    assert "control character" in found["attribution.rules[1].run"]
    assert "attribution.rules[2].model" in found
    assert [r.run.run_id for r in got.rules] == ["fine"]


# --- the client spool's bindings ------------------------------------------------------


def test_a_process_that_declared_through_the_spool_is_charged_to_its_run(
        settings: AttributionSettings, caplog: pytest.LogCaptureFixture) -> None:
    now = [0]
    inspector = DictInspector({1: {"FLOPLEDGER_RUN_ID": "env-run"}, 2: {}, 3: {}})
    inspector.namespaces = {3: (4026532000, 7)}  # pid 3 is pid 7 of a container
    attributor = Attributor(settings, inspector, lambda: now[0])
    procs = batch([GpuProcess(1)], [GpuProcess(2)], [GpuProcess(3)])
    before = [only_run(a).run_id for a in attributor.attribute(devices(3), procs)]
    assert before == ["env-run", "unattributed", "unattributed"]
    attributor.bind(1, None, "declared-run")
    attributor.bind(2, None, "declared-run")
    attributor.bind(7, 4026532000, "container-run")
    attributor.declare(RunMeta("declared-run", model="m", category="pre-training",
                               via="client"))
    with caplog.at_level(logging.WARNING):
        runs = [only_run(a) for a in attributor.attribute(devices(3), procs)]
    assert [r.run_id for r in runs] == ["declared-run", "declared-run", "container-run"]
    assert runs[0].model == "m"
    assert runs[0].via == "client"
    assert runs[2].via == "client"
    assert runs[2].model == ""
    # The environment named another run: said once, and the declaration wins.
    assert "names run 'env-run'" in caplog.text
    # A binding whose process has been on no GPU for ten minutes is dropped: its pid may
    # come back as another process.
    now[0] = 11 * 60 * S
    attributor.attribute(devices(3), batch([], [], []))
    now[0] += S
    again = [only_run(a).run_id for a in attributor.attribute(devices(3), procs)]
    assert again == ["env-run", "unattributed", "unattributed"]


def test_the_real_inspector_reads_a_process_pid_namespace(tmp_path: Path) -> None:
    inode = os.stat("/proc/self/ns/pid").st_ino
    assert ProcInspector().pid_namespace(os.getpid()) == (inode, os.getpid())
    # A container's process: NSpid lists the pid in every namespace, innermost last.
    fake = tmp_path / "4242"
    (fake / "ns").mkdir(parents=True)
    (fake / "ns" / "pid").write_text("")
    (fake / "status").write_text("Name:\tpython\nNSpid:\t4242\t7\n")
    assert ProcInspector(tmp_path).pid_namespace(4242) == (
        os.stat(fake / "ns" / "pid").st_ino, 7)
    assert ProcInspector(tmp_path).pid_namespace(4343) is None


def test_a_declaration_applies_to_every_process_of_its_run(
        settings: AttributionSettings) -> None:
    # The declaring process is not on a GPU (a launcher); the GPU process names the run
    # through its environment: the declaration still describes the run.
    attributor = Attributor(settings, DictInspector({1: {"FLOPLEDGER_RUN_ID": "r"}}))
    procs = batch([GpuProcess(1)])
    assert only_run(attributor.attribute(devices(1), procs)[0]).model == ""
    attributor.declare(RunMeta("r", model="m", plan={"params": 1e9}, via="client"))
    run = only_run(attributor.attribute(devices(1), procs)[0])
    assert (run.model, run.plan, run.via) == ("m", {"params": 1e9}, "env")
