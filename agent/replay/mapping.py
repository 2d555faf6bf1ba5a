"""Which run each replayed sample belongs to: a mapping file, labels, or nobody.

Precedence per sample: the first ``[[gpu]]`` rule of the mapping file that matches its
GPU and time; else the run the recording's labels name (see
:mod:`agent.replay.readers.promseries`; a trace's recorded attribution); else ``unattributed``,
which is still accounted.

The mapping file (TOML)::

    [runs.llama-pretrain]            # metadata of a run, named here or by labels
    model = "llama-70b"
    category = "pre-training"
    precision = "bf16"               # also: recompute, recompute_factor, base_models
    plan = { gpus = 512, tokens = 2e12 }

    [[gpu]]                          # a rule; the first that matches a sample wins
    uuid = "GPU-1b4e..."             # or index = 3, pci = "00000000:18:00.0",
    run = "llama-pretrain"           # host = "node-7" (with index), or all = true
    from = 2026-11-28T12:00:00Z      # optional, inclusive (TOML datetime, ISO text or
    until = 2026-11-29T00:00:00Z     # Unix seconds); optional, exclusive
    model = "llama-70b"              # optional: run metadata inline

Every problem in the file is reported at once, with its key.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.accounting.runmeta import build_run_meta
from agent.accounting.runs import GpuAttribution, GpuShare, RunMeta
from agent.configfile import Problems, read_toml
from agent.replay.readers.base import GpuKey
from agent.sources.base import BoolArray, IntArray

_META = frozenset({"model", "category", "precision", "recompute", "recompute_factor",
                   "base_models", "plan"})
_MATCH = frozenset({"uuid", "index", "pci", "host", "all"})
_RULE_KEYS = _MATCH | _META | {"run", "from", "until"}
_NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[gpu]]`` entry: which GPUs, when, and the run."""

    uuid: str | None
    index: int | None
    pci: str | None
    host: str | None
    everything: bool
    start_ns: int
    end_ns: int
    attribution: GpuAttribution

    def matches(self, key: GpuKey) -> bool:
        if self.everything:
            return True
        if self.uuid is not None and key.uuid != self.uuid:
            return False
        if self.pci is not None and key.key != f"pci:{self.pci}":
            return False
        if self.index is not None and key.index != self.index:
            return False
        return self.host is None or key.host == self.host


def _time_ns(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return round(value * 1e9) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        ns: int = (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
        return ns
    return None


def _meta_values(table: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in table.items() if k in _META and k != "plan"}
    plan = table.get("plan", {})
    if isinstance(plan, dict):
        out.update({f"plan.{k}": v for k, v in plan.items()})
    return out


class RunMapping:
    """A parsed mapping file.

    Raises:
        ConfigError: for an unreadable file or any bad key (all of them at once).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        problems = Problems(path)
        doc = read_toml(path, "a readable TOML mapping file")
        for key in doc:
            if key not in ("runs", "gpu"):
                problems.add(key, "one of [runs.<id>] or [[gpu]]")
        raw_runs = doc.get("runs", {})
        if not isinstance(raw_runs, dict) or not all(isinstance(v, dict)
                                                     for v in raw_runs.values()):
            problems.add("runs", "tables [runs.<run id>] of run metadata")
            raw_runs = {}
        self._declared: dict[str, dict[str, Any]] = {}
        for run_id, table in raw_runs.items():
            for key in table:
                if key not in _META:
                    problems.add(f"runs.{run_id}.{key}", f"one of {sorted(_META)}")
            self._declared[run_id] = _meta_values(table)
        self.runs: dict[str, RunMeta] = {}
        for run_id in self._declared:
            self._run(run_id, {}, f"runs.{run_id}", problems)
        raw_rules = doc.get("gpu", [])
        if not isinstance(raw_rules, list):
            problems.add("gpu", "an array of tables [[gpu]]")
            raw_rules = []
        self.rules: list[Rule] = []
        for i, table in enumerate(raw_rules):
            rule = self._rule(table, f"gpu[{i}]", problems)
            if rule is not None:
                self.rules.append(rule)
        problems.raise_if_any()

    def _run(self, run_id: str, inline: dict[str, Any], where: str,
             problems: Problems) -> RunMeta:
        values = {**self._declared.get(run_id, {}), **inline}
        run, warnings = build_run_meta(run_id, "replay-mapping", job_file_meta=values,
                                       job_file_label=where)
        for warning in warnings:
            problems.add(where, warning)
        known = self.runs.get(run_id)
        if known is not None and inline and known != run:
            problems.add(where, f"the same metadata as the other declarations of run {run_id!r}")
        self.runs.setdefault(run_id, run)
        return self.runs[run_id]

    def _rule(self, table: Any, where: str, problems: Problems) -> Rule | None:
        if not isinstance(table, dict):
            problems.add(where, "a table")
            return None
        before = len(problems.items)
        for key in table:
            if key not in _RULE_KEYS:
                problems.add(f"{where}.{key}", f"one of {sorted(_RULE_KEYS)}")
        run_id = table.get("run")
        if not isinstance(run_id, str) or not run_id.strip():
            problems.add(f"{where}.run", "a run id")
            run_id = ""
        if not _MATCH & table.keys():
            problems.add(where, f"at least one of {sorted(_MATCH)}")
        for key, kind in (("uuid", str), ("pci", str), ("host", str), ("all", bool)):
            value = table.get(key)
            if value is not None and not isinstance(value, kind):
                problems.add(f"{where}.{key}", f"a {kind.__name__}")
        index = table.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)
                                  or index < 0):
            problems.add(f"{where}.index", "a GPU index >= 0")
        start = _time_ns(table["from"]) if "from" in table else 0
        end = _time_ns(table["until"]) if "until" in table else _NEVER
        if start is None:
            problems.add(f"{where}.from", "a date-time (or Unix seconds)")
        if end is None:
            problems.add(f"{where}.until", "a date-time (or Unix seconds)")
        if start is not None and end is not None and end <= start:
            problems.add(f"{where}.until", "a time after `from`")
        inline = _meta_values({k: v for k, v in table.items() if k in _META})
        if len(problems.items) > before:
            return None
        run = self._run(run_id.strip(), inline, where, problems)
        return Rule(uuid=table.get("uuid"), index=table.get("index"), pci=table.get("pci"),
                    host=table.get("host"), everything=bool(table.get("all", False)),
                    start_ns=start or 0, end_ns=end if end is not None else _NEVER,
                    attribution=GpuAttribution((GpuShare(run, 1.0),), "single"))

    def assign(self, gpu: IntArray, ts: IntArray, applies: list[BoolArray]) -> IntArray:
        """Per sample, the index of the first rule that matches it, -1 if none.

        ``applies[r][g]`` says whether rule ``r`` matches GPU ``g``.
        """
        out = np.full(gpu.shape[0], -1, dtype=np.int64)
        for r, rule in enumerate(self.rules):
            if not applies[r].any():
                continue
            hit = applies[r][gpu] & (out < 0)
            if rule.start_ns > 0 or rule.end_ns < _NEVER:
                hit &= (ts >= rule.start_ns) & (ts < rule.end_ns)
            out[hit] = r
        return out
