"""Reader of dcgm-exporter scrapes recorded to a file.

A recording is the Prometheus text exposition format (version 0.0.4: ``# HELP`` and
``# TYPE`` comments, one ``name{label="value",...} value [timestamp_ms]`` sample per
line) of many scrapes of dcgm-exporter's ``/metrics``, one after another. Each scrape
is timed by, in order of preference:

1. the sample's own timestamp (milliseconds since the epoch, as the format allows);
2. the last marker line ``# scrape <time>`` before it, where ``<time>`` is Unix
   seconds (``date +%s.%N``) or ISO 8601 (``date -Is``). A recording loop::

       while sleep 15; do echo "# scrape $(date +%s.%N)"; curl -s localhost:9400/metrics
       done >> dcgm.prom

3. with neither, the scrape's position times the sampling interval given as
   ``--interval-hint``; a scrape then ends where a series it already had reappears.

The series, GPU identity and run labels read are those of :mod:`agent.replay.readers.promseries`
(``gpu``, ``UUID``, ``modelName``, ``Hostname``/``hostname``, ``GPU_I_PROFILE`` and
``GPU_I_ID``, ``pod``, ``namespace``, ``pod_uid``, ``container``, ``hpc_job``); other
series are skipped unparsed. A sample line that does not parse, has a malformed label
set or a non-finite value is a bad line (reported with its number); so is a last line
without a newline. The reader is pure Python: tens of MB/s, ample for scrapes taken
every few seconds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.replay.readers.base import BadRow, ColumnChunk, GpuKey, ReplayError, empty_chunk
from agent.replay.readers.lines import DEFAULT_BLOCK_BYTES, line_blocks, open_binary
from agent.replay.readers.promseries import (
    FLOAT,
    METRICS,
    TENSOR_FIELDS,
    THROTTLE_METRICS,
    RunTable,
    gpu_key,
    parse_labels,
    run_of,
    vendor_value,
)
from agent.sources.base import ActivityKind, FloatArray

_SAMPLE = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+(-?\d{1,19}))?[ \t]*\r?")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_MARKER = re.compile(r"#\s*scrape\s+(\S+)\s*\r?")
_WANTED = frozenset(METRICS) | THROTTLE_METRICS


def parse_scrape_time(text: str) -> int | None:
    """A ``# scrape`` marker's time in ns since the epoch; None if unreadable."""
    if FLOAT.fullmatch(text) is None:
        return _iso(text)
    seconds = float(text)
    return round(seconds * 1e9) if math.isfinite(seconds) and 0 < seconds < 9e9 else None


def _iso(text: str) -> int | None:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


@dataclass
class _Row:
    fields: dict[str, float] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # the line of each field
    throttle: int = -1
    run: int = -1
    line: int = 0  # the row's first line
    synthetic: bool = False  # timed by --interval-hint, not by the calendar


class DcgmReader:
    """Streams dcgm-exporter scrapes as column chunks.

    Args:
        path: the recording.
        interval_hint_s: scrape interval, to time scrapes that carry no time at all.
        block_bytes: read size.
    """

    def __init__(self, path: Path, interval_hint_s: float | None = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.path = path
        self._hint_ns = round(interval_hint_s * 1e9) if interval_hint_s else None
        self._block_bytes = block_bytes
        self._ids: dict[str, int] = {}
        self._gpus: list[GpuKey] = []
        self._runs = RunTable()
        self._pending: dict[tuple[str, int], _Row] = {}
        self._pending_keys: dict[str, GpuKey] = {}
        self._series: set[tuple[str, str]] = set()
        self._marker_ns: int | None = None
        self._scrapes = 0
        self._done: list[tuple[int, int, _Row]] = []
        self.samples_seen = 0

    def chunks(self) -> Iterator[ColumnChunk]:
        """Raises: ReplayError for an unreadable file or samples that cannot be timed."""
        line_no = 1
        with open_binary(self.path) as f:
            try:
                for block in line_blocks(f, self._block_bytes):
                    bad, line_no = block.take_lines(line_no, self._line)
                    if block.eof:
                        self._flush()
                    chunk = self._chunk(bad)
                    chunk.bytes_done, chunk.rows_done = block.bytes_done, line_no - 1
                    yield chunk
            except OSError as e:
                raise ReplayError(self.path, f"read failed: {e}") from e

    def _line(self, text: str, line_no: int) -> str | None:
        """Take one line; the reason if it is bad."""
        stripped = text.strip(" \t\r")
        if not stripped:
            return None
        if stripped.startswith("#"):
            m = _MARKER.fullmatch(stripped)
            if m is not None:
                when = parse_scrape_time(m.group(1))
                if when is None:
                    return f"bad scrape time {m.group(1)[:40]!r}"
                self._flush()
                self._marker_ns = when
            return None
        name = _NAME.match(stripped)
        if name is None:
            return "not a sample line"
        if name.group(0) not in _WANTED:
            return None if _SAMPLE.fullmatch(stripped) else "not a sample line"
        m = _SAMPLE.fullmatch(stripped)
        if m is None:
            return "not a sample line"
        metric, label_text, value_text, ts_text = m.groups()
        labels = parse_labels(label_text or "")
        if labels is None:
            return "malformed label set"
        if FLOAT.fullmatch(value_text) is None:
            return f"bad value {value_text[:30]!r}"
        key = gpu_key(labels)
        if key is None:
            return "no GPU label (UUID or gpu)"
        raw = float(value_text)
        throttle = metric in THROTTLE_METRICS
        value = None if throttle else vendor_value(metric, raw)
        if throttle and not (math.isnan(raw) or 0 <= raw < 2**63):
            return f"bad clock-event mask {value_text!r}"
        if not throttle and value is None:
            return f"non-finite value {value_text!r}"
        if ts_text is not None and not 0 < int(ts_text) < 9_000_000_000_000:
            return f"bad sample timestamp {ts_text!r} (milliseconds since the epoch)"
        series = (metric, label_text or "")
        if self._marker_ns is None and ts_text is None and series in self._series:
            self._flush()  # a series seen again: the next scrape began
        self._series.add(series)
        if ts_text is not None:
            ts = int(ts_text) * 1_000_000
        elif self._marker_ns is not None:
            ts = self._marker_ns
        elif self._hint_ns is not None:
            ts = self._scrapes * self._hint_ns
        else:
            raise ReplayError(self.path, f"line {line_no}: no `# scrape <time>` marker and "
                                         "no sample timestamp: pass --interval-hint")
        row = self._pending.setdefault((key.key, ts), _Row())
        self._pending_keys.setdefault(key.key, key)
        if not row.line:
            row.line = line_no
            row.synthetic = ts_text is None and self._marker_ns is None
        if row.run < 0:
            row.run = self._runs.index_of(run_of(labels))
        if throttle:
            row.throttle = -1 if math.isnan(raw) else int(raw)
        elif value is not None:
            row.fields[METRICS[metric][0]] = value
            row.lines[METRICS[metric][0]] = line_no
        self.samples_seen += 1
        return None

    def _flush(self) -> None:
        """End the current scrape: its rows are ready, in time order per GPU."""
        if self._pending:
            tensor = {k for (k, _), row in self._pending.items()
                      if TENSOR_FIELDS & row.fields.keys()}
            for k, key in self._pending_keys.items():
                if k not in self._ids:
                    self._ids[k] = len(self._gpus)
                    kind = ActivityKind.DCGM if k in tensor else key.activity_kind
                    self._gpus.append(dataclasses.replace(key, activity_kind=kind))
            for (k, ts), row in sorted(self._pending.items(), key=lambda kv: kv[0][1]):
                self._done.append((self._ids[k], ts, row))
        self._pending.clear()
        self._pending_keys.clear()
        self._series.clear()
        self._scrapes += 1

    def _chunk(self, bad: list[BadRow]) -> ColumnChunk:
        rows, self._done = self._done, []
        if not rows:
            return empty_chunk(tuple(self._gpus), bad, 0, 0)
        names = sorted({n for _, _, r in rows for n in r.fields})
        fields: dict[str, FloatArray] = {
            n: np.array([r.fields.get(n, math.nan) for _, _, r in rows]) for n in names}
        ts = np.array([t for _, t, _ in rows], dtype=np.int64)
        runs = np.array([r.run for _, _, r in rows], dtype=np.int64)
        throttle = np.array([r.throttle for _, _, r in rows], dtype=np.int64)
        line = np.array([r.line for _, _, r in rows], dtype=np.int64)
        field_lines = {n: np.array([r.lines.get(n, r.line) for _, _, r in rows],
                                   dtype=np.int64) for n in names}
        return ColumnChunk(
            gpu=np.array([g for g, _, _ in rows], dtype=np.int64), timestamp_ns=ts,
            wall_ns=ts, fields=fields, gpus=tuple(self._gpus), bad=bad,
            throttle_reasons=throttle if (throttle >= 0).any() else None,
            attribution=runs if (runs >= 0).any() else None,
            attribution_table=tuple(self._runs.table), line=line, field_lines=field_lines,
            wall_clock=not any(r.synthetic for _, _, r in rows))
