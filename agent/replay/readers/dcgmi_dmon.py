"""Reader of ``dcgmi dmon`` output saved to a file (``dcgmi dmon -e ... -d MS > log``).

The format, as ``dcgmi/DeviceMonitor.cpp`` of NVIDIA/DCGM prints it (and real logs,
e.g. the H100 probe of nikosvil/flopcheck, show it):

* A header line of field tags, one column per field asked for with ``-e``, and a units
  line below it; both again after every 14 sampling rounds::

      #Entity         SMACT        TENSO        SMCLK        POWER             GPUTL
      ID                                                      W
      GPU 0           0.948        0.643        1170         344.661           100

  DCGM 3 and later left-align every column (``#Entity`` and each value padded to its
  field's width); DCGM 2 right-aligned them under ``# Entity`` / ``Id`` and printed a
  blank line before each repeated header. Both are read: a value belongs to the
  column whose header tag it overlaps, so a column left blank (a field the entity does
  not have: a GPU instance has no SM clock) is told apart from a shifted one. A header
  may also name fields by their numeric ids (``1004`` for ``TENSO``).
* One row per entity per round: ``GPU 0``, ``GPU-I 3`` (a MIG GPU instance),
  ``GPU-CI 7`` (a compute instance); dmon prints each GPU's instances right after it.
  ``N/A`` is a value DCGM could not read (the first round of profiling fields).
  Switch, CPU, ConnectX, vGPU and NVLink rows are not GPUs and are skipped.
* No time at all. Sample ``k`` of an entity is at ``k x --interval-hint`` (the ``-d``
  delay in seconds; dmon's default ``-d 1000`` is 1 s), which the replay requires.
  dmon sleeps for the delay *after* reading and printing a round, so the real period
  is a little longer (100.8 ms for ``-d 100`` in the H100 probe): the replayed time,
  and the FLOP, come out short by that share.
* ``dmon was stopped due to receiving a signal`` at the end after Ctrl-C.

Fields read (tag, DCGM field id, sample field; ratios 0-1 become percent)::

    SMCLK 100 sm_clock_mhz     POWER 155 power_mw (W)   POWINST 157 (if no POWER)
    TOTEC 156 energy_mj (mJ)   GPUTL 203 gpu_util_pct   GRACT 1001 (if no GPUTL)
    SMACT 1002 sm_util_pct     SMOCC 1003 sm_occupancy_pct
    TENSO 1004 tensor_any_pct  FP64A/FP32A/FP16A 1006-1008 fp64/fp32/fp16_pct
    TIMMA 1013 tensor_imma_pct THMMA 1014 tensor_hmma_pct  TDFMA 1015 tensor_dfma_pct

``HMMA``, ``IMMA``, ``DFMA``, ``FP16``, ``FP32`` and ``FP64`` are taken as the same
tags. Other columns are skipped unparsed.

MIG: dmon does not say which GPU an instance belongs to, nor its size. An instance
row that follows a GPU row in the same round (or a compute instance after its GPU
instance) is part of what that row already counts and is skipped; an instance without
its GPU in the log is accounted on its own, at the whole GPU's peak (its size unknown),
which can only overstate it. dmon prints no GPU names either: ``--gpu-model`` names it.

A row that does not parse (a value that is not a number or ``N/A``, values that do
not line up with the header's columns, a row before any header, an unknown line) is a
bad row, reported with its line number; so is a last line without a newline. A file
without a header line, or whose first header names no field the replay uses, cannot
be replayed at all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.replay.readers.base import (
    BadRow,
    ColumnChunk,
    GpuKey,
    ReplayError,
    SyntheticClock,
    empty_chunk,
)
from agent.replay.readers.lines import DEFAULT_BLOCK_BYTES, line_blocks, open_binary
from agent.sources.base import ActivityKind, FloatArray


@dataclass(frozen=True, slots=True)
class DmonField:
    """A dmon column the replay reads.

    Attributes:
        tag: the short name dmon prints in the header.
        field_id: DCGM's field id (``dcgm_fields.h``).
        sample_field: the :data:`~agent.sources.base.FLOAT_FIELDS` name it feeds.
        factor: from dmon's value to the sample field's vendor unit.
        unit: what the units line must say above the column ("" for none).
        rank: 0 for the preferred source of ``sample_field``, 1 for a fallback.
    """

    tag: str
    field_id: int
    sample_field: str
    factor: float
    unit: str = ""
    rank: int = 0


FIELDS: tuple[DmonField, ...] = (
    DmonField("SMCLK", 100, "sm_clock_mhz", 1.0),
    DmonField("POWER", 155, "power_mw", 1000.0, "W"),
    DmonField("TOTEC", 156, "energy_mj", 1.0, "mJ"),
    DmonField("POWINST", 157, "power_mw", 1000.0, "W", rank=1),
    DmonField("GPUTL", 203, "gpu_util_pct", 1.0),
    # Graphics/compute engine activity is what utilization.gpu samples (DCGM's own
    # note); MIG instances have it, where GPUTL is N/A.
    DmonField("GRACT", 1001, "gpu_util_pct", 100.0, rank=1),
    DmonField("SMACT", 1002, "sm_util_pct", 100.0),
    DmonField("SMOCC", 1003, "sm_occupancy_pct", 100.0),
    DmonField("TENSO", 1004, "tensor_any_pct", 100.0),
    DmonField("FP64A", 1006, "fp64_pct", 100.0),
    DmonField("FP32A", 1007, "fp32_pct", 100.0),
    DmonField("FP16A", 1008, "fp16_pct", 100.0),
    DmonField("TIMMA", 1013, "tensor_imma_pct", 100.0),
    DmonField("THMMA", 1014, "tensor_hmma_pct", 100.0),
    DmonField("TDFMA", 1015, "tensor_dfma_pct", 100.0),
)
_BY_TAG = {f.tag: f for f in FIELDS}
_BY_TAG.update({alias: _BY_TAG[tag] for alias, tag in (
    ("HMMA", "THMMA"), ("IMMA", "TIMMA"), ("DFMA", "TDFMA"), ("FP16", "FP16A"),
    ("FP32", "FP32A"), ("FP64", "FP64A"))})
_BY_ID = {f.field_id: f for f in FIELDS}

_HEADER = re.compile(r"[ \t]*#[ \t]*Entity(?=[ \t]|$)")
_UNITS = re.compile(r"[ \t]*I[Dd](?=[ \t]|$)")
_TOKEN = re.compile(r"[^ \t\r]+")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# An entity as dmon names it: a GPU, a MIG GPU instance or compute instance, or an
# entity that is not a GPU (the second group then is None).
_ENTITY = re.compile(
    r"[ \t]*(?:(?:GPU|SW)[ \t]+\d{1,9}[ \t]+LINK[ \t]+\d{1,9}"
    r"|(GPU-CI|GPU-I|GPU)[ \t]+(\d{1,9})"
    r"|(?:vGPU|Switch|CPU Core|CPU|CX|LINK|UNKNOWN)[ \t]+\d{1,9})(?=[ \t\r]|$)")
_STOPPED = re.compile(r"[ \t]*dmon was stopped due to receiving a signal\.?[ \t\r]*")
_LEVEL = {"GPU": 0, "GPU-I": 1, "GPU-CI": 2}


@dataclass(frozen=True, slots=True)
class Column:
    """One header column: where its tag sits on the line, and what it feeds."""

    start: int
    end: int
    tag: str
    dmon: DmonField | None


@dataclass(frozen=True, slots=True)
class Header:
    """The column map of a header line (and of its units line)."""

    columns: tuple[Column, ...]
    used: dict[int, DmonField]  # column index -> field it feeds (preferred ones only)

    @property
    def tensor(self) -> bool:
        return any(f.sample_field == "tensor_any_pct" for f in self.used.values())


def parse_header(text: str) -> Header | None:
    """The column map of a header line; None if ``text`` is not one."""
    m = _HEADER.match(text)
    if m is None:
        return None
    columns: list[Column] = []
    for tok in _TOKEN.finditer(text, m.end()):
        tag = tok.group(0)
        dmon = _BY_ID.get(int(tag)) if tag.isdigit() and len(tag) <= 9 else _BY_TAG.get(
            tag.upper())
        columns.append(Column(tok.start(), tok.end(), tag, dmon))
    best: dict[str, tuple[int, int, DmonField]] = {}  # sample field -> rank, column, field
    for c, col in enumerate(columns):
        if col.dmon is not None:
            have = best.get(col.dmon.sample_field)
            if have is None or col.dmon.rank < have[0]:
                best[col.dmon.sample_field] = (col.dmon.rank, c, col.dmon)
    return Header(tuple(columns),
                  {c: dmon for _, c, dmon in sorted(best.values(), key=lambda b: b[1])})


def split_values(header: Header, text: str, start: int) -> list[str] | str:
    """The value text of each header column on a data row (``""`` where blank), from
    ``start`` (after the entity); a reason if the values do not line up."""
    tokens = list(_TOKEN.finditer(text, start))
    cols = header.columns
    if len(tokens) == len(cols):
        return [t.group(0) for t in tokens]
    if len(tokens) > len(cols):
        return f"{len(tokens)} values for {len(cols)} columns"
    out = [""] * len(cols)
    for t in tokens:
        # A value overlaps its column's tag: left-aligned columns start where the tag
        # starts, right-aligned ones end where it ends.
        hits = [c for c, col in enumerate(cols) if t.start() < col.end and col.start < t.end()]
        if len(hits) != 1 or out[hits[0]]:
            return f"value {t.group(0)[:20]!r} at column {t.start() + 1} is under no " \
                   "single header column"
        out[hits[0]] = t.group(0)
    return out


def parse_value(text: str) -> float | None:
    """A dmon value: NaN for ``N/A`` or a blank column, None if it is not a number."""
    if text in ("", "N/A"):
        return math.nan
    if _NUMBER.fullmatch(text) is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


@dataclass(slots=True)
class _Round:
    """The entities of the sampling round being read, to tell a new round and parts."""

    seen: set[str] = field(default_factory=set)
    parent_level: int = -1  # level of the last GPU or instance row counted, -1 none


class DcgmiDmonReader:
    """Streams a ``dcgmi dmon`` log as column chunks.

    Args:
        path: the log.
        interval_hint_s: dmon's ``-d`` delay in seconds; required (dmon prints no time).
        block_bytes: read size.
    """

    def __init__(self, path: Path, interval_hint_s: float | None = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.path = path
        self._hint_s = interval_hint_s
        self._block_bytes = block_bytes
        self._header: Header | None = None
        self._after_header = False  # the previous line was a header: a units line may come
        self._round = _Round()
        self._ids: dict[str, int] = {}
        self._gpus: list[GpuKey] = []
        self._clock: SyntheticClock | None = None
        self._rows: list[tuple[int, dict[str, float], int]] = []  # (gpu, fields, line)
        self.header_lines = 0
        self.parts_skipped = 0  # MIG instance rows counted by their GPU's row
        self.other_entities = 0  # rows of switches, CPUs, links: not GPUs

    def chunks(self) -> Iterator[ColumnChunk]:
        """Raises: ReplayError for an unreadable file, no header, a header naming no
        field the replay uses, or no ``--interval-hint``."""
        line_no = 1
        with open_binary(self.path) as f:
            try:
                for block in line_blocks(f, self._block_bytes):
                    bad, line_no = block.take_lines(line_no, self._line)
                    chunk = self._chunk(bad)
                    chunk.bytes_done, chunk.rows_done = block.bytes_done, line_no - 1
                    yield chunk
            except OSError as e:
                raise ReplayError(self.path, f"read failed: {e}") from e
        if self._header is None:
            raise ReplayError(self.path, "no dcgmi dmon header line (`#Entity  SMACT  "
                                         "TENSO ...`); is this dmon's output?")

    def _line(self, text: str, line_no: int) -> str | None:
        """Take one line; the reason if it is bad."""
        after_header, self._after_header = self._after_header, False
        if not text.strip(" \t\r"):
            return None
        header = parse_header(text)
        if header is not None:
            return self._take_header(header, line_no)
        units = _UNITS.match(text) if after_header else None
        if units is not None:
            return self._check_units(text, units.end(), line_no)
        m = _ENTITY.match(text)
        if m is None:
            if _STOPPED.fullmatch(text):
                return None
            return "not a dcgmi dmon row"
        if self._header is None:
            return "a row before any dcgmi dmon header line"
        kind, number = m.group(1), m.group(2)
        if kind is None:
            self.other_entities += 1
            return None
        values = split_values(self._header, text, m.end())
        if isinstance(values, str):
            return values
        fields: dict[str, float] = {}
        for c, dmon in self._header.used.items():
            value = parse_value(values[c])
            if value is None:
                return f"bad number {values[c][:20]!r} in column {self._header.columns[c].tag}"
            fields[dmon.sample_field] = value * dmon.factor
        self._add(kind, int(number), fields, line_no)
        return None

    def _take_header(self, header: Header, line_no: int) -> str | None:
        if not header.used:
            if self._header is None:
                raise ReplayError(self.path, f"line {line_no}: the dmon header names no "
                                             "field the replay reads (one of "
                                             f"{', '.join(f.tag for f in FIELDS)})")
            return "header line without a field the replay reads not taken"
        if self._header is not None and header.tensor != self._header.tensor:
            # An entity keeps the counter kind it was registered with; a later header
            # must not change what its samples mean.
            return "header line changing whether tensor activity is recorded not taken"
        self._header = header
        self._after_header = True
        self._round = _Round()  # dmon prints a header between rounds
        self.header_lines += 1
        return None

    def _check_units(self, text: str, start: int, line_no: int) -> str | None:
        assert self._header is not None
        units = split_values(self._header, text, start)
        if isinstance(units, str):
            return None  # a units line only ever confirms; a misaligned one says nothing
        for c, dmon in self._header.used.items():
            if units[c] and dmon.unit and units[c] != dmon.unit:
                problem = f"column {dmon.tag} in {units[c]!r}, expected {dmon.unit!r}"
                if self.header_lines == 1:
                    raise ReplayError(self.path, f"line {line_no}: {problem}")
                return problem
        return None

    def _add(self, kind: str, number: int, fields: dict[str, float], line_no: int) -> None:
        key = {"GPU": "index", "GPU-I": "gpu-i", "GPU-CI": "gpu-ci"}[kind] + f":{number}"
        level = _LEVEL[kind]
        if key in self._round.seen:
            self._round = _Round()  # an entity again: the next round began
        self._round.seen.add(key)
        if 0 <= self._round.parent_level < level:
            self.parts_skipped += 1
            return
        self._round.parent_level = level
        if self._hint_s is None:
            raise ReplayError(self.path, f"line {line_no}: dcgmi dmon prints no time: pass "
                                         "--interval-hint SECONDS, dmon's -d delay / 1000 "
                                         "(its default -d 1000 is 1 s)")
        gid = self._ids.get(key)
        if gid is None:
            assert self._header is not None
            gid = self._ids[key] = len(self._gpus)
            self._gpus.append(GpuKey(
                key=key, index=number if kind == "GPU" else None,
                activity_kind=ActivityKind.DCGM if self._header.tensor else ActivityKind.NONE))
        self._rows.append((gid, fields, line_no))

    def _chunk(self, bad: list[BadRow]) -> ColumnChunk:
        rows, self._rows = self._rows, []
        if not rows:
            return empty_chunk(tuple(self._gpus), bad, 0, 0)
        if self._clock is None:
            assert self._hint_s is not None
            self._clock = SyntheticClock(round(self._hint_s * 1e9))
        gpu = np.array([g for g, _, _ in rows], dtype=np.int64)
        names = sorted({n for _, f, _ in rows for n in f})
        fields: dict[str, FloatArray] = {
            n: np.array([f.get(n, math.nan) for _, f, _ in rows]) for n in names}
        ts = self._clock.stamp(gpu, len(self._gpus))
        return ColumnChunk(
            gpu=gpu, timestamp_ns=ts, wall_ns=ts, fields=fields, gpus=tuple(self._gpus),
            bad=bad, line=np.array([n for _, _, n in rows], dtype=np.int64),
            wall_clock=False)
