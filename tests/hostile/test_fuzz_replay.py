"""Every replay format, fuzzed: mutated bytes end as bad rows or a ReplayError, never
another exception, and nothing impossible reaches the totals.

In-process (the subprocess cases are in :mod:`tests.hostile.cases_replay`): each
format's small valid recording (:mod:`tests.replay.recordings`) with bytes flipped,
cut, inserted, or a stretch (lines) duplicated, read by its reader and replayed into a
ledger; and the same recordings with impossible values written into random samples,
whose totals must equal those of the recording without those samples.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.replay.engine import ReplayEngine, ReplayOptions, open_reader
from agent.replay.plausible import CLOCK_MARGIN, MAX_CLOCK_MHZ, MAX_POWER_MW
from agent.replay.readers.base import BadRow, ReplayError
from agent.replay.summary import ReplaySummary
from agent.sources.specs import load_spec_table
from tests.hostile.harness import ledger_totals_mismatch
from tests.replay import recordings as rec

NOW_NS = (rec.T0 + 30 * 86400) * 10**9
SPECS = load_spec_table()
# The most FLOP any GPU of the spec table can do in a second: its largest per-clock
# figure at the highest clock the check lets through.
PEAK_FLOPS = max(spec.flop_per_clock(p) for spec in SPECS.specs.values()
                 for p in spec.flop_per_clock_per_sm) * MAX_CLOCK_MHZ * (1 + CLOCK_MARGIN) * 1e6
VALID = {fmt: make(12, {})[0] for fmt, (make, _) in rec.FORMATS.items()}

_MUTATION = st.tuples(st.sampled_from(["flip", "cut", "insert", "duplicate", "truncate"]),
                      st.integers(0, 1 << 20), st.integers(0, 1 << 20),
                      st.binary(min_size=1, max_size=8))


def mutate(data: bytes, mutations: list[tuple[str, int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, a, b, junk in mutations:
        if not out:
            break
        a %= len(out)
        if kind == "flip":
            out[a] = junk[0]
        elif kind == "cut":
            del out[a : a + 1 + b % 64]
        elif kind == "insert":
            out[a:a] = junk
        elif kind == "duplicate":
            # Whole lines where there are lines: a line (or a few) repeated after itself.
            start = out.rfind(b"\n", 0, a) + 1
            end = out.find(b"\n", a)
            end = len(out) if end < 0 else end + 1
            for _ in range(b % 3):
                nxt = out.find(b"\n", end)
                end = len(out) if nxt < 0 else nxt + 1
            out[end:end] = out[start:end]
        else:
            del out[a:]
    return bytes(out)


def physically_possible(summary: ReplaySummary) -> None:
    """Nothing in the totals a GPU cannot do in the time they cover."""
    for key, line in summary.gpus.items():
        t = line.totals
        seconds = (t.covered_ns + t.gap_ns) / 1e9
        assert 0 <= t.flop_low <= t.flop_central <= t.flop_high, key
        assert t.flop_high <= PEAK_FLOPS * seconds + 1, key
        assert 0 <= t.energy_mj <= MAX_POWER_MW * seconds + 1, key
    if summary.first_ns and summary.samples:
        assert summary.last_ns <= NOW_NS + 86400 * 10**9
        span_s = (summary.last_ns - summary.first_ns) / 1e9
        for line in summary.gpus.values():
            assert (line.totals.covered_ns + line.totals.gap_ns) / 1e9 <= span_s + 1


def replay(path: Path, ledger: Path, max_bad_share: float) -> ReplaySummary:
    return ReplayEngine(ledger, ReplayOptions(now_ns=NOW_NS, max_bad_share=max_bad_share)
                        ).run([path])


@pytest.mark.parametrize("fmt", sorted(rec.FORMATS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=4),
       strict=st.booleans())
def test_mutated_bytes_end_as_bad_rows_or_a_replay_error(
        fmt: str, mutations: list[tuple[str, int, int, bytes]], strict: bool) -> None:
    raw = VALID[fmt]
    data = mutate(raw.encode() if isinstance(raw, str) else raw, mutations)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        path = d / rec.FORMATS[fmt][1]
        path.write_bytes(data)
        problem = ""
        try:
            for chunk in open_reader(path, fmt).chunks():
                assert chunk.gpu.shape == chunk.timestamp_ns.shape == chunk.wall_ns.shape
                assert chunk.line is None or chunk.line.shape == chunk.gpu.shape
                assert all(isinstance(b, BadRow) and b.line >= 0 for b in chunk.bad)
        except ReplayError as e:
            problem = str(e)
        assert not problem or problem.startswith(str(path))
        ledger = d / "out" / "ledger.sqlite"
        summary = replay(path, ledger, 0.01 if strict else 1.0)
        physically_possible(summary)
        if summary.failure is not None:
            assert not (d / "out").exists()
        elif summary.records:
            assert ledger_totals_mismatch(ledger) is None


_IMPOSSIBLE = {
    "clock": [99999999.0, -5.0, math.inf, MAX_CLOCK_MHZ * 2],
    "util": [250.0, -1.0, 100.5],
    "tensor": [150.0, -0.5],
    "power": [-3.0, 99999.0],
    "energy": [-5.0, math.nan],  # NaN: a spike, 1e15 / (1 + tick) mJ (no two follow)
    "time": [4102444800.0, 946684799.0, 1.0],
}
_EDIT = st.tuples(st.integers(0, 29), st.integers(0, 1),
                  st.sampled_from([(f, v) for f, vs in _IMPOSSIBLE.items() for v in vs]))
_NOT_RECORDED = {"nvidia-smi": {"tensor", "energy"}}


@pytest.mark.parametrize("fmt", sorted(rec.FORMATS))
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(_EDIT, min_size=1, max_size=6))
def test_impossible_values_count_as_if_their_samples_were_not_there(
        fmt: str, edits: list[tuple[int, int, tuple[str, float]]]) -> None:
    dirty: dict[tuple[int, int, str], float] = {}
    gone: dict[tuple[int, int, str], float] = {}
    spikes: set[tuple[int, int]] = set()
    for tick, gpu, (name, value) in edits:
        if name in _NOT_RECORDED.get(fmt, set()):
            continue
        if name == "energy" and math.isnan(value):
            value = 1e15 / (1 + tick)
            spikes.add((tick, gpu))
        if math.isinf(value) and fmt != "trace":
            continue  # the text readers refuse the number itself (the line is bad)
        if fmt == "trace" and name == "time":
            name = "wall"  # a trace's calendar time is the tick's, for both GPUs
            gone |= {(tick, g, "drop"): 1.0 for g in range(2)}
        dirty[(tick, gpu, name)] = value
        gone[(tick, gpu, "drop")] = 1.0
    # A spike in a GPU's second reading costs the first one too (which of two readings
    # is wrong cannot be told; tests/replay/test_plausible.py), unless another value
    # of its sample is bad anyway.
    otherwise_bad = {(t, g) for t, g, name in dirty if name != "energy"}
    otherwise_bad |= {(t, g) for t, _, name in dirty if name == "wall" for g in range(2)}
    for tick, gpu in spikes - otherwise_bad:
        before = [t for t in range(tick) if (t, gpu, "drop") not in gone]
        if len(before) == 1:
            gone[(before[0], gpu, "drop")] = 1.0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        a, _ = rec.write(d, fmt, 30, dirty, name="dirty")
        b, _ = rec.write(d, fmt, 30, gone, name="clean")
        got, want = replay(a, d / "a.sqlite", 1.0), replay(b, d / "b.sqlite", 1.0)
    physically_possible(got)
    assert {k: (g.totals.flop, g.totals.energy_mj, g.totals.samples, g.totals.gap_ns)
            for k, g in got.gpus.items()} == {
        k: (g.totals.flop, g.totals.energy_mj, g.totals.samples, g.totals.gap_ns)
        for k, g in want.gpus.items()}
