"""Prometheus series -> sample fields, GPU identity and runs (dcgm-exporter and our own).

Shared by the dcgm-exporter scrape reader and the Prometheus range-export reader.

Series read (units as dcgm-exporter documents them; ``etc/default-counters.csv`` and
``dcp-metrics-included.csv`` of NVIDIA/dcgm-exporter):

========================================  =================  ======================
series                                    unit               field (vendor units)
========================================  =================  ======================
``DCGM_FI_DEV_SM_CLOCK``                  MHz                ``sm_clock_mhz``
``DCGM_FI_DEV_GPU_UTIL``                  %                  ``gpu_util_pct``
``DCGM_FI_PROF_PIPE_TENSOR_ACTIVE``       ratio 0-1          ``tensor_any_pct``
``DCGM_FI_PROF_PIPE_FP16/32/64_ACTIVE``   ratio 0-1          ``fp16/32/64_pct``
``DCGM_FI_PROF_SM_ACTIVE``, ``_OCCUPANCY``  ratio 0-1        ``sm_util/occupancy_pct``
``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``  mJ since boot      ``energy_mj``
``DCGM_FI_DEV_POWER_USAGE``               W                  ``power_mw``
``flopledger_gpu_sm_clock_hertz``         Hz                 ``sm_clock_mhz``
``flopledger_gpu_utilization_ratio``      ratio 0-1          ``gpu_util_pct``
``flopledger_gpu_tensor_activity_ratio``  ratio 0-1          ``tensor_any_pct``
``flopledger_gpu_power_watts``            W                  ``power_mw``
========================================  =================  ======================

DCGM writes "blank" sentinels for values it could not read (``DCGM_INT64_BLANK`` =
0x7ffffffffffffff0 and up, ``DCGM_INT32_BLANK`` = 0x7ffffff0, ``DCGM_FP64_BLANK`` =
2**47, from ``dcgm_structs.h``; every field but the energy counter is blank at
or above the smallest of them): such a value is unknown, not a reading.

GPU identity: the ``UUID`` (dcgm) or ``uuid`` (flopledger) label, with ``GPU_I_ID``
appended for a MIG instance; else host and ``gpu`` index. Runs: a ``run`` label as is;
``hpc_job`` (dcgm-exporter's HPC job mapping) as ``slurm-<job>``, the id the live
agent gives a Slurm job; ``pod_uid`` as ``k8s-pod-<uid>`` (the live agent's id), else
``namespace``/``pod`` as ``k8s-<namespace>/<pod>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

from agent.accounting.runmeta import claims_nothing
from agent.accounting.runs import GpuAttribution, GpuShare, RunMeta
from agent.replay.readers.base import GpuKey
from agent.sources.base import ActivityKind, FloatArray
from agent.sources.specs import SpecBasis

# series -> (field, factor to vendor units)
METRICS: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),
    "DCGM_FI_DEV_GPU_UTIL": ("gpu_util_pct", 1.0),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("tensor_any_pct", 100.0),
    "DCGM_FI_PROF_PIPE_FP16_ACTIVE": ("fp16_pct", 100.0),
    "DCGM_FI_PROF_PIPE_FP32_ACTIVE": ("fp32_pct", 100.0),
    "DCGM_FI_PROF_PIPE_FP64_ACTIVE": ("fp64_pct", 100.0),
    "DCGM_FI_PROF_SM_ACTIVE": ("sm_util_pct", 100.0),
    "DCGM_FI_PROF_SM_OCCUPANCY": ("sm_occupancy_pct", 100.0),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_mj", 1.0),
    "DCGM_FI_DEV_POWER_USAGE": ("power_mw", 1000.0),
    "flopledger_gpu_sm_clock_hertz": ("sm_clock_mhz", 1e-6),
    "flopledger_gpu_utilization_ratio": ("gpu_util_pct", 100.0),
    "flopledger_gpu_tensor_activity_ratio": ("tensor_any_pct", 100.0),
    "flopledger_gpu_power_watts": ("power_mw", 1000.0),
}
THROTTLE_METRICS = frozenset({"DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
                              "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"})
INFO_METRIC = "flopledger_gpu_info"
TENSOR_FIELDS = frozenset({"tensor_any_pct"})
_INT32_BLANK = float(0x7FFFFFF0)
_INT64_BLANK = float(0x7FFFFFFFFFFFFFF0)
_ESTIMATOR_KIND = {"gpm_tensor": ActivityKind.GPM, "dcgm_tensor": ActivityKind.DCGM}
# A Prometheus text float (exposition format); Python's float() also takes "1_0".
# Each number matches one way only (digits, then an optional fraction): a pattern that
# can split "111" as "11" + "1" backtracks exponentially over many failing values.
FLOAT = re.compile(r"[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[Ii]nf|NaN|nan)")


def vendor_value(metric: str, raw: float) -> float | None:
    """The value in vendor units; NaN for a DCGM blank or NaN; None if non-finite."""
    if math.isnan(raw):
        return math.nan
    if math.isinf(raw):
        return None
    # The energy counter may legitimately pass 2**31 (and 2**47); nothing else may.
    limit = _INT64_BLANK if metric == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" else _INT32_BLANK
    if metric.startswith("DCGM_") and raw >= limit:
        return math.nan
    return raw * METRICS[metric][1]


def vendor_values(metric: str, raw: FloatArray) -> FloatArray | None:
    """:func:`vendor_value` of every value of a series at once (the same products, bit
    for bit); None if any of them is infinite."""
    if bool(np.isinf(raw).any()):
        return None
    values = raw * METRICS[metric][1]
    if metric.startswith("DCGM_"):
        limit = _INT64_BLANK if metric == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" else \
            _INT32_BLANK
        values[raw >= limit] = np.nan
    return values


def gpu_key(labels: Mapping[str, str], host_default: str = "") -> GpuKey | None:
    """The GPU a series belongs to; None if its labels name none."""
    uuid = labels.get("UUID") or labels.get("uuid") or None
    index_text = labels.get("gpu", "")
    host = labels.get("Hostname") or labels.get("hostname") or labels.get("instance") or \
        host_default
    mig = labels.get("GPU_I_ID") or None
    if uuid:
        key = uuid
    elif index_text:
        key = f"{host}/index:{index_text}" if host else f"index:{index_text}"
    else:
        return None
    if mig is not None:
        key += f"/mig:{mig}"
    return GpuKey(
        key=key, uuid=uuid, index=int(index_text) if index_text.isdigit() else None,
        name=labels.get("modelName") or labels.get("name") or None,
        spec_key=_spec_key(labels),
        activity_kind=_ESTIMATOR_KIND.get(labels.get("estimator", ""), ActivityKind.NONE),
        mig_profile=labels.get("GPU_I_PROFILE") or None, host=host)


def _spec_key(labels: Mapping[str, str]) -> str | None:
    """The spec-table row a ``flopledger_gpu_info`` series names: ``spec_key`` where
    ``spec`` is ``table``; none for a GPU the agent found no row for (``derived``,
    ``ceiling``: its name is resolved again); in scrapes of agents that exported no
    ``spec_key``, the ``spec`` label held the row."""
    spec = labels.get("spec", "")
    if spec == SpecBasis.TABLE:
        return labels.get("spec_key") or None
    if spec in (SpecBasis.DERIVED, SpecBasis.CEILING):
        return None
    return spec or None


def run_of(labels: Mapping[str, str]) -> RunMeta | None:
    """The run a series' labels name, None if none."""
    run = labels.get("run", "").strip()
    if run:
        return RunMeta(run_id=run, via="replay-labels")
    job = labels.get("hpc_job", "").strip()
    if job and job != "0":
        return RunMeta(run_id=f"slurm-{job}", via="replay-labels")
    uid = labels.get("pod_uid", "").strip()
    if uid:
        return RunMeta(run_id=f"k8s-pod-{uid.lower()}", via="replay-labels")
    pod, namespace = labels.get("pod", "").strip(), labels.get("namespace", "").strip()
    if pod:
        return RunMeta(run_id=f"k8s-{namespace or 'default'}/{pod}", via="replay-labels")
    return None


class RunTable:
    """Runs named by labels, each as a single-run attribution, indexed in order seen."""

    def __init__(self) -> None:
        self.table: list[GpuAttribution] = []
        self._index: dict[str, int] = {}

    def index_of(self, run: RunMeta | None) -> int:
        """The run's index in :attr:`table`, -1 for None or an id no run may claim."""
        if run is None or (run.run_id not in self._index and claims_nothing(run)):
            return -1
        i = self._index.get(run.run_id)
        if i is None:
            i = self._index[run.run_id] = len(self.table)
            self.table.append(GpuAttribution((GpuShare(run, 1.0),), "single"))
        return i


_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\\n]|\\.)*)"\s*(,|$)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_labels(text: str) -> dict[str, str] | None:
    """``a="x",b="y"`` (exposition-format label set) to a dict; None if malformed."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None:
            return None if text[pos:].strip() else out
        value = m.group(2)
        if "\\" in value:
            value = re.sub(r"\\.", lambda e: _ESCAPES.get(e.group(0), e.group(0)), value)
        out[m.group(1)] = value
        pos = m.end()
        if m.group(3) != ",":
            break
    return out if not text[pos:].strip() else None
