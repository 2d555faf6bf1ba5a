"""Scripted training workloads and jobs for the simulated source.

A workload is a small state machine that emits piecewise-constant segments of GPU
activity: compute phases at a set tensor activity and precision, communication and
data-loader stalls, checkpoint pauses, power-cap throttling and idle gaps. Because the
segments are constant, the FLOP a simulated GPU executes is known exactly. Faults the
agent must bound are part of a workload too: sampler stalls, and a GPU that stops
answering for a while (``lost_gpu``).

A :class:`SimJob` is a fake process population on top of that workload: who the GPU's
compute processes are (environment, cgroup, user, command line) and when they run. It
decides only who the GPU time is charged to, never how much work the GPU does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from agent.configfile import Problems
from agent.sources.specs import MATMUL_PRECISIONS


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of time during which everything on one GPU is constant.

    Attributes:
        duration_ns: length of the stretch.
        tensor_activity: fraction (0-1) of SM cycles the tensor pipes are busy.
        fp32_activity: fraction of cycles the non-tensor FP32 pipe is busy.
        kernel_busy: fraction of time at least one kernel runs (what
            ``utilization.gpu`` measures); NCCL and memcpy kernels count.
        sm_clock_mhz: SM clock during the stretch.
    """

    duration_ns: int
    tensor_activity: float
    fp32_activity: float
    kernel_busy: float
    sm_clock_mhz: float


@dataclass(frozen=True, slots=True)
class Workload:
    """Parameters of a scripted training workload; times in seconds.

    ``precision`` is what the matmuls really run in; ``declared_precision`` is what the
    run tells the agent (None: undeclared, so the estimator must widen its band).

    ``lost_gpu`` (-1: none) stops answering ``lost_at_s`` seconds in, as a GPU fallen
    off the bus does, and answers again ``lost_for_s`` later, as after a driver reset
    (0: never). It keeps running its workload meanwhile: unseen work is the worst case
    for the high bound.
    """

    precision: str = "bf16"
    declared_precision: str | None = "bf16"
    compute_s: float = 0.70
    compute_jitter: float = 0.10
    compute_tensor_activity: float = 0.62
    compute_fp32_activity: float = 0.03
    comm_s: float = 0.12
    comm_tensor_activity: float = 0.02
    dataloader_stall_every_steps: int = 40
    dataloader_stall_s: float = 1.2
    checkpoint_every_s: float = 600.0
    checkpoint_s: float = 20.0
    throttle_every_s: float = 0.0
    throttle_s: float = 0.0
    throttle_clock_mhz: float = 0.0
    burst_s: float = 0.0
    idle_s: float = 0.0
    idle_clock_mhz: float = 345.0
    clock_mhz: float = 0.0
    clock_dip_mhz: float = 45.0
    sampler_stall_every_s: float = 0.0
    sampler_stall_s: float = 0.0
    activity_noise_pct: float = 0.3
    lost_gpu: int = -1
    lost_at_s: float = 0.0
    lost_for_s: float = 0.0

    def lost_at(self, gpu: int, t_s: float) -> bool:
        """Whether GPU ``gpu`` does not answer ``t_s`` simulated seconds into the run."""
        return gpu == self.lost_gpu and self.lost_at_s <= t_s and (
            self.lost_for_s == 0 or t_s < self.lost_at_s + self.lost_for_s)

    def validate(self, problems: Problems, where: str) -> None:
        """Add a problem for every parameter outside its range."""
        if self.precision not in MATMUL_PRECISIONS:
            problems.add(f"{where}.precision", f"one of {sorted(MATMUL_PRECISIONS)}")
        if self.declared_precision is not None and (
            self.declared_precision not in MATMUL_PRECISIONS
        ):
            problems.add(f"{where}.declared_precision", f"one of {sorted(MATMUL_PRECISIONS)}")
        for name in ("compute_tensor_activity", "compute_fp32_activity", "comm_tensor_activity"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.add(f"{where}.{name}", "a fraction between 0 and 1")
        if self.compute_s <= 0:
            problems.add(f"{where}.compute_s", "a positive number of seconds")
        if self.lost_gpu < -1:
            problems.add(f"{where}.lost_gpu", "a GPU index, or -1 for none")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and value < 0:
                problems.add(f"{where}.{f.name}", "a number >= 0")


SCENARIOS: dict[str, Workload] = {
    # Steady bf16 pre-training: ~0.7 s compute steps, NCCL all-reduce between them,
    # a data-loader stall every 40 steps, a checkpoint every 10 minutes.
    "pretrain-bf16": Workload(),
    # fp8 pre-training on a power-capped node: the SM clock drops for 20 s in every 60.
    "fp8-throttled": Workload(
        precision="fp8",
        declared_precision="fp8",
        compute_tensor_activity=0.55,
        throttle_every_s=60.0,
        throttle_s=20.0,
        throttle_clock_mhz=1410.0,
    ),
    # Bursty fine-tuning: 30 s of steps, then 15 s idle; the sampler itself stalls for
    # 8 s every 2 minutes, leaving gaps the estimator must cover in its high bound.
    "finetune-bursty": Workload(
        compute_s=0.35,
        compute_tensor_activity=0.45,
        comm_s=0.05,
        dataloader_stall_every_steps=20,
        dataloader_stall_s=0.8,
        checkpoint_every_s=0.0,
        burst_s=30.0,
        idle_s=15.0,
        sampler_stall_every_s=120.0,
        sampler_stall_s=8.0,
    ),
    # The same pre-training, but the run does not say which precision it uses.
    "pretrain-undeclared": Workload(declared_precision=None),
    # Pre-training where GPU 1 stops answering 5 minutes in and is back 10 minutes later
    # (a driver reset); its work goes on unseen, which only the high bound may cover.
    "gpu-lost": Workload(lost_gpu=1, lost_at_s=300.0, lost_for_s=600.0),
}


def workload_from_table(base: Workload, overrides: dict[str, Any], problems: Problems,
                        where: str) -> Workload:
    """Apply ``[sim.workload]`` overrides to a named scenario, reporting bad keys."""
    known = {f.name: f for f in fields(Workload)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            problems.add(f"{where}.{key}", f"one of {sorted(known)}")
            continue
        current = getattr(base, key)
        if key == "declared_precision":
            if value not in ("", *MATMUL_PRECISIONS):
                problems.add(f"{where}.{key}",
                             f"\"\" (undeclared) or one of {sorted(MATMUL_PRECISIONS)}")
                continue
            changes[key] = value or None
        elif isinstance(current, bool) or not isinstance(value, type(current) | int):
            problems.add(f"{where}.{key}", f"a {type(current).__name__}")
        else:
            changes[key] = type(current)(value)
    workload = replace(base, **changes)
    workload.validate(problems, where)
    return workload


def segments(workload: Workload, max_clock_mhz: float, seed: int) -> Iterator[Segment]:
    """The endless segment stream of one simulated GPU, reproducible from ``seed``."""
    rng = random.Random(seed)
    w = workload
    clock = w.clock_mhz or max_clock_mhz
    t_s = 0.0
    step = 0
    next_checkpoint_s = w.checkpoint_every_s or float("inf")
    burst_end_s = w.burst_s or float("inf")

    def throttled(at_s: float) -> bool:
        return w.throttle_every_s > 0 and (at_s % w.throttle_every_s) < w.throttle_s

    def step_clock(at_s: float) -> float:
        if throttled(at_s):
            return w.throttle_clock_mhz
        # Boost clocks wander a little under load.
        return clock - (w.clock_dip_mhz if rng.random() < 0.1 else 0.0)

    def emit(duration_s: float, tensor: float, fp32: float, busy: float,
             sm_clock_mhz: float) -> Segment:
        nonlocal t_s
        duration_ns = max(1, round(duration_s * 1e9))
        t_s += duration_ns / 1e9
        return Segment(duration_ns, tensor, fp32, busy, sm_clock_mhz)

    while True:
        if t_s >= next_checkpoint_s:
            next_checkpoint_s += w.checkpoint_every_s
            yield emit(w.checkpoint_s, 0.0, 0.0, 0.0, clock)
            continue
        if t_s >= burst_end_s:
            yield emit(w.idle_s, 0.0, 0.0, 0.0, w.idle_clock_mhz)
            burst_end_s = t_s + w.burst_s
            continue
        step += 1
        jitter = 1.0 + w.compute_jitter * (2.0 * rng.random() - 1.0)
        sm_clock = step_clock(t_s)
        tensor = min(1.0, w.compute_tensor_activity * (1.0 + 0.05 * (2.0 * rng.random() - 1.0)))
        yield emit(w.compute_s * jitter, tensor, w.compute_fp32_activity, 1.0, sm_clock)
        if w.comm_s > 0:
            yield emit(w.comm_s, w.comm_tensor_activity, 0.0, 1.0, step_clock(t_s))
        if w.dataloader_stall_every_steps and step % w.dataloader_stall_every_steps == 0:
            yield emit(w.dataloader_stall_s, 0.0, 0.0, 0.05, clock)


@dataclass(frozen=True, slots=True)
class SimJob:
    """A job whose processes the simulator reports on some GPUs for a while.

    Attributes:
        env: the environment of each of the job's processes (``FLOPLEDGER_RUN_ID``,
            ``SLURM_JOB_ID``, ...).
        gpus: indices of the simulated GPUs it runs on, one process per GPU.
        start_s: simulated seconds after the first read when its processes appear.
        end_s: simulated seconds when they exit (None: never); ``start_s <= t < end_s``.
        sm_share: the process's share (0-1) of the GPU's utilization when several jobs
            share a GPU; reported as ``sm_util_pct = sm_share x utilization.gpu``.
        cgroup: text of the fake ``/proc/PID/cgroup`` (Kubernetes cases), None if absent.
        user: the processes' user name, None if unknown.
        cmdline: the processes' argument vector.
    """

    env: dict[str, str] = field(hash=False)
    gpus: tuple[int, ...]
    start_s: float = 0.0
    end_s: float | None = None
    sm_share: float = 1.0
    cgroup: str | None = None
    user: str | None = None
    cmdline: tuple[str, ...] = ()

    def active_at(self, t_s: float) -> bool:
        """Whether the job's processes exist ``t_s`` simulated seconds into the run."""
        return self.start_s <= t_s and (self.end_s is None or t_s < self.end_s)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sim_job(problems: Problems, table: dict[str, Any], where: str) -> SimJob | None:
    known = {f.name for f in fields(SimJob)}
    ok = True

    def bad(key: str, expected: str) -> None:
        nonlocal ok
        problems.add(f"{where}.{key}", expected)
        ok = False

    for key in table:
        if key not in known:
            bad(key, f"one of {sorted(known)}")
    env = table.get("env", {})
    # TOML numbers are accepted because a plan value (FLOPLEDGER_PLAN_GPUS = 1024) reads
    # naturally unquoted; a real environment holds only strings, so they become strings.
    if not isinstance(env, dict) or not all(
        isinstance(v, str) or _number(v) for v in env.values()
    ):
        bad("env", "a table of environment variables with string or number values")
        env = {}
    gpus = table.get("gpus")
    if (not isinstance(gpus, list) or not gpus
            or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus)
            or len(set(gpus)) != len(gpus)):
        bad("gpus", "a non-empty list of distinct GPU indices >= 0")
        gpus = []
    start = table.get("start_s", 0.0)
    if not _number(start) or start < 0:
        bad("start_s", "a number of seconds >= 0")
        start = 0.0
    end = table.get("end_s")
    if end is not None and (not _number(end) or end <= start):
        bad("end_s", "a number of seconds > start_s")
        end = None
    share = table.get("sm_share", 1.0)
    if not _number(share) or not 0.0 <= share <= 1.0:
        bad("sm_share", "a fraction between 0 and 1")
        share = 1.0
    texts: dict[str, str | None] = {}
    for key in ("cgroup", "user"):
        value = table.get(key)
        if value is not None and not isinstance(value, str):
            bad(key, "a string")
            value = None
        texts[key] = value
    cmdline = table.get("cmdline", [])
    if isinstance(cmdline, str):
        cmdline = cmdline.split()
    if not isinstance(cmdline, list) or not all(isinstance(a, str) for a in cmdline):
        bad("cmdline", "a list of strings (or one string split at spaces)")
        cmdline = []
    if not ok:
        return None
    return SimJob(
        env={str(k): str(v) for k, v in env.items()},
        gpus=tuple(gpus),
        start_s=float(start),
        end_s=float(end) if end is not None else None,
        sm_share=float(share),
        cgroup=texts["cgroup"],
        user=texts["user"],
        cmdline=tuple(cmdline),
    )


def parse_sim_jobs(
    raw_list: Any, problems: Problems, where: str = "sim.jobs"
) -> tuple[SimJob, ...]:
    """Parse a ``[[sim.jobs]]`` array of tables, reporting every bad key.

    GPU indices are not checked against the number of simulated GPUs here; the
    simulated source does that (and raises ``SourceError``).

    Returns:
        the valid jobs, in file order; a job with any problem is left out.
    """
    if not isinstance(raw_list, list):
        problems.add(where, "an array of tables ([[sim.jobs]])")
        return ()
    jobs: list[SimJob] = []
    for i, table in enumerate(raw_list):
        if not isinstance(table, dict):
            problems.add(f"{where}[{i}]", "a table")
            continue
        job = _sim_job(problems, table, f"{where}[{i}]")
        if job is not None:
            jobs.append(job)
    return tuple(jobs)
