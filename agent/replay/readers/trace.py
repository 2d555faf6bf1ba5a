"""flopledger's own trace format: every sample a source gave, columnar and compact.

A trace keeps exactly what the accountant was fed (monotonic and wall time, every
SampleBatch float field, the GPU's up flag and clock-event mask, the run attribution of
every sample, and the simulator's ground truth where there is one), so a replay of it
gives the live totals bit for bit.

Layout (all integers little-endian)::

    "FLOPTRC1"                                     8 bytes of magic
    "HDR1" u32 n  u32 crc  JSON (n bytes)          the header
    "BLK1" u32 n  u32 crc  JSON (n bytes) payload  a block of rows, repeated
    "END1" u32 n  u32 crc  JSON (n bytes)          the trailer: {"blocks": k, "rows": r}

(``crc``: CRC-32 of the JSON.)

The header holds ``{"format": "flopledger-trace", "version": 1, "source": ...,
"devices": [DeviceInfo as JSON, ...], "meta": {...}}``. A block's JSON holds its row
count, its columns (``name``, NumPy ``dtype``, ``nbytes``, ``crc32``, ``shuffle``) and
every attribution its rows use, by index (``{"3": {"split": ..., "shares": [{"run":
RunMeta as JSON, "weight": w}]}}``), so that each block stands alone; the payload is each column's
bytes, zlib-compressed, one after another, in that order. ``shuffle`` columns are
byte-shuffled before compression (byte k of every value together), which lets zlib see
the slowly changing high bytes of timestamps and readings. Columns: ``gpu`` (int32
position in ``devices``), ``timestamp_ns``, ``wall_ns`` (int64), ``up`` (uint8), the
float fields of :data:`~agent.sources.base.FLOAT_FIELDS` (float64, NaN unknown),
``throttle_reasons`` (int64), ``attribution`` (int32 index into the table, -1 none) and
optionally ``sim_true_flop`` (float64).

Reading is streamed block by block. A block whose checksum or shape is wrong is skipped
and reported (by block number) and reading resumes at the next block tag; a missing
trailer (a writer that never closed) is reported, the blocks before it kept.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from agent.accounting.runs import GpuAttribution, GpuShare, RunMeta
from agent.replay.readers.base import BadRow, ColumnChunk, GpuKey, ReplayError, empty_chunk
from agent.replay.readers.lines import open_binary
from agent.sources.base import FLOAT_FIELDS, ActivityKind, DeviceInfo, SampleBatch

MAGIC = b"FLOPTRC1"
FORMAT = "flopledger-trace"
VERSION = 1
_FRAME = struct.Struct("<4sII")  # tag, JSON length, CRC-32 of the JSON
_MAX_JSON = 16 << 20
_MAX_ROWS = 1 << 26  # per block: bounds what a corrupt block can make us allocate
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("gpu", "<i4"), ("timestamp_ns", "<i8"), ("wall_ns", "<i8"), ("up", "|u1"),
    *((name, "<f8") for name in FLOAT_FIELDS),
    ("throttle_reasons", "<i8"), ("attribution", "<i4"),
)
# DeviceInfo's optional facts and their JSON types.
_FACTS: tuple[tuple[str, type], ...] = (
    ("pci_device_id", int), ("compute_capability", str), ("sm_count", int),
    ("mig_parent_uuid", str),
)


def _device_json(d: DeviceInfo) -> dict[str, Any]:
    doc = asdict(d)
    doc["activity_kind"] = d.activity_kind.name
    return doc


def _device(d: Any) -> DeviceInfo:
    """Raises: ValueError, TypeError, KeyError for a malformed device entry.

    ``pci_device_id``, ``compute_capability``, ``sm_count`` and ``mig_parent_uuid`` are
    optional: traces written before the agent recorded them lack them."""
    clock = d["max_sm_clock_mhz"]
    if not isinstance(d["index"], int) or not isinstance(d["uuid"], str) or not isinstance(
            d["name"], str) or not isinstance(d["spec_key"], str | None) or not (
            clock is None or isinstance(clock, int | float)):
        raise ValueError(f"bad device entry {str(d)[:80]}")
    facts = {name: d.get(name) for name, _ in _FACTS}
    for name, kind in _FACTS:
        value = facts[name]
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"bad {name} {str(value)[:40]!r} in device entry {d['index']}")
    return DeviceInfo(index=d["index"], uuid=d["uuid"], name=d["name"], spec_key=d["spec_key"],
                      max_sm_clock_mhz=None if clock is None else float(clock),
                      activity_kind=ActivityKind[d["activity_kind"]], source=str(d["source"]),
                      **facts)


def _attribution_json(a: GpuAttribution) -> dict[str, Any]:
    return {"split": a.split, "shares": [
        {"run": {**asdict(s.run), "base_models": list(s.run.base_models)}, "weight": s.weight}
        for s in a.shares]}


def _attribution(doc: Any) -> GpuAttribution:
    """Raises: ValueError, TypeError, KeyError for a malformed entry."""
    shares = []
    for share in doc["shares"]:
        run = dict(share["run"])
        run["base_models"] = tuple(run.get("base_models", ()))
        shares.append(GpuShare(RunMeta(**run), float(share["weight"])))
    if not shares:
        raise ValueError("no shares")
    return GpuAttribution(tuple(shares), str(doc["split"]))


def _encode(values: np.ndarray[Any, Any], dtype: str) -> tuple[bytes, bool]:
    raw = np.ascontiguousarray(values, dtype=np.dtype(dtype))
    shuffle = raw.dtype.itemsize > 1
    data = raw.view(np.uint8).reshape(-1, raw.dtype.itemsize).T.tobytes() if shuffle \
        else raw.tobytes()
    return zlib.compress(data, 1), shuffle


class TraceWriter:
    """Writes SampleBatches (and who each GPU worked for) to a trace file.

    Args:
        path: the file (replaced if it exists).
        devices: the source's GPUs, in batch order.
        source: what recorded it (``simulated``, ``nvml``).
        meta: free-form facts for the header (scenario, seed, interval).
        block_rows: rows per compressed block.

    Raises:
        OSError: if the file cannot be written.
    """

    def __init__(self, path: Path, devices: Sequence[DeviceInfo], source: str,
                 meta: dict[str, Any] | None = None, block_rows: int = 65536) -> None:
        self.path = path
        self._f = path.open("wb")
        self._n_gpus = len(devices)
        self._block_rows = block_rows
        self._parts: list[dict[str, np.ndarray[Any, Any]]] = []
        self._buffered = 0
        self._table: dict[str, int] = {}
        self._entries: list[dict[str, Any]] = []
        self._used: set[int] = set()
        self.blocks = 0
        self.rows = 0
        self._f.write(MAGIC)
        self._frame(b"HDR1", {"format": FORMAT, "version": VERSION, "source": source,
                              "devices": [_device_json(d) for d in devices],
                              "meta": meta or {}})

    def _frame(self, tag: bytes, doc: dict[str, Any], payload: bytes = b"") -> None:
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        self._f.write(_FRAME.pack(tag, len(body), zlib.crc32(body)) + body + payload)

    def write(self, batch: SampleBatch,
              attributions: Sequence[GpuAttribution] | None = None) -> None:
        """Append one tick: one row per GPU."""
        n = batch.n_gpus
        index = np.full(n, -1, dtype=np.int32)
        for i, a in enumerate(attributions or ()):
            key = json.dumps(_attribution_json(a), sort_keys=True)
            k = self._table.get(key)
            if k is None:
                k = self._table[key] = len(self._table)
                self._entries.append(_attribution_json(a))
            self._used.add(k)
            index[i] = k
        part: dict[str, np.ndarray[Any, Any]] = {
            "gpu": np.arange(n, dtype=np.int32), "timestamp_ns": batch.timestamp_ns,
            "wall_ns": np.full(n, batch.wall_time_ns, dtype=np.int64), "up": batch.up,
            "throttle_reasons": batch.throttle_reasons, "attribution": index,
            **{name: getattr(batch, name) for name in FLOAT_FIELDS},
        }
        if batch.sim_true_flop_total is not None:
            part["sim_true_flop"] = batch.sim_true_flop_total
        self._parts.append(part)
        self._buffered += n
        if self._buffered >= self._block_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one block."""
        if not self._parts:
            return
        columns = list(_COLUMNS)
        if all("sim_true_flop" in p for p in self._parts):
            columns.append(("sim_true_flop", "<f8"))
        described, payload = [], []
        for name, dtype in columns:
            data, shuffle = _encode(np.concatenate([p[name] for p in self._parts]), dtype)
            described.append({"name": name, "dtype": dtype, "nbytes": len(data),
                              "crc32": zlib.crc32(data), "shuffle": shuffle})
            payload.append(data)
        self._frame(b"BLK1", {"rows": self._buffered, "columns": described,
                              "attributions": {str(k): self._entries[k]
                                               for k in sorted(self._used)}},
                    b"".join(payload))
        self.blocks += 1
        self.rows += self._buffered
        self._parts, self._buffered, self._used = [], 0, set()

    def close(self) -> None:
        """Write the last block and the trailer."""
        if self._f.closed:
            return
        self.flush()
        self._frame(b"END1", {"blocks": self.blocks, "rows": self.rows})
        self._f.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TraceReader:
    """Streams a trace as column chunks, one per block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.devices: tuple[DeviceInfo, ...] = ()
        self.source = ""
        self.meta: dict[str, Any] = {}
        self.down_rows = 0

    def chunks(self) -> Iterator[ColumnChunk]:
        """Raises: ReplayError if the file is not a trace or its header is unreadable."""
        with open_binary(self.path) as f:
            try:
                yield from self._read(f)
            except OSError as e:
                raise ReplayError(self.path, f"read failed: {e}") from e

    def _header(self, f: Any) -> tuple[GpuKey, ...]:
        if f.read(len(MAGIC)) != MAGIC:
            raise ReplayError(self.path, "not a flopledger trace (bad magic bytes)")
        frame = f.read(_FRAME.size)
        if len(frame) < _FRAME.size or _FRAME.unpack(frame)[0] != b"HDR1":
            raise ReplayError(self.path, "trace header missing")
        _, size, crc = _FRAME.unpack(frame)
        try:
            if size > _MAX_JSON:
                raise ValueError(f"header of {size} bytes")
            body = f.read(size)
            if zlib.crc32(body) != crc:
                raise ValueError("header fails its checksum")
            doc = json.loads(body)
            if doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise ValueError(f"format {doc.get('format')!r} v{doc.get('version')!r}")
            devices = [_device(d) for d in doc["devices"]]
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError,
                RecursionError) as e:
            raise ReplayError(self.path, f"unreadable trace header: {e}") from e
        self.devices, self.source, self.meta = tuple(devices), str(doc.get("source", "")), \
            dict(doc.get("meta") or {})
        return tuple(GpuKey(key=d.uuid, uuid=d.uuid, index=d.index, name=d.name,
                            spec_key=d.spec_key, max_sm_clock_mhz=d.max_sm_clock_mhz,
                            activity_kind=d.activity_kind, pci_device_id=d.pci_device_id,
                            compute_capability=d.compute_capability, sm_count=d.sm_count)
                     for d in devices)

    def _read(self, f: Any) -> Iterator[ColumnChunk]:
        gpus = self._header(f)
        table: dict[int, GpuAttribution] = {}
        block = 0
        rows_done = 0
        while True:
            start = f.tell()
            frame = f.read(_FRAME.size)
            if len(frame) < _FRAME.size:
                yield self._empty(gpus, [BadRow(block + 1, "no end marker: the trace was not "
                                                "closed (the blocks before are kept)")], f,
                                  rows_done)
                return
            tag, size, crc = _FRAME.unpack(frame)
            body = f.read(size) if tag in (b"BLK1", b"END1") and size <= _MAX_JSON else b""
            if tag == b"END1" and len(body) == size and zlib.crc32(body) == crc:
                return
            block += 1
            try:
                if tag != b"BLK1" or len(body) != size or zlib.crc32(body) != crc:
                    raise ValueError(f"corrupt frame at byte {start}")
                rows, columns, entries = self._block(f, json.loads(body))
            except (ValueError, TypeError, KeyError, AttributeError, zlib.error,
                    UnicodeDecodeError, RecursionError) as e:
                bad = [BadRow(block, f"block {block} skipped: {e}")]
                found = _resync(f, start + 1)
                if not found:
                    bad.append(BadRow(block, "no end marker after the corruption"))
                yield self._empty(gpus, bad, f, rows_done)
                if not found:
                    return
                continue
            table.update(entries)
            chunk = self._chunk(columns, gpus, table, [], rows_done)
            rows_done += rows
            chunk.bytes_done, chunk.rows_done = f.tell(), rows_done
            yield chunk

    @staticmethod
    def _block(f: Any, doc: Any) -> tuple[int, dict[str, np.ndarray[Any, Any]],
                                         dict[int, GpuAttribution]]:
        """A block's rows, columns and attributions.

        Raises:
            ValueError, TypeError, KeyError, zlib.error: for anything malformed.
        """
        rows = int(doc["rows"])
        if not 0 <= rows <= _MAX_ROWS:
            raise ValueError(f"{rows} rows")
        columns = {}
        for col in doc["columns"]:
            nbytes = int(col["nbytes"])
            if not 0 <= nbytes <= _MAX_ROWS * 8 + 1024:
                raise ValueError(f"column of {nbytes} bytes")
            data = f.read(nbytes)
            if len(data) != nbytes or zlib.crc32(data) != int(col["crc32"]):
                raise ValueError(f"column {col['name']!r} fails its checksum")
            columns[str(col["name"])] = _decode(data, str(col["dtype"]), bool(col["shuffle"]),
                                                rows)
        entries = {int(k): _attribution(a) for k, a in doc.get("attributions", {}).items()}
        return rows, columns, entries

    @staticmethod
    def _empty(gpus: tuple[GpuKey, ...], bad: list[BadRow], f: Any,
               rows_done: int) -> ColumnChunk:
        return empty_chunk(gpus, bad, f.tell() if f is not None else 0, rows_done)

    def _chunk(self, columns: dict[str, np.ndarray[Any, Any]], gpus: tuple[GpuKey, ...],
               table: dict[int, GpuAttribution], bad: list[BadRow],
               first_row: int) -> ColumnChunk:
        missing = [name for name, _ in _COLUMNS if name not in columns]
        if missing:
            bad.append(BadRow(first_row + 1, f"block without columns {missing}: skipped"))
            return self._empty(gpus, bad, None, first_row)
        gpu = columns["gpu"].astype(np.int64)
        attribution = columns["attribution"].astype(np.int64)
        known = np.zeros(max(table, default=-1) + 2, dtype=np.bool_)
        known[0] = True  # -1: no attribution
        known[np.array(sorted(table), dtype=np.int64) + 1] = True
        ok = (gpu >= 0) & (gpu < len(gpus)) & (columns["up"] <= 1) & (attribution >= -1) & (
            attribution < known.shape[0] - 1)
        ok[ok] = known[attribution[ok] + 1]
        for r in np.flatnonzero(~ok)[:100]:
            bad.append(BadRow(first_row + int(r) + 1, "row with an unknown GPU, up flag or "
                                                      "attribution"))
        if (~ok).sum() > 100:
            bad.append(BadRow(first_row + 1, f"{int((~ok).sum()) - 100} more bad rows in block"))
        up = ok & (columns["up"] == 1)
        self.down_rows += int((ok & ~up).sum())
        return ColumnChunk(
            gpu=gpu[up], timestamp_ns=columns["timestamp_ns"][up], wall_ns=columns["wall_ns"][up],
            fields={name: columns[name][up] for name in FLOAT_FIELDS}, gpus=gpus, bad=bad,
            throttle_reasons=columns["throttle_reasons"][up],
            attribution=attribution[up] if (attribution[up] >= 0).any() else None,
            attribution_table=tuple(table.get(i, _NO_RUN) for i in range(known.shape[0] - 1)),
            sim_true_flop=columns["sim_true_flop"][up] if "sim_true_flop" in columns else None,
            line=first_row + 1 + np.flatnonzero(up))


_NO_RUN = GpuAttribution((GpuShare(RunMeta("unattributed"), 1.0),), "none")


def _decode(data: bytes, dtype: str, shuffle: bool, rows: int) -> np.ndarray[Any, Any]:
    """Raises: ValueError (or zlib.error) if the column does not have ``rows`` values."""
    dt = np.dtype(dtype)
    if dt.kind not in "iuf" or dt.itemsize > 8:
        raise ValueError(f"dtype {dtype!r}")
    expected = rows * dt.itemsize
    inflate = zlib.decompressobj()
    # Never inflate more than the column can hold: a corrupt block is not a zip bomb.
    raw = inflate.decompress(data, expected + 1)
    if len(raw) != expected or inflate.unconsumed_tail or not inflate.eof:
        raise ValueError(f"column does not hold {rows} values of {dtype}")
    flat = np.frombuffer(raw, dtype=np.uint8)
    if shuffle:
        flat = flat.reshape(dt.itemsize, rows).T.copy().reshape(-1)
    return flat.view(dt).astype(dt.newbyteorder("="), copy=False)


def _resync(f: Any, offset: int) -> bool:
    """Move to the next block or end tag after ``offset``; False if there is none."""
    f.seek(offset)
    carry = b""
    while True:
        piece = f.read(1 << 20)
        if not piece:
            return False
        window = carry + piece
        hits = [i for i in (window.find(b"BLK1"), window.find(b"END1")) if i >= 0]
        if hits:
            f.seek(offset - len(carry) + min(hits))
            return True
        carry = window[-3:]
        offset += len(piece)
