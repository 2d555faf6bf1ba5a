"""Run: attach, declare, throttled progress, the final report, and a spool that cannot
be written."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flopledger_client import InvalidValueError, MessageTooLargeError, Run

RUN = "llm-7b-0412"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def messages(spool: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The messages the agent would read, in name order."""
    names = sorted(n for n in os.listdir(spool) if n.endswith(".json") and not n.startswith("."))
    out = [json.loads((spool / n).read_text()) for n in names]
    return [m for m in out if kind is None or m["kind"] == kind]


def progress(spool: Path) -> list[tuple[int, int, str, bool]]:
    return [(m["tokens"], m["steps"], m["scope"], m["final"]) for m in messages(spool, "progress")]


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return directory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


_opened: list[Run] = []


@pytest.fixture(autouse=True)
def _close_runs() -> Iterator[None]:
    # Closed here rather than by the exit hook, whose writes would land after the test.
    yield
    while _opened:
        _opened.pop().close()


def make_run(spool: Path, clock: FakeClock | None = None, run_id: str = RUN,
             **kwargs: Any) -> Run:
    run = Run(run_id, spool_dir=spool, clock=clock or FakeClock(), **kwargs)
    _opened.append(run)
    return run


# --- attach ---------------------------------------------------------------------------

def test_creating_a_run_attaches_this_process(spool: Path, clock: FakeClock) -> None:
    run = make_run(spool, clock)

    [attach] = messages(spool)
    assert attach["kind"] == "attach"
    assert (attach["run"], attach["rank"], attach["world_size"]) == (RUN, 0, 1)
    assert attach["pid"] == os.getpid()
    run.close()
    assert messages(spool) == [attach]


def test_rank_and_world_size_from_torchrun(spool: Path, clock: FakeClock,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    run = make_run(spool, clock)
    assert (run.rank, run.world_size) == (3, 8)
    [attach] = messages(spool)
    assert (attach["rank"], attach["world_size"]) == (3, 8)
    assert (make_run(spool, clock, rank=1, world_size=2).rank) == 1


@pytest.mark.parametrize(("env", "named"), [
    ({"RANK": "one"}, "RANK"),
    ({"RANK": "-1"}, "RANK"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
    ({"RANK": "4", "WORLD_SIZE": "4"}, "rank"),
])
def test_bad_rank_environment_is_refused(spool: Path, clock: FakeClock,
                                         monkeypatch: pytest.MonkeyPatch,
                                         env: dict[str, str], named: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(InvalidValueError, match=named):
        make_run(spool, clock)
    assert messages(spool) == []


@pytest.mark.parametrize("run_id", [
    "", "unattributed", "Unattributed", "a\nb", "a\x1bb", "a\u202eb", " padded", "x" * 201,
])
def test_bad_run_id_is_refused(spool: Path, clock: FakeClock, run_id: str) -> None:
    with pytest.raises(InvalidValueError, match=r"^run_id: "):
        make_run(spool, clock, run_id)
    assert messages(spool) == []


def test_longest_run_id_is_accepted(spool: Path, clock: FakeClock) -> None:
    make_run(spool, clock, "é" * 200)
    assert messages(spool)[0]["run"] == "é" * 200


# --- declare --------------------------------------------------------------------------

def test_declare_writes_every_value_given(spool: Path, clock: FakeClock) -> None:
    run = make_run(spool, clock)
    end = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)

    assert run.declare(model="llm-7b", base_models=["llm-7b-base", "tok-v2"],
                       category="fine-tuning", precision="bf16", recompute="selective",
                       recompute_factor=1.2, planned_tokens=2e10, planned_steps=5000,
                       end_time=end, duration_s=86400, params=7_000_000_000, layers=32,
                       d_model=4096, context=8192, gpus=64)

    [declare] = messages(spool, "declare")
    assert (declare["run"], declare["rank"], declare["world_size"]) == (RUN, 0, 1)
    assert declare["declaration"] == {
        "model": "llm-7b", "base_models": ["llm-7b-base", "tok-v2"], "category": "fine-tuning",
        "precision": "bf16", "recompute": "selective", "recompute_factor": 1.2,
        "plan": {"tokens": 2e10, "steps": 5000, "end_time": end.timestamp(),
                 "duration_s": 86400, "params": 7_000_000_000, "layers": 32, "d_model": 4096,
                 "context": 8192, "gpus": 64}}
    assert end.timestamp() == 1925089445.0


def test_declare_writes_only_what_is_given(spool: Path, clock: FakeClock) -> None:
    run = make_run(spool, clock)
    run.declare(model="m", end_time=1925089445)
    [declare] = messages(spool, "declare")
    assert declare["declaration"] == {"model": "m", "plan": {"end_time": 1925089445}}
    run.declare(category="rl")
    assert [m["declaration"] for m in messages(spool, "declare")][-1] == {"category": "rl"}


def test_declare_on_another_rank_writes_nothing(spool: Path, clock: FakeClock) -> None:
    run = make_run(spool, clock, rank=1, world_size=2)
    assert run.declare(model="m", params=10) is False
    assert [m["kind"] for m in messages(spool)] == ["attach"]
    # ...but checks the values like rank 0, so a mistake fails every rank alike.
    with pytest.raises(InvalidValueError, match=r"^category: "):
        run.declare(category="training")


@pytest.mark.parametrize(("kwargs", "argument"), [
    ({"model": "unattributed"}, "model"),
    ({"model": "a\x1bb"}, "model"),
    ({"model": "m" * 201}, "model"),
    ({"model": ""}, "model"),
    ({"model": 7}, "model"),
    ({"base_models": "gpt2"}, "base_models"),
    ({"base_models": ["ok", "bad\n"]}, r"base_models\[1\]"),
    ({"category": "training"}, "category"),
    ({"category": "Pre-Training"}, "category"),
    ({"precision": "BF16"}, "precision"),
    ({"precision": "fp12"}, "precision"),
    ({"recompute": "partial"}, "recompute"),
    ({"recompute": "full", "recompute_factor": 1.5}, "recompute_factor"),
    ({"recompute_factor": 1.5}, "recompute_factor"),
    ({"recompute": "selective"}, "recompute_factor"),
    ({"recompute": "selective", "recompute_factor": 0.9}, "recompute_factor"),
    ({"planned_tokens": 0}, "planned_tokens"),
    ({"planned_tokens": -5}, "planned_tokens"),
    ({"planned_tokens": math.nan}, "planned_tokens"),
    ({"planned_tokens": math.inf}, "planned_tokens"),
    ({"planned_tokens": True}, "planned_tokens"),
    ({"planned_tokens": "1e9"}, "planned_tokens"),
    ({"planned_steps": 0}, "planned_steps"),
    ({"end_time": "tomorrow"}, "end_time"),
    ({"end_time": -1.0}, "end_time"),
    ({"duration_s": 0.0}, "duration_s"),
    ({"params": -1}, "params"),
    ({"layers": 0}, "layers"),
    ({"d_model": math.nan}, "d_model"),
    ({"context": -1}, "context"),
    ({"gpus": 0}, "gpus"),
    ({}, r"declare\(\)"),
])
def test_bad_declaration_is_refused_naming_the_argument(
        spool: Path, clock: FakeClock, kwargs: dict[str, Any], argument: str) -> None:
    run = make_run(spool, clock)
    with pytest.raises(InvalidValueError, match=f"^{argument}: "):
        run.declare(**kwargs)
    assert [m["kind"] for m in messages(spool)] == ["attach"]


def test_declaration_over_the_size_limit_is_refused(spool: Path, clock: FakeClock) -> None:
    run = make_run(spool, clock)
    bases = [f"{i:03d}" + "b" * 197 for i in range(400)]
    with pytest.raises(MessageTooLargeError, match=r"^declaration\.base_models: "):
        run.declare(model="m", base_models=bases)
    assert [m["kind"] for m in messages(spool)] == ["attach"]


# --- report ---------------------------------------------------------------------------

def test_reports_are_throttled_by_the_monotonic_clock(spool: Path, clock: FakeClock) -> None:
    run = make_run(spool, clock, report_every_s=30.0)

    assert run.report(tokens=100, steps=1) is True  # the first goes out at once
    clock.now_s += 10
    assert run.report(tokens=200, steps=2) is False
    clock.now_s += 19.9
    assert run.report(tokens=300, steps=3) is False
    assert progress(spool) == [(100, 1, "rank", False)]
    clock.now_s += 0.1
    assert run.report(tokens=400, steps=4) is True
    assert progress(spool) == [(400, 4, "rank", False)]


def test_force_and_final_bypass_the_throttle(spool: Path, clock: FakeClock) -> None:
    run = make_run(spool, clock)
    run.report(tokens=1, steps=1)
    assert run.report(tokens=2, steps=2, force=True) is True
    assert progress(spool) == [(2, 2, "rank", False)]
    assert run.report(tokens=3, steps=3, scope="run", final=True) is True
    assert progress(spool) == [(3, 3, "run", True)]


def test_unchanged_counts_are_not_written_again(spool: Path, clock: FakeClock) -> None:
    run = make_run(spool, clock, report_every_s=0)
    run.report(tokens=5, steps=1)
    [first] = messages(spool, "progress")
    assert run.report(tokens=5, steps=1) is False
    assert messages(spool, "progress") == [first]


def test_previous_progress_file_is_deleted(spool: Path, clock: FakeClock) -> None:
    run = make_run(spool, clock, report_every_s=0)
    for step in range(1, 6):
        run.report(tokens=10 * step, steps=step)
        assert progress(spool) == [(10 * step, step, "rank", False)]
    # The agent consumed the last one already: deleting it is no error.
    for name in os.listdir(spool):
        if name.startswith("progress-"):
            os.unlink(spool / name)
    run.report(tokens=60, steps=6)
    assert progress(spool) == [(60, 6, "rank", False)]


@pytest.mark.parametrize(("kwargs", "argument"), [
    ({"tokens": -1, "steps": 0}, "tokens"),
    ({"tokens": 1.5, "steps": 0}, "tokens"),
    ({"tokens": True, "steps": 0}, "tokens"),
    ({"tokens": 1, "steps": -1}, "steps"),
    ({"tokens": 1, "steps": 0, "scope": "node"}, "scope"),
])
def test_bad_report_is_refused(spool: Path, clock: FakeClock, kwargs: dict[str, Any],
                               argument: str) -> None:
    run = make_run(spool, clock)
    with pytest.raises(InvalidValueError, match=f"^{argument}: "):
        run.report(**kwargs)
    assert progress(spool) == []


# --- the final report ----------------------------------------------------------------

def test_close_writes_the_throttled_counts_as_final(spool: Path, clock: FakeClock) -> None:
    run = make_run(spool, clock)
    run.report(tokens=10, steps=1)
    clock.now_s += 1
    run.report(tokens=20, steps=2)

    run.close()

    assert progress(spool) == [(20, 2, "rank", True)]
    run.close()
    assert run.report(tokens=30, steps=3) is False
    assert progress(spool) == [(20, 2, "rank", True)]


def test_close_marks_written_counts_final(spool: Path, clock: FakeClock) -> None:
    run = make_run(spool, clock)
    run.report(tokens=10, steps=1, scope="run")
    run.close()
    assert progress(spool) == [(10, 1, "run", True)]


def test_close_without_reports_writes_no_progress(spool: Path, clock: FakeClock) -> None:
    make_run(spool, clock).close()
    assert [m["kind"] for m in messages(spool)] == ["attach"]


def test_context_manager_writes_the_final_report(spool: Path, clock: FakeClock) -> None:
    def train() -> None:
        with make_run(spool, clock) as run:
            run.report(tokens=10, steps=1)
            clock.now_s += 1
            run.report(tokens=15, steps=2)
            raise RuntimeError("the training failed")

    with pytest.raises(RuntimeError):
        train()
    assert progress(spool) == [(15, 2, "rank", True)]


def _run_script(body: str, spool: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOPLEDGER_SPOOL_DIR": str(spool)}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_exit_hook_writes_the_final_report(spool: Path) -> None:
    done = _run_script(f"""
        from flopledger_client import Run
        run = Run({RUN!r}, report_every_s=3600)
        run.report(tokens=5, steps=1)
        run.report(tokens=7, steps=2)
    """, spool)
    assert done.returncode == 0, done.stderr
    assert progress(spool) == [(7, 2, "rank", True)]


def test_forked_child_leaves_the_parents_report_alone(spool: Path) -> None:
    done = _run_script(f"""
        import os, sys
        from flopledger_client import Run
        run = Run({RUN!r}, report_every_s=3600)
        run.report(tokens=5, steps=1)
        run.report(tokens=7, steps=2)
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # runs the inherited exit hooks
        os.waitpid(pid, 0)
        print(sorted(n.split("-")[0] for n in os.listdir({str(spool)!r})))
    """, spool)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['attach', 'progress']"
    [final] = messages(spool, "progress")
    assert (final["tokens"], final["final"]) == (7, True)
    assert final["pid"] != os.getpid()


# --- an unwritable spool -------------------------------------------------------------

def test_unwritable_spool_warns_once_and_retries(tmp_path: Path, clock: FakeClock,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flopledger_client")
    spool = tmp_path / "not-yet"

    run = make_run(spool, clock)  # the attach cannot be written
    assert run.declare(model="m") is False
    assert run.report(tokens=10, steps=1) is False
    clock.now_s += 1
    assert run.report(tokens=20, steps=2) is False

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "flopledger_client"
    assert str(spool) in warnings[0].getMessage()

    spool.mkdir()
    clock.now_s += 1  # well within report_every_s: a kept report does not wait for it
    assert run.report(tokens=30, steps=3) is True
    assert [m["kind"] for m in messages(spool)] == ["attach", "declare", "progress"]
    assert progress(spool) == [(30, 3, "rank", False)]
    attach, declare = messages(spool, "attach")[0], messages(spool, "declare")[0]
    assert attach["time_ns"] < declare["time_ns"]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_spool_lost_again_warns_again(tmp_path: Path, clock: FakeClock,
                                      caplog: pytest.LogCaptureFixture) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    run = make_run(spool, clock, report_every_s=0)
    for name in os.listdir(spool):
        os.unlink(spool / name)
    spool.rmdir()
    run.report(tokens=1, steps=1)
    run.report(tokens=2, steps=2)
    spool.mkdir()
    run.report(tokens=3, steps=3)
    spool.rename(tmp_path / "moved")
    run.report(tokens=4, steps=4)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_close_on_an_unwritable_spool_does_not_raise(tmp_path: Path, clock: FakeClock,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    run = make_run(tmp_path / "absent", clock)
    run.report(tokens=1, steps=1)
    run.close()
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost) == 1
    assert "the final report" in lost[0]


# --- threads --------------------------------------------------------------------------

def test_a_report_waits_for_one_being_written(spool: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Thread A is held inside its write (in fsync); thread B reports meanwhile. B must
    # wait for A, so the spool ends with B's newer counts, not with A's file replacing
    # B's and deleting it.
    run = make_run(spool, report_every_s=0)
    in_write, release, b_done = threading.Event(), threading.Event(), threading.Event()
    real_fsync = os.fsync

    def held_fsync(fd: int) -> None:
        if threading.current_thread().name == "A" and not in_write.is_set():
            in_write.set()
            release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)

    def report_b() -> None:
        run.report(tokens=200, steps=2)
        b_done.set()

    a = threading.Thread(target=run.report, kwargs={"tokens": 100, "steps": 1}, name="A")
    b = threading.Thread(target=report_b, name="B")
    a.start()
    assert in_write.wait(30)
    b.start()
    assert not b_done.wait(0.5), "B reported while A was writing"
    release.set()
    a.join(30)
    b.join(30)

    assert progress(spool) == [(200, 2, "rank", False)]
    assert [n for n in os.listdir(spool) if n.startswith(".")] == []


# --- what importing the client brings in ------------------------------------------------

def test_import_brings_in_no_training_library_and_no_agent() -> None:
    script = ("import sys, flopledger_client\n"
              "print('\\n'.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded = {name.split(".")[0] for name in done.stdout.split()}
    assert "flopledger_client" in loaded
    assert loaded.isdisjoint({"torch", "transformers", "lightning", "pytorch_lightning",
                              "numpy", "agent", "exporters"})
