"""Reader of Prometheus ``/api/v1/query_range`` exports, and the decoding it shares with
the replay straight from a server (:mod:`agent.replay.remote`).

A file holds one or more responses of the HTTP API, as the API returns them
(``{"status":"success","data":{"resultType":"matrix","result":[{"metric":{...},
"values":[[<unix seconds>,"<value>"],...]},...]}}``; ``"vector"`` results of instant
queries, with one ``"value"`` each, are taken too): one per line (``curl ... >>
export.json``; the API answers on one line) or pretty-printed (``jq .``), one after
another (a pretty-printed response starts with a line holding only ``{``). Each
response may be a different query (one per series name) over the same
window, or the same queries over consecutive windows.

Series are those of :mod:`agent.replay.readers.promseries` (DCGM's or flopledger's own), joined by
GPU and timestamp (:class:`RangeJoiner`): a sample of a GPU at time t has every field
some series of that GPU has at t (range queries step on the same grid, so they line
up). Where two series of a GPU have a point at the same t, the sample takes its field
and its run from the one whose unbroken stretch of points began later (then from the
one that came later): when a GPU's labels change (a job starts or ends, so ``hpc_job``
or ``pod`` comes or goes) and no staleness marker ended the old series (a backfill, an
exporter that died), a range query still shows the old series for its lookback (5
minutes by default), repeating its last value beside the new one. A series' stretches
are remembered across responses, so the choice does not depend on how the range was
cut into queries.
``flopledger_gpu_info`` gives a GPU's name, spec key and estimator. A series must keep
its ``__name__`` (a raw selector, not a function of it).

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from agent.replay.readers.base import BadRow, ColumnChunk, GpuKey, ReplayError, empty_chunk
from agent.replay.readers.lines import DEFAULT_BLOCK_BYTES, open_binary
from agent.replay.readers.promseries import (
    FLOAT,
    INFO_METRIC,
    METRICS,
    TENSOR_FIELDS,
    RunTable,
    gpu_key,
    run_of,
    vendor_value,
    vendor_values,
)
from agent.sources.base import ActivityKind, FloatArray, IntArray

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# Every value of a series at once: one match over the values joined by newlines.
# Atomic groups: a value once matched is never matched again another way, so a bad
# value at the end fails in linear time.
_FLOATS = re.compile(rf"(?>{FLOAT.pattern})(?:\n(?>{FLOAT.pattern}))*")
_NO_LINE = np.iinfo(np.int64).max
# A compact answer is one line, read whole; one longer than this is dropped (a bad row).
MAX_RESPONSE_BYTES = 1 << 30
# How long after its last point a series is remembered: one absent longer starts a new
# stretch on its return anyway (a gap of more than 1.5 steps breaks a stretch).
_FORGET_NS = 6 * 3600 * 1_000_000_000
_NO_RUN = -1


@dataclass(frozen=True, slots=True)
class Series:
    """One series of a response: its name, its points (ns, in time order, one per
    time) in vendor units, and its labels."""

    metric: str
    timestamp_ns: IntArray
    values: FloatArray
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Entry:
    """One series' points in a group: per point its value and the start of the series'
    unbroken stretch it belongs to; the series' run (index, or -1), the line of its
    response, and its place in the order the series came in."""

    timestamp_ns: IntArray
    values: FloatArray
    stretch_ns: IntArray
    run: int
    line: int
    order: int


@dataclass
class _Gpu:
    key: GpuKey
    fields: dict[str, list[_Entry]] = field(default_factory=dict)


def _winners(ts: IntArray, stretch: IntArray, *then: IntArray) -> IntArray:
    """Per distinct time, the index of the point whose stretch began last (then the
    one with the largest of ``then``, in turn)."""
    idx = np.lexsort((*reversed(then), stretch, ts))
    t = ts[idx]
    last = np.ones(t.shape[0], dtype=np.bool_)
    last[:-1] = t[1:] != t[:-1]
    return idx[last]


def _line_batches(f: BinaryIO, block_bytes: int
                  ) -> Iterator[tuple[list[str], list[int], int, bool]]:
    """The file's lines, a block's worth at a time, each whole however long it is (a
    compact response is one line, as long as the answer); with the 1-based numbers
    of the lines dropped for being longer than
    :data:`MAX_RESPONSE_BYTES` (an empty string stands in for each), the offset after
    the batch, and whether the file ended."""
    parts: list[bytes] = []
    held = 0  # bytes in parts
    dropping = False  # inside a line too long to keep
    done = 0
    line_no = 1
    while True:
        data = f.read(block_bytes)
        if not data:
            tail = b"".join(parts)
            if dropping:
                yield [""], [line_no], done + held, True
            else:
                yield ([tail.decode("utf-8", "replace")] if tail.strip() else []), [], \
                    done + held, True
            return
        cut = data.rfind(b"\n")
        if cut < 0:
            held += len(data)
            if not dropping:
                parts.append(data)
                if held > MAX_RESPONSE_BYTES:
                    parts, dropping = [], True
            continue
        head = data[: data.index(b"\n")]
        first = b"".join([*parts, head]) if not dropping else b""
        text = data[len(head) + 1 : cut].decode("utf-8", "replace")
        lines = [first.decode("utf-8", "replace"), *(text.split("\n") if cut > len(head)
                                                    else [])]
        skipped = [line_no] if dropping else []
        done += held + cut + 1
        line_no += len(lines)
        parts, held, dropping = [data[cut + 1 :]], len(data) - cut - 1, False
        yield lines, skipped, done, False


def _depth(line: str) -> int:
    """Bracket depth change over a line of JSON, strings left out."""
    bare = _STRING.sub("", line)
    return bare.count("{") + bare.count("[") - bare.count("}") - bare.count("]")


def parse_response(doc: Any, line: int, bad: list[BadRow]) -> list[Series] | None:
    """The series of flopledger's and DCGM's names in one decoded API response; None
    (and a bad row) if it is not a successful matrix or vector response. Series of
    other names are left out; bad series and points are reported in ``bad`` with
    ``line`` (where the response starts, or what else names it)."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("status") != "success" or \
            not isinstance(data, dict):
        error = doc.get("error") if isinstance(doc, dict) else None
        bad.append(BadRow(line, f"not a successful API response ({error or 'no data'})"))
        return None
    kind = data.get("resultType")
    result = data.get("result")
    if kind not in ("matrix", "vector") or not isinstance(result, list):
        bad.append(BadRow(line, f"result type {kind!r}: expected matrix or vector"))
        return None
    out = []
    for i, entry in enumerate(result):
        parsed = _series(entry, kind, i, line, bad)
        if parsed is not None:
            out.append(parsed)
    return out


def _series(entry: Any, kind: str, i: int, line: int, bad: list[BadRow]) -> Series | None:
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
    fast = _all_points(points, metric)
    if fast is not None:
        ts_list, values_list = fast
        index = np.arange(ts_list.shape[0])
    else:
        ts: list[int] = []
        values: list[float] = []
        kept: list[int] = []
        for j, point in enumerate(points):
            value = _point(point, metric)
            if value is None:
                bad.append(BadRow(line, f"{where} ({metric}) point {j}: not [time, \"value\"] "
                                        "with a finite value"))
                continue
            ts.append(value[0])
            values.append(value[1])
            kept.append(j)
        ts_list = np.array(ts, dtype=np.int64)
        values_list = np.array(values, dtype=np.float64)
        index = np.array(kept, dtype=np.int64)
    order = np.argsort(ts_list, kind="stable")
    times = ts_list[order]
    # A series has one value per time; a second one (the first in the file stays)
    # would silently replace it when the series are joined.
    again = np.flatnonzero(np.diff(times) == 0) + 1
    for k in again.tolist():
        bad.append(BadRow(line, f"{where} ({metric}) point {int(index[int(order[k])])}: a "
                                f"second value at {times[k] / 1e9:.3f} s"))
    if again.size:
        keep = np.ones(times.shape[0], dtype=np.bool_)
        keep[again] = False
        return Series(metric, times[keep], values_list[order][keep],
                      {str(k): v for k, v in labels.items()})
    return Series(metric, times, values_list[order], {str(k): v for k, v in labels.items()})


def _all_points(points: list[Any], metric: str) -> tuple[IntArray, FloatArray] | None:
    """Every point of a series at once, as :func:`_point` takes them one by one; None
    if any of them is malformed or non-finite (they are then judged one by one)."""
    try:
        if set(map(len, points)) != {2}:
            return None
        times = [p[0] for p in points]
        texts = [p[1] for p in points]
    except (TypeError, KeyError, IndexError):
        return None
    if not set(map(type, times)) <= {int, float} or set(map(type, texts)) != {str}:
        return None
    t = np.array(times, dtype=np.float64)
    if not bool(np.all((t > 0) & (t < 9e9))) or _FLOATS.fullmatch("\n".join(texts)) is None:
        return None
    ts = np.rint(t * 1000).astype(np.int64) * 1_000_000
    if metric == INFO_METRIC:
        return ts, np.ones(ts.shape[0])
    values = vendor_values(metric, np.fromiter(map(float, texts), np.float64, len(texts)))
    return None if values is None else (ts, values)


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


def _joined(entries: Sequence[_Entry]) -> tuple[IntArray, IntArray, IntArray]:
    """The entries' points as one array each: times, stretch starts, arrival order."""
    return (np.concatenate([e.timestamp_ns for e in entries]),
            np.concatenate([e.stretch_ns for e in entries]),
            np.concatenate([np.full(e.timestamp_ns.shape[0], e.order) for e in entries]))


class RangeJoiner:
    """Series of consecutive responses, joined per GPU and timestamp into column chunks.

    Responses are added with :meth:`add`; a response that starts after every point of
    the group so far closes the group (it becomes a chunk; not with ``by_time`` False,
    where the caller groups responses), and :meth:`emit` closes it at once. :meth:`take`
    hands over the chunks closed so far. GPUs (``gpus``) and runs keep their indices
    across groups, as one reader's do.
    """

    def __init__(self, by_time: bool = True, step_ns: int = 0) -> None:
        self._by_time = by_time
        self._ids: dict[str, int] = {}
        self.gpus: list[GpuKey] = []
        self._info: dict[str, GpuKey] = {}
        self._runs = RunTable()
        self._group: dict[str, _Gpu] = {}
        self._group_end = -1
        self._ready: list[ColumnChunk] = []
        # Per series (its labels): the start of its current stretch, its last point.
        self._seen: dict[tuple[tuple[str, str], ...], tuple[int, int]] = {}
        # The queries' step (given, or the smallest seen between two points of a series).
        self._spacing_ns = step_ns
        self._spacing_given = step_ns > 0
        self._order = 0

    def add(self, series: Sequence[Series], line: int) -> None:
        """One response's series; ``line`` names the response in bad rows."""
        starts = [int(s.timestamp_ns[0]) for s in series if s.timestamp_ns.size]
        if self._by_time and starts and min(starts) > self._group_end and self._group:
            self.emit()
        if not self._spacing_given:
            self._learn_spacing(series)
        for s in series:
            self._add(s, line)

    def _learn_spacing(self, series: Sequence[Series]) -> None:
        """The smallest step between two points of a series, in the response or since
        the series' last point before it."""
        steps = [int(np.diff(s.timestamp_ns).min()) for s in series
                 if s.timestamp_ns.shape[0] > 1]
        for s in series:
            before = self._seen.get(tuple(sorted(s.labels.items())))
            if s.timestamp_ns.size and before is not None and s.timestamp_ns[0] > before[1]:
                steps.append(int(s.timestamp_ns[0]) - before[1])
        positive = [d for d in steps if d > 0]
        if positive:
            smallest = min(positive)
            self._spacing_ns = min(self._spacing_ns, smallest) if self._spacing_ns else smallest

    def _add(self, s: Series, line: int) -> None:
        key = gpu_key(s.labels)
        assert key is not None
        if s.metric == INFO_METRIC:
            self._info[key.key] = key
            return
        gpu = self._group.setdefault(key.key, _Gpu(key))
        ts = s.timestamp_ns
        if not ts.size:
            return
        self._group_end = max(self._group_end, int(ts[-1]))
        steps = np.diff(ts)
        # A stretch breaks where the series skips more than a step and a half (it was
        # absent): what it shows after is a new appearance.
        limit = 3 * self._spacing_ns // 2 if self._spacing_ns else np.iinfo(np.int64).max
        identity = tuple(sorted(s.labels.items()))
        before = self._seen.get(identity)
        starts = np.where(np.concatenate([[True], steps > limit]), ts, np.iinfo(np.int64).min)
        if before is not None and ts[0] - before[1] <= limit:
            starts[0] = before[0]
        stretch = np.maximum.accumulate(starts)
        self._seen[identity] = (int(stretch[-1]), int(ts[-1]))
        run = self._runs.index_of(run_of(s.labels))
        gpu.fields.setdefault(METRICS[s.metric][0], []).append(
            _Entry(ts, s.values, stretch, run if run >= 0 else _NO_RUN, line, self._order))
        self._order += 1

    def take(self) -> list[ColumnChunk]:
        """The chunks closed since the last call, in order."""
        ready, self._ready = self._ready, []
        return ready

    def emit(self) -> None:
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
                self._ids[k] = len(self.gpus)
                self.gpus.append(key)
            entries = [e for series in g.fields.values() for e in series]
            all_ts = np.unique(np.concatenate([e.timestamp_ns for e in entries]
                                              or [np.zeros(0, np.int64)]))
            fields: dict[str, FloatArray] = {}
            lines: dict[str, IntArray] = {}
            for name, series in g.fields.items():
                ts, stretch, order = _joined(series)
                pick = _winners(ts, stretch, order)
                at = np.searchsorted(all_ts, ts[pick])
                column = np.full(all_ts.shape[0], np.nan)
                column[at] = np.concatenate([e.values for e in series])[pick]
                # Lines are only for naming a bad value; a missing one names no line.
                line_of = np.full(all_ts.shape[0], _NO_LINE)
                line_of[at] = np.concatenate([np.full(e.timestamp_ns.shape[0], e.line)
                                              for e in series])[pick]
                fields[name] = column
                lines[name] = line_of
            # The sample's run: that of the newest series, as its fields; among series
            # as new, one with a run (a series of the same GPU may carry none).
            ts, stretch, order = _joined(entries)
            run_of_point = np.concatenate([np.full(e.timestamp_ns.shape[0], e.run)
                                           for e in entries])
            pick = _winners(ts, stretch, (run_of_point >= 0).astype(np.int64), order)
            runs = np.full(all_ts.shape[0], _NO_RUN, dtype=np.int64)
            runs[np.searchsorted(all_ts, ts[pick])] = run_of_point[pick]
            parts.append((self._ids[k], all_ts, fields, runs, lines))
        self._group.clear()
        self._group_end = -1
        if not parts:
            return
        horizon = min(int(t[0]) for _, t, _, _, _ in parts if t.size) - max(
            _FORGET_NS, 10 * self._spacing_ns) if any(t.size for _, t, _, _, _ in parts) else 0
        self._seen = {k: v for k, v in self._seen.items() if v[1] >= horizon}
        names = sorted({n for _, _, f, _, _ in parts for n in f})
        ts = np.concatenate([t for _, t, _, _, _ in parts])
        chunk_fields = {n: np.concatenate([f.get(n, np.full(t.shape[0], np.nan))
                                           for _, t, f, _, _ in parts]) for n in names}
        field_lines = {n: np.concatenate([ln.get(n, np.full(t.shape[0], _NO_LINE))
                                          for _, t, _, _, ln in parts]) for n in names}
        line = np.min(np.stack(list(field_lines.values())), axis=0) if names else \
            np.zeros(ts.shape[0], np.int64)
        for column in field_lines.values():
            np.copyto(column, line, where=column == _NO_LINE)
        runs = np.concatenate([r for _, _, _, r, _ in parts])
        self._ready.append(ColumnChunk(
            gpu=np.concatenate([np.full(t.shape[0], g, np.int64) for g, t, _, _, _ in parts]),
            timestamp_ns=ts, wall_ns=ts, fields=chunk_fields, gpus=tuple(self.gpus),
            attribution=runs if (runs >= 0).any() else None,
            attribution_table=tuple(self._runs.table), line=line, field_lines=field_lines))


class PromRangeReader:
    """Streams Prometheus range exports as column chunks, one per group of responses."""

    def __init__(self, path: Path, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.path = path
        self._block_bytes = block_bytes
        self._joiner = RangeJoiner()
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
                for lines, skipped, bytes_done, eof in _line_batches(f, self._block_bytes):
                    bad = []
                    for line in lines:
                        if line_no in skipped:
                            bad.append(BadRow(line_no, f"response longer than "
                                                       f"{MAX_RESPONSE_BYTES >> 20} MiB"))
                            line_no += 1
                            continue
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
                    if eof:
                        if pending:
                            bad.append(BadRow(pending_line, "truncated response at the end "
                                                            "of the file"))
                        self._joiner.emit()
                    yield from self._take(bad, bytes_done, line_no - 1)
            except OSError as e:
                raise ReplayError(self.path, f"read failed: {e}") from e

    def _take(self, bad: list[BadRow], bytes_done: int, rows_done: int) -> Iterator[ColumnChunk]:
        ready = self._joiner.take()
        if not ready:
            ready = [empty_chunk(tuple(self._joiner.gpus), [], 0, 0)]
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
            series = parse_response(doc, line, bad)
            if series is not None:
                self._joiner.add(series, line)
