"""What cannot be true never counts: the plausibility check of every replayed sample.

The order kernel against a plain-Python reference of the same rules, however the
samples are chunked; each rule on its own; and, for every format, a recording with
one impossible value gives exactly the totals of the same recording without that
sample, and names its line.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ledger.store import Ledger
from agent.replay import engine
from agent.replay.engine import ReplayEngine, ReplayOptions
from agent.replay.plausible import (
    EARLIEST_NS,
    MAX_CLOCK_MHZ,
    MAX_POWER_MW,
    Plausibility,
    clock_max_mhz,
)
from agent.replay.readers.base import BadRow, ColumnChunk, GpuKey, ReplayError
from agent.replay.summary import ReplaySummary
from tests.hostile.harness import ledger_totals_mismatch
from tests.replay import recordings as rec

S = 10**9
NOW = (rec.T0 + 86_400 * 30) * S
JUMP = 5 * S
UNCONFIRMED = 3600 * S


# -- the reference: the kernel's rules, one row at a time, in plain Python --------------

@dataclass
class _Gpu:
    last: tuple[int, int] | None = None  # (time, row)
    energy: tuple[float, int] | None = None  # (value, time) of the last good reading
    # (kind: "first" or "next", row, time, energy, whether the energy is in doubt)
    wait: tuple[str, int, int, float, bool] | None = None


def follows(before: tuple[float, int] | None, e: float, t: int) -> bool:
    """Whether reading ``e`` at ``t`` can follow ``before`` on one counter (or there
    is nothing to compare)."""
    if before is None or math.isnan(e) or math.isnan(before[0]):
        return True
    return e >= before[0] and e - before[0] <= MAX_POWER_MW * (t - before[1]) * 1e-9


@dataclass
class Reference:
    """The rules of :mod:`agent.replay.plausible`'s order kernel, a row at a time:
    a verdict per row ("" good, else what was wrong) for rows (gpu, t, energy, valid)."""

    jump: int = JUMP
    unconfirmed: int = UNCONFIRMED
    max_wait: int = 1 << 16
    gpus: dict[int, _Gpu] = field(default_factory=dict)

    def run(self, rows: list[tuple[int, int, float, bool]]) -> list[str]:
        out = ["" if ok else "value" for _, _, _, ok in rows]
        for i, (g, t, e, ok) in enumerate(rows):
            if ok:
                self._row(self.gpus.setdefault(g, _Gpu()), i, t, e, out)
        for s in self.gpus.values():
            if s.wait:
                self._settle(s, out)
        return out

    def _row(self, s: _Gpu, i: int, t: int, e: float, out: list[str]) -> None:
        if s.wait and i - s.wait[1] > self.max_wait:
            self._settle(s, out)
        if s.wait:
            kind, row, wt, we, doubt = s.wait
            last = s.last[0] if s.last else None
            if kind == "first" and (t == wt or wt - self.jump <= t < wt):
                out[i] = "backwards"
                return
            if kind == "next" and (t == wt or (last is not None and t <= last)):
                out[i] = "backwards"
                return
            if t < wt:
                verdict = "outlier"
            elif kind == "first" and t - wt > self.unconfirmed:
                verdict = "lone"
            elif kind == "first" and not follows((we, wt), e, t):
                verdict = "energy-first"
            elif doubt and (math.isnan(e) or follows(s.energy, e, t)
                            or not (self._restarted(s) and follows((we, wt), e, t))):
                verdict = "energy"
            else:
                verdict = ""
            if verdict:
                out[row] = verdict
                s.wait = None
            else:
                self._accept(s, out)
        if s.last is None:
            s.wait = ("first", i, t, e, False)
            out[i] = "waiting"
            return
        if t <= s.last[0]:
            out[i] = "backwards"
            return
        doubt = not follows(s.energy, e, t)
        if doubt or t - s.last[0] > self.jump:
            s.wait = ("next", i, t, e, doubt)
            out[i] = "waiting"
            return
        s.last = (t, i)
        if not math.isnan(e):
            s.energy = (e, t)

    def _restarted(self, s: _Gpu) -> bool:
        assert s.wait is not None
        assert s.energy is not None
        _, _, wt, we, _ = s.wait
        return we < s.energy[0] and we <= MAX_POWER_MW * (wt - s.energy[1]) * 1e-9

    def _accept(self, s: _Gpu, out: list[str]) -> None:
        assert s.wait is not None
        _, row, t, e, _ = s.wait
        out[row] = ""
        s.last = (t, row)
        if not math.isnan(e):
            s.energy = (e, t)
        s.wait = None

    def _settle(self, s: _Gpu, out: list[str]) -> None:
        assert s.wait is not None
        kind, row, wt, _, doubt = s.wait
        if kind == "next" and s.last is not None and wt - s.last[0] > self.unconfirmed:
            out[row] = "unconfirmed"
            s.wait = None
        elif kind == "next" and doubt and not self._restarted(s):
            out[row] = "energy"
            s.wait = None
        else:
            self._accept(s, out)


_KIND = {"SM clock above": "value", "timestamp not after": "backwards",
         "energy counter jump": "energy", "timestamp far after": "unconfirmed"}


def _kind(reason: str) -> str:
    if reason.startswith("timestamp far from its GPU's neighbours"):
        return "lone" if "before the next" in reason else "outlier"
    if reason.startswith("energy counter jump") and "cannot follow it" in reason:
        return "energy-first"
    return next(k for prefix, k in _KIND.items() if reason.startswith(prefix))


def judge(rows: list[tuple[int, int, float, bool]], cuts: list[int], n_gpus: int = 3,
          ) -> tuple[list[int], dict[int, str]]:
    """Rows through :class:`Plausibility` in chunks cut at ``cuts``: the good rows'
    numbers (in the order handed over) and the bad rows' kinds by number."""
    check = Plausibility(NOW, JUMP)
    for _ in range(n_gpus):
        check.add_gpu(1980.0)
    keys = tuple(GpuKey(key=f"g{g}") for g in range(n_gpus))
    good: list[int] = []
    bad: list[BadRow] = []
    bounds = [0, *sorted(set(cuts)), len(rows)]
    for a, b in itertools.pairwise(bounds):
        part = rows[a:b]
        gpu = np.array([r[0] for r in part], dtype=np.int64)
        ts = np.array([r[1] for r in part], dtype=np.int64)
        chunk = ColumnChunk(
            gpu=gpu, timestamp_ns=ts, wall_ns=ts, gpus=keys,
            fields={"energy_mj": np.array([r[2] for r in part]),
                    "sm_clock_mhz": np.array([1500.0 if r[3] else 9999.0 for r in part])},
            line=np.arange(a + 1, b + 1, dtype=np.int64), wall_clock=False)
        pieces, got = check.take(chunk, gpu)
        good += [int(x) for piece, _ in pieces for x in piece.line]  # type: ignore[union-attr]
        bad += got
    pieces, got = check.finish()
    good += [int(x) for piece, _ in pieces for x in piece.line]  # type: ignore[union-attr]
    bad += got
    return good, {b.line: _kind(b.reason) for b in bad}


_ROW = st.tuples(st.integers(0, 2), st.integers(-20, 40), st.booleans(),
                 st.sampled_from([math.nan, 0.0, 1.0, 5.0, 1e20]), st.integers(0, 30))


@settings(max_examples=300, deadline=None)
@given(st.lists(_ROW, max_size=60), st.lists(st.integers(0, 60), max_size=6))
def test_kernel_equals_its_reference_however_chunked(
        raw: list[tuple[int, int, bool, float, int]], cuts: list[int]) -> None:
    # Mostly one step forward per GPU, with jumps, repeats, steps back and bad values.
    clock = [10**7 * S] * 3
    rows = []
    for g, step, bad_value, energy_step, every in raw:
        clock[g] += step * S if abs(step) < 10 else step * 400 * S
        energy = math.nan if math.isnan(energy_step) else clock[g] / S * 1e3 + energy_step
        rows.append((g, clock[g], energy, not (bad_value and every == 0)))
    want = Reference().run(rows)
    good, bad = judge(rows, [c for c in cuts if c <= len(rows)])
    assert good == [i + 1 for i, v in enumerate(want) if v == ""]
    assert bad == {i + 1: v for i, v in enumerate(want) if v not in ("", "waiting")}
    assert "waiting" not in want


def test_a_lone_sample_ahead_is_dropped_and_its_gpu_goes_on() -> None:
    t = [k * S for k in range(1, 11)]
    rows = [(0, x, math.nan, True) for x in t]
    rows[4] = (0, 10**6 * S, math.nan, True)  # hours ahead of both neighbours
    good, bad = judge(rows, [5])  # the chunk ends right after it: it waits
    assert bad == {5: "outlier"}
    assert good == [1, 2, 3, 4, 6, 7, 8, 9, 10]


def test_a_gap_that_the_next_sample_confirms_stands() -> None:
    rows = [(0, k * S, math.nan, True) for k in range(1, 5)]
    rows += [(0, (3600 * 5 + k) * S, math.nan, True) for k in range(3)]
    good, bad = judge(rows, [4, 5])
    assert bad == {}
    assert good == list(range(1, 8))


def test_a_first_sample_far_from_the_rest_is_found_either_way() -> None:
    ahead = [(0, 10**6 * S, math.nan, True)] + [(0, k * S, math.nan, True) for k in range(1, 5)]
    assert judge(ahead, [1])[1] == {1: "outlier"}
    behind = [(0, S, math.nan, True)] + [(0, (10**5 + k) * S, math.nan, True) for k in range(4)]
    assert judge(behind, [1])[1] == {1: "lone"}


def test_going_backwards_and_repeats_are_named_with_the_line_they_do_not_follow() -> None:
    check = Plausibility(NOW, JUMP)
    check.add_gpu(None)
    ts = np.array([rec.T0 + k for k in (1, 2, 3, 3, 2, 4)], dtype=np.int64) * S
    chunk = ColumnChunk(gpu=np.zeros(6, np.int64), timestamp_ns=ts, wall_ns=ts,
                        fields={}, gpus=(GpuKey("g"),), line=np.arange(11, 17))
    pieces, bad = check.take(chunk, chunk.gpu)
    assert [(b.line, b.reason.split(":")[0]) for b in bad] == [
        (14, "timestamp not after its GPU's previous sample"),
        (15, "timestamp not after its GPU's previous sample")]
    assert "not after line 13" in bad[0].reason
    assert [int(x) for p, _ in pieces for x in p.line] == [11, 12, 13, 16]  # type: ignore[union-attr]


def test_an_unconfirmed_far_jump_at_the_end_is_dropped_a_short_one_stands() -> None:
    base = [(0, k * S, math.nan, True) for k in range(1, 5)]
    assert judge([*base, (0, 2 * UNCONFIRMED, math.nan, True)], [])[1] == {5: "unconfirmed"}
    assert judge([*base, (0, 600 * S, math.nan, True)], [])[1] == {}


def counter(*readings: float) -> list[tuple[int, int, float, bool]]:
    """One GPU, a sample a second, these energy readings (mJ)."""
    return [(0, (k + 1) * S, e, True) for k, e in enumerate(readings)]


E = [1e9 + k * 5e5 for k in range(8)]  # 500 W


def test_an_energy_spike_is_bad_and_the_counter_goes_on() -> None:
    assert judge(counter(*E[:2], 1e15, *E[3:]), [3])[1] == {3: "energy"}
    # Low, as a digit lost: not a restart, since the next reading follows the last one.
    assert judge(counter(*E[:2], 1e8, *E[3:]), [3])[1] == {3: "energy"}


def test_a_first_reading_that_the_next_cannot_follow_is_dropped_the_rest_counts() -> None:
    assert judge(counter(1e15, *E[1:]), [1])[1] == {1: "energy-first"}
    assert judge(counter(5.0, *E[1:]), [])[1] == {1: "energy-first"}
    # A spike as the second reading costs the first one too: which of two readings is
    # wrong cannot be told, and the first goes.
    good, bad = judge(counter(E[0], 1e15, *E[2:]), [])
    assert bad == {1: "energy-first", 2: "energy-first"}
    assert good == list(range(3, 9))


def test_a_counter_restarted_counts_and_one_that_cannot_be_is_bad() -> None:
    restarted = [1e3 + k * 5e5 for k in range(4)]  # a driver reload: from zero again
    assert judge(counter(*E[:4], *restarted), [5])[1] == {}
    assert judge(counter(*E[:4], 1e3), [])[1] == {}  # at the end, as a restart
    # 5e8 mJ since the last reading a second before: no GPU uses 500 kW.
    assert judge(counter(*E[:4], 5e8, 5e8 + 5e5), [])[1] == {5: "energy", 6: "energy"}


def test_the_clock_limit_is_the_lower_known_maximum() -> None:
    assert clock_max_mhz(1980.0, None) == 1980.0
    assert clock_max_mhz(1980.0, 1755.0) == 1755.0
    assert clock_max_mhz(None, 99999999.0) is None  # a maximum no GPU has: ignored
    assert clock_max_mhz(None, None) is None
    check = Plausibility(NOW, JUMP)
    check.add_gpu(None)
    ts = np.arange(1, 4, dtype=np.int64) * S + EARLIEST_NS
    chunk = ColumnChunk(gpu=np.zeros(3, np.int64), timestamp_ns=ts, wall_ns=ts,
                        fields={"sm_clock_mhz": np.array([4000.0, MAX_CLOCK_MHZ + 1, 4000.0])},
                        gpus=(GpuKey("g"),), line=np.arange(1, 4))
    _, bad = check.take(chunk, chunk.gpu)
    assert [(b.line, b.reason) for b in bad] == [
        (2, "SM clock above the GPU's maximum: 5001 MHz, no GPU reaches 5000 MHz")]


def test_synthetic_times_are_not_judged_against_the_calendar() -> None:
    check = Plausibility(NOW, JUMP)
    check.add_gpu(None)
    ts = np.arange(3, dtype=np.int64) * S  # 1970, as --interval-hint times them
    chunk = ColumnChunk(gpu=np.zeros(3, np.int64), timestamp_ns=ts, wall_ns=ts, fields={},
                        gpus=(GpuKey("g"),), line=np.arange(1, 4), wall_clock=False)
    pieces, bad = check.take(chunk, chunk.gpu)
    pieces += check.finish()[0]
    assert bad == []
    assert sum(p.rows for p, _ in pieces) == 3
    chunk.wall_clock = True
    check = Plausibility(NOW, JUMP)
    check.add_gpu(None)
    _, bad = check.take(chunk, chunk.gpu)
    assert [b.reason.split(":")[0] for b in bad] == ["timestamp before 2000"] * 3


# -- every format: one impossible value changes nothing but itself ----------------------

AFTER = (4102444800, "timestamp in the future")  # 2100-01-01
BEFORE = (946684799, "timestamp before 2000")
# (field, value, reason); ``time`` values are Unix seconds or an offset (a str) from the
# sample's own time.
IMPOSSIBLE: list[tuple[str, float | str, str]] = [
    ("clock", 99999999, "SM clock above the GPU's maximum"),
    ("clock", -5, "negative SM clock"),
    ("util", 250, "utilization outside 0-100%"),
    ("util", -1, "utilization outside 0-100%"),
    ("tensor", 150, "tensor activity outside 0-100%"),
    ("power", -3, "negative power"),
    ("power", 99999, "power far above any GPU's maximum"),
    ("energy", -5, "negative energy counter"),
    ("energy", 1e15, "energy counter jump beyond any GPU's power"),
    ("time", AFTER[0], AFTER[1]),
    ("time", BEFORE[0], BEFORE[1]),
    ("time", "+21600", "timestamp far from its GPU's neighbours"),
    ("time", "-30", "timestamp not after its GPU's previous sample"),
]
_NOT_IN = {"nvidia-smi": {"tensor", "energy"}}
# A range export's points are sorted by time and joined by GPU: a point moved back is a
# second value for an existing time; one moved hours ahead comes last and nothing
# after it confirms it.
_PROM = {"-30": "series 0 (DCGM_FI_DEV_SM_CLOCK) point 70: a second value at",
         "+21600": "timestamp far after its GPU's previous sample"}
CASES = [(fmt, f, v, _PROM.get(str(v), r) if fmt == "prom-range" else r)
         for fmt in rec.FORMATS for f, v, r in IMPOSSIBLE if f not in _NOT_IN.get(fmt, set())]
TICK, GPU = 70, 0


def replay(path: Path, ledger: Path, **kw: Any) -> tuple[dict[str, object], ReplaySummary]:
    summary = ReplayEngine(ledger, ReplayOptions(now_ns=NOW, **kw)).run([path])
    return {k: (g.totals.flop, g.totals.energy_mj, g.totals.samples, g.totals.gap_ns)
            for k, g in summary.gpus.items()}, summary


@pytest.mark.parametrize(("fmt", "name", "raw", "reason"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_one_impossible_value_changes_nothing_but_itself(
        tmp_path: Path, fmt: str, name: str, raw: float | str, reason: str) -> None:
    t = rec.T0 + TICK
    value = t + float(raw) if isinstance(raw, str) else raw
    if fmt == "trace" and name == "time" and not isinstance(raw, str):
        # A trace's calendar time is the tick's wall time, shared by its samples.
        name = "wall"
        gone = {(TICK, g, "drop"): 1.0 for g in range(2)}
    else:
        gone = {(TICK, GPU, "drop"): 1.0}
    edits = {(TICK, GPU, name): float(value)}
    dirty, lines = rec.write(tmp_path, fmt, 150, edits, name="dirty")
    clean, _ = rec.write(tmp_path, fmt, 150, gone, name="clean")
    # (A range export's value moved back is bad in each of its five series.)
    got, summary = replay(dirty, tmp_path / "a.sqlite", max_bad_share=0.02)
    want, _ = replay(clean, tmp_path / "b.sqlite")
    assert got == want
    first = summary.bad_first[0][1]
    assert first.reason.startswith(reason)
    assert first.line == lines[(TICK, GPU, name)]
    assert summary.failure is None


def test_the_2100_row_and_the_fast_clock_leave_the_totals_as_without_them(
        tmp_path: Path) -> None:
    """The two rows of issue 10 in one nvidia-smi log: neither counts, and every valid
    row after them does (before: the 2100 row added 5e24 FLOP to the high bound and
    dropped every later row; the clock multiplied the central total)."""
    edits = {(20, 0, "time"): float(AFTER[0]), (40, 1, "clock"): 99999999.0}
    dirty, _ = rec.write(tmp_path, "nvidia-smi", 300, edits, name="dirty")
    clean, _ = rec.write(tmp_path, "nvidia-smi", 300,
                         {(20, 0, "drop"): 1.0, (40, 1, "drop"): 1.0}, name="clean")
    got, summary = replay(dirty, tmp_path / "a.sqlite")
    assert got == replay(clean, tmp_path / "b.sqlite")[0]
    assert summary.samples == 598
    assert summary.rejected == 0


def test_chunking_does_not_change_what_is_judged_or_counted(tmp_path: Path) -> None:
    edits = {(k, k % 2, "time"): rec.T0 + k + 21600.0 for k in range(5, 290, 37)}
    edits |= {(k, 1, "clock"): 99999999.0 for k in range(11, 290, 53)}
    path, _ = rec.write(tmp_path, "nvidia-smi", 300, edits)
    whole, a = replay(path, tmp_path / "a.sqlite", max_bad_share=0.1)
    small, b = replay(path, tmp_path / "b.sqlite", max_bad_share=0.1, block_bytes=700)
    assert whole == small
    assert a.bad_count == b.bad_count == 8 + 6


# -- what a failed replay leaves: nothing ----------------------------------------------

def test_too_many_bad_rows_fail_the_replay_and_write_nothing(tmp_path: Path) -> None:
    edits = {(k, 0, "util"): 250.0 for k in range(0, 150, 30)}  # 5 of 300: 1.7%
    path, _ = rec.write(tmp_path, "dcgm", 150, edits)
    ledger = tmp_path / "out" / "l.sqlite"
    _, summary = replay(path, ledger)
    assert "5 of 300 rows bad (1.67%), more than --max-bad-share 1.00%" in str(
        summary.failure)
    assert not (tmp_path / "out").exists()
    _, summary = replay(path, ledger, max_bad_share=0.02)
    assert summary.failure is None
    assert summary.written > 0


def test_a_failed_replay_leaves_an_existing_ledger_as_it_was(tmp_path: Path) -> None:
    good, _ = rec.write(tmp_path, "nvidia-smi", 100, name="good.csv")
    ledger = tmp_path / "l.sqlite"
    replay(good, ledger)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("l.")}
    later = {(k, 0, "time"): rec.T0 + 1000.0 + k for k in range(200)}
    later |= {(k, 1, "clock"): -1.0 for k in range(200)}
    bad, _ = rec.write(tmp_path, "nvidia-smi", 200, later, name="bad.csv")
    _, summary = replay(bad, ledger)
    assert summary.failure is not None
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()
            if p.name.startswith("l.")} == before


def test_nothing_valid_is_a_failure_and_creates_nothing(tmp_path: Path) -> None:
    edits = {(k, g, "clock"): -1.0 for k in range(10) for g in range(2)}
    path, _ = rec.write(tmp_path, "nvidia-smi", 10, edits)
    _, summary = replay(path, tmp_path / "l.sqlite")
    assert str(summary.failure).startswith(
        f"no valid sample in {path}: nothing to account, 20 bad rows (first: {path}:2: "
        "negative SM clock: -1 MHz)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu.csv"]


def test_replaying_a_file_again_is_not_a_failure(tmp_path: Path) -> None:
    path, _ = rec.write(tmp_path, "prom-range", 50)
    replay(path, tmp_path / "l.sqlite")
    _, again = replay(path, tmp_path / "l.sqlite")
    assert again.failure is None
    assert again.skipped_in_ledger == 100
    assert again.records == 0


def test_the_future_is_judged_from_now(tmp_path: Path) -> None:
    path, _ = rec.write(tmp_path, "nvidia-smi", 10)
    summary = ReplayEngine(tmp_path / "l.sqlite", ReplayOptions(
        now_ns=(rec.T0 - 7 * 86400) * S)).run([path])
    assert summary.bad_reasons == {"timestamp in the future": 20}
    assert summary.failure is not None


def test_an_existing_ledger_without_its_key_is_refused_and_no_key_is_made(
        tmp_path: Path) -> None:
    path, _ = rec.write(tmp_path, "nvidia-smi", 20)
    ledger = tmp_path / "l.sqlite"
    replay(path, ledger)
    (tmp_path / "l.sqlite.key").unlink()
    (tmp_path / "l.sqlite.pub").unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ReplayError, match=r"l.sqlite.key: missing: the key of the existing"):
        ReplayEngine(ledger, ReplayOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_write_that_fails_leaves_no_new_ledger_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = rec.write(tmp_path, "nvidia-smi", 20)

    def disk_full(*_: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Ledger, "append", disk_full)
    with pytest.raises(sqlite3.OperationalError):
        replay(path, tmp_path / "out" / "l.sqlite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu.csv"]


def test_a_replay_too_long_to_hold_that_fails_says_what_it_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_HELD_RECORDS", 4)  # appended as it goes from 4 on
    edits = {(k, 0, "util"): 250.0 for k in range(140, 150)}  # the share known at the end
    path, _ = rec.write(tmp_path, "nvidia-smi", 150, edits)
    _, summary = replay(path, tmp_path / "new" / "l.sqlite", record_s=10)
    assert summary.failure is not None
    assert summary.written == 0
    assert not (tmp_path / "new").exists()  # a ledger it created, it removes
    good, _ = rec.write(tmp_path, "nvidia-smi", 20, name="good.csv")
    replay(good, tmp_path / "l.sqlite")
    _, summary = replay(path, tmp_path / "l.sqlite", record_s=10)
    assert summary.written > 0
    assert f"{summary.written:,} records of it were appended before the end" in str(
        summary.failure)
    assert ledger_totals_mismatch(tmp_path / "l.sqlite") is None
