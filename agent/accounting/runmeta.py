"""Run metadata: what a process's environment, its run file and the Slurm prolog's job
file say about the run it belongs to, and the Kubernetes pod it runs in.

Run metadata comes from, later overriding earlier: the Slurm job file's ``key=value``
lines, the TOML file named by ``FLOPLEDGER_RUN_FILE``, then ``FLOPLEDGER_MODEL``,
``_CATEGORY``, ``_PRECISION``, ``_RECOMPUTE``, ``_RECOMPUTE_FACTOR``, ``_BASE_MODELS``
and ``FLOPLEDGER_PLAN_<KEY>``. A bad value is ignored with a warning: a typo in a job's
environment must never stop the agent. The same validation serves the config's static
rules (:mod:`agent.accounting.attribution`) and replay mappings. Run ids and model names
follow :mod:`agent.accounting.names`: a run id that breaks its rules (the reserved
``unattributed``, a control character, over-long, empty) claims nothing, and the
process's compute stays unattributed.
"""

from __future__ import annotations

import logging
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.accounting.names import MAX_NAME_CHARS, name_problem, printable, run_id_problem
from agent.accounting.runs import (
    CATEGORIES,
    RECOMPUTE_FACTORS,
    RECOMPUTE_MODES,
    UNATTRIBUTED,
    RunMeta,
)
from agent.sources.base import DeviceInfo
from agent.sources.specs import MATMUL_PRECISIONS

log = logging.getLogger(__name__)

DEFAULT_SLURM_JOB_DIR = Path("/run/flopledger/slurm")
ENV_PREFIX = "FLOPLEDGER_"
_ENV_META = {f"{ENV_PREFIX}{k.upper()}": k for k in (
    "model", "category", "precision", "recompute", "recompute_factor", "base_models")}
META_KEYS = frozenset(_ENV_META.values())
# Written by configs/slurm/prolog.sh for people reading the file; not run metadata.
_SLURM_INFO_KEYS = frozenset({"user", "account", "name"})
_SLURM_JOB_ID = re.compile(r"[\w.+-]+")
# cgroup v1: .../kubepods/burstable/pod<uid>/<container>; v2 (systemd driver):
# .../kubepods-burstable-pod<uid with _ for ->.slice/...; Guaranteed pods lack the QoS
# level. Static pods' UIDs are 32 hex digits without separators.
_K8S_POD = re.compile(
    r"kubepods[^\n]*?[/-]pod([0-9a-fA-F]{8}[-_]?[0-9a-fA-F]{4}[-_]?[0-9a-fA-F]{4}"
    r"[-_]?[0-9a-fA-F]{4}[-_]?[0-9a-fA-F]{12})(?![0-9a-fA-F])"
)

_NAME_RULE = f"(at most {MAX_NAME_CHARS} characters, no control characters)"

# (key, bad value, what was expected); the value is None when the key is missing.
_Complain = Callable[[str, object, str], None]
_Entry = tuple[object, str]  # (value, label naming where it came from)


def _finite(value: object) -> float | None:
    """A finite float from a number or numeric text, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def meta_fields(values: Mapping[str, _Entry], plan: Mapping[str, _Entry],
                label_of: Callable[[str], str], complain: _Complain) -> dict[str, Any]:
    """Validate raw metadata into :class:`RunMeta` keyword arguments, dropping bad ones."""
    out: dict[str, Any] = {}

    def choice(key: str, allowed: Sequence[str]) -> str | None:
        if key not in values:
            return None
        value, label = values[key]
        text = value.strip().lower() if isinstance(value, str) else None
        if text not in allowed:
            complain(label, value, f"one of {list(allowed)}")
            return None
        return text

    if "model" in values:
        value, label = values["model"]
        if isinstance(value, str) and (not value.strip() or name_problem(value.strip()) is None):
            out["model"] = value.strip()
        else:
            complain(label, value, f"a model name {_NAME_RULE}")
    if (category := choice("category", CATEGORIES)) is not None:
        out["category"] = category
    if (precision := choice("precision", sorted(MATMUL_PRECISIONS))) is not None:
        out["precision"] = precision
    declared_mode = choice("recompute", RECOMPUTE_MODES)
    mode = declared_mode or "none"
    out["recompute_declared"] = declared_mode is not None
    factor_entry = values.get("recompute_factor")
    if mode == "selective":
        # Selective recomputation's overhead depends on which layers are recomputed;
        # only the run can say. Without it 1.0 counts every hardware FLOP as model FLOP.
        factor = _finite(factor_entry[0]) if factor_entry else None
        if factor is None or factor < 1:
            complain(factor_entry[1] if factor_entry else label_of("recompute_factor"),
                     factor_entry[0] if factor_entry else None,
                     "a number >= 1 (hardware FLOP per model FLOP) with recompute = "
                     "selective; assuming 1.0")
            factor = 1.0
        out["recompute"], out["recompute_factor"] = mode, factor
    else:
        out["recompute"], out["recompute_factor"] = mode, RECOMPUTE_FACTORS[mode]
        if factor_entry is not None:
            complain(factor_entry[1], factor_entry[0],
                     "to be set only with recompute = selective")
    if "base_models" in values:
        value, label = values["base_models"]
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, list) and all(
                isinstance(m, str) and (not m.strip() or name_problem(m.strip()) is None)
                for m in items):
            out["base_models"] = tuple(m.strip() for m in items if m.strip())
        else:
            complain(label, value, "a list of model names (or one comma-separated string) "
                     f"{_NAME_RULE}")
    parsed_plan: dict[str, float | str] = {}
    for key, (value, label) in plan.items():
        number = _finite(value)
        if number is not None:
            parsed_plan[key] = number
        elif isinstance(value, str):
            parsed_plan[key] = value.strip()
        else:
            complain(label, value, "a number or a string")
    if parsed_plan:
        out["plan"] = parsed_plan
    return out


def _env_label(key: str) -> str:
    return f"{ENV_PREFIX}{key.upper()}"


def _read_run_file(path_text: str, values: dict[str, _Entry], plan: dict[str, _Entry],
                   complain: _Complain) -> None:
    """Add the run file's keys to ``values``/``plan``; problems go to ``complain``."""
    path = Path(path_text)
    label = f"{ENV_PREFIX}RUN_FILE"
    # Relative to the *process's* working directory, which the agent does not know.
    if not path.is_absolute():
        complain(label, path_text, "an absolute path to a TOML run file")
        return
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        complain(label, path_text, f"a readable TOML run file ({e})")
        return
    for key, value in doc.items():
        if key == "plan":
            if isinstance(value, dict):
                plan.update({str(k).lower(): (v, f"{path}: plan.{k}") for k, v in value.items()})
            else:
                complain(f"{path}: plan", value, "a table of plan fields")
        elif key in META_KEYS:
            values[key] = (value, f"{path}: {key}")
        else:
            complain(f"{path}: {key}", value, f"one of {sorted(META_KEYS | {'plan'})}")


# Ids already warned about by claims_nothing(), a bounded number of them.
_REFUSED_LOGGED: set[str] = set()
_REFUSED_LOGGED_MAX = 1000


def claims_nothing(run: RunMeta) -> bool:
    """True if ``run`` names an id no run may claim (see :mod:`agent.accounting.names`),
    for sources that build runs from ids alone (replayed labels): the caller then counts
    the compute as unattributed. A warning is logged once per id."""
    problem = run_id_problem(run.run_id)
    if problem is None:
        return False
    key = run.run_id[:MAX_NAME_CHARS + 1]
    if key not in _REFUSED_LOGGED and len(_REFUSED_LOGGED) < _REFUSED_LOGGED_MAX:
        _REFUSED_LOGGED.add(key)
        log.warning("run id '%s' %s: it claims nothing, and the compute stays unattributed",
                    printable(run.run_id), problem)
    return True


def build_run_meta(run_id: str, via: str, env: Mapping[str, str] | None = None,
                   job_file_meta: Mapping[str, str] | None = None,
                   job_file_label: str = "") -> tuple[RunMeta, list[str]]:
    """The run's metadata from a Slurm job file, the run file and the environment.

    Returns:
        the run, and one warning line per ignored value (empty when all was valid). A
        ``run_id`` that no run may claim (:func:`~agent.accounting.names.run_id_problem`)
        gives :data:`UNATTRIBUTED` and one warning saying why, its metadata unread.
    """
    warnings: list[str] = []
    problem = run_id_problem(run_id)
    if problem is not None:
        return UNATTRIBUTED, [f"run id '{printable(run_id)}' {problem}: it claims nothing, "
                              "and the compute stays unattributed"]

    def complain(label: str, value: object, expected: str) -> None:
        shown = "missing" if value is None else f"={printable(repr(value))}"
        warnings.append(f"{printable(label)}{shown}: expected {expected}; ignored")

    values: dict[str, _Entry] = {}
    plan: dict[str, _Entry] = {}
    for key, value in (job_file_meta or {}).items():
        if key in META_KEYS:
            values[key] = (value, f"{job_file_label}: {key}")
        elif key.startswith("plan."):
            plan[key[5:].lower()] = (value, f"{job_file_label}: {key}")
        elif key not in _SLURM_INFO_KEYS:
            complain(f"{job_file_label}: {key}", value, f"one of {sorted(META_KEYS)}")
    env = env or {}
    if run_file := env.get(f"{ENV_PREFIX}RUN_FILE", "").strip():
        _read_run_file(run_file, values, plan, complain)
    for name, value in env.items():
        if name in _ENV_META:
            values[_ENV_META[name]] = (value, name)
        elif name.startswith(f"{ENV_PREFIX}PLAN_") and len(name) > len(ENV_PREFIX) + 5:
            plan[name[len(ENV_PREFIX) + 5:].lower()] = (value, name)
    fields_ = meta_fields(values, plan, _env_label, complain)
    return RunMeta(run_id=run_id, via=via, **fields_), warnings


def kubernetes_pod_uid(cgroup_text: str) -> str | None:
    """The pod UID in ``/proc/PID/cgroup`` text (cgroup v1 or v2), lower case with dashes."""
    match = _K8S_POD.search(cgroup_text)
    return match.group(1).replace("_", "-").lower() if match else None


@dataclass(frozen=True, slots=True)
class SlurmJobFile:
    """What the Slurm prolog wrote for one GPU: the job id and ``key=value`` lines."""

    job_id: str
    meta: dict[str, str] = field(hash=False)
    path: Path


def read_slurm_job_file(job_dir: Path, device: DeviceInfo) -> SlurmJobFile | None:
    """The prolog's file for a GPU, named by its index or else its UUID.

    Returns:
        the first of the two that is readable and starts with a job id, else None.
    """
    for name in (str(device.index), device.uuid):
        path = job_dir / name
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        job_id = lines[0].strip() if lines else ""
        if not _SLURM_JOB_ID.fullmatch(job_id):
            continue
        meta = {}
        for line in lines[1:]:
            key, sep, value = line.partition("=")
            if sep and key.strip():
                meta[key.strip()] = value.strip()
        return SlurmJobFile(job_id, meta, path)
    return None
