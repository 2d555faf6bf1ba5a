"""``flopledger replay --prometheus URL``: series straight from a Prometheus-compatible
server (Prometheus, Thanos, Mimir, VictoriaMetrics), accounted into a ledger slice by
slice of time, like a replay of files.

What is asked: the names of :mod:`agent.replay.readers.promseries` (dcgm-exporter's and
flopledger's own series) that have series matching the selector in the range
(``/api/v1/label/__name__/values``); then, per window of at most 11,000 steps, how many
series each name has there (``/api/v1/series``), which sizes the window's slices so
that no answer holds more than ``max_points`` points (series x steps); then one
``/api/v1/query_range`` per name and slice. Every grid point is ``start + k x step``
whatever the slicing, so a replay that resumes asks for exactly the points an
uninterrupted one asks for. A query the server refuses as too large is split in two
until it passes.

Several queries are in flight (``parallel``), decoded by the same code as a saved
export (:mod:`agent.replay.readers.prom_range`) in the threads that fetched them; the
slices reach the engine one after another in time order, and each slice's samples in
time order, so the totals do not depend on ``parallel``. A slice fully fetched and
accounted is sealed: its records and the checkpoint (the slice's last time, under the
source: URL without credentials, selector and step) are appended in one transaction
(:meth:`ReplayEngine.seal`). A replay that stops (killed, a server error, a lost
connection) leaves the ledger as of its last seal; the same command run again starts
after the checkpoint, first feeding the few steps before each GPU's last record in
the ledger to the engine without counting them (:meth:`ReplayEngine.prime`), so that
it ends with the totals of an uninterrupted replay.

The step, unless given: the sampling interval of the series on the server (the most
samples any series of one name has in 30 minutes, at a dozen times over the range),
else 15 s; the replay says which.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from agent import figures
from agent.ledger.checkpoints import read_checkpoint
from agent.replay.engine import ReplayEngine, ReplayOptions
from agent.replay.httpclient import Auth, PromClient, ServerError, TooLargeError
from agent.replay.readers.base import BadRow, ColumnChunk, ReplayError, empty_chunk, select
from agent.replay.readers.prom_range import RangeJoiner, Series, parse_response
from agent.replay.readers.promseries import INFO_METRIC, METRICS
from agent.replay.summary import Progress, ReplaySummary

MAX_POINTS_PER_SERIES = 11_000  # Prometheus refuses (end - start) / step > 11,000
DEFAULT_STEP_MS = 15_000
DEFAULT_MAX_POINTS = 250_000  # series x steps per answer: a few MB of JSON
# Counting a window's series from this long before it: a range query still sees a
# series whose last sample is up to the lookback delta (5 minutes by default) old.
_COUNT_BEFORE_MS = 15 * 60_000
_PROBE_WINDOW_S = 1800
_PROBES = 12
_PRIME_STEPS = 8
_PRIME_MS = 15 * 60_000
_MAX_PRIME_WINDOWS = 64
_NAMES = (*METRICS, INFO_METRIC)
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\\n]|\\.)*")\s*')
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, None: 1000}


class RemoteError(Exception):
    """The replay from a server cannot start or cannot go on; one line."""


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """What to ask which server.

    Attributes:
        url: the server (``http(s)://host[:port][/prefix]``).
        start_ms, end_ms: the range, ms since the epoch (both included).
        selector: label matchers added to every query (``job="dcgm",cluster=~"a|b"``).
        step_ms: the step; None for the series' own sampling interval.
        parallel: queries in flight.
        max_points: series x steps at most per answer.
        auth: credentials, TLS trust, headers.
        timeout_s: per request.
        max_steps: steps per query at most before the series count is considered
            (Prometheus' limit; a server refusing fewer has its queries split).
    """

    url: str
    start_ms: int
    end_ms: int
    selector: str = ""
    step_ms: int | None = None
    parallel: int = 4
    max_points: int = DEFAULT_MAX_POINTS
    auth: Auth = field(default_factory=Auth)
    timeout_s: float = 120.0
    max_steps: int = MAX_POINTS_PER_SERIES


@dataclass(slots=True)
class RemoteStats:
    """Where the time went. ``wait_s`` (from each request to the last byte of its
    answer: the server's time and the network's) and ``decode_s`` (JSON and series) are
    summed over the fetching threads, which overlap each other and the accounting;
    ``account_s`` is the engine's (joining, judging, accounting, writing), ``wall_s``
    the whole replay's."""

    requests: int = 0
    bytes_read: int = 0
    points: int = 0
    slices: int = 0
    seals: int = 0
    wait_s: float = 0.0
    decode_s: float = 0.0
    account_s: float = 0.0
    wall_s: float = 0.0


@dataclass(slots=True)
class RemoteResult:
    """What a replay from a server did."""

    source: str  # the checkpoint's key
    step_ms: int
    step_note: str
    first_ms: int  # first grid point asked for (after a checkpoint: the one after it)
    last_ms: int  # last grid point of the range
    resumed_after_ns: int | None
    summary: ReplaySummary | None  # None if there was nothing left to replay
    stats: RemoteStats
    warnings: list[str]


@dataclass(frozen=True, slots=True)
class _Slice:
    start_ms: int
    end_ms: int
    prime: bool = False


@dataclass(slots=True)
class _Fetched:
    parts: list[tuple[list[Series], int]]
    bad: list[BadRow]
    warnings: list[str]
    points: int = 0
    bytes_read: int = 0
    requests: int = 0
    wait_s: float = 0.0
    decode_s: float = 0.0


# -- inputs ----------------------------------------------------------------------------


def parse_time(text: str, flag: str) -> int:
    """RFC 3339 (``2025-03-01T00:00:00Z``, an offset, fractions) or unix seconds, to ms
    since the epoch.

    Raises:
        RemoteError: naming ``flag``, for anything else.
    """
    t = text.strip()
    try:
        seconds = float(t)
    except ValueError:
        seconds = _rfc3339(t, text, flag)
    if not math.isfinite(seconds) or not 0 < seconds < 9e9:
        raise RemoteError(f"{flag} {text!r}: not a time between 1970 and 2255")
    return round(seconds * 1000)


def _rfc3339(t: str, text: str, flag: str) -> float:
    try:
        stamp = dt.datetime.fromisoformat(t)
    except ValueError:
        raise RemoteError(f"{flag} {text!r}: expected RFC 3339 (2025-03-01T00:00:00Z) or "
                          "unix seconds") from None
    if stamp.tzinfo is None:
        raise RemoteError(f"{flag} {text!r}: no time zone (end it with Z or +HH:MM)")
    return stamp.timestamp()


def parse_step(text: str) -> int:
    """``--step``: seconds (``60``, ``0.5``) or a duration (``15s``, ``1m``, ``500ms``),
    to ms.

    Raises:
        RemoteError: for anything else, or under 1 ms.
    """
    m = _DURATION.fullmatch(text.strip())
    step_ms = round(float(m.group(1)) * _UNIT_MS[m.group(2)]) if m else 0
    if step_ms < 1:
        raise RemoteError(f"--step {text!r}: expected seconds or a duration like 15s or 1m, "
                          "at least 1 ms")
    return step_ms


def parse_selector(text: str) -> str:
    """``{job="x",cluster=~"a|b"}`` (braces optional) to its matchers, as added to every
    query; "" for none.

    Raises:
        RemoteError: for a selector that is not label matchers, or one naming
            ``__name__`` (the replay chooses the series names).
    """
    t = text.strip()
    if t.startswith("{") and t.endswith("}"):
        t = t[1:-1]
    out = []
    pos = 0
    while t[pos:].strip():
        m = _MATCHER.match(t, pos)
        if m is None:
            raise RemoteError(f"--selector {text!r}: expected label matchers such as "
                              '{job="dcgm-exporter",cluster=~"a|b"}')
        if m.group(1) == "__name__":
            raise RemoteError(f"--selector {text!r}: no __name__ matcher (the replay asks for "
                              "the series it reads by name)")
        out.append(f"{m.group(1)}{m.group(2)}{m.group(3)}")
        pos = m.end()
        if pos < len(t):
            if t[pos] != ",":
                raise RemoteError(f"--selector {text!r}: expected a comma after "
                                  f"{m.group(0).strip()!r}")
            pos += 1
    return ",".join(out)


def _seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def _when(ms: int) -> str:
    return figures.when(ms * 1_000_000)


# -- the replay ------------------------------------------------------------------------


class ServerReplay:
    """One replay from a server into a ledger.

    Args:
        options: the server, range, selector and step.
        ledger: the ledger file (created on the first sealed slice with records).
        replay: how to account (node, mapping, spec table...); its ``interval_hint_s``
            defaults to the step.
        progress: where the progress line goes (None: none).
        note: where notes go (the step chosen, a resumption, the server's warnings).
    """

    def __init__(self, options: RemoteOptions, ledger: Path, replay: ReplayOptions,
                 progress: TextIO | None = None,
                 note: Callable[[str], None] = lambda _: None) -> None:
        if min(options.parallel, options.max_points, options.max_steps) < 1:
            raise RemoteError("--parallel and --max-points must be at least 1")
        if options.start_ms >= options.end_ms:
            raise RemoteError(f"--start {_when(options.start_ms)} is not before --end "
                              f"{_when(options.end_ms)}")
        self.options = options
        self.ledger = ledger
        self.replay = replay
        self._progress_stream = progress
        self._note = note
        try:
            self.client = PromClient(options.url, options.auth, options.timeout_s)
        except ValueError as e:
            raise RemoteError(f"--prometheus: {e}") from None
        self.stats = RemoteStats()
        self.warnings: list[str] = []
        self.names: list[str] = []
        self.step_ms = options.step_ms or DEFAULT_STEP_MS
        self._joiner = RangeJoiner(by_time=False)
        self._rows = 0
        self._done_points = 0
        self._source = ""

    @property
    def _matchers(self) -> str:
        return f",{self.options.selector}" if self.options.selector else ""

    def _query(self, name: str) -> str:
        return f"{name}{{{self.options.selector}}}" if self.options.selector else name

    def run(self) -> RemoteResult:
        """Replay the range, or what of it the ledger does not hold yet.

        Raises:
            RemoteError: for a selector matching nothing, the server failing, or more
                bad rows than ``max_bad_share`` (what was sealed before stays in the
                ledger, with its checkpoint).
            ReplayError: for a bad mapping or spec table.
            LedgerError, sqlite3.Error, OSError: for a ledger that cannot be written.
        """
        started = time.perf_counter()
        o = self.options
        end_ms = min(o.end_ms, time.time_ns() // 1_000_000)
        if end_ms <= o.start_ms:
            raise RemoteError(f"--start {_when(o.start_ms)} is in the future")
        try:
            self.names = self._discover(o.start_ms, end_ms)
            if o.step_ms is None:
                self.step_ms, how = self._probe_step(o.start_ms, end_ms)
            else:
                how = "--step"
        except ServerError as e:
            raise RemoteError(str(e)) from None
        step = self.step_ms
        note = f"step {step / 1000:g} s ({how})"
        source = self._source = f"prometheus {self.client.url} {{{o.selector}}} step={step}ms"
        last_ms = o.start_ms + (end_ms - o.start_ms) // step * step
        after_ns = read_checkpoint(self.ledger, source)
        first_ms = o.start_ms
        if after_ns is not None and after_ns // 1_000_000 >= o.start_ms:
            first_ms = o.start_ms + (after_ns // 1_000_000 - o.start_ms) // step * step + step
        result = RemoteResult(source, step, note, first_ms, last_ms, after_ns, None,
                              self.stats, self.warnings)
        if first_ms > last_ms:
            self.stats.wall_s = time.perf_counter() - started
            return result
        self._note(f"{note}; {_when(first_ms)} .. {_when(last_ms)}"
                   + (f", continuing after {_when(after_ns // 1_000_000)}"
                      if first_ms > o.start_ms and after_ns is not None else ""))
        self._joiner = RangeJoiner(by_time=False, step_ns=step * 1_000_000)
        replay = self.replay
        if replay.interval_hint_s is None:
            replay = dataclasses.replace(replay, interval_hint_s=step / 1000)
        engine = ReplayEngine(self.ledger, replay)
        engine.open_stream(f"{self.client.url}, unix time")
        total_points = (last_ms - first_ms) // step + 1
        progress = None if self._progress_stream is None else Progress(
            total_points, self._progress_stream)
        try:
            if first_ms > o.start_ms:
                self._pipeline(engine, self._prime_slices(engine, first_ms), progress)
                engine.primed()
            self._pipeline(engine, self._slices(first_ms, last_ms), progress)
            t = time.perf_counter()
            result.summary = engine.close_stream(source, last_ms * 1_000_000)
            self.stats.account_s += time.perf_counter() - t
        except (ServerError, ReplayError) as e:
            raise RemoteError(f"{e}; {self._kept(source)}") from None
        finally:
            engine.abort()
            if progress is not None:
                progress.update(engine.summary.samples, len(self._joiner.gpus),
                                self._done_points, force=True)
                progress.done()
            self.stats.wall_s = time.perf_counter() - started
        return result

    def _kept(self, source: str) -> str:
        """What the ledger holds after a stop, for the message."""
        done = read_checkpoint(self.ledger, source)
        if done is None:
            return "nothing written"
        return (f"{self.ledger} holds everything up to {_when(done // 1_000_000)}: the same "
                "command continues from there")

    # -- what to ask -------------------------------------------------------------------

    def _discover(self, start_ms: int, end_ms: int) -> list[str]:
        names = "|".join(_NAMES)
        answer = self.client.get("label/__name__/values", [
            ("match[]", f'{{__name__=~"{names}"{self._matchers}}}'),
            ("start", _seconds(start_ms)), ("end", _seconds(end_ms))])
        self._warn(answer.warnings)
        found = set(answer.data) if isinstance(answer.data, list) else set()
        present = [n for n in _NAMES if n in found]
        if not present or present == [INFO_METRIC]:
            raise RemoteError(
                f"{self.client.url}: no series of dcgm-exporter's or flopledger's names "
                f"(DCGM_FI_DEV_GPU_UTIL, flopledger_gpu_sm_clock_hertz, ...) match "
                f"{{{self.options.selector}}} between {_when(start_ms)} and {_when(end_ms)}; "
                "nothing written")
        return present

    def _probe_step(self, start_ms: int, end_ms: int) -> tuple[int, str]:
        """The series' own sampling interval, or the default, and how it was found.

        Per series, the samples in the last hour less those in the last half hour: the
        samples of one half hour, whether a range includes its first instant or not (it
        does in Prometheus 2, not in 3); the most of any series, at a dozen times over
        the range, their median."""
        name = next(n for n in ("DCGM_FI_DEV_GPU_UTIL", *self.names) if n in self.names
                    and n != INFO_METRIC)
        half = _PROBE_WINDOW_S
        probe_step_ms = max(2 * half * 1000, (end_ms - start_ms) // _PROBES)
        query = (f"max(count_over_time({self._query(name)}[{2 * half}s]) - "
                 f"count_over_time({self._query(name)}[{half}s]))")
        try:
            answer = self.client.get("query_range", [
                ("query", query), ("start", _seconds(start_ms)), ("end", _seconds(end_ms)),
                ("step", _seconds(probe_step_ms))])
        except ServerError as e:
            return DEFAULT_STEP_MS, f"the default: the server did not say how often " \
                                    f"{name} is sampled ({e})"
        counts = []
        for series in answer.data.get("result", []) if isinstance(answer.data, dict) else []:
            for point in series.get("values", []) if isinstance(series, dict) else []:
                try:
                    counts.append(float(point[1]))
                except (TypeError, ValueError, IndexError):
                    continue
        counts = [c for c in counts if c >= 1]
        if not counts:
            return DEFAULT_STEP_MS, f"the default: too few samples of {name} to measure " \
                                    "their interval"
        interval_s = half / statistics.median(counts)
        step_ms = round(interval_s) * 1000 if interval_s >= 1 else max(1, round(interval_s * 1000))
        return step_ms, f"the sampling interval of {name} on the server; --step to choose"

    def _series_counts(self, start_ms: int, end_ms: int) -> int:
        """The most series any name has in the range (at least 1)."""
        names = "|".join(self.names)
        answer = self.client.get("series", [
            ("match[]", f'{{__name__=~"{names}"{self._matchers}}}'),
            ("start", _seconds(max(0, start_ms - _COUNT_BEFORE_MS))),
            ("end", _seconds(end_ms))])
        self._warn(answer.warnings)
        per_name = Counter(s.get("__name__", "") for s in answer.data
                           if isinstance(s, dict)) if isinstance(answer.data, list) else Counter()
        return max([1, *per_name.values()])

    def _slices(self, first_ms: int, last_ms: int) -> Iterator[_Slice]:
        """The range in windows of at most 11,000 steps, each in slices of at most
        ``max_points`` series x steps."""
        step = self.step_ms
        t = first_ms
        while t <= last_ms:
            window_end = min(last_ms, t + (self.options.max_steps - 1) * step)
            try:
                series = self._series_counts(t, window_end)
            except ServerError as error:
                raise ServerError(f"counting the series: {error}") from None
            per_slice = max(1, min(self.options.max_steps, self.options.max_points // series))
            s = t
            while s <= window_end:
                e = min(window_end, s + (per_slice - 1) * step)
                yield _Slice(s, e)
                s = e + step
            t = window_end + step

    def _prime_slices(self, engine: ReplayEngine, first_ms: int) -> Iterator[_Slice]:
        """Short stretches ending at each GPU's last record in the ledger (within this
        range), merged: the samples :meth:`ReplayEngine.prime` restores state from."""
        o, step = self.options, self.step_ms
        # Past Prometheus' lookback (5 minutes by default) too: which of two overlapping
        # series is the newer must be seen as the uninterrupted replay saw it.
        reach = max(_PRIME_STEPS * step, _PRIME_MS // step * step)
        ends = sorted({o.start_ms + (s.last_end_ns // 1_000_000 - o.start_ms) // step * step
                       for s in engine.ledger.states.values()
                       if o.start_ms <= s.last_end_ns // 1_000_000 < first_ms})
        merged: list[list[int]] = []
        for end in ends[-_MAX_PRIME_WINDOWS:]:
            start = max(o.start_ms, end - reach)
            if merged and start <= merged[-1][1] + step:
                merged[-1][1] = end
            else:
                merged.append([start, end])
        for start, end in merged:
            t = start
            while t <= end:
                e = min(end, t + (o.max_steps - 1) * step)
                yield _Slice(t, e, prime=True)
                t = e + step

    # -- asking ------------------------------------------------------------------------

    def _pipeline(self, engine: ReplayEngine, slices: Iterator[_Slice],
                  progress: Progress | None) -> None:
        """Fetch the slices' queries ``parallel`` at a time, ahead of the engine by at
        most twice that many, and hand each slice to the engine in order."""
        depth = 2 * self.options.parallel
        queue: deque[tuple[_Slice, list[Future[_Fetched]]]] = deque()
        with ThreadPoolExecutor(self.options.parallel,
                                thread_name_prefix="replay-fetch") as pool:
            outstanding = 0

            def fill() -> None:
                nonlocal outstanding
                while outstanding < depth or not queue:
                    piece = next(slices, None)
                    if piece is None:
                        return
                    futures = [pool.submit(self._fetch, name, piece.start_ms, piece.end_ms)
                               for name in self.names]
                    queue.append((piece, futures))
                    outstanding += len(futures)

            try:
                fill()
                while queue:
                    piece, futures = queue.popleft()
                    fetched = [f.result() for f in futures]
                    outstanding -= len(futures)
                    fill()
                    self._account(engine, piece, fetched, progress)
            finally:
                for _, futures in queue:
                    for f in futures:
                        f.cancel()

    def _fetch(self, name: str, start_ms: int, end_ms: int) -> _Fetched:
        """One name over one slice, split while the server says it is too large."""
        out = _Fetched([], [], [])
        step = self.step_ms
        ranges = [(start_ms, end_ms)]
        while ranges:
            a, b = ranges.pop(0)
            t = time.perf_counter()
            out.requests += 1
            try:
                answer = self.client.get("query_range", [
                    ("query", self._query(name)), ("start", _seconds(a)),
                    ("end", _seconds(b)), ("step", _seconds(step))])
            except TooLargeError as e:
                if a == b:
                    raise ServerError(f"{e} (even for one step)") from None
                mid = a + (b - a) // step // 2 * step
                ranges[0:0] = [(a, mid), (mid + step, b)]
                continue
            out.wait_s += answer.wait_s
            out.decode_s += time.perf_counter() - t - answer.wait_s
            t = time.perf_counter()
            line = a // 1000
            series = parse_response({"status": "success", "data": answer.data}, line, out.bad)
            if series is not None:
                out.parts.append((series, line))
                out.points += sum(int(s.timestamp_ns.shape[0]) for s in series)
            out.warnings.extend(answer.warnings)
            out.bytes_read += answer.bytes_read
            out.decode_s += time.perf_counter() - t
        return out

    def _account(self, engine: ReplayEngine, piece: _Slice, fetched: Sequence[_Fetched],
                 progress: Progress | None) -> None:
        """Join a slice's answers into one chunk in time order; prime with it, or
        account it and seal."""
        t = time.perf_counter()
        bad: list[BadRow] = []
        for f in fetched:
            for series, line in f.parts:
                self._joiner.add(series, line)
            bad.extend(f.bad)
            self._warn(f.warnings)
            s = self.stats
            s.requests += f.requests
            s.bytes_read += f.bytes_read
            s.points += f.points
            s.wait_s += f.wait_s
            s.decode_s += f.decode_s
        self._joiner.emit()
        chunk = self._in_time_order(self._joiner.take(), bad)
        if piece.prime:
            engine.prime(chunk)
        else:
            engine.feed(chunk)
            self.stats.slices += 1
            self.stats.seals += engine.seal(self._source, piece.end_ms * 1_000_000)
            self._done_points += (piece.end_ms - piece.start_ms) // self.step_ms + 1
            if progress is not None:
                progress.update(engine.summary.samples, len(self._joiner.gpus),
                                self._done_points)
        self.stats.account_s += time.perf_counter() - t

    def _in_time_order(self, chunks: list[ColumnChunk], bad: list[BadRow]) -> ColumnChunk:
        """The slice as one chunk, its samples by time (then GPU), each named by its
        unix second in bad rows."""
        if not chunks:
            return empty_chunk(tuple(self._joiner.gpus), bad, 0, self._rows)
        chunk = chunks[0]
        assert len(chunks) == 1
        chunk = select(chunk, np.lexsort((chunk.gpu, chunk.timestamp_ns)))
        self._rows += chunk.rows
        chunk.line = chunk.wall_ns // 1_000_000_000
        chunk.field_lines = {}
        chunk.bad = bad
        chunk.rows_done = self._rows
        return chunk

    def _warn(self, warnings: Sequence[str]) -> None:
        for w in warnings:
            if w not in self.warnings:
                self.warnings.append(w)
                self._note(f"warning from the server: {w}")
