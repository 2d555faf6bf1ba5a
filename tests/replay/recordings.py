"""Small, valid recordings in every replay format, with any value of any sample
replaceable, and where each value sits (its line, or a trace's row), so a test can
break one value and name the line it expects to see reported.

Two GPUs (an H100 and an A100) sampled every second from 2025-06-01 12:00:00 UTC, in
the formats the readers' own tests document: ``nvidia-smi --query-gpu ...
--format=csv`` (no energy, no tensor activity), dcgm-exporter scrapes after ``#
scrape <unix seconds>`` markers, Prometheus ``query_range`` responses (one per series
name, one per line) and flopledger traces.

Fields are named neutrally: ``clock`` (MHz), ``util`` (%), ``tensor`` (%), ``power``
(W), ``energy`` (mJ, a counter), ``time`` (Unix seconds; of that sample only: a trace's
monotonic time), ``wall`` (a trace's wall time, shared by the tick's samples), and
``drop`` (any value: the sample is left out; a trace records it as down). An edit is
``{(tick, gpu, field): value}``.
"""

from __future__ import annotations

import calendar
import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from agent.replay.readers.trace import TraceWriter
from agent.sources.base import ActivityKind, DeviceInfo, SampleBatch

T0 = calendar.timegm((2025, 6, 1, 12, 0, 0))
UUIDS = ("GPU-5b4e07f6-3a86-4340-039d-25f2a83cdc43", "GPU-c2f76b33-7953-256e-8f33-1343419b1a1c")
NAMES = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB")
SPECS = ("h100_sxm", "a100_80gb")
Edits = Mapping[tuple[int, int, str], float]
Lines = dict[tuple[int, int, str], int]
FIELDS = ("clock", "util", "tensor", "power", "energy")


def normal(tick: int, gpu: int, name: str) -> float:
    """A plausible value: clocks under each GPU's maximum (1980, 1410 MHz)."""
    return {
        "clock": (1800 + tick % 100, 1300 + tick % 50)[gpu],
        "util": 90 - tick % 7,
        "tensor": 60.5 - tick % 5,
        "power": (500.5, 300.25)[gpu],
        "energy": (1e9, 2e9)[gpu] + tick * (500_000, 300_000)[gpu],
        "time": T0 + tick,
    }[name]


def value(edits: Edits, tick: int, gpu: int, name: str) -> float:
    return edits.get((tick, gpu, name), normal(tick, gpu, name))


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def smi(ticks: int, edits: Edits = {}) -> tuple[str, Lines]:  # noqa: B006 - read only
    """An nvidia-smi CSV log (with units)."""
    out = ["timestamp, index, uuid, name, clocks.current.sm [MHz], clocks.max.sm [MHz], "
           "utilization.gpu [%], power.draw [W]\n"]
    lines: Lines = {}
    for t in range(ticks):
        for g in range(2):
            if (t, g, "drop") in edits:
                continue
            when = value(edits, t, g, "time")
            whole = int(np.floor(when))
            stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(whole))
            ms = round((when - whole) * 1000) + g
            out.append(f"{stamp}.{ms:03d}, {g}, {UUIDS[g]}, {NAMES[g]}, "
                       f"{_number(value(edits, t, g, 'clock'))} MHz, {(1980, 1410)[g]} MHz, "
                       f"{_number(value(edits, t, g, 'util'))} %, "
                       f"{_number(value(edits, t, g, 'power'))} W\n")
            for name in ("time", *FIELDS):
                lines[(t, g, name)] = len(out)
    return "".join(out), lines


_DCGM = (("clock", "DCGM_FI_DEV_SM_CLOCK", 1.0), ("util", "DCGM_FI_DEV_GPU_UTIL", 1.0),
         ("tensor", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 0.01),
         ("power", "DCGM_FI_DEV_POWER_USAGE", 1.0),
         ("energy", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 1.0))


def _labels(g: int) -> str:
    return (f'gpu="{g}",UUID="{UUIDS[g]}",device="nvidia{g}",modelName="{NAMES[g]}",'
            f'Hostname="node-7"')


def dcgm(ticks: int, edits: Edits = {}) -> tuple[str, Lines]:  # noqa: B006 - read only
    """dcgm-exporter scrapes, each after a ``# scrape`` marker; a sample whose time is
    edited carries it as its own timestamp (milliseconds)."""
    out: list[str] = []
    lines: Lines = {}
    for t in range(ticks):
        out.append(f"# scrape {T0 + t}\n")
        for name, metric, scale in _DCGM:
            for g in range(2):
                if (t, g, "drop") in edits:
                    continue
                own = (t, g, "time") in edits
                stamp = f" {round(edits[(t, g, 'time')] * 1000)}" if own else ""
                out.append(f"{metric}{{{_labels(g)}}} "
                           f"{_number(value(edits, t, g, name) * scale)}{stamp}\n")
                lines[(t, g, name)] = len(out)
                lines.setdefault((t, g, "time"), len(out))
    return "".join(out), lines


def prom(ticks: int, edits: Edits = {}) -> tuple[str, Lines]:  # noqa: B006 - read only
    """Prometheus ``query_range`` responses, one per series name, one per line."""
    out: list[str] = []
    lines: Lines = {}
    for name, metric, scale in _DCGM:
        result = []
        for g in range(2):
            points = [[value(edits, t, g, "time"), _number(value(edits, t, g, name) * scale)]
                      for t in range(ticks) if (t, g, "drop") not in edits]
            result.append({"metric": {"__name__": metric, "gpu": str(g), "UUID": UUIDS[g],
                                      "modelName": NAMES[g], "Hostname": "node-7"},
                           "values": points})
            for t in range(ticks):
                lines[(t, g, name)] = len(out) + 1
                lines[(t, g, "time")] = 1
        out.append(json.dumps({"status": "success", "data": {
            "resultType": "matrix", "result": result}}, separators=(",", ":")) + "\n")
    return "".join(out), lines


_TRACE_FIELDS = {"clock": ("sm_clock_mhz", 1.0), "util": ("gpu_util_pct", 1.0),
                 "tensor": ("tensor_any_pct", 1.0), "power": ("power_mw", 1000.0),
                 "energy": ("energy_mj", 1.0)}


def trace_devices() -> tuple[DeviceInfo, ...]:
    return tuple(DeviceInfo(index=g, uuid=UUIDS[g], name=NAMES[g], spec_key=SPECS[g],
                            max_sm_clock_mhz=(1980.0, 1410.0)[g],
                            activity_kind=ActivityKind.GPM, source="nvml") for g in range(2))


def trace(ticks: int, edits: Edits = {}) -> tuple[bytes, Lines]:  # noqa: B006 - read only
    """A flopledger trace (rows numbered from 1, tick by tick). A ``time`` edit moves
    the GPU's monotonic time, and the tick's wall time (shared by both GPUs) too."""
    lines: Lines = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.trace"
        with TraceWriter(path, trace_devices(), "nvml", block_rows=64) as writer:
            for t in range(ticks):
                wall = edits.get((t, 0, "wall"), edits.get((t, 1, "wall"), T0 + t))
                batch = SampleBatch.empty(2, 0, round(wall * 1e9))
                for g in range(2):
                    batch.up[g] = (t, g, "drop") not in edits
                    batch.timestamp_ns[g] = round(value(edits, t, g, "time") * 1e9)
                    for name, (field, scale) in _TRACE_FIELDS.items():
                        getattr(batch, field)[g] = value(edits, t, g, name) * scale
                        lines[(t, g, name)] = 2 * t + g + 1
                    lines[(t, g, "time")] = lines[(t, g, "wall")] = 2 * t + g + 1
                writer.write(batch)
        return path.read_bytes(), lines


Maker = Callable[[int, Edits], tuple[str | bytes, Lines]]
FORMATS: dict[str, tuple[Maker, str]] = {
    "nvidia-smi": (smi, "gpu.csv"), "dcgm": (dcgm, "dcgm.prom"),
    "prom-range": (prom, "export.json"), "trace": (trace, "sim.trace")}


def write(directory: Path, fmt: str, ticks: int, edits: Edits = {},  # noqa: B006
          name: str | None = None) -> tuple[Path, Lines]:
    """The recording in ``directory``; its path and where each value sits."""
    make, default = FORMATS[fmt]
    content, lines = make(ticks, edits)
    path = directory / (name or default)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path, lines


# nvidia-smi's own columns, as ``--query-gpu=timestamp,index,uuid,name,utilization.gpu,
# clocks.sm,clocks.max.sm,power.draw --format=csv`` prints them.
BUSY_SMI_HEADER = ("timestamp, index, uuid, name, utilization.gpu [%], "
                   "clocks.current.sm [MHz], clocks.max.sm [MHz], power.draw [W]")


def busy_smi_log(gpus: Sequence[tuple[str, float]], seconds: int) -> str:
    """An nvidia-smi log of busy GPUs (80 to 100% utilized) from 2025-06-01 12:00:00
    UTC, one line per GPU per second; ``gpus``: (name as nvidia-smi prints it, SM clock
    in MHz at or under the GPU's rated boost), GPU ``i`` with UUID ``smi_uuid(i)``."""
    lines = [BUSY_SMI_HEADER]
    for t in range(seconds):
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(T0 + t))
        for i, (name, clock_mhz) in enumerate(gpus):
            lines.append(f"{stamp}.{i:03d}, {i}, {smi_uuid(i)}, {name}, {80 + (t + i) % 21} %, "
                         f"{clock_mhz - (t % 3) * 15:.0f} MHz, {clock_mhz:.0f} MHz, "
                         f"{250 + (t + i) % 50}.25 W")
    return "\n".join(lines) + "\n"


def smi_uuid(i: int) -> str:
    return f"GPU-{i:08x}-5b4e-4340-839d-{i:012x}"


def replayed_smi_ledger(directory: Path, gpus: Sequence[tuple[str, float]],
                        seconds: int = 60) -> Path:
    """A ledger replayed from :func:`busy_smi_log` (the run ``unattributed``)."""
    from agent.replay.engine import ReplayEngine, ReplayOptions

    log = directory / "nvidia-smi.csv"
    log.write_text(busy_smi_log(gpus, seconds))
    ledger = directory / "ledger.sqlite"
    summary = ReplayEngine(ledger, ReplayOptions(interval_hint_s=1.0)).run([log])
    assert summary.failure is None, summary.failure
    return ledger
