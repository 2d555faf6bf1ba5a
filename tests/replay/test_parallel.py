"""``replay --jobs N``: nvidia-smi logs cut into blocks and parsed by several workers give
the chunks, totals, bad rows (with their line numbers) and ledger records of one worker,
bit for bit, wherever the blocks are cut: inside a GPU's run of samples, at a bad row,
in a row out of order, at a header that changes the columns, in a line too long to
hold, across files."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from agent.replay.engine import ReplayEngine, ReplayOptions
from agent.replay.parallel import ParallelBlocks, usable_cores
from agent.replay.readers import nvidia_smi
from agent.replay.readers.base import ColumnChunk
from agent.replay.readers.lines import read_line_range
from agent.replay.readers.nvidia_smi import NvidiaSmiReader, plan_log
from agent.replay.summary import ReplaySummary
from tests.replay.test_engine import cli

U = ("GPU-5b4e07f6-3a86-4340-039d-25f2a83cdc43", "GPU-c2f76b33-7953-256e-8f33-1343419b1a1c",
     "GPU-34319582-d595-d1c7-d1d2-179bcfa61660")
NAMES = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3")
HEADER = ("timestamp, index, uuid, name, utilization.gpu [%], clocks.current.sm [MHz], "
          "power.draw [W], clocks_event_reasons.active")
# nvidia-smi restarted with another query: other columns, in another order.
OTHER = "uuid, timestamp, clocks.sm [MHz], power.draw [W], utilization.gpu [%]"


def messy_log(seconds: int = 240) -> tuple[str, dict[int, str]]:
    """An nvidia-smi log of three GPUs sampled every second (the third from second 40)
    with what real logs hold: garbage lines, a number nvidia-smi never prints, a row
    whose time goes back, a GPU silent for ten minutes, CRLF, the header repeated, a
    header with other columns from second 180 on, a last line cut off. Returns the
    text and the bad lines expected from the parse (line number -> reason's start)."""
    lines = [HEADER]
    bad: dict[int, str] = {}
    other = False
    for t in range(seconds):
        if t == 100:
            lines.append(HEADER)  # restarted, same query: taken
        if t == 180:
            lines.append(OTHER)
            other = True
        for g in range(3):
            if g == 2 and t < 40:
                continue
            # GPU 0 is silent from 120 to 130 s, then jumps 10 minutes ahead.
            if g == 0 and 120 <= t < 130:
                continue
            when = t + (600 if g == 0 and t >= 130 else 0)
            if g == 1 and t == 77:
                when = t - 5  # before its previous sample: a bad row (plausibility)
            stamp = f"2026/11/28 12:{when // 60:02d}:{when % 60:02d}.{g * 7 + t % 5:03d}"
            util = f"{80 + (t * 7 + g) % 21} %" if not (g == 2 and t == 55) else "9.7e1 %"
            clock = f"{(1700, 1200, 1650)[g] + (t * 13 + g * 101) % 200} MHz"  # under max
            power = f"{300 + (t * 31 + g * 17) % 350}.{t % 100:02d} W"
            if other:
                lines.append(f"{U[g]}, {stamp}, {clock}, {power}, {util}")
            else:
                end = "\r" if t == 66 else ""
                lines.append(f"{stamp}, {g}, {U[g]}, {NAMES[g]}, {util}, {clock}, {power}, "
                             f"0x000000000000000{t % 2 * 4}{end}")
        if t % 37 == 36:
            lines.append("NVIDIA-SMI has failed because it couldn't communicate with the "
                         "NVIDIA driver.")
            bad[len(lines)] = "bad GPU identity" if other else "bad timestamp"
        if t % 53 == 52:
            lines.append(lines[-2].replace(" MHz", " kHz"))
            bad[len(lines)] = "bad unit"
    lines.append(lines[-1][:30])  # cut off: no newline
    bad[len(lines)] = "truncated"
    return "\n".join(lines), bad


def chunks(path: Path, block_bytes: int, jobs: int, processes: bool = False
           ) -> list[ColumnChunk]:
    plan = plan_log(path, block_bytes=block_bytes)
    blocks = ParallelBlocks(1, lambda i: plan, jobs, processes=processes) if jobs > 1 else None
    try:
        return list(NvidiaSmiReader(path, block_bytes=block_bytes, plan=plan,
                                    blocks=blocks).chunks())
    finally:
        if blocks is not None:
            blocks.close()


def flat(cs: list[ColumnChunk]) -> dict[str, object]:
    """Everything the chunks say, joined (the chunking aside)."""
    out: dict[str, object] = {
        "gpus": [g for g in cs[-1].gpus],
        "bad": [(b.line, b.reason) for c in cs for b in c.bad],
        "rows_done": cs[-1].rows_done,
    }
    for name in ("gpu", "timestamp_ns", "line"):
        out[name] = np.concatenate([getattr(c, name) for c in cs]).tolist()
    for name in ("sm_clock_mhz", "gpu_util_pct", "power_mw"):
        out[name] = np.concatenate([c.fields.get(name, np.full(c.rows, np.nan))
                                    for c in cs]).tobytes()
    out["throttle"] = np.concatenate([c.throttle_reasons if c.throttle_reasons is not None
                                      else np.full(c.rows, -1) for c in cs]).tolist()
    return out


def same_chunks(a: list[ColumnChunk], b: list[ColumnChunk]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.rows, x.rows_done, x.bytes_done, x.gpus) == (y.rows, y.rows_done,
                                                              y.bytes_done, y.gpus)
        assert x.bad == y.bad
        for name in ("gpu", "timestamp_ns", "wall_ns", "line"):
            assert np.array_equal(getattr(x, name), getattr(y, name))
        assert x.fields.keys() == y.fields.keys()
        for k in x.fields:
            assert x.fields[k].tobytes() == y.fields[k].tobytes()
        assert (x.throttle_reasons is None) == (y.throttle_reasons is None)
        if x.throttle_reasons is not None:
            assert np.array_equal(x.throttle_reasons, y.throttle_reasons)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    text, bad = messy_log()
    path = tmp_path_factory.mktemp("parallel") / "gpu.csv"
    path.write_text(text)
    return path, bad


def offsets(path: Path) -> list[int]:
    """The offset at which each line starts."""
    data = path.read_bytes()
    return [0, *(i + 1 for i, b in enumerate(data) if b == 10)]


def test_bad_rows_are_named_by_their_line_however_the_log_is_cut(
        log: tuple[Path, dict[int, str]]) -> None:
    path, want = log
    starts = offsets(path)
    first_bad = min(want)
    # Blocks cut at a bad line's first byte, one byte into it, at its last byte, and
    # odd sizes that cut lines anywhere.
    for block in (starts[first_bad - 1], starts[first_bad - 1] + 1, starts[first_bad] - 1,
                  997, 1531, 4096, 1 << 20):
        got = [(b.line, b.reason) for c in chunks(path, block, jobs=1) for b in c.bad]
        assert [line for line, _ in got] == sorted(want), block
        for line, reason in got:
            assert reason.startswith(want[line]), (line, reason)


def test_chunks_are_the_same_for_any_number_of_workers(
        log: tuple[Path, dict[int, str]]) -> None:
    path, _ = log
    for block in (997, 1531, 8192):
        one = chunks(path, block, jobs=1)
        for jobs in (2, 3, 4):
            same_chunks(one, chunks(path, block, jobs=jobs))


def test_pieces_a_block_is_scanned_in_do_not_change_it(
        log: tuple[Path, dict[int, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = log
    whole = chunks(path, 4096, jobs=1)
    for piece in (97, 300, 1000):
        monkeypatch.setattr(nvidia_smi, "PIECE_BYTES", piece)
        same_chunks(whole, chunks(path, 4096, jobs=1))
        same_chunks(whole, chunks(path, 4096, jobs=3))


def test_worker_processes_give_the_same_chunks(log: tuple[Path, dict[int, str]]) -> None:
    path, _ = log
    same_chunks(chunks(path, 1531, jobs=1), chunks(path, 1531, jobs=2, processes=True))


def test_the_blocks_join_to_what_one_block_gives(log: tuple[Path, dict[int, str]]) -> None:
    path, _ = log
    whole = flat(chunks(path, 1 << 20, jobs=1))
    for block in (200, 997, 1531, 4096):
        assert flat(chunks(path, block, jobs=3)) == whole, block


def replay(paths: list[Path], ledger: Path, jobs: int, block_bytes: int,
           **kw: object) -> tuple[ReplaySummary, list[bytes]]:
    summary = ReplayEngine(ledger, ReplayOptions(jobs=jobs, block_bytes=block_bytes,
                                                 record_s=120.0, **kw)).run(paths)  # type: ignore[arg-type]
    if not ledger.exists():
        return summary, []
    db = Ledger(ledger, "replay", load_or_create_key(ledger.with_name(ledger.name + ".key")))
    try:
        return summary, [r.encode() for r in db.records()]
    finally:
        db.close()


def outcome(s: ReplaySummary) -> tuple[object, ...]:
    return (s.rows, s.samples, s.bad_count, s.bad_first, dict(s.bad_reasons), s.rejected,
            {k: (g.totals.flop, g.totals.energy_mj, g.totals.samples, g.totals.covered_ns,
                 g.totals.gap_ns) for k, g in s.gpus.items()},
            {k: (t.flop, t.energy_mj, t.samples) for k, t in s.runs.items()}, s.records,
            s.failure, s.written)


def test_records_and_totals_are_bit_identical_for_1_to_4_workers(
        log: tuple[Path, dict[int, str]], tmp_path: Path) -> None:
    path, want = log
    for block in (997, 4096):
        base, records = replay([path], tmp_path / f"b{block}-1.sqlite", 1, block,
                               max_bad_share=0.1)
        assert base.failure is None
        assert records
        assert base.records == len(records)
        # The parse's bad rows and the plausibility check's (the row going back).
        assert {row.line for _, row in base.bad_first} >= {min(want)}
        assert base.bad_reasons["timestamp not after its GPU's previous sample"] == 1
        for jobs in (2, 3, 4):
            s, r = replay([path], tmp_path / f"b{block}-{jobs}.sqlite", jobs, block,
                          max_bad_share=0.1)
            assert outcome(s) == outcome(base), (block, jobs)
            assert r == records, (block, jobs)


def test_totals_do_not_depend_on_where_the_blocks_are_cut(
        log: tuple[Path, dict[int, str]], tmp_path: Path) -> None:
    path, _ = log
    whole, _ = replay([path], tmp_path / "w.sqlite", 1, 1 << 20, max_bad_share=0.1)
    cut, _ = replay([path], tmp_path / "c.sqlite", 3, 613, max_bad_share=0.1)
    assert {k: (g.totals.flop, g.totals.energy_mj, g.totals.samples)
            for k, g in cut.gpus.items()} == {k: (g.totals.flop, g.totals.energy_mj,
                                                  g.totals.samples)
                                              for k, g in whole.gpus.items()}
    # The same bad rows (reported in another order: the parse's as each block comes,
    # the plausibility check's as it decides).
    assert cut.bad_count == whole.bad_count
    assert cut.bad_reasons == whole.bad_reasons


def test_several_files_in_parallel_as_one_after_the_other(tmp_path: Path) -> None:
    text, _ = messy_log(200)
    lines = text.split("\n")[:-1]
    cut = len(lines) // 3
    parts = [lines[:cut], [HEADER, *lines[cut:2 * cut]], [HEADER, *lines[2 * cut:]]]
    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"gpu.csv.{2 - i}")
        paths[-1].write_text("\n".join(part) + "\n")
    base, records = replay(paths, tmp_path / "one.sqlite", 1, 1531, max_bad_share=0.1)
    assert base.failure is None
    for jobs in (2, 4):
        s, r = replay(paths, tmp_path / f"p{jobs}.sqlite", jobs, 1531, max_bad_share=0.1)
        assert outcome(s) == outcome(base)
        assert r == records
    # A file that cannot be read fails the replay in its turn, whatever the workers do.
    missing = [paths[0], tmp_path / "missing.csv", paths[2]]
    for jobs in (1, 3):
        s, r = replay(missing, tmp_path / f"m{jobs}.sqlite", jobs, 1531, max_bad_share=0.1)
        assert s.errors == [f"{missing[1]}: cannot open: No such file or directory"]
        assert s.failure is not None
        assert r == []
        assert not (tmp_path / f"m{jobs}.sqlite").exists()


def test_a_line_too_long_at_a_block_boundary_is_one_bad_row(tmp_path: Path) -> None:
    text, _ = messy_log(30)
    lines = text.split("\n")[:-1]
    lines.insert(20, "x" * 3000)  # longer than a block: skipped, named once
    path = tmp_path / "long.csv"
    path.write_text("\n".join(lines) + "\n")
    for block in (1024, 1500, 2900):
        for jobs in (1, 3):
            got = flat(chunks(path, block, jobs))
            assert got["bad"] == [(21, f"line longer than {block} bytes (not text?)")], block


def test_every_line_is_in_exactly_one_block(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    for trial in range(40):
        lengths = rng.integers(0, 90, size=int(rng.integers(1, 60)))
        data = b"".join(b"a" * int(n) + b"\n" for n in lengths)
        if trial % 3 == 0:
            data += b"tail"
        path = tmp_path / f"t{trial}.txt"
        path.write_bytes(data)
        first = int(rng.integers(0, 3)) and data.index(b"\n") + 1
        want = [ln + b"\n" for ln in data[first:].split(b"\n")[:-1]]
        block = int(rng.integers(1, 200)) + 90
        got: list[bytes] = []
        tail = None
        with path.open("rb") as f:
            for lo in range(0, len(data), block):
                r = read_line_range(f.fileno(), first, lo, lo + block, block)
                got += [ln + b"\n" for ln in bytes(r.data[r.start:r.end]).split(b"\n")[:-1]]
                tail = r.tail if r.tail is not None else tail
        assert got == want, (trial, block)
        assert tail == (b"tail" if trial % 3 == 0 else None)


def test_usable_cores_and_the_jobs_option(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert usable_cores() >= 1
    text, _ = messy_log(20)
    path = tmp_path / "gpu.csv"
    path.write_text("\n".join(text.split("\n")[:-1]) + "\n")
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(SystemExit) as e:
            cli(str(path), "--ledger", str(tmp_path / "l.sqlite"), "--jobs", bad)
        assert e.value.code == 2
        assert "--jobs: expected a whole number from 1 to 1024" in capsys.readouterr().err
    assert not (tmp_path / "l.sqlite").exists()
    outs = []
    for jobs in ("1", "3"):
        assert cli(str(path), "--ledger", str(tmp_path / f"l{jobs}.sqlite"), "--jobs", jobs,
                   "--quiet", "--max-bad-share", "10%") == 0
        outs.append([line for line in capsys.readouterr().out.splitlines()
                     if "rows/s" not in line and "into" not in line])
    assert outs[0] == outs[1]


def test_jobs_default_to_the_usable_cores(tmp_path: Path) -> None:
    text, _ = messy_log(20)
    path = tmp_path / "gpu.csv"
    path.write_text("\n".join(text.split("\n")[:-1]) + "\n")
    default, r0 = replay([path], tmp_path / "d.sqlite", 0, 997, max_bad_share=0.2)
    one, r1 = replay([path], tmp_path / "o.sqlite", 1, 997, max_bad_share=0.2)
    assert outcome(default) == outcome(one)
    assert r0 == r1


def test_pairs_of_block_sizes_and_workers_all_agree(log: tuple[Path, dict[int, str]],
                                                     tmp_path: Path) -> None:
    path, _ = log
    results: dict[int, list[tuple[tuple[object, ...], list[bytes]]]] = {}
    for block, jobs in itertools.product((701, 2048), (1, 2, 3)):
        s, r = replay([path], tmp_path / f"x{block}-{jobs}.sqlite", jobs, block,
                      max_bad_share=0.1)
        results.setdefault(block, []).append((outcome(s), r))
    for runs in results.values():
        assert all(run == runs[0] for run in runs)
