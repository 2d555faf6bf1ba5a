"""``flopledger replay --prometheus`` without a server: what it takes as input, how the
arguments must be combined, where its checkpoint lives, and how overlapping series of
one GPU are joined whatever the queries' cut."""

from __future__ import annotations

import calendar
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.cli.main import main
from agent.ledger.checkpoints import read_checkpoint
from agent.ledger.integrity import check_ledger
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from agent.replay.httpclient import split_url
from agent.replay.readers.prom_range import PromRangeReader, RangeJoiner, parse_response
from agent.replay.remote import RemoteError, parse_selector, parse_step, parse_time

T0 = calendar.timegm((2025, 9, 1, 0, 0, 0))
U0 = "GPU-8f2c1d90-5e0b-4c1a-9b7e-3d2f1a0c9e44"


def test_times_steps_and_selectors() -> None:
    assert parse_time("2025-09-01T00:00:00Z", "--start") == T0 * 1000
    assert parse_time("2025-09-01T02:00:00.250+02:00", "--start") == T0 * 1000 + 250
    assert parse_time(str(T0), "--end") == T0 * 1000
    assert parse_time(f"{T0}.5", "--end") == T0 * 1000 + 500
    for bad in ("2025-09-01T00:00:00", "yesterday", "-5", "nan", "1e12"):
        with pytest.raises(RemoteError, match="--start"):
            parse_time(bad, "--start")
    assert [parse_step(s) for s in ("60", "0.5", "15s", "1m", "500ms", "2h")] == [
        60_000, 500, 15_000, 60_000, 500, 7_200_000]
    for bad in ("0", "abc", "1d", "-1", "0.0001"):
        with pytest.raises(RemoteError, match="--step"):
            parse_step(bad)
    assert parse_selector('{job="dcgm", cluster=~"a|b"}') == 'job="dcgm",cluster=~"a|b"'
    assert parse_selector('namespace!="kube-system"') == 'namespace!="kube-system"'
    assert parse_selector(' { } ') == ""
    assert parse_selector(r'{pod!~"x\"y"}') == r'pod!~"x\"y"'
    for bad in ('{job=x}', '{__name__="up"}', '{job="a" cluster="b"}', "up", '{job="a"'):
        with pytest.raises(RemoteError, match="--selector"):
            parse_selector(bad)


def test_urls() -> None:
    assert split_url("http://prom:9090/") == ("http://prom:9090", None)
    assert split_url("https://mimir.example/prometheus/api/v1") == (
        "https://mimir.example/prometheus", None)
    assert split_url("https://me:p%40ss@thanos:10902") == ("https://thanos:10902",
                                                           ("me", "p@ss"))
    assert split_url("http://[::1]:9090") == ("http://[::1]:9090", None)
    for bad in ("prom:9090", "ftp://x", "http://", "http://x/?q=1", "http://x:99999"):
        with pytest.raises(ValueError, match="URL"):
            split_url(bad)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["replay", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "code", "said"), [
    (["x.csv", "--prometheus", "http://p:9090", "--start", "0", "--end", "1"], 2,
     "not both"),
    ([], 2, "give recorded FILEs, or --prometheus URL"),
    (["x.csv", "--start", "1"], 2, "--start: only with --prometheus"),
    (["x.csv", "--selector", '{a="b"}', "--insecure-skip-verify"], 2,
     "--selector, --insecure-skip-verify: only with --prometheus"),
    (["--prometheus", "http://p:9090", "--start", "1"], 2, "needs --start and --end"),
    (["--prometheus", "http://p:9090", "--start", "1", "--end", "2", "--format", "dcgm"], 2,
     "--format is for FILEs"),
    (["--prometheus", "http://p:9090", "--start", "soon", "--end", "2"], 1, "--start 'soon'"),
    (["--prometheus", "http://p:9090", "--start", "5", "--end", "2"], 1, "is not before"),
    (["--prometheus", "http://p:9090", "--start", "1", "--end", "2", "--step", "x"], 1,
     "--step 'x'"),
    (["--prometheus", "http://p:9090", "--start", "1", "--end", "2", "--parallel", "0"], 1,
     "--parallel '0'"),
    (["--prometheus", "http://p:9090", "--start", "1", "--end", "2", "--selector", "{a}"],
     1, "--selector"),
    (["--prometheus", "gopher://p", "--start", "1", "--end", "2"], 1, "not an http://"),
    (["--prometheus", "http://p:9090", "--start", "1", "--end", "2",
      "--bearer-token-file", "/nonexistent/token"], 1, "--bearer-token-file /nonexistent"),
    (["--prometheus", "http://p:9090", "--start", "1", "--end", "2",
      "--basic-auth-user", "u"], 1, "go together"),
    (["--prometheus", "http://p:9090", "--start", "1", "--end", "2",
      "--header", "no colon"], 1, "--header"),
    (["--prometheus", "https://p:9090", "--start", "1", "--end", "2",
      "--ca-file", "/nonexistent/ca.pem"], 1, "--ca-file /nonexistent/ca.pem"),
])
def test_bad_arguments_one_line_and_nothing_created(
        argv: list[str], code: int, said: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ledger = tmp_path / "out" / "l.sqlite"
    got, err = run(capsys, *argv, "--ledger", str(ledger), "--quiet")
    assert got == code, err
    assert said in err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def _ledger(path: Path) -> Ledger:
    return Ledger(path, "replay", load_or_create_key(path.with_name(path.name + ".key")))


def test_the_checkpoint_is_written_with_the_records_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = _ledger(path)
    ledger.append([], 1, replay_checkpoint=("prometheus http://p {} step=60000ms", 5 * 10**9))
    ledger.append([], 2, replay_checkpoint=("prometheus http://p {} step=60000ms", 7 * 10**9))
    ledger.close()
    assert read_checkpoint(path, "prometheus http://p {} step=60000ms") == 7 * 10**9
    assert read_checkpoint(path, "prometheus http://q {} step=60000ms") is None
    assert read_checkpoint(tmp_path / "none.sqlite", "x") is None
    assert check_ledger(path).ok
    db = sqlite3.connect(path)
    db.execute("UPDATE replay_checkpoints SET last_ns = 'soon'")
    db.commit()
    db.close()
    assert any("replay_checkpoints" in p for p in check_ledger(path).problems)


def test_a_ledger_from_before_checkpoints_has_none(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    _ledger(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE replay_checkpoints")
    db.commit()
    db.close()
    assert check_ledger(path).ok
    assert read_checkpoint(path, "x") is None


# -- overlapping series of one GPU -----------------------------------------------------------


def _response(*series: tuple[dict[str, str], list[int]]) -> dict[str, Any]:
    """DCGM_FI_DEV_GPU_UTIL series of GPU U0: (extra labels, minutes with a point); the
    value is 90 in a job, else 0."""
    result: list[dict[str, Any]] = [
        {"metric": {"__name__": "DCGM_FI_DEV_GPU_UTIL", "UUID": U0, "gpu": "0", **labels},
         "values": [[T0 + 60 * m, "90" if labels else "0"] for m in minutes]}
        for labels, minutes in series]
    return {"status": "success", "data": {"resultType": "matrix", "result": result}}


def _joined(cuts: list[int]) -> tuple[list[float], list[str]]:
    """Idle until minute 10, a job from 10 to 30, idle again: each series still seen
    for 5 minutes after it ended (a backfill has no staleness markers), the queries
    cut at ``cuts``."""
    job: tuple[dict[str, str], list[int]] = ({"hpc_job": "7"}, list(range(10, 35)))
    idle: tuple[dict[str, str], list[int]] = ({}, [*range(0, 15), *range(30, 40)])
    joiner = RangeJoiner(by_time=False)
    values: list[float] = []
    runs: list[str] = []
    for a, b in zip([0, *cuts], [*cuts, 40], strict=True):
        part = [(labels, [m for m in minutes if a <= m < b]) for labels, minutes in (job, idle)]
        bad: list[Any] = []
        series = parse_response(_response(*[p for p in part if p[1]]), 1, bad)
        assert series is not None
        assert not bad
        joiner.add(series, 1)
        joiner.emit()
        for chunk in joiner.take():
            values.extend(chunk.fields["gpu_util_pct"].tolist())
            table = chunk.attribution_table
            named = chunk.attribution if chunk.attribution is not None else \
                np.full(chunk.rows, -1)
            runs.extend(table[r].shares[0].run.run_id if r >= 0 else "-"
                        for r in named.tolist())
    return values, runs


def test_the_newer_of_two_overlapping_series_wins_however_the_range_is_cut() -> None:
    values, runs = _joined([])
    assert values == [0.0] * 10 + [90.0] * 20 + [0.0] * 10
    assert runs == ["-"] * 10 + ["slurm-7"] * 20 + ["-"] * 10
    for cuts in ([12], [31], [10, 30], [5, 11, 12, 13, 32, 33], list(range(1, 40))):
        assert _joined(cuts) == (values, runs), cuts


def test_compact_answers_longer_than_the_read_buffer(tmp_path: Path) -> None:
    def answer(first: int) -> str:
        points = [[T0 + 15 * k, str(50 + k % 40)] for k in range(first, first + 20_000)]
        return json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {"__name__": "DCGM_FI_DEV_GPU_UTIL", "UUID": U0, "gpu": "0"},
             "values": points}]}}, separators=(",", ":"))

    path = tmp_path / "export.json"
    first, second = answer(0), answer(20_000)
    assert len(first) > 80 * 4096
    path.write_text(f"{first}\n{second}")  # the second without a newline at the end
    chunks = list(PromRangeReader(path, block_bytes=4096).chunks())
    assert not [b for c in chunks for b in c.bad]
    values = np.concatenate([c.fields["gpu_util_pct"] for c in chunks if c.rows])
    assert values.shape[0] == 40_000
    assert chunks[-1].bytes_done == path.stat().st_size


def test_values_that_fail_at_the_end_are_judged_in_linear_time() -> None:
    """A value pattern that can match one number several ways backtracks exponentially
    when the last of many values is bad (found by the replay fuzz test: a hang)."""
    from agent.replay.readers.prom_range import _all_points
    from agent.replay.readers.promseries import FLOAT

    points = [[1_700_000_000 + i, "1111111111"] for i in range(200)]
    points.append([1_700_000_200, "1111111111x"])
    assert _all_points(points, "DCGM_FI_DEV_GPU_UTIL") is None
    for text in ("1", "1.", ".5", "1.5e3", "-Inf", "NaN", "+1e-5"):
        assert FLOAT.fullmatch(text), text
    for text in ("1e", "..", "1.2.3", "abc", ""):
        assert not FLOAT.fullmatch(text), text
