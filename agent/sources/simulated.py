"""Virtual GPUs running scripted training workloads, with ground-truth FLOP.

The simulated source is a full implementation of :class:`GpuSource`: it is what the
agent samples on a machine without an NVIDIA driver, and what the tests and the
benchmarks run against. Each virtual GPU replays the segment stream of a
:class:`~agent.sources.scenarios.Workload` and reports what NVML would: the SM clock at
the moment of the read, ``utilization.gpu`` over a trailing window, GPM activity as the
average over the interval since the previous read (with a little measurement noise),
and an energy counter. Because the segments are constant, the FLOP each GPU executed is
known exactly and exposed as ``sim_true_flop_total``.

Who runs on the GPUs is scripted separately, by
:class:`~agent.sources.scenarios.SimJob` entries: each job's fake processes (pids from
``SIM_PID_BASE``) appear in ``SampleBatch.processes`` while the job is active, and the
source's ``process_inspector()`` answers for them what ``/proc`` would (environment,
cgroup, user, command line), so attribution runs the same code path as on a real node.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import operator
import random
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence

from agent.sources.base import (
    FLOAT_FIELDS,
    ActivityKind,
    DeviceInfo,
    GpuProcess,
    ProcessInspector,
    SampleBatch,
    SourceError,
)
from agent.sources.clock import Clock, RealClock, VirtualClock
from agent.sources.scenarios import Segment, SimJob, Workload, segments
from agent.sources.specs import MATMUL_PRECISIONS, GpuSpec, SpecTable

# utilization.gpu is "percent of time over the past sample period during which one or
# more kernels was executing"; the period is between 1/6 s and 1 s by product.
UTIL_WINDOW_NS = 1_000_000_000
IDLE_POWER_W = 80.0
MAX_POWER_W = 700.0
SIM_PID_BASE = 4_000_000
# Job j's process on GPU g is SIM_PID_BASE + j x stride + g: readable in a test failure
# (4_001_003 is job 1 on GPU 3) and far above any real pid_max default.
SIM_JOB_PID_STRIDE = 1000
# Unknown readings: GPM's fields (all of FLOAT_FIELDS but the clock, utilization,
# energy and power), and a whole row of FLOAT_FIELDS.
_UNKNOWN_GPM = (float("nan"),) * (len(FLOAT_FIELDS) - 4)
_UNKNOWN_ROW = (float("nan"),) * len(FLOAT_FIELDS)


def sim_gpu_uuid(seed: int, index: int) -> str:
    """A stable, recognisable UUID for a simulated GPU."""
    return "GPU-" + str(uuid.UUID(int=(0x5117 << 112) | (seed & 0xFFFFFFFF) << 32 | index))


class SimulatedGpu:
    """One virtual GPU: walks its segment stream and integrates what happened."""

    # Every tick reads and writes most of these for every GPU: slots keep them together
    # (a tick after the 100 ms sleep finds little of it in cache).
    __slots__ = ("_busy_integral", "_cursor_ns", "_flop_per_s", "_fp32_flop_per_clock",
                 "_fp32_integral", "_last_read_ns", "_noise", "_power_mw", "_power_w",
                 "_recent", "_recent_busy_ns", "_recent_not_busy", "_segment",
                 "_segment_left_ns", "_segments", "_tensor_flop_per_clock",
                 "_tensor_integral", "_workload", "energy_mj", "index", "spec", "true_flop")

    def __init__(self, index: int, spec: GpuSpec, workload: Workload, seed: int) -> None:
        self.index = index
        self.spec = spec
        tensor_key = MATMUL_PRECISIONS[workload.precision]
        if not spec.supports(tensor_key):
            raise SourceError(
                f"simulated {spec.key} has no {workload.precision} tensor cores "
                f"(workload precision {workload.precision!r})"
            )
        self._workload = workload
        self._tensor_flop_per_clock = spec.flop_per_clock(tensor_key)
        self._fp32_flop_per_clock = spec.flop_per_clock("fp32")
        self._segments: Iterator[Segment] = segments(
            workload, spec.max_sm_clock_mhz, seed * 1000 + index
        )
        self._noise = random.Random(seed * 7919 + index)
        self._next_segment()
        self._cursor_ns = 0
        self._recent: deque[tuple[int, int, float]] = deque()  # (start, end, kernel_busy)
        self._recent_busy_ns: deque[float] = deque()  # (end - start) x kernel_busy of each
        self._recent_not_busy = 0  # of those stretches, how many have busy below 1
        self.true_flop = 0.0
        self.energy_mj = 0.0
        self._tensor_integral = 0.0  # activity x ns since the last read
        self._fp32_integral = 0.0
        self._busy_integral = 0.0
        self._last_read_ns: int | None = None

    def _next_segment(self) -> None:
        """Start the next segment, working out once what stays constant through it:
        :meth:`advance` runs for every GPU at every tick."""
        seg = self._segment = next(self._segments)
        self._segment_left_ns = seg.duration_ns
        self._flop_per_s = (
            seg.tensor_activity * self._tensor_flop_per_clock
            + seg.fp32_activity * self._fp32_flop_per_clock
        ) * (seg.sm_clock_mhz * 1e6)
        load = 0.25 * seg.kernel_busy + 0.75 * seg.tensor_activity
        self._power_w = IDLE_POWER_W + (MAX_POWER_W - IDLE_POWER_W) * load * (
            seg.sm_clock_mhz / self.spec.max_sm_clock_mhz
        )
        self._power_mw = 1e3 * (IDLE_POWER_W + (MAX_POWER_W - IDLE_POWER_W) * load)

    def advance(self, to_ns: int) -> None:
        """Run the workload up to ``to_ns`` nanoseconds after the simulation start."""
        cursor = self._cursor_ns
        while cursor < to_ns:
            left_ns, rest_ns = self._segment_left_ns, to_ns - cursor
            step_ns = left_ns if left_ns < rest_ns else rest_ns
            seg = self._segment
            dt_s = step_ns * 1e-9
            self.true_flop += self._flop_per_s * dt_s
            self.energy_mj += self._power_w * dt_s * 1e3
            kernel_busy = seg.kernel_busy
            self._tensor_integral += seg.tensor_activity * step_ns
            self._fp32_integral += seg.fp32_activity * step_ns
            self._busy_integral += kernel_busy * step_ns
            self._recent.append((cursor, cursor + step_ns, kernel_busy))
            self._recent_busy_ns.append(step_ns * kernel_busy)
            if kernel_busy != 1.0:
                self._recent_not_busy += 1
            cursor += step_ns
            self._segment_left_ns -= step_ns
            if self._segment_left_ns == 0:
                self._next_segment()
        self._cursor_ns = cursor
        window_start = cursor - UTIL_WINDOW_NS
        recent = self._recent
        while recent and recent[0][1] <= window_start:
            if recent.popleft()[2] != 1.0:
                self._recent_not_busy -= 1
            self._recent_busy_ns.popleft()

    def utilization_pct(self) -> float:
        """Percent of the trailing window in which a kernel ran."""
        cursor = self._cursor_ns
        span = cursor if cursor < UTIL_WINDOW_NS else UTIL_WINDOW_NS
        if span <= 0 or not self._recent:
            return 0.0
        if not self._recent_not_busy:
            # Busy all through: the stretches tile the window (from the start of the
            # run, or from before the window's start), every one counting its whole
            # length x 1.0 in integer nanoseconds, which add exactly: the sum below
            # is the span, to the last bit.
            return 100
        # The stretches are contiguous and end by the cursor, and advance() drops those
        # that end before the window: only the oldest can begin before it. The others
        # count whole, added in order (as one loop over them would), without a Python
        # loop: this runs for every GPU at every tick.
        first_start, first_end, first_busy = self._recent[0]
        window_start = cursor - UTIL_WINDOW_NS
        busy = (first_end - (first_start if first_start > window_start else window_start)
                ) * first_busy
        busy = functools.reduce(operator.add, itertools.islice(self._recent_busy_ns, 1, None),
                                busy)
        return round(100.0 * busy / span)

    def current_power_mw(self) -> float:
        return self._power_mw

    def take_interval(self) -> tuple[float, float, float] | None:
        """Interval averages (tensor, fp32, busy) in percent since the previous read.

        None on the first read, as NVML GPM needs two samples.
        """
        previous = self._last_read_ns
        self._last_read_ns = self._cursor_ns
        span = self._cursor_ns - previous if previous is not None else 0
        integrals = (self._tensor_integral, self._fp32_integral, self._busy_integral)
        self._tensor_integral = self._fp32_integral = self._busy_integral = 0.0
        if previous is None or span <= 0:
            return None
        noise = self._workload.activity_noise_pct
        rand = self._noise.random
        out = []
        for integral in integrals:
            pct = 100.0 * integral / span + noise * (2.0 * rand() - 1.0)
            # min(100, max(0, pct)) exactly (NaN and -0.0 included), without the calls.
            pct = pct if pct > 0.0 else 0.0
            out.append(pct if pct < 100.0 else 100.0)
        return out[0], out[1], out[2]

    def forget_interval(self) -> None:
        """Drop the interval since the last read: the GPU was not read (it was lost), and
        a re-acquired GPU's GPM starts over, so its next read has no interval either."""
        self._last_read_ns = None
        self._tensor_integral = self._fp32_integral = self._busy_integral = 0.0

    @property
    def sm_clock_mhz(self) -> float:
        return self._segment.sm_clock_mhz


class SimulatedProcessInspector:
    """What ``/proc`` would say about the simulator's fake pids (a ``ProcessInspector``).

    Every method returns None for a pid no job owns, as the real inspector does for a
    process that has exited.
    """

    def __init__(self, jobs_by_pid: Mapping[int, SimJob]) -> None:
        self._jobs = dict(jobs_by_pid)

    def environ(self, pid: int) -> Mapping[str, str] | None:
        job = self._jobs.get(pid)
        return dict(job.env) if job is not None else None

    def cgroup(self, pid: int) -> str | None:
        job = self._jobs.get(pid)
        return job.cgroup if job is not None else None

    def username(self, pid: int) -> str | None:
        job = self._jobs.get(pid)
        return job.user if job is not None else None

    def cmdline(self, pid: int) -> Sequence[str] | None:
        job = self._jobs.get(pid)
        return job.cmdline if job is not None else None

    def pid_namespace(self, pid: int) -> tuple[int, int] | None:
        return None  # the simulator's pids live in no namespace of their own


def default_sim_job(workload: Workload, n_gpus: int) -> SimJob:
    """The one job on every GPU when no jobs are scripted: the run ``sim-run``."""
    env = {
        "FLOPLEDGER_RUN_ID": "sim-run",
        "FLOPLEDGER_MODEL": "sim-model",
        "FLOPLEDGER_CATEGORY": "pre-training",
    }
    if workload.declared_precision is not None:
        env["FLOPLEDGER_PRECISION"] = workload.declared_precision
    return SimJob(env=env, gpus=tuple(range(n_gpus)), cmdline=("python", "train.py"))


class SimulatedSource:
    """Virtual GPUs of one model from the spec table, all running one workload.

    Args:
        specs: the GPU spec table.
        gpu_model: spec-table key of the simulated GPUs.
        n_gpus: how many GPUs.
        workload: what they run.
        seed: makes the segment streams and noise reproducible.
        clock: where time comes from; a :class:`VirtualClock` makes the run
            reproducible to the nanosecond.
        jobs: who the GPUs' processes are and when they run (see :class:`SimJob`);
            None: one process per GPU for the whole run, from :func:`default_sim_job`.
            A GPU with no active job reports no process but keeps running its workload.
        epoch_wall_ns: anchor the workload to the wall clock: simulated time is the time
            since this instant, so an agent restarted after a crash finds the GPUs
            where they would really be, having worked meanwhile. The ground truth then
            counts from the epoch. None: simulated time starts at the first read.

    Raises:
        SourceError: for an unknown GPU model, a precision the GPU lacks, or a job or
            the workload's ``lost_gpu`` on a GPU index outside ``0..n_gpus-1``.
    """

    def __init__(
        self,
        specs: SpecTable,
        gpu_model: str,
        n_gpus: int,
        workload: Workload,
        seed: int = 1,
        clock: Clock | None = None,
        jobs: Sequence[SimJob] | None = None,
        epoch_wall_ns: int | None = None,
    ) -> None:
        if gpu_model not in specs:
            raise SourceError(f"unknown simulated GPU model {gpu_model!r}; see {specs.path}")
        self.jobs: tuple[SimJob, ...] = (
            tuple(jobs) if jobs is not None else (default_sim_job(workload, n_gpus),)
        )
        stride = max(SIM_JOB_PID_STRIDE, n_gpus)
        self._jobs_by_pid: dict[int, SimJob] = {}
        # Per GPU, (pid, job) of every job that ever runs there, in job order.
        self._gpu_jobs: list[list[tuple[int, SimJob]]] = [[] for _ in range(n_gpus)]
        for j, job in enumerate(self.jobs):
            for g in job.gpus:
                if not 0 <= g < n_gpus:
                    raise SourceError(
                        f"simulated job {j} runs on GPU {g}, but there are {n_gpus} GPUs "
                        f"(indices 0..{n_gpus - 1})"
                    )
                pid = SIM_PID_BASE + j * stride + g
                if pid in self._jobs_by_pid:  # a GPU listed twice: still one process
                    continue
                self._jobs_by_pid[pid] = job
                self._gpu_jobs[g].append((pid, job))
        if workload.lost_gpu >= n_gpus:
            raise SourceError(f"the simulated workload loses GPU {workload.lost_gpu}, but "
                              f"there are {n_gpus} GPUs (indices 0..{n_gpus - 1})")
        self.workload = workload
        self._spec = specs[gpu_model]
        self._clock: Clock = clock or RealClock()
        self._gpus = [SimulatedGpu(i, self._spec, workload, seed) for i in range(n_gpus)]
        kind = ActivityKind.GPM if self._spec.gpm else ActivityKind.NONE
        self._devices = tuple(
            DeviceInfo(
                index=i,
                uuid=sim_gpu_uuid(seed, i),
                name=f"{self._spec.name} (simulated)",
                spec_key=self._spec.key,
                max_sm_clock_mhz=self._spec.max_sm_clock_mhz,
                activity_kind=kind,
                source="simulated",
            )
            for i in range(n_gpus)
        )
        # When jobs start or end (simulated seconds), and per GPU the processes last
        # reported with what they were built from (the utilization and the count of
        # edges passed): unchanged from tick to tick, mostly.
        self._job_edges_s = sorted({t for job in self.jobs
                                    for t in (job.start_s, job.end_s) if t is not None})
        self._processes: list[tuple[tuple[float, int], tuple[GpuProcess, ...]]] = [
            ((-1.0, -1), ()) for _ in range(n_gpus)]
        self._origin_ns: int | None = None
        self._epoch_wall_ns = epoch_wall_ns
        self._next_stall_s = workload.sampler_stall_every_s or float("inf")

    @property
    def kind(self) -> str:
        return "simulated"

    def devices(self) -> Sequence[DeviceInfo]:
        return self._devices

    def process_inspector(self) -> ProcessInspector:
        """An inspector that answers for this source's fake pids from the job definitions."""
        return SimulatedProcessInspector(self._jobs_by_pid)

    def _maybe_stall(self, elapsed_ns: int) -> None:
        # A sampler stall (a hung NVML call, a descheduled agent) is something that
        # happens to the agent, not the GPU: time passes while nobody reads.
        if elapsed_ns / 1e9 < self._next_stall_s:
            return
        self._next_stall_s += self.workload.sampler_stall_every_s
        stall_ns = round(self.workload.sampler_stall_s * 1e9)
        if isinstance(self._clock, VirtualClock):
            self._clock.advance_ns(stall_ns)
        else:
            time.sleep(stall_ns / 1e9)

    def read(self) -> SampleBatch:
        # Here, not at the top: ``flopledger gpus`` lists the simulated GPUs without it.
        import numpy as np

        now_ns = self._clock.monotonic_ns()
        if self._origin_ns is None:
            since_epoch = 0
            if self._epoch_wall_ns is not None:
                since_epoch = max(0, self._clock.wall_ns() - self._epoch_wall_ns)
                self._next_stall_s = _next_multiple(
                    since_epoch / 1e9, self.workload.sampler_stall_every_s)
            self._origin_ns = now_ns - since_epoch
        self._maybe_stall(now_ns - self._origin_ns)
        now_ns = self._clock.monotonic_ns()
        elapsed_ns = now_ns - self._origin_ns
        n = len(self._gpus)
        wall_ns = self._clock.wall_ns()
        gpm = self._spec.gpm
        int8 = self.workload.precision == "int8"
        lost_gpu = self.workload.lost_gpu
        throttled_below = self._spec.max_sm_clock_mhz - 100
        # Rows of Python floats (FLOAT_FIELDS order, then the ground truth), made arrays
        # in one go: this runs at every tick, and each NumPy call (item stores above
        # all) costs far more than the Python around it.
        rows: list[tuple[float, ...]] = []
        up: list[bool] = []
        throttle: list[int] = []
        processes: list[tuple[GpuProcess, ...]] = []
        elapsed_s = elapsed_ns / 1e9
        phase = bisect.bisect_right(self._job_edges_s, elapsed_s)
        for i, gpu in enumerate(self._gpus):
            gpu.advance(elapsed_ns)
            truth = gpu.true_flop
            if i == lost_gpu and self.workload.lost_at(i, elapsed_s):
                # What NVML gives for a lost GPU: up=False, every field unknown, no
                # processes.
                gpu.forget_interval()
                up.append(False)
                rows.append((*_UNKNOWN_ROW, truth))
                throttle.append(-1)
                processes.append(())
                continue
            clock_mhz = gpu.sm_clock_mhz
            util = float(gpu.utilization_pct())
            interval = gpu.take_interval()
            gpm_row = _UNKNOWN_GPM
            if gpm and interval is not None:
                tensor, fp32, busy = interval
                gpm_row = (tensor, 0.0 if int8 else tensor, tensor if int8 else 0.0, 0.0, 0.0,
                           0.0, fp32, 0.0, busy, busy * 0.5)
            rows.append((clock_mhz, util, *gpm_row, float(int(gpu.energy_mj)),
                         gpu.current_power_mw(), truth))
            up.append(True)
            # SW power cap (0x4) while throttled, as NVML's clock-event reasons say.
            throttle.append(0x4 if clock_mhz < throttled_below else 0)
            processes.append(self._processes_of(i, util, phase, elapsed_s))
        columns = np.array(list(zip(*rows, strict=True)), dtype=np.float64).reshape(
            len(FLOAT_FIELDS) + 1, n)
        ints = np.array((throttle, [now_ns] * n), dtype=np.int64)
        block = columns[:-1]
        return SampleBatch(
            timestamp_ns=ints[1],
            wall_time_ns=wall_ns,
            up=np.array(up, dtype=np.bool_),
            throttle_reasons=ints[0],
            processes=tuple(processes),
            sim_true_flop_total=columns[-1],
            float_block=block,
            **dict(zip(FLOAT_FIELDS, block, strict=True)),
        )

    def _processes_of(self, i: int, util: float, phase: int,
                      elapsed_s: float) -> tuple[GpuProcess, ...]:
        """GPU ``i``'s processes: one per active job, its share of ``util``. Jobs start
        and end only at the edges, so between two (one ``phase``) the same ones run."""
        made_of, processes = self._processes[i]
        if made_of != (util, phase):
            processes = tuple([GpuProcess(pid=pid, sm_util_pct=job.sm_share * util)
                               for pid, job in self._gpu_jobs[i] if job.active_at(elapsed_s)])
            self._processes[i] = ((util, phase), processes)
        return processes

    def close(self) -> None:
        """Nothing to release."""


def _next_multiple(t_s: float, every_s: float) -> float:
    """The first multiple of ``every_s`` after ``t_s`` (infinity for 0: never)."""
    if every_s <= 0:
        return float("inf")
    return (int(t_s // every_s) + 1) * every_s
