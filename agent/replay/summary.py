"""What a replay tells its user: a progress line while it runs, a summary at the end."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from agent import figures
from agent.accounting.records import Totals
from agent.replay.readers.base import BadRow

FIRST_BAD_SHOWN = 10


class Progress:
    """A plain-text progress line on a stream (stderr): rows, GPUs, rows/s and the ETA
    from bytes read out of the total. Redrawn in place on a terminal, one line per
    update elsewhere; at most ``1 / min_interval_s`` times a second.

    Args:
        total_bytes: size of every file to replay.
        stream: where to write (default ``sys.stderr``).
        min_interval_s: the least time between two updates.
        clock: seconds, monotonic (for tests).
    """

    def __init__(self, total_bytes: int, stream: TextIO | None = None,
                 min_interval_s: float = 0.25,
                 clock: Callable[[], float] | None = None) -> None:
        self.total_bytes = max(total_bytes, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval_s = min_interval_s
        self._clock = clock or time.monotonic
        self._started = self._clock()
        self._last = -float("inf")
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.updates = 0

    def update(self, rows: int, gpus: int, bytes_done: int, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        fraction = min(bytes_done / self.total_bytes, 1.0)
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("inf")
        left = figures.duration(eta) if eta != float("inf") else "?"
        line = (f"replay {fraction * 100:5.1f}%  {rows:,} rows  {gpus} GPUs  "
                f"{rows / elapsed:,.0f} rows/s  ETA {left}")
        self.stream.write(("\r" + line + "\x1b[K") if self._tty else line + "\n")
        self.stream.flush()
        self.updates += 1

    def done(self) -> None:
        if self._tty and self.updates:
            self.stream.write("\n")
            self.stream.flush()


@dataclass(slots=True)
class GpuLine:
    """One replayed GPU: its identity, the spec its peak comes from (``spec``, a key)
    and how that spec was found (``basis``: ``table``, ``derived`` or ``ceiling``, with
    ``reason`` saying why the table was not enough), its first estimator, its totals."""

    key: str
    name: str
    spec: str
    estimator: str
    totals: Totals = field(default_factory=Totals)
    basis: str = "table"
    reason: str = ""


@dataclass(slots=True)
class ReplaySummary:
    """Everything a replay did, for the final report and for tests."""

    files: list[str] = field(default_factory=list)
    rows: int = 0  # lines or entries read, good and bad
    samples: int = 0  # samples fed to the accountant
    skipped_in_ledger: int = 0  # samples already in the ledger (an earlier replay)
    rejected: int = 0  # samples not later than their GPU's previous one
    bad_count: int = 0
    bad_first: list[tuple[str, BadRow]] = field(default_factory=list)
    bad_reasons: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    gpus: dict[str, GpuLine] = field(default_factory=dict)
    runs: dict[str, Totals] = field(default_factory=dict)
    total: Totals = field(default_factory=Totals)
    records: int = 0
    first_ns: int = 0
    last_ns: int = 0
    elapsed_s: float = 0.0
    max_gap_s: float = 0.0
    ledger: str = ""
    failure: str | None = None  # why the replay failed (and wrote nothing), None if not
    written: int = 0  # records appended to the ledger

    @property
    def judged(self) -> int:
        """Rows judged good or bad: bad rows, samples used and those already in the
        ledger (the share of bad rows is of these)."""
        return self.bad_count + self.samples + self.skipped_in_ledger

    def failure_reason(self, max_bad_share: float) -> str | None:
        """Why this replay must not be written, as one line; None if it may."""
        first = ""
        if self.bad_first:
            path, row = self.bad_first[0]
            first = f" (first: {path}:{row.line}: {row.reason})"
        if self.errors:
            more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            return f"{self.errors[0]}{more}"
        if self.samples + self.skipped_in_ledger == 0:
            return (f"no valid sample in {', '.join(self.files)}: nothing to account, "
                    f"{self.bad_count:,} bad rows{first}")
        if self.bad_count > max_bad_share * self.judged:
            return (f"{self.bad_count:,} of {self.judged:,} rows bad "
                    f"({self.bad_count / self.judged:.2%}), more than --max-bad-share "
                    f"{max_bad_share:.2%}{first}")
        return None

    def add_bad(self, path: str, rows: list[BadRow]) -> None:
        self.bad_count += len(rows)
        for row in rows:
            # Reasons counted without their column/field numbers' variety exploding.
            self.bad_reasons[row.reason.split(" in column")[0].split(":")[0]] += 1
            if len(self.bad_first) < FIRST_BAD_SHOWN:
                self.bad_first.append((path, row))

    def format(self) -> str:
        """The summary as text."""
        out = [f"replayed {len(self.files)} file(s) into {self.ledger}",
               f"  rows read      {self.rows:,}  ({self.samples:,} samples used, "
               f"{self.elapsed_s:.1f} s, {self.rows / max(self.elapsed_s, 1e-9):,.0f} rows/s)"]
        if self.first_ns:
            out.append(f"  time span      {figures.when(self.first_ns)} .. "
                       f"{figures.when(self.last_ns)}  (gap above {self.max_gap_s:g} s)")
        if self.skipped_in_ledger:
            out.append(f"  already in the ledger, skipped  {self.skipped_in_ledger:,}")
        if self.rejected:
            out.append(f"  samples not after the previous one of their GPU  {self.rejected:,}")
        out.append(f"  bad rows       {self.bad_count:,}")
        for reason, count in self.bad_reasons.most_common(5):
            out.append(f"    {count:,} x {reason}")
        for path, row in self.bad_first:
            out.append(f"    {path}:{row.line}: {row.reason}")
        if self.bad_count > len(self.bad_first):
            out.append(f"    ... and {self.bad_count - len(self.bad_first):,} more")
        for e in self.errors:
            out.append(f"  ERROR {e}")
        out.append(f"  GPUs           {len(self.gpus)}")
        for g in self.gpus.values():
            b = g.totals
            out.append(f"    {g.key[:44]:<44} {g.name[:24]:<24} {g.spec or '-':<18} "
                       f"{g.basis:<8} {g.estimator:<12} {b.samples:>10,} samples  "
                       f"FLOP {figures.band(*b.flop)}")
            if g.basis != "table":
                out.append(f"      NOT IN THE SPEC TABLE: peak from a {g.basis} spec, band "
                           f"widened ({g.reason or 'no reason given'})")
            if b.samples <= 1:
                out.append("      (a single sample: no interval to integrate; a corrupted "
                           "identity?)")
        off_table = Counter(g.basis for g in self.gpus.values() if g.basis != "table")
        if off_table:
            out.append(f"  WARNING: {sum(off_table.values())} of {len(self.gpus)} GPU(s) "
                       "have no row in the spec table ("
                       + ", ".join(f"{n} {basis}" for basis, n in sorted(off_table.items()))
                       + "): their FLOP rest on a derived or ceiling peak, with a wider "
                         "band; a row in the spec table (--spec-file), or --gpu-model KEY "
                         "when every GPU of the recording is that model, narrows it")
        out.append(f"  runs           {len(self.runs)}")
        for run, b in sorted(self.runs.items()):
            out.append(f"    {run[:44]:<44} FLOP {figures.band(*b.flop)}  "
                       f"energy {figures.energy(b.energy_mj)}")
        t = self.total
        out.append(f"  total          FLOP {figures.band(*t.flop)}  "
                   f"energy {figures.energy(t.energy_mj)}  "
                   f"covered {figures.duration(t.covered_ns / 1e9)}"
                   f" GPU-time, gaps {figures.duration(t.gap_ns / 1e9)}")
        if self.failure is None:
            out.append(f"  ledger records {self.records:,}")
        else:
            out.append(f"  ledger records {self.records:,} NOT written: {self.failure}")
        return "\n".join(out)
