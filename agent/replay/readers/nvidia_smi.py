"""Reader of ``nvidia-smi --query-gpu=... --format=csv[,nounits]`` logs.

The format, as nvidia-smi prints it (``nvidia-smi --help-query-gpu``; real logs e.g.
in the NeSI and fast.ai GPU monitoring guides):

* A header line names the queried fields in query order, separated by ``", "``, each
  with its unit in brackets where it has one: ``timestamp, index, uuid, name,
  utilization.gpu [%], clocks.current.sm [MHz], power.draw [W]``. An alias in the
  query prints as the canonical name (``clocks.sm`` -> ``clocks.current.sm [MHz]``).
  ``nounits`` keeps the header's brackets and drops the units from the values.
* One line per GPU per sample: ``2026/11/28 12:34:56.789, 0, GPU-..., NVIDIA H100 80GB
  HBM3, 97 %, 1980 MHz, 612.34 W``; ``[N/A]``, ``[Not Supported]`` (any bracketed
  text) or ``N/A`` for a value the GPU cannot give.
* The timestamp is ``YYYY/MM/DD HH:MM:SS.mmm`` in the machine's local time; replay
  takes it as UTC minus ``utc_offset_s``.
* ``clocks_throttle_reasons.active`` (renamed ``clocks_event_reasons.active`` in driver
  530+) is a hex bitmask, ``0x0000000000000004``.

Columns read: ``timestamp``; identity from ``uuid`` (else ``pci.bus_id``, else
``index``); ``clocks.current.sm``/``clocks.sm`` [MHz]; ``utilization.gpu`` [%];
``power.draw`` (else ``.average``, ``.instant``) [W]; ``clocks.max.sm`` [MHz] and
``name`` (first line of each GPU); the throttle mask. Any other column is skipped
unparsed. nvidia-smi has no energy counter field: energy is power x interval.

Grammar of a value (what the kernel and the tests' reference parser accept, after
trimming spaces and tabs): a bracketed text or ``N/A`` (unknown); or
``[+-]?(\\d+\\.?\\d*|\\.\\d+)([eE][+-]?\\d+)?`` optionally followed by spaces and
exactly the column's unit. A line is bad (skipped, reported with its line number)
if it has the wrong number of fields, a bad timestamp, number, unit, identity or
mask; a non-finite number is bad too. A line equal to a header restarts the column
map there (logs appended across nvidia-smi restarts). The last line of a file without
a newline is reported as truncated. Blank lines are skipped silently.

A log is read in blocks cut at fixed offsets (:func:`plan_log`), each parsed on its own
(:func:`parse_block`: in any thread or process, in any order) and joined in file order
by :class:`NvidiaSmiReader`; a line longer than a block is bad.
"""

from __future__ import annotations

import functools
import math
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agent.replay.readers import smi_kernel as k
from agent.replay.readers.base import BadRow, ColumnChunk, GpuKey, ReplayError, SyntheticClock
from agent.replay.readers.lines import (
    DEFAULT_BLOCK_BYTES,
    ByteArray,
    LineRange,
    open_binary,
    read_line_range,
)
from agent.replay.readers.words import padded_words
from agent.sources.base import FloatArray, IntArray

# header name -> (role, unit the values carry). Aliases print as the canonical names;
# both are accepted.
COLUMNS: dict[str, tuple[str, str]] = {
    "timestamp": ("time", ""),
    "index": ("index", ""),
    "uuid": ("uuid", ""),
    "gpu_uuid": ("uuid", ""),
    "name": ("name", ""),
    "gpu_name": ("name", ""),
    "pci.bus_id": ("pci", ""),
    "gpu_bus_id": ("pci", ""),
    "clocks.current.sm": ("sm_clock_mhz", "MHz"),
    "clocks.sm": ("sm_clock_mhz", "MHz"),
    "clocks.max.sm": ("max_clock_mhz", "MHz"),
    "utilization.gpu": ("gpu_util_pct", "%"),
    "power.draw": ("power_w", "W"),
    "power.draw.average": ("power_w.average", "W"),
    "power.draw.instant": ("power_w.instant", "W"),
    "clocks_throttle_reasons.active": ("throttle", ""),
    "clocks_event_reasons.active": ("throttle", ""),
}
# Per-row values the kernel parses; the maximum clock and the name are read by Python
# from each GPU's first line only.
_SLOTS = ("sm_clock_mhz", "gpu_util_pct", "power_w")
_HEADER_FIELD = re.compile(r"([a-z][a-z0-9_.]*)(?: \[([^\]]*)\])?")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
REASONS = {
    k.BAD_FIELDS: "expected {want} fields, found {aux}",
    k.BAD_TIME: "bad timestamp in column {col}",
    k.BAD_NUMBER: "bad number in column {col}",
    k.BAD_UNIT: "bad unit in column {col}",
    k.BAD_KEY: "bad GPU identity in column {col}",
    k.BAD_HEX: "bad clock-event mask in column {col}",
    k.TOO_MANY_GPUS: f"more than {k.MAX_GPUS} distinct GPUs",
}


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """What each column of a header means to the kernel."""

    names: tuple[str, ...]
    kinds: IntArray
    slots: IntArray
    units: ByteArray
    unit_start: IntArray
    unit_len: IntArray
    unit_words: npt.NDArray[np.uint64]  # " " + unit as a little-endian word
    key_mode: int
    roles: dict[str, int]  # role -> column
    text: str = ""  # the header line, as the map's identity

    @property
    def width(self) -> int:
        return len(self.names)


def parse_header(text: str) -> ColumnMap | None:
    """The column map of a header line, None if the line is not a header.

    Raises:
        ValueError: for a known column with an unexpected unit (the message says which).
    """
    names: list[str] = []
    roles: dict[str, int] = {}
    units: list[str] = []
    for c, raw in enumerate(text.rstrip("\r\n").split(",")):
        m = _HEADER_FIELD.fullmatch(raw.strip(" \t"))
        if m is None:
            return None
        name, unit = m.group(1), m.group(2) or ""
        names.append(name)
        known = COLUMNS.get(name)
        units.append(unit)
        if known is None:
            continue
        role, want = known
        if want and unit not in ("", want):
            raise ValueError(f"column {name!r} in [{unit}], expected [{want}]")
        roles.setdefault(role, c)
    if not roles:
        return None
    for alt in ("power_w.average", "power_w.instant"):
        if alt in roles and "power_w" not in roles:
            roles["power_w"] = roles[alt]
    key_role = next((r for r in ("uuid", "pci", "index") if r in roles), None)
    key_mode = {"uuid": k.KEY_UUID, "pci": k.KEY_PCI, "index": k.KEY_INDEX}.get(key_role or "", 0)
    kinds = np.zeros(len(names), dtype=np.int64)
    slots = np.zeros(len(names), dtype=np.int64)
    if "time" in roles:
        kinds[roles["time"]] = k.K_TIME
    if key_role is not None:
        kinds[roles[key_role]] = k.K_KEY
    if "throttle" in roles:
        kinds[roles["throttle"]] = k.K_HEX
    for slot, role in enumerate(_SLOTS):
        if role in roles:
            kinds[roles[role]] = k.K_FLOAT
            slots[roles[role]] = slot
    unit_bytes = [(COLUMNS[n][1] if n in COLUMNS else "").encode() for n in names]
    starts = np.cumsum([0, *(len(u) for u in unit_bytes)])[:-1].astype(np.int64)
    return ColumnMap(
        names=tuple(names), kinds=kinds, slots=slots,
        units=np.frombuffer(b"".join(unit_bytes) or b"\0", dtype=np.uint8).copy(),
        unit_start=starts, unit_len=np.array([len(u) for u in unit_bytes], dtype=np.int64),
        unit_words=np.array([int.from_bytes(b" " + u, "little") if u else 0
                             for u in unit_bytes], dtype=np.uint64),
        key_mode=key_mode, roles=roles, text=text.rstrip("\r\n"))


_scratch = threading.local()
# Bytes read and scanned at a time: what a core's cache holds (scanned straight after
# being read, the bytes are still there; a whole block is not).
PIECE_BYTES = 1 << 20


@functools.lru_cache(maxsize=64)
def _header_map(text: str) -> ColumnMap:
    """The map of a header already taken (parsed once per thread or process)."""
    cmap = parse_header(text)
    assert cmap is not None
    return cmap


def _eol(data: ByteArray, pos: int) -> int:
    """Offset of the newline ending the line at ``pos`` (blocks end with one)."""
    step = 256
    while True:
        hits = np.flatnonzero(data[pos : pos + step] == 10)
        if hits.size:
            return pos + int(hits[0])
        if pos + step >= data.shape[0]:
            return int(data.shape[0])
        step *= 4


def python_number(text: str, unit: str) -> float | None:
    """A value by the module's grammar with Python's ``float``; NaN if unknown, None if
    bad (the kernel's slow path, and the last word on a number)."""
    t = text.strip(" \t")
    if (len(t) >= 2 and t[0] == "[" and t[-1] == "]") or t == "N/A":
        return math.nan
    m = _NUMBER.match(t)
    if m is None:
        return None
    rest = t[m.end():]
    if rest and not (unit and rest[0] == " " and rest.lstrip(" ") == unit):
        return None
    value = float(m.group(0))
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class LogPlan:
    """How a log is read: its first header and the fixed blocks it is cut into.

    Everything a block's parse needs besides the file itself, so that any thread or
    process can parse any block on its own (:func:`parse_block`).

    Attributes:
        path: the log.
        size: its size when the replay planned it (bytes beyond are not read).
        block_bytes: block ``k`` holds the lines starting in ``[k, k + 1) x
            block_bytes``; a longer line is skipped.
        header: the first header line; ``header_line`` its line number, ``data_start``
            the offset just after it.
        synthetic: the header has no timestamp: samples are timed by the interval hint.
        utc_offset_ns: the log's UTC offset.
    """

    path: str
    size: int
    block_bytes: int
    header: str
    header_line: int
    data_start: int
    synthetic: bool
    utc_offset_ns: int

    @property
    def blocks(self) -> int:
        return max(1, -(-self.size // self.block_bytes))

    def span(self, index: int) -> tuple[int, int]:
        """Block ``index``'s offsets (where its lines may start)."""
        return index * self.block_bytes, min((index + 1) * self.block_bytes, self.size)


def plan_log(path: Path, utc_offset_s: float = 0.0, interval_hint_s: float | None = None,
             block_bytes: int = DEFAULT_BLOCK_BYTES) -> LogPlan:
    """Read a log's first header and plan its blocks.

    Raises:
        ReplayError: for an unreadable file, no header (the first line that is not
            blank), a header with a bad unit, or no timestamp column without
            ``interval_hint_s``.
    """
    block_bytes = max(block_bytes, 64)
    with open_binary(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = _read_head(f.fileno(), block_bytes)
        except OSError as e:
            raise ReplayError(path, f"read failed: {e}") from e
    pos, line_no = 0, 1
    while True:
        eol = head.find(b"\n", pos)
        if eol < 0:
            raise ReplayError(path, "no nvidia-smi header line (record with --format=csv, "
                                    "not noheader)")
        text = head[pos:eol].decode("utf-8", "replace")
        if text.strip(" \t\r"):
            break
        pos, line_no = eol + 1, line_no + 1
    try:
        cmap = parse_header(text)
    except ValueError as e:
        raise ReplayError(path, f"line {line_no}: {e}") from e
    if cmap is None:
        raise ReplayError(path, f"line {line_no}: expected the nvidia-smi header line, found "
                                f"{text[:60]!r}")
    synthetic = "time" not in cmap.roles
    if synthetic and interval_hint_s is None:
        raise ReplayError(path, "no timestamp column: pass --interval-hint (the sampling "
                                "interval) to time the samples")
    return LogPlan(str(path), size, block_bytes, cmap.text, line_no, eol + 1, synthetic,
                   round(utc_offset_s * 1e9))


def _read_head(fd: int, limit: int) -> bytes:
    """The file's first bytes up to its first line that is not blank (at most
    ``limit`` bytes: a longer first line is no header)."""
    out = b""
    while len(out) < limit:
        piece = os.pread(fd, min(65536, limit - len(out)), len(out))
        if not piece:
            break
        out += piece
        if out.strip(b" \t\r\n"):
            eol = out.find(b"\n", len(out) - len(piece))
            if eol >= 0 and out[:eol].strip(b" \t\r\n"):
                break
    return out


@dataclass(slots=True)
class ParsedBlock:
    """One block of a log, parsed (by :func:`parse_block`, in any thread or process).

    GPUs are numbered within the block, in order of first appearance (``gpus``, from
    each one's first good line); lines from 1 at the block's first line.

    Attributes:
        index: the block's number.
        header: the header in effect at its start (assumed), ``end_header`` at its end.
        lines: lines the block holds, good, bad and blank.
        gpu, timestamp_ns, values, throttle, line: per good row, its GPU, time (-1: the
            log has none), the kernel's slots (clock MHz, utilization %, power W),
            clock-event mask and line.
        bad: the bad lines.
        gpus: the block's GPUs.
        roles: the columns' roles under every header in effect in the block.
    """

    index: int
    header: str
    end_header: str
    lines: int
    gpu: IntArray
    timestamp_ns: IntArray
    values: FloatArray
    throttle: IntArray
    line: IntArray
    bad: list[BadRow]
    gpus: list[GpuKey]
    roles: frozenset[str]


def parse_block(plan: LogPlan, index: int, header: str) -> ParsedBlock:
    """Parse block ``index`` of a planned log with ``header`` (one the log has) in
    effect at its start. Pure: it reads the file and nothing else, so blocks can be
    parsed in any thread or process and in any order.

    Raises:
        ReplayError: if the file cannot be read.
    """
    try:
        fd = os.open(plan.path, os.O_RDONLY)
        try:
            return _BlockParser(plan, index, header).parse(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise ReplayError(plan.path, f"read failed: {e}") from e


class _BlockParser:
    """The parse of one block: the kernel over its lines, then the few things Python
    decides (mid-file headers, numbers off the kernel's exact path, new GPUs' names).

    The block is read and scanned a piece at a time (:data:`PIECE_BYTES`, by the same
    rule as blocks: the lines that start in the piece), so that the bytes the kernel
    scans are still in the core's cache; the lines, the GPU table and the columns carry
    on from piece to piece.
    """

    def __init__(self, plan: LogPlan, index: int, header: str) -> None:
        self.plan = plan
        self.index = index
        self.header = header
        self.map = _header_map(header)
        self.roles = set(self.map.roles)
        self.table = k.new_table()
        self.state = np.zeros(5, dtype=np.int64)
        self.gpus: list[GpuKey] = []
        self.bad: list[BadRow] = []
        lo, hi = plan.span(index)
        self.rows = max((hi - lo) // 64, 0) + 16
        self.out_ts = np.empty(self.rows, np.int64)
        self.out_gpu = np.empty(self.rows, np.int64)
        self.out_thr = np.empty(self.rows, np.int64)
        self.out_line = np.empty(self.rows, np.int64)
        # Rows under a header without some column are given NaN there after the scan.
        self.out_vals = np.empty((len(_SLOTS), self.rows))
        self.small = [np.empty(64, np.int64) for _ in range(10)]
        self.dropped: list[int] = []  # rows whose number Python found bad

    def parse(self, fd: int) -> ParsedBlock:
        lo, hi = self.plan.span(self.index)
        line_no = 1
        for piece in range(lo, max(hi, lo + 1), PIECE_BYTES):
            lines = read_line_range(fd, self.plan.data_start, piece,
                                    min(piece + PIECE_BYTES, hi), self.plan.block_bytes,
                                    getattr(_scratch, "words", None))
            # The buffer is this thread's for its next piece: no pages to fault in again.
            _scratch.words = lines.words
            line_no = self._scan(lines, line_no)
        rows = int(self.state[k.S_ROWS])
        keep = np.ones(rows, dtype=np.bool_)
        keep[self.dropped] = False
        self.bad.sort(key=lambda b: b.line)
        ts, gpu, vals = self.out_ts[:rows], self.out_gpu[:rows], self.out_vals[:, :rows]
        thr, line = self.out_thr[:rows], self.out_line[:rows]
        if self.dropped:
            ts, gpu, vals, thr, line = ts[keep], gpu[keep], vals[:, keep], thr[keep], line[keep]
        return ParsedBlock(
            index=self.index, header=self.header, end_header=self.map.text, lines=line_no - 1,
            gpu=gpu, timestamp_ns=ts, values=vals, throttle=thr, line=line, bad=self.bad,
            gpus=self.gpus, roles=frozenset(self.roles))

    def _scan(self, lines: LineRange, line_no: int) -> int:
        """Scan one piece's lines; the number of the line after them."""
        data, end = lines.data, lines.end
        st = self.state
        st[[k.S_BAD, k.S_NEW, k.S_SLOW]] = 0
        # The column map from each offset on: a mid-file header changes it.
        maps: list[tuple[int, ColumnMap]] = []
        pos = lines.start
        max_line = self.plan.block_bytes
        while True:
            cmap = self.map
            maps.append((pos, cmap))
            rows_before = int(st[k.S_ROWS])
            pos, line_no, stop = k.scan(
                data, lines.words, pos, end, line_no, max_line, cmap.kinds, cmap.slots,
                cmap.units, cmap.unit_start, cmap.unit_len, cmap.unit_words, cmap.key_mode,
                self.plan.utc_offset_ns, *self.table, st, self.out_ts, self.out_gpu,
                self.out_vals, self.out_thr, self.out_line, *self.small)
            for slot, role in enumerate(_SLOTS):
                if role not in cmap.roles:
                    self.out_vals[slot, rows_before:int(st[k.S_ROWS])] = np.nan
            if stop == 0:
                break
            if stop == 2:
                self._grow()
                continue
            eol = _eol(data[:end], pos)
            reason = self._header(bytes(data[pos:eol]).decode("utf-8", "replace"))
            if reason is not None:
                self.bad.append(BadRow(line_no, reason))
            pos, line_no = eol + 1, line_no + 1
        self._decide(data[:end], maps)
        if lines.long_line:
            self.bad.append(BadRow(line_no, f"line longer than {max_line} bytes (not text?)"))
            line_no += 1
        if lines.tail is not None and lines.tail.strip(b" \t\r"):
            self.bad.append(BadRow(line_no, "truncated last line (no newline at end of "
                                            "file)"))
            line_no += 1
        return line_no

    def _grow(self) -> None:
        st = self.state
        if st[k.S_ROWS] >= self.rows:
            self.out_ts, self.out_gpu, self.out_thr, self.out_line = (
                np.resize(a, 2 * self.rows)
                for a in (self.out_ts, self.out_gpu, self.out_thr, self.out_line))
            self.out_vals = np.concatenate(
                [self.out_vals, np.empty((len(_SLOTS), self.rows))], axis=1)
            self.rows *= 2
        self.small = [np.resize(a, a.shape[0] * 2) for a in self.small]

    def _header(self, text: str) -> str | None:
        """Take a mid-file header line: None if taken, else why the line is bad."""
        try:
            cmap = parse_header(text)
        except ValueError as e:
            return f"header line not taken: {e}"
        if cmap is None:
            return "not a data line"
        if "time" not in cmap.roles and not self.plan.synthetic:
            return "header line without a timestamp column not taken"
        self.map = cmap
        self.roles |= set(cmap.roles)
        return None

    def _decide(self, data: ByteArray, maps: list[tuple[int, ColumnMap]]) -> None:
        """What the kernel left to Python in a piece (whose bytes are ``data``): the
        names of its new GPUs, numbers off the exact path, bad lines' reasons."""
        st = self.state
        n_bad, n_new, n_slow = (int(st[i]) for i in (k.S_BAD, k.S_NEW, k.S_SLOW))
        bad_line, bad_code, bad_aux, bad_off, new_gpu, new_off = self.small[:6]
        slow_row, slow_col, slow_off, slow_line = self.small[6:]
        out_vals, out_gpu = self.out_vals, self.out_gpu

        def map_at(off: int) -> ColumnMap:
            return next(m for start, m in reversed(maps) if start <= off)

        def line_at(off: int) -> list[str]:
            text = bytes(data[off:_eol(data, off)]).decode("utf-8", "replace")
            return text.rstrip("\r").split(",")

        for i in range(n_new):
            off = int(new_off[i])
            self._new_gpu(int(new_gpu[i]), line_at(off), map_at(off))
        dropped: set[int] = set()
        for i in range(n_slow):
            row, col, off = int(slow_row[i]), int(slow_col[i]), int(slow_off[i])
            cmap = map_at(off)
            value = python_number(line_at(off)[col], COLUMNS[cmap.names[col]][1])
            if value is None:
                if row not in dropped:
                    self.bad.append(BadRow(int(slow_line[i]), f"bad number in column {col + 1}"))
                dropped.add(row)
            else:
                out_vals[int(cmap.slots[col]), row] = value
        for i in range(n_slow):
            row, off = int(slow_row[i]), int(slow_off[i])
            if row not in dropped and out_gpu[row] < 0:
                out_gpu[row] = self._register(line_at(off), map_at(off))
        self.dropped.extend(sorted(dropped))
        for i in range(n_bad):
            code, aux = int(bad_code[i]), int(bad_aux[i])
            reason = (f"line longer than {self.plan.block_bytes} bytes (not text?)"
                      if code == k.BAD_LONG else REASONS[code].format(
                          want=map_at(int(bad_off[i])).width, aux=aux, col=aux + 1))
            self.bad.append(BadRow(int(bad_line[i]), reason))

    def _register(self, fields: list[str], cmap: ColumnMap) -> int:
        """The id of the (valid) identity on a line whose numbers Python parsed,
        registering it if it is new."""
        key = fields[cmap.roles[next(r for r in ("uuid", "pci", "index") if r in cmap.roles)]]
        raw = key.strip(" \t").encode()
        words = padded_words(raw)
        table, key_words, lengths = self.table
        gid, slot = k._lookup(words, 0, len(raw), table, key_words, lengths)
        if gid < 0:
            gid = k._insert(words, 0, len(raw), slot, table, key_words, lengths, self.state)
            self._new_gpu(gid, fields, cmap)
        return int(gid)

    def _new_gpu(self, gid: int, fields: list[str], cmap: ColumnMap) -> None:
        def text(role: str) -> str | None:
            c = cmap.roles.get(role)
            if c is None or c >= len(fields):
                return None
            t = fields[c].strip(" \t")
            return None if not t or t == "N/A" or t.startswith("[") else t

        index_text = text("index")
        max_clock = text("max_clock_mhz")
        clock = python_number(max_clock, "MHz") if max_clock else None
        uuid, pci = text("uuid"), text("pci")
        key = uuid or (f"pci:{pci}" if pci else None) or (
            f"index:{index_text}" if index_text else "index:?")
        while len(self.gpus) <= gid:
            self.gpus.append(GpuKey(key=f"?{len(self.gpus)}"))
        self.gpus[gid] = GpuKey(
            key=key, uuid=uuid, index=int(index_text) if index_text and index_text.isdigit()
            else None, name=text("name"),
            max_sm_clock_mhz=clock if clock is not None and clock > 0 else None)


class BlockSource(Protocol):
    """Where a reader gets its parsed blocks: parsed in place, or by workers ahead of it
    (:class:`agent.replay.parallel.ParallelBlocks`)."""

    def parsed(self, plan: LogPlan, index: int) -> ParsedBlock:
        """Block ``index`` of ``plan`` parsed with its first header in effect.

        Raises:
            ReplayError: if the file cannot be read.
        """
        ...


class InPlace:
    """Blocks parsed when asked for, in the caller's thread."""

    def parsed(self, plan: LogPlan, index: int) -> ParsedBlock:
        return parse_block(plan, index, plan.header)


class NvidiaSmiReader:
    """Streams an nvidia-smi CSV log as column chunks, one per block of a few MB.

    The blocks are parsed on their own (each with its own table of GPUs, its lines
    numbered from 1) by ``blocks``, in place or ahead on other cores; the reader joins
    them in file order: GPUs numbered in order of first appearance in the file, line
    numbers counted on, a block parsed again when a header before it changed the
    columns. The chunks are the same however and wherever the blocks were parsed.

    Args:
        path: the log.
        utc_offset_s: the logging machine's UTC offset (its timestamps are local time).
        interval_hint_s: sampling interval, used to time a log without a timestamp
            column (sample ``k`` of a GPU at ``k x interval``).
        block_bytes: block size.
        plan: the log's plan, if already made (:func:`plan_log` with these arguments).
        blocks: where the parsed blocks come from (default: parsed in place).
    """

    def __init__(self, path: Path, utc_offset_s: float = 0.0,
                 interval_hint_s: float | None = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES, plan: LogPlan | None = None,
                 blocks: BlockSource | None = None) -> None:
        self.path = path
        self._utc_offset_s = utc_offset_s
        self._interval_hint_s = interval_hint_s
        self._block_bytes = block_bytes
        self._plan = plan
        self._blocks = blocks or InPlace()
        self._gpus: list[GpuKey] = []
        self._ids: dict[str, int] = {}
        self._clock: SyntheticClock | None = None

    def chunks(self) -> Iterator[ColumnChunk]:
        """Raises: ReplayError for an unreadable file, no header, a bad unit."""
        plan = self._plan or plan_log(self.path, self._utc_offset_s, self._interval_hint_s,
                                      self._block_bytes)
        if plan.synthetic:
            assert self._interval_hint_s is not None
            self._clock = SyntheticClock(round(self._interval_hint_s * 1e9))
        header = plan.header
        lines_before = plan.header_line
        for index in range(plan.blocks):
            block = self._blocks.parsed(plan, index)
            if block.header != header:
                block = parse_block(plan, index, header)
            header = block.end_header
            chunk = self._chunk(block, lines_before)
            lines_before += block.lines
            chunk.bytes_done = plan.span(index)[1]
            chunk.rows_done = lines_before
            yield chunk

    def _chunk(self, block: ParsedBlock, lines_before: int) -> ColumnChunk:
        """A parsed block as a chunk of the file: global GPU ids and line numbers."""
        ids = np.array([self._id(key) for key in block.gpus] or [0], dtype=np.int64)
        gpu = ids[block.gpu]
        ts = block.timestamp_ns
        if self._clock is not None:
            ts = self._clock.stamp(gpu, len(self._gpus))
        vals = block.values
        fields: dict[str, FloatArray] = {}
        if "sm_clock_mhz" in block.roles:
            fields["sm_clock_mhz"] = vals[0]
        if "gpu_util_pct" in block.roles:
            fields["gpu_util_pct"] = vals[1]
        if "power_w" in block.roles:
            fields["power_mw"] = vals[2] * 1000.0
        bad = [BadRow(b.line + lines_before, b.reason) for b in block.bad]
        return ColumnChunk(gpu=gpu, timestamp_ns=ts, wall_ns=ts, fields=fields,
                           gpus=tuple(self._gpus), bad=bad,
                           throttle_reasons=block.throttle if "throttle" in block.roles
                           else None, line=block.line + lines_before,
                           wall_clock=self._clock is None)

    def _id(self, key: GpuKey) -> int:
        """The file's number of a GPU (in order of first appearance)."""
        gid = self._ids.get(key.key)
        if gid is None:
            gid = self._ids[key.key] = len(self._gpus)
            self._gpus.append(key)
        return gid
