"""Which training run each GPU's compute processes belong to, and how a GPU is split.

Per process, the first of these that yields a run id wins:

0. the trainer's own word: a process that wrote to the client spool (``attach``,
   ``declare`` or ``progress``, see docs/client-spool.md) is bound to the run it named
   (``via="client"``), matched by its PID, or by its PID namespace and the PID it has
   there when it runs in a container; a ``FLOPLEDGER_RUN_ID`` naming another run is
   overruled, with a warning;
1. ``FLOPLEDGER_RUN_ID`` in the process environment (``via="env"``);
2. Slurm: ``SLURM_JOB_ID`` in the environment (run ``slurm-<jobid>``, ``via="slurm"``),
   else the job file the Slurm prolog (``configs/slurm/prolog.sh``) wrote for the GPU,
   named by GPU index or UUID (``via="slurm-file"``);
3. torchrun: ``TORCHELASTIC_RUN_ID`` (run ``torchrun-<id>``, ``via="torchrun"``);
4. Kubernetes: the pod UID in ``/proc/PID/cgroup`` (run ``k8s-pod-<uid>``);
5. static rules from the config (by GPU, user, command line; ``via="static"``);

else the process is :data:`UNATTRIBUTED`, which is still accounted, never dropped.
Each run's metadata is read as :mod:`agent.accounting.runmeta` describes; a bad value
is ignored with a warning logged once per run.

A run id no run may claim (:mod:`agent.accounting.names`: the reserved
``unattributed``, a control character, over 200 characters) and an empty
``FLOPLEDGER_RUN_ID`` leave the process unattributed, with a warning logged once per
id; later sources do not get a say, since the process did name itself. A static rule
naming such an id is a configuration error.

A GPU shared by several runs is split by each process's SM utilization where the driver
reports it for every process, else evenly per run.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.accounting.names import MAX_NAME_CHARS, printable, run_id_problem
from agent.accounting.runmeta import (
    DEFAULT_SLURM_JOB_DIR,
    ENV_PREFIX,
    META_KEYS,
    build_run_meta,
    kubernetes_pod_uid,
    meta_fields,
    read_slurm_job_file,
)
from agent.accounting.runs import UNATTRIBUTED, GpuAttribution, GpuShare, RunMeta
from agent.configfile import Problems, check_keys
from agent.sources.base import DeviceInfo, GpuProcess, ProcessInspector, SampleBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StaticRule:
    """A config rule naming a run. Criteria that are None are not checked.

    A rule with only ``gpus`` claims those GPUs outright, even with no visible process
    (a container in another PID namespace); one with ``user`` or ``cmdline_regex``
    matches processes (``re.search`` over the argv joined by spaces).
    """

    run: RunMeta
    gpus: tuple[int, ...] | None = None
    user: str | None = None
    cmdline_regex: str | None = None


@dataclass(frozen=True, slots=True)
class AttributionSettings:
    """The ``[attribution]`` table. ``refresh_s``: seconds before a pid is re-resolved."""

    slurm_job_dir: Path = DEFAULT_SLURM_JOB_DIR
    refresh_s: float = 10.0
    rules: tuple[StaticRule, ...] = ()


# --- config ---------------------------------------------------------------------------

_RULE_KEYS = frozenset({"run", "plan", "gpus", "user", "cmdline_regex", *META_KEYS})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_rule(problems: Problems, table: dict[str, Any], where: str) -> StaticRule | None:
    before = len(problems.items)
    check_keys(problems, table, _RULE_KEYS, where)
    run_id = table.get("run")
    if not isinstance(run_id, str) or not run_id.strip():
        problems.add(f"{where}.run", "a run id string")
        run_id = ""
    elif (problem := run_id_problem(run_id.strip())) is not None:
        problems.add(f"{where}.run", f"a run id that can be claimed (this one {problem})")
    plan_table = table.get("plan", {})
    if not isinstance(plan_table, dict):
        problems.add(f"{where}.plan", "a table of plan fields")
        plan_table = {}
    fields_ = meta_fields(
        {k: (v, f"{where}.{k}") for k, v in table.items() if k in META_KEYS},
        {str(k).lower(): (v, f"{where}.plan.{k}") for k, v in plan_table.items()},
        lambda key: f"{where}.{key}",
        lambda label, _value, expected: problems.add(label, expected),
    )
    gpus = table.get("gpus")
    if gpus is not None and (
        not isinstance(gpus, list) or not gpus
        or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus)
    ):
        problems.add(f"{where}.gpus", "a non-empty list of GPU indices >= 0")
    user = table.get("user")
    if user is not None and (not isinstance(user, str) or not user):
        problems.add(f"{where}.user", "a user name")
    regex = table.get("cmdline_regex")
    if regex is not None:
        if not isinstance(regex, str):
            problems.add(f"{where}.cmdline_regex", "a regular expression string")
        else:
            try:
                re.compile(regex)
            except re.error as e:
                problems.add(f"{where}.cmdline_regex", f"a valid regular expression ({e})")
    if gpus is None and user is None and regex is None:
        # A rule without criteria would swallow every unidentified process on the node;
        # [run] is the place for a node-wide default.
        problems.add(where, "at least one of gpus, user, cmdline_regex")
    if len(problems.items) > before:
        return None
    run = RunMeta(run_id=run_id.strip(), via="static", **fields_)
    return StaticRule(run=run, gpus=tuple(gpus) if gpus is not None else None,
                      user=user, cmdline_regex=regex)


def parse_attribution_config(raw: dict[str, Any], problems: Problems) -> AttributionSettings:
    """Validate the ``[attribution]`` table of a parsed config document.

    Args:
        raw: the whole parsed TOML document (the table is ``raw["attribution"]``).
        problems: where every bad key is reported, as ``attribution.rules[0].category``.

    Returns:
        the settings; a rule with any problem is left out, a bad scalar keeps its default.
    """
    d = AttributionSettings()
    table = raw.get("attribution", {})
    if not isinstance(table, dict):
        problems.add("attribution", "a table")
        return d
    check_keys(problems, table, ("slurm_job_dir", "refresh_s", "rules"), "attribution")
    job_dir = table.get("slurm_job_dir", str(d.slurm_job_dir))
    if not isinstance(job_dir, str) or not job_dir:
        problems.add("attribution.slurm_job_dir", "a directory path")
        job_dir = str(d.slurm_job_dir)
    refresh = table.get("refresh_s", d.refresh_s)
    if not _is_number(refresh) or refresh <= 0:
        problems.add("attribution.refresh_s", "a number of seconds > 0")
        refresh = d.refresh_s
    raw_rules = table.get("rules", [])
    if not isinstance(raw_rules, list):
        problems.add("attribution.rules", "an array of tables ([[attribution.rules]])")
        raw_rules = []
    rules: list[StaticRule] = []
    claimed: dict[int, int] = {}
    for i, rule_table in enumerate(raw_rules):
        where = f"attribution.rules[{i}]"
        if not isinstance(rule_table, dict):
            problems.add(where, "a table")
            continue
        rule = _parse_rule(problems, rule_table, where)
        if rule is None:
            continue
        if rule.gpus is not None and rule.user is None and rule.cmdline_regex is None:
            for g in rule.gpus:
                if g in claimed:
                    problems.add(f"{where}.gpus",
                                 f"GPUs not claimed outright by another rule "
                                 f"(GPU {g} is in attribution.rules[{claimed[g]}])")
                claimed.setdefault(g, i)
        rules.append(rule)
    return AttributionSettings(slurm_job_dir=Path(job_dir), refresh_s=float(refresh),
                               rules=tuple(rules))


# --- the attributor -------------------------------------------------------------------


@dataclass(slots=True)
class _Facts:
    """What one read of a process gave; GPU-independent."""

    env: Mapping[str, str] | None
    primary: RunMeta | None  # FLOPLEDGER_RUN_ID or SLURM_JOB_ID: beats the job file
    fallback: RunMeta | None  # torchrun or Kubernetes: after the job file
    user: str | None
    cmdline: str | None


@dataclass(slots=True)
class _PidEntry:
    facts: _Facts
    read_ns: int
    runs: dict[int, RunMeta] = field(default_factory=dict)  # by GPU index


_NO_PROCESS = GpuAttribution((GpuShare(UNATTRIBUTED, 1.0),), "none")
# A binding whose process has been on no GPU for this long is dropped: the process has
# most likely ended, and its PID may come back as another process.
BINDING_IDLE_NS = 600 * 10**9
_FOREVER_NS = 2**63 - 1


def _own_pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


@dataclass(slots=True)
class _Binding:
    run_id: str
    seen_ns: int  # when it was bound or last seen on a GPU


class Attributor:
    """Maps every GPU's processes to runs, tick after tick.

    A pid's facts are read once and cached (a process's environment does not change
    after exec) and re-read after ``settings.refresh_s``, which also catches a pid
    reused by a new process; entries of pids gone from the batch are dropped.

    Args:
        settings: the ``[attribution]`` table.
        inspector: where process facts come from (``ProcInspector`` on a real node).
        clock_ns: monotonic nanoseconds for the cache (default ``time.monotonic_ns``).

    Raises:
        re.error: for a rule whose ``cmdline_regex`` does not compile.
    """

    def __init__(self, settings: AttributionSettings, inspector: ProcessInspector,
                 clock_ns: Callable[[], int] | None = None) -> None:
        self._settings = settings
        self._inspector = inspector
        self._clock_ns = clock_ns or time.monotonic_ns
        self._refresh_ns = round(settings.refresh_s * 1e9)
        self._rules = [(r, re.compile(r.cmdline_regex) if r.cmdline_regex else None)
                       for r in settings.rules]
        self._needs_identity = any(r.user or r.cmdline_regex for r in settings.rules)
        self._cache: dict[int, _PidEntry] = {}
        self._idle: dict[int, GpuAttribution] = {}
        self._last: dict[int, GpuAttribution] = {}
        self._warned: set[str] = set()
        # The client spool's bindings: (pid, None) for a PID as this agent sees it,
        # (pid, namespace inode) for one seen from inside a container.
        self._bound: dict[tuple[int, int | None], _Binding] = {}
        self._declared: dict[str, RunMeta] = {}
        self._own_ns = _own_pid_namespace()
        self._ns_cache: dict[int, tuple[int, int] | None] = {}
        # The last answer, the processes it was for, and until when it holds (the
        # first refresh of a pid it read): the same processes, no binding, nothing
        # declared since, give the same answer without working it out again.
        self._answer: tuple[tuple[tuple[GpuProcess, ...], ...],
                            list[GpuAttribution], int] | None = None

    def bind(self, pid: int, pid_ns: int | None, run_id: str) -> None:
        """Charge the GPUs of process ``pid`` (of PID namespace ``pid_ns``) to ``run_id``
        from now on: the process said so through the client spool."""
        key = (pid, None if pid_ns is None or pid_ns == self._own_ns else pid_ns)
        binding = self._bound.get(key)
        if binding is not None and binding.run_id == run_id:
            binding.seen_ns = self._clock_ns()
            return
        self._bound[key] = _Binding(run_id, self._clock_ns())
        self._forget_resolved()

    def declare(self, run: RunMeta) -> None:
        """What the trainer declared about its run: the metadata of every bound process."""
        if self._declared.get(run.run_id) != run:
            self._declared[run.run_id] = run
            self._forget_resolved()

    def _forget_resolved(self) -> None:
        self._answer = None
        for entry in self._cache.values():
            entry.runs.clear()

    def _bound_run(self, pid: int, entry: _PidEntry, now_ns: int) -> RunMeta | None:
        binding = self._bound.get((pid, None))
        if binding is None and any(ns is not None for _, ns in self._bound):
            if pid not in self._ns_cache:
                self._ns_cache[pid] = self._inspector.pid_namespace(pid)
            inside = self._ns_cache[pid]
            if inside is not None:
                binding = self._bound.get((inside[1], inside[0]))
        if binding is None:
            return None
        binding.seen_ns = now_ns
        run = self._declared.get(binding.run_id) or self._meta(binding.run_id, "client",
                                                               entry.facts.env)
        named = entry.facts.env.get(f"{ENV_PREFIX}RUN_ID") if entry.facts.env else None
        if named is not None and named.strip() != run.run_id:
            key = f"{pid}:{run.run_id[:MAX_NAME_CHARS]}"
            if key not in self._warned:
                self._warned.add(key)
                log.warning("pid %d: %sRUN_ID names run '%s', but the process declared "
                            "run '%s' through the client spool; its GPUs are charged to "
                            "the declared run", pid, ENV_PREFIX, printable(named.strip()),
                            printable(run.run_id))
        return run

    def attribute(
        self, devices: Sequence[DeviceInfo], batch: SampleBatch
    ) -> list[GpuAttribution]:
        """One attribution per device, in the order of ``devices`` (and the batch).

        Reads ``/proc`` (through the inspector) only for pids not seen within
        ``refresh_s``; the Slurm job directory only when such a pid has no identity
        of its own.
        """
        now_ns = self._clock_ns()
        answer = self._answer
        if (answer is not None and now_ns < answer[2] and not self._bound
                and len(answer[1]) == len(devices) and answer[0] == batch.processes):
            return list(answer[1])
        bound = bool(self._bound)
        seen: set[int] = set()
        out = []
        for pos, device in enumerate(devices):
            procs = batch.processes[pos] if pos < len(batch.processes) else ()
            if not procs:
                out.append(self._idle_gpu(device.index))
                continue
            runs: dict[str, RunMeta] = {}
            util: dict[str, float] = {}
            measured = True
            for proc in procs:
                seen.add(proc.pid)
                run = self._run_of(proc.pid, device, now_ns)
                if run.run_id not in runs:
                    runs[run.run_id] = run
                    util[run.run_id] = 0.0
                u = proc.sm_util_pct
                if u is None or not math.isfinite(u) or u < 0:
                    measured = False
                else:
                    util[run.run_id] += u
            attribution = _split(runs, util, measured)
            # Hand back the very object of the last tick when nothing changed, so the
            # accountant can tell "unchanged" by identity, cheaply, at every tick.
            previous = self._last.get(device.index)
            if previous == attribution:
                attribution = previous
            else:
                self._last[device.index] = attribution
            out.append(attribution)
        if len(self._cache) > len(seen):
            for pid in self._cache.keys() - seen:
                del self._cache[pid]
                self._ns_cache.pop(pid, None)
        if self._bound:
            for key in [k for k, b in self._bound.items()
                        if now_ns - b.seen_ns > BINDING_IDLE_NS]:
                del self._bound[key]
        if bound or self._bound:
            self._answer = None
        else:
            read_ns = [self._cache[pid].read_ns for pid in seen]
            self._answer = (batch.processes, out,
                            min(read_ns) + self._refresh_ns if read_ns else _FOREVER_NS)
        return list(out)

    def _idle_gpu(self, index: int) -> GpuAttribution:
        attribution = self._idle.get(index)
        if attribution is None:
            attribution = _NO_PROCESS
            for rule, _ in self._rules:
                if rule.gpus is not None and index in rule.gpus and not (
                        rule.user or rule.cmdline_regex):
                    attribution = GpuAttribution((GpuShare(rule.run, 1.0),), "single")
                    break
            self._idle[index] = attribution
        return attribution

    def _run_of(self, pid: int, device: DeviceInfo, now_ns: int) -> RunMeta:
        entry = self._cache.get(pid)
        if entry is None or now_ns - entry.read_ns >= self._refresh_ns:
            entry = _PidEntry(self._read_facts(pid), now_ns)
            self._cache[pid] = entry
        run = entry.runs.get(device.index)
        if run is None:
            run = (self._bound_run(pid, entry, now_ns) if self._bound else None) \
                or self._resolve(entry.facts, device)
            declared = self._declared.get(run.run_id)
            if declared is not None and declared is not run:
                # The trainer's declaration is about the run, whichever process of it
                # declared and however this one was found to belong to it.
                run = replace(declared, via=run.via)
            entry.runs[device.index] = run
        return run

    def _meta(self, run_id: str, via: str, env: Mapping[str, str] | None,
              job_file_meta: Mapping[str, str] | None = None, label: str = "") -> RunMeta:
        run, warnings = build_run_meta(run_id, via, env, job_file_meta, label)
        # Keyed by a prefix: a hostile id of a megabyte is not worth keeping whole.
        key = run_id[:MAX_NAME_CHARS + 1]
        if warnings and key not in self._warned:
            self._warned.add(key)
            if run is UNATTRIBUTED:
                log.warning("a process names its run through %s, but the %s", via,
                            warnings[0])
            else:
                log.warning("run %s: ignoring bad metadata: %s", printable(run_id),
                            "; ".join(warnings))
        return run

    def _read_facts(self, pid: int) -> _Facts:
        env = self._inspector.environ(pid)
        facts = _Facts(env=env, primary=None, fallback=None, user=None, cmdline=None)
        if env is not None:
            # Set but empty (a script's unset variable) is a process that named no run:
            # unattributed, not whatever Slurm or torchrun would say.
            if (run_id := env.get(f"{ENV_PREFIX}RUN_ID")) is not None:
                facts.primary = self._meta(run_id.strip(), "env", env)
                return facts
            if job := env.get("SLURM_JOB_ID", "").strip():
                facts.primary = self._meta(f"slurm-{job}", "slurm", env)
                return facts
            # torchrun's default --rdzv-id is the literal "none": shared by unrelated
            # runs, so it identifies nothing.
            torch_id = env.get("TORCHELASTIC_RUN_ID", "").strip()
            if torch_id and torch_id.lower() != "none":
                facts.fallback = self._meta(f"torchrun-{torch_id}", "torchrun", env)
                return facts
        cgroup = self._inspector.cgroup(pid)
        if cgroup is not None and (uid := kubernetes_pod_uid(cgroup)) is not None:
            facts.fallback = self._meta(f"k8s-pod-{uid}", "kubernetes", env)
            return facts
        if self._needs_identity:
            facts.user = self._inspector.username(pid)
            argv = self._inspector.cmdline(pid)
            facts.cmdline = " ".join(argv) if argv is not None else None
        return facts

    def _resolve(self, facts: _Facts, device: DeviceInfo) -> RunMeta:
        if facts.primary is not None:
            return facts.primary
        found = read_slurm_job_file(self._settings.slurm_job_dir, device)
        if found is not None:
            return self._meta(f"slurm-{found.job_id}", "slurm-file", facts.env, found.meta,
                              str(found.path))
        if facts.fallback is not None:
            return facts.fallback
        for rule, regex in self._rules:
            if rule.gpus is not None and device.index not in rule.gpus:
                continue
            if rule.user is not None and facts.user != rule.user:
                continue
            if regex is not None and (facts.cmdline is None or not regex.search(facts.cmdline)):
                continue
            return rule.run
        return UNATTRIBUTED


def _split(runs: Mapping[str, RunMeta], util: Mapping[str, float],
           measured: bool) -> GpuAttribution:
    """Weights per run: by summed SM utilization when every process has one, else even."""
    if len(runs) == 1:
        (run,) = runs.values()
        return GpuAttribution((GpuShare(run, 1.0),), "single")
    total = sum(util.values())
    if measured and total > 0:
        return GpuAttribution(
            tuple(GpuShare(run, util[rid] / total) for rid, run in runs.items()), "sm_util")
    weight = 1.0 / len(runs)
    return GpuAttribution(tuple(GpuShare(run, weight) for run in runs.values()), "even")
