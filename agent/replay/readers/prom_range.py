"""Reader of Prometheus ``/api/v1/query_range`` exports.

A file holds one or more responses of the HTTP API, as the API returns them
(``{"status":"success","data":{"resultType":"matrix","result":[{"metric":{...},
"values":[[<unix seconds>,"<value>"],...]},...]}}``; ``"vector"`` results of instant
queries, with one ``"value"`` each, are taken too): one per line (``curl ... >>
export.json``; the API answers on one line) or pretty-printed (``jq .``), one after
another (a pretty-printed response starts with a line holding only ``{``). Each
response may be a different query (one per series name) over the same
window, or the same queries over consecutive windows.

Series are those of :mod:`agent.replay.readers.promseries` (DCGM's or flopledger's own), joined by
GPU and timestamp: a sample of a GPU at time t has every field some series of that GPU
has at t (range queries step on the same grid, so they line up). ``flopledger_gpu_info``
gives a GPU's name, spec key and estimator. A series must keep its ``__name__`` (a raw
selector, not a function of it).

Memory: responses are decoded one at a time and joined in groups of consecutive
responses whose time ranges overlap; a group is emitted before the next one starts.
Prometheus caps a response at 11,000 points per series, so a group stays small unless
one response carries very many series. Bad entries (a response that is not JSON or not
a success, a series without a name or GPU, a point that is not ``[number, "float"]``
or is non-finite) are reported with the line the response starts on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.replay.readers.base import BadRow, ColumnChunk, GpuKey, ReplayError, empty_chunk
from agent.replay.readers.lines import DEFAULT_BLOCK_BYTES, line_blocks, open_binary
from agent.replay.readers.promseries import (
    FLOAT,
    INFO_METRIC,
    METRICS,
    TENSOR_FIELDS,
    RunTable,
    gpu_key,
    run_of,
    vendor_value,
)
from agent.sources.base import ActivityKind, FloatArray, IntArray

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass
class _Gpu:
    key: GpuKey
    # per field, every series' points and the line its response starts on
    fields: dict[str, list[tuple[IntArray, FloatArray, int]]] = field(default_factory=dict)
    runs: list[tuple[IntArray, int]] = field(default_factory=list)


def _depth(line: str) -> int:
    """Bracket depth change over a line of JSON, strings left out."""
    bare = _STRING.sub("", line)
    return bare.count("{") + bare.count("[") - bare.count("}") - bare.count("]")


class PromRangeReader:
    """Streams Prometheus range exports as column chunks, one per group of responses."""

    def __init__(self, path: Path, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.path = path
        self._block_bytes = block_bytes
        self._ids: dict[str, int] = {}
        self._gpus: list[GpuKey] = []
        self._info: dict[str, GpuKey] = {}
        self._runs = RunTable()
        self._group: dict[str, _Gpu] = {}
        self._group_end = -1
        self._ready: list[ColumnChunk] = []
        self.documents = 0

    def chunks(self) -> Iterator[ColumnChunk]:
        """Raises: ReplayError for an unreadable file."""
        line_no = 1
        pending: list[str] = []
        pending_line = 1
        depth = 0
        decoder = json.JSONDecoder()
        with open_binary(self.path) as f:
            try:
                for block in line_blocks(f, self._block_bytes):
                    bad = block.overlong_rows(line_no, "line longer than the read buffer")
                    line_no += block.overlong_before
                    text = bytes(block.data).decode("utf-8", "replace")
                    lines = text.split("\n")[:-1]
                    if block.tail is not None and block.tail.strip():
                        lines.append(block.tail.decode("utf-8", "replace"))
                    for line in lines:
                        opener = line.rstrip() in ("{", "[")
                        if pending and opener and not line[:1].isspace():
                            # An unindented "{": a new pretty-printed response, so the
                            # one before it was broken (it never closed).
                            self._documents("\n".join(pending), pending_line, decoder, bad)
                            pending, depth = [], 0
                        if pending:
                            pending.append(line)
                            depth += _depth(line)
                            if depth <= 0:
                                self._documents("\n".join(pending), pending_line, decoder, bad)
                                pending, depth = [], 0
                        elif opener:
                            pending, pending_line, depth = [line], line_no, _depth(line)
                        elif line.strip():
                            # A compact response on one line (as the API sends it): a
                            # broken one cannot swallow the lines after it.
                            self._documents(line, line_no, decoder, bad)
                        line_no += 1
                    if block.eof:
                        if pending:
                            bad.append(BadRow(pending_line, "truncated response at the end "
                                                            "of the file"))
                        self._emit()
                    yield from self._take(bad, block.bytes_done, line_no - 1)
            except OSError as e:
                raise ReplayError(self.path, f"read failed: {e}") from e

    def _take(self, bad: list[BadRow], bytes_done: int, rows_done: int) -> Iterator[ColumnChunk]:
        ready, self._ready = self._ready, []
        if not ready:
            ready = [empty_chunk(tuple(self._gpus), [], 0, 0)]
        ready[0].bad = bad + ready[0].bad
        for chunk in ready:
            chunk.bytes_done, chunk.rows_done = bytes_done, rows_done
            yield chunk

    def _documents(self, text: str, line: int, decoder: json.JSONDecoder,
                   bad: list[BadRow]) -> None:
        pos = 0
        while pos < len(text):
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos >= len(text):
                return
            try:
                doc, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                bad.append(BadRow(line, f"not a JSON response ({e.msg})"))
                return
            self.documents += 1
            self._document(doc, line, bad)

    def _document(self, doc: Any, line: int, bad: list[BadRow]) -> None:
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or doc.get("status") != "success" or \
                not isinstance(data, dict):
            error = doc.get("error") if isinstance(doc, dict) else None
            bad.append(BadRow(line, f"not a successful API response ({error or 'no data'})"))
            return
        kind = data.get("resultType")
        result = data.get("result")
        if kind not in ("matrix", "vector") or not isinstance(result, list):
            bad.append(BadRow(line, f"result type {kind!r}: expected matrix or vector"))
            return
        series = []
        start = None
        for i, entry in enumerate(result):
            parsed = self._series(entry, kind, i, line, bad)
            if parsed is not None:
                series.append(parsed)
                if parsed[1].size:
                    first = int(parsed[1][0])
                    start = first if start is None else min(start, first)
        if start is not None and start > self._group_end and self._group:
            self._emit()
        for metric, ts, values, labels in series:
            self._add(metric, ts, values, labels, line)

    def _series(self, entry: Any, kind: str, i: int, line: int, bad: list[BadRow],
                ) -> tuple[str, IntArray, FloatArray, dict[str, str]] | None:
        where = f"series {i}"
        labels = entry.get("metric") if isinstance(entry, dict) else None
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            bad.append(BadRow(line, f"{where}: no label set"))
            return None
        metric = labels.get("__name__", "")
        if metric != INFO_METRIC and metric not in METRICS:
            if not metric:
                bad.append(BadRow(line, f"{where}: no __name__ (export the raw series)"))
            return None
        if gpu_key(labels) is None:
            bad.append(BadRow(line, f"{where} ({metric}): no GPU label (UUID, uuid or gpu)"))
            return None
        points = entry.get("values") if kind == "matrix" else [entry.get("value")]
        if not isinstance(points, list):
            bad.append(BadRow(line, f"{where} ({metric}): no values"))
            return None
        ts: list[int] = []
        values: list[float] = []
        index: list[int] = []
        for j, point in enumerate(points):
            value = _point(point, metric)
            if value is None:
                bad.append(BadRow(line, f"{where} ({metric}) point {j}: not [time, \"value\"] "
                                        "with a finite value"))
                continue
            ts.append(value[0])
            values.append(value[1])
            index.append(j)
        order = np.argsort(np.array(ts, dtype=np.int64), kind="stable")
        times = np.array(ts, dtype=np.int64)[order]
        # A series has one value per time; a second one (the first in the file stays)
        # would silently replace it when the series are joined.
        again = np.flatnonzero(np.diff(times) == 0) + 1
        for k in again.tolist():
            bad.append(BadRow(line, f"{where} ({metric}) point {index[int(order[k])]}: a "
                                    f"second value at {times[k] / 1e9:.3f} s"))
        keep = np.ones(times.shape[0], dtype=np.bool_)
        keep[again] = False
        return (metric, times[keep], np.array(values)[order][keep],
                {str(k): v for k, v in labels.items()})

    def _add(self, metric: str, ts: IntArray, values: FloatArray,
             labels: dict[str, str], line: int) -> None:
        key = gpu_key(labels)
        assert key is not None
        if metric == INFO_METRIC:
            self._info[key.key] = key
            return
        gpu = self._group.setdefault(key.key, _Gpu(key))
        gpu.fields.setdefault(METRICS[metric][0], []).append((ts, values, line))
        run = self._runs.index_of(run_of(labels))
        if run >= 0:
            gpu.runs.append((ts, run))
        if ts.size:
            self._group_end = max(self._group_end, int(ts[-1]))

    def _emit(self) -> None:
        """Join the group's series per GPU and timestamp into one chunk."""
        parts: list[tuple[int, IntArray, dict[str, FloatArray], IntArray,
                          dict[str, IntArray]]] = []
        for k, g in self._group.items():
            if k not in self._ids:
                info = self._info.get(k)
                key = g.key if info is None else dataclasses.replace(
                    g.key, name=info.name or g.key.name, spec_key=info.spec_key,
                    activity_kind=info.activity_kind)
                if key.activity_kind == ActivityKind.NONE and TENSOR_FIELDS & g.fields.keys():
                    key = dataclasses.replace(key, activity_kind=ActivityKind.DCGM)
                self._ids[k] = len(self._gpus)
                self._gpus.append(key)
            all_ts = np.unique(np.concatenate(
                [t for series in g.fields.values() for t, _, _ in series]
                or [np.zeros(0, np.int64)]))
            fields: dict[str, FloatArray] = {}
            lines: dict[str, IntArray] = {}
            for name, series in g.fields.items():
                column = np.full(all_ts.shape[0], np.nan)
                # Lines are only for naming a bad value; a missing one names no line.
                line_of = np.full(all_ts.shape[0], np.iinfo(np.int64).max)
                for t, v, first_line in series:
                    at = np.searchsorted(all_ts, t)
                    column[at] = v
                    line_of[at] = first_line
                fields[name] = column
                lines[name] = line_of
            runs = np.full(all_ts.shape[0], -1, dtype=np.int64)
            for t, r in g.runs:
                runs[np.searchsorted(all_ts, t)] = r
            parts.append((self._ids[k], all_ts, fields, runs, lines))
        self._group.clear()
        self._group_end = -1
        if not parts:
            return
        names = sorted({n for _, _, f, _, _ in parts for n in f})
        ts = np.concatenate([t for _, t, _, _, _ in parts])
        chunk_fields = {n: np.concatenate([f.get(n, np.full(t.shape[0], np.nan))
                                           for _, t, f, _, _ in parts]) for n in names}
        none = np.iinfo(np.int64).max
        field_lines = {n: np.concatenate([ln.get(n, np.full(t.shape[0], none))
                                          for _, t, _, _, ln in parts]) for n in names}
        line = np.min(np.stack(list(field_lines.values())), axis=0) if names else \
            np.zeros(ts.shape[0], np.int64)
        for column in field_lines.values():
            np.copyto(column, line, where=column == none)
        runs = np.concatenate([r for _, _, _, r, _ in parts])
        self._ready.append(ColumnChunk(
            gpu=np.concatenate([np.full(t.shape[0], g, np.int64) for g, t, _, _, _ in parts]),
            timestamp_ns=ts, wall_ns=ts, fields=chunk_fields, gpus=tuple(self._gpus),
            attribution=runs if (runs >= 0).any() else None,
            attribution_table=tuple(self._runs.table), line=line, field_lines=field_lines))


def _point(point: Any, metric: str) -> tuple[int, float] | None:
    """``[seconds, "value"]`` to (ns, vendor value); None if malformed or non-finite."""
    if not isinstance(point, list) or len(point) != 2:
        return None
    t, v = point
    if isinstance(t, bool) or not isinstance(t, int | float) or not isinstance(v, str):
        return None
    if not math.isfinite(t) or not 0 < t < 9e9 or FLOAT.fullmatch(v) is None:
        return None
    # Prometheus timestamps have millisecond resolution; rounding there keeps the
    # float seconds of JSON from adding nanosecond noise.
    ts = round(t * 1000) * 1_000_000
    if metric == INFO_METRIC:
        return ts, 1.0
    value = vendor_value(metric, float(v))
    return None if value is None else (ts, value)
