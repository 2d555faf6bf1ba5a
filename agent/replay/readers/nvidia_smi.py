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
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.replay.readers import smi_kernel as k
from agent.replay.readers.base import BadRow, ColumnChunk, GpuKey, ReplayError, SyntheticClock
from agent.replay.readers.lines import DEFAULT_BLOCK_BYTES, ByteArray, line_blocks, open_binary
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
    key_mode: int
    roles: dict[str, int]  # role -> column

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
        key_mode=key_mode, roles=roles)


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


class NvidiaSmiReader:
    """Streams an nvidia-smi CSV log as column chunks (one per block of a few MB).

    Args:
        path: the log.
        utc_offset_s: the logging machine's UTC offset (its timestamps are local time).
        interval_hint_s: sampling interval, used to time a log without a timestamp
            column (sample ``k`` of a GPU at ``k x interval``).
        block_bytes: read size.
    """

    def __init__(self, path: Path, utc_offset_s: float = 0.0,
                 interval_hint_s: float | None = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.path = path
        self._utc_offset_ns = round(utc_offset_s * 1e9)
        self._interval_hint_s = interval_hint_s
        self._block_bytes = block_bytes
        self._table = k.new_table()
        self._state = np.zeros(5, dtype=np.int64)
        self._gpus: list[GpuKey] = []
        self._map: ColumnMap | None = None
        self._clock: SyntheticClock | None = None
        self.header_lines = 0

    def chunks(self) -> Iterator[ColumnChunk]:
        """Raises: ReplayError for an unreadable file, no header, a bad unit."""
        with open_binary(self.path) as f:
            line_no = 1
            try:
                for block in line_blocks(f, self._block_bytes):
                    bad = block.overlong_rows(
                        line_no, f"line longer than {self._block_bytes} bytes (not text?)")
                    line_no += block.overlong_before
                    chunk, line_no = self._parse(block.data, line_no, bad)
                    if block.tail is not None and block.tail.strip(b" \t\r"):
                        bad.append(BadRow(line_no, "truncated last line (no newline at end "
                                                   "of file)"))
                        line_no += 1
                    chunk.bytes_done = block.bytes_done
                    chunk.rows_done = line_no - 1
                    yield chunk
            except OSError as e:
                raise ReplayError(self.path, f"read failed: {e}") from e
        if self._map is None:
            raise ReplayError(self.path, "no nvidia-smi header line (record with "
                                         "--format=csv, not noheader)")

    def _start(self, text: str, line_no: int) -> str | None:
        """Take a header line: None if taken, else why not (a mid-file header that
        cannot be taken is a bad line; the first one failing is a ReplayError)."""
        first = self._map is None
        try:
            cmap = parse_header(text)
        except ValueError as e:
            if first:
                raise ReplayError(self.path, f"line {line_no}: {e}") from e
            return f"header line not taken: {e}"
        if cmap is None:
            return "not a data line"
        if "time" not in cmap.roles and self._clock is None:
            if not first:
                return "header line without a timestamp column not taken"
            if self._interval_hint_s is None:
                raise ReplayError(self.path, "no timestamp column: pass --interval-hint "
                                             "(the sampling interval) to time the samples")
            self._clock = SyntheticClock(round(self._interval_hint_s * 1e9))
        self._map = cmap
        self.header_lines += 1
        return None

    def _parse(self, data: ByteArray, line_no: int,
               bad: list[BadRow]) -> tuple[ColumnChunk, int]:
        n = int(data.shape[0])
        pos = 0
        while pos < n and self._map is None:
            eol = _eol(data, pos)
            text = bytes(data[pos:eol]).decode("utf-8", "replace")
            if text.strip(" \t\r") and self._start(text, line_no) is not None:
                raise ReplayError(self.path, f"line {line_no}: expected the nvidia-smi "
                                             f"header line, found {text[:60]!r}")
            pos, line_no = eol + 1, line_no + 1
        cap = n // 64 + 16
        st = self._state
        st[[k.S_ROWS, k.S_BAD, k.S_NEW, k.S_SLOW]] = 0
        out_ts = np.empty(cap, np.int64)
        out_gpu = np.empty(cap, np.int64)
        out_thr = np.empty(cap, np.int64)
        out_line = np.empty(cap, np.int64)
        # NaN, not empty: rows under a header without some column leave it unwritten.
        out_vals = np.full((len(_SLOTS), cap), np.nan)
        small = [np.empty(64, np.int64) for _ in range(10)]
        # The column map from each offset on: a mid-file header changes it.
        maps: list[tuple[int, ColumnMap]] = []
        while self._map is not None:
            cmap = self._map
            maps.append((pos, cmap))
            pos, line_no, stop = k.scan(
                data, pos, n, line_no, cmap.kinds, cmap.slots, cmap.units, cmap.unit_start,
                cmap.unit_len, cmap.key_mode, self._utc_offset_ns, *self._table, st,
                out_ts, out_gpu, out_vals, out_thr, out_line, *small)
            if stop == 0:
                break
            if stop == 2:
                if st[k.S_ROWS] >= cap:
                    out_ts, out_gpu, out_thr, out_line = (
                        np.resize(a, 2 * cap) for a in (out_ts, out_gpu, out_thr, out_line))
                    out_vals = np.concatenate([out_vals, np.full((len(_SLOTS), cap), np.nan)],
                                              axis=1)
                    cap *= 2
                small = [np.resize(a, a.shape[0] * 2) for a in small]
                continue
            eol = _eol(data, pos)
            reason = self._start(bytes(data[pos:eol]).decode("utf-8", "replace"), line_no)
            if reason is not None:
                bad.append(BadRow(line_no, reason))
            pos, line_no = eol + 1, line_no + 1
        return self._finish(data, bad, maps, out_ts, out_gpu, out_vals, out_thr, out_line,
                            small), line_no

    def _finish(self, data: ByteArray, bad: list[BadRow], maps: list[tuple[int, ColumnMap]],
                out_ts: IntArray, out_gpu: IntArray, out_vals: FloatArray, out_thr: IntArray,
                out_line: IntArray, small: list[IntArray]) -> ColumnChunk:
        st = self._state
        rows, n_bad, n_new, n_slow = (int(st[i]) for i in (k.S_ROWS, k.S_BAD, k.S_NEW, k.S_SLOW))
        bad_line, bad_code, bad_aux, bad_off, new_gpu, new_off = small[:6]
        slow_row, slow_col, slow_off, slow_line = small[6:]

        def map_at(off: int) -> ColumnMap:
            return next(m for start, m in reversed(maps) if start <= off)

        def line_at(off: int) -> list[str]:
            text = bytes(data[off:_eol(data, off)]).decode("utf-8", "replace")
            return text.rstrip("\r").split(",")

        for i in range(n_new):
            off = int(new_off[i])
            self._new_gpu(int(new_gpu[i]), line_at(off), map_at(off))
        keep = np.ones(rows, dtype=np.bool_)
        for i in range(n_slow):
            row, col, off = int(slow_row[i]), int(slow_col[i]), int(slow_off[i])
            cmap = map_at(off)
            value = python_number(line_at(off)[col], COLUMNS[cmap.names[col]][1])
            if value is None:
                if keep[row]:
                    bad.append(BadRow(int(slow_line[i]), f"bad number in column {col + 1}"))
                keep[row] = False
            else:
                out_vals[int(cmap.slots[col]), row] = value
        for i in range(n_slow):
            row, off = int(slow_row[i]), int(slow_off[i])
            if keep[row] and out_gpu[row] < 0:
                out_gpu[row] = self._register(line_at(off), map_at(off))
        for i in range(n_bad):
            code, aux = int(bad_code[i]), int(bad_aux[i])
            bad.append(BadRow(int(bad_line[i]), REASONS[code].format(
                want=map_at(int(bad_off[i])).width, aux=aux, col=aux + 1)))
        bad.sort(key=lambda b: b.line)
        ts, gpu, vals, thr = out_ts[:rows], out_gpu[:rows], out_vals[:, :rows], out_thr[:rows]
        line = out_line[:rows]
        if not keep.all():
            ts, gpu, vals, thr, line = ts[keep], gpu[keep], vals[:, keep], thr[keep], line[keep]
        if self._clock is not None:
            ts = self._clock.stamp(gpu, len(self._gpus))
        fields: dict[str, FloatArray] = {}
        roles = {r for _, m in maps for r in m.roles}
        if "sm_clock_mhz" in roles:
            fields["sm_clock_mhz"] = vals[0].copy()
        if "gpu_util_pct" in roles:
            fields["gpu_util_pct"] = vals[1].copy()
        if "power_w" in roles:
            fields["power_mw"] = vals[2] * 1000.0
        return ColumnChunk(gpu=gpu, timestamp_ns=ts, wall_ns=ts, fields=fields,
                           gpus=tuple(self._gpus), bad=bad,
                           throttle_reasons=thr.copy() if "throttle" in roles else None,
                           line=line.copy(), wall_clock=self._clock is None)

    def _register(self, fields: list[str], cmap: ColumnMap) -> int:
        """The id of the (valid) identity on a line whose numbers Python parsed,
        registering it if it is new."""
        key = fields[cmap.roles[next(r for r in ("uuid", "pci", "index") if r in cmap.roles)]]
        raw = np.frombuffer(key.strip(" \t").encode(), dtype=np.uint8)
        table, text, lengths = self._table
        gid, slot = k._lookup(raw, 0, raw.shape[0], table, text, lengths)
        if gid < 0:
            gid = k._insert(raw, 0, raw.shape[0], slot, table, text, lengths, self._state)
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
        while len(self._gpus) <= gid:
            self._gpus.append(GpuKey(key=f"?{len(self._gpus)}"))
        self._gpus[gid] = GpuKey(
            key=key, uuid=uuid, index=int(index_text) if index_text and index_text.isdigit()
            else None, name=text("name"),
            max_sm_clock_mhz=clock if clock is not None and clock > 0 else None)
