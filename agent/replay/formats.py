"""Which reader a recording needs: its format from its first bytes, and the reader."""

from __future__ import annotations

import re
from pathlib import Path

from agent.replay.readers.base import Reader, ReplayError
from agent.replay.readers.dcgm import DcgmReader
from agent.replay.readers.dcgmi_dmon import DcgmiDmonReader
from agent.replay.readers.lines import DEFAULT_BLOCK_BYTES
from agent.replay.readers.nvidia_smi import NvidiaSmiReader
from agent.replay.readers.prom_range import PromRangeReader
from agent.replay.readers.trace import MAGIC, TraceReader

FORMATS = ("auto", "nvidia-smi", "dcgm", "dcgmi-dmon", "prom-range", "trace")
# dmon's header (``#Entity`` since DCGM 3, ``# Entity`` before) is a comment line to
# the Prometheus text format: it is told apart first.
_DMON_HEADER = re.compile(r"#[ \t]*Entity(?:[ \t]|$)")
# A dmon row (its header cut off): an entity, then N/A or a decimal number, which no
# Prometheus sample named GPU would have.
_DMON_ROW = re.compile(r"GPU(?:-C?I)?[ \t]+\d+[ \t]+(?:N/A|\d*\.\d+)(?:[ \t]|$)")


def detect_format(path: Path) -> str:
    """The format of a recording from its first bytes.

    Raises:
        ReplayError: if the file cannot be read or matches no format.
    """
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise ReplayError(path, f"cannot open: {e.strerror or e}") from e
    if head.startswith(MAGIC):
        return "trace"
    text = head.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    if text.startswith(("{", "[")):
        return "prom-range"
    first = text.split("\n", 1)[0]
    if _DMON_HEADER.match(first) or _DMON_ROW.match(first):
        return "dcgmi-dmon"
    if first.startswith("#") or (re.match(r"[A-Za-z_:][A-Za-z0-9_:]*(\{|\s+\S)", first) and (
            "," not in first.split("{", 1)[0])):
        return "dcgm"
    if re.match(r"\s*[a-z][a-z0-9_.]*( \[[^\]]*\])?\s*(,|$)", first):
        return "nvidia-smi"
    raise ReplayError(path, f"cannot tell the format from its first line {first[:60]!r}; "
                            "pass --format")


def open_reader(path: Path, fmt: str, utc_offset_s: float = 0.0,
                interval_hint_s: float | None = None,
                block_bytes: int = DEFAULT_BLOCK_BYTES) -> Reader:
    """A reader of ``path`` in format ``fmt`` (``auto`` detects it).

    Raises:
        ReplayError: if the format is unknown or cannot be detected.
    """
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "nvidia-smi":
        return NvidiaSmiReader(path, utc_offset_s, interval_hint_s, block_bytes)
    if fmt == "dcgm":
        return DcgmReader(path, interval_hint_s, block_bytes)
    if fmt == "dcgmi-dmon":
        return DcgmiDmonReader(path, interval_hint_s, block_bytes)
    if fmt == "prom-range":
        return PromRangeReader(path, block_bytes)
    if fmt == "trace":
        return TraceReader(path)
    raise ReplayError(path, f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
