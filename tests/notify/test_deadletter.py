"""Dead letters: a delivery that can never succeed is kept with its reason, counted,
logged once and never retried; one that may succeed later is retried.

Receivers are real HTTP servers on loopback and real programs; time is an injected
clock, advanced far past every backoff.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from pathlib import Path

import pytest

from agent.notify.command import CommandChannel
from agent.notify.deadletter import describe, read_dead_letters, status_lines
from agent.notify.dispatcher import Dispatcher
from agent.notify.outbox import Outbox
from agent.notify.webhook import WebhookChannel
from tests.receivers import SECOND, SECRET, T0, Answering, Clock, Receiver, Recorder, note

HOUR = 3600


def webhook_pair(tmp_path: Path, receiver: Receiver, clock: Clock,
                 name: str = "o.sqlite") -> tuple[Outbox, Dispatcher]:
    outbox = Outbox(tmp_path / name, ["hook"])
    hook = WebhookChannel("hook", receiver.url, SECRET, timeout_s=5, clock_ns=clock)
    return outbox, Dispatcher(outbox, {"hook": hook}, clock)


def passes(dispatcher: Dispatcher, clock: Clock, count: int = 6) -> int:
    """Run ``count`` passes an hour apart (past any backoff); deliveries in all."""
    delivered = 0
    for _ in range(count):
        delivered += dispatcher.run_once(clock())
        clock.advance(HOUR)
    return delivered


@pytest.mark.parametrize("code", [400, 401, 404, 410, 422])
def test_a_permanent_http_error_goes_dead_once_with_its_reason(
        tmp_path: Path, code: int, caplog: pytest.LogCaptureFixture) -> None:
    receiver = Answering(code).start()
    clock = Clock()
    try:
        outbox, dispatcher = webhook_pair(tmp_path, receiver, clock)
        outbox.enqueue(note())
        caplog.set_level(logging.INFO, logger="agent.notify")
        assert passes(dispatcher, clock) == 0
    finally:
        receiver.stop()
    expected = 401 if code == 401 else code   # 401 is also what a bad signature gets
    assert [r.status for r in receiver.requests] == [expected]   # tried once, never again
    state = outbox.delivery(note().key, "hook")
    assert state is not None
    assert (state.state, state.attempts, state.failures) == ("dead", 1, 1)
    assert f"HTTP {code}" in (state.last_error or "")
    status = dispatcher.status
    assert status is not None
    counts = status.channels["hook"]
    assert (counts.dead, counts.pending, counts.retrying) == (1, 0, 0)
    [dead] = outbox.dead_letters()
    assert (dead.key, dead.channel, dead.attempts, dead.dead_ns) == (note().key, "hook", 1, T0)
    assert f"HTTP {code}" in dead.reason
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors                              # loudly, once
    assert "dead letter" in errors[0]
    assert f"HTTP {code}" in errors[0]


@pytest.mark.parametrize("code", [500, 503, 408, 429])
def test_a_transient_http_error_is_retried_until_delivered(tmp_path: Path, code: int) -> None:
    receiver = Answering(code, code, 200).start()
    clock = Clock()
    try:
        outbox, dispatcher = webhook_pair(tmp_path, receiver, clock)
        outbox.enqueue(note())
        assert passes(dispatcher, clock) == 1
    finally:
        receiver.stop()
    assert [r.status for r in receiver.requests] == [code, code, 200]
    state = outbox.delivery(note().key, "hook")
    assert state is not None
    assert (state.state, state.failures) == ("done", 2)
    assert outbox.status()["hook"].dead == 0
    assert outbox.dead_letters() == []


def test_a_dead_letter_does_not_hold_up_the_next_notification(tmp_path: Path) -> None:
    # A 4xx says the request was wrong, not that the receiver is down: the pass goes on.
    receiver = Answering(404, 200).start()
    clock = Clock()
    try:
        outbox, dispatcher = webhook_pair(tmp_path, receiver, clock)
        outbox.enqueue(note(1))
        outbox.enqueue(note(2))
        assert dispatcher.run_once(clock()) == 1
    finally:
        receiver.stop()
    assert [r.status for r in receiver.requests] == [404, 200]
    states = {i: outbox.delivery(note(i).key, "hook") for i in (1, 2)}
    assert {i: s.state for i, s in states.items() if s is not None} == {1: "dead", 2: "done"}


def test_dead_letters_survive_a_restart_and_are_not_retried(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    gone = Answering(410).start()
    try:
        outbox, dispatcher = webhook_pair(tmp_path, gone, clock)
        outbox.enqueue(note())
        assert dispatcher.run_once(clock()) == 0
        outbox.close()
    finally:
        gone.stop()
    # The receiver is back and would accept it: still not sent, it is dead.
    back = Answering(200).start()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="agent.notify")
    try:
        outbox, dispatcher = webhook_pair(tmp_path, back, clock)
        assert passes(dispatcher, clock) == 0
        assert back.requests == []
        state = outbox.delivery(note().key, "hook")
        assert state is not None
        assert state.state == "dead"
        assert "HTTP 410" in (state.last_error or "")
        status = dispatcher.status
        assert status is not None
        assert status.channels["hook"].dead == 1
        # The restarted dispatcher says so once, on its first read.
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert "1 dead letter" in errors[0]
        # An operator who fixed the receiver requeues it; then it goes.
        assert outbox.requeue_dead("other") == 0
        assert outbox.requeue_dead("hook", clock()) == 1
        assert dispatcher.run_once(clock()) == 1
    finally:
        back.stop()
    assert [r.status for r in back.requests] == [200]
    assert outbox.status()["hook"].dead == 0
    assert outbox.requeue_dead() == 0


def test_a_resolve_does_not_revive_a_dead_letter(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", ["am"])
    outbox.enqueue(note())
    assert outbox.mark_dead(note().key, "am", T0, "HTTP 400 Bad Request")
    assert outbox.mark_dead(note().key, "am", T0 + 1, "again") is False
    assert outbox.resolve(note().key, T0 + SECOND)
    assert outbox.pending("am", T0 + 10**15) == []
    state = outbox.delivery(note().key, "am")
    assert state is not None
    assert (state.state, state.last_error, state.attempts) == ("dead", "HTTP 400 Bad Request", 1)


def test_a_command_that_cannot_be_executed_goes_dead(tmp_path: Path) -> None:
    not_executable = tmp_path / "hook.sh"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    flaky = tmp_path / "flaky"
    script = ("import os, sys; sys.stdin.read();"
              f" sys.exit(0 if os.path.exists({str(flaky)!r}) else 1)")
    channels = {
        "missing": CommandChannel("missing", [str(tmp_path / "no-such-program")]),
        "noexec": CommandChannel("noexec", [str(not_executable)]),
        "directory": CommandChannel("directory", [str(tmp_path)]),
        "failing": CommandChannel("failing", [sys.executable, "-c", script]),
    }
    clock = Clock()
    outbox = Outbox(tmp_path / "o.sqlite", list(channels))
    dispatcher = Dispatcher(outbox, channels, clock)
    outbox.enqueue(note())
    assert dispatcher.run_once(clock()) == 0
    flaky.touch()                  # a non-zero exit is retried: the hook may recover
    clock.advance(HOUR)
    assert dispatcher.run_once(clock()) == 1
    states = {c: outbox.delivery(note().key, c) for c in channels}
    assert {c: s.state for c, s in states.items() if s is not None} == {
        "missing": "dead", "noexec": "dead", "directory": "dead", "failing": "done"}
    assert "cannot run" in (outbox.status()["noexec"].last_error or "")
    assert all(s is not None and s.attempts == 1 for c, s in states.items() if c != "failing")


def test_a_key_the_environment_cannot_carry_goes_dead(tmp_path: Path) -> None:
    n = note(subject="nul\x00inside")
    outbox = Outbox(tmp_path / "o.sqlite", ["pager"])
    dispatcher = Dispatcher(outbox, {"pager": CommandChannel("pager", ["true"])}, Clock())
    outbox.enqueue(n)
    assert dispatcher.run_once(T0) == 0
    [dead] = outbox.dead_letters()
    assert "null byte" in dead.reason


def test_a_bug_in_a_channel_is_retried_not_dead(tmp_path: Path) -> None:
    class Buggy:
        resend_ns = None

        def deliver(self, n: object) -> None:
            raise RuntimeError("a bug, fixed by the next release")

    outbox = Outbox(tmp_path / "o.sqlite", ["buggy"])
    outbox.enqueue(note())
    Dispatcher(outbox, {"buggy": Buggy()}, Clock()).run_once(T0)
    state = outbox.delivery(note().key, "buggy")
    assert state is not None
    assert state.state == "pending"


def test_an_unreadable_stored_body_goes_dead(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    outbox = Outbox(path, ["hook"])
    outbox.enqueue(note())
    with sqlite3.connect(path) as db:
        db.execute("UPDATE notifications SET body = '{not json'")
    db.close()
    hook = Recorder()
    assert Dispatcher(outbox, {"hook": hook}, Clock()).run_once(T0) == 0
    assert hook.sent == []
    [dead] = outbox.dead_letters()
    assert "unreadable stored body" in dead.reason
    assert outbox.pending("hook", T0 + 10**15) == []


def test_dead_letters_are_read_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    assert read_dead_letters(path) == (0, [])
    assert status_lines(path) == []
    assert not path.exists()
    sqlite3.connect(path).close()                          # a file with no outbox yet
    assert read_dead_letters(path) == (0, [])
    key = note(subject="Модель\nβ").key
    with Outbox(path, ["hook"]) as outbox:
        outbox.enqueue(note(subject="Модель\nβ"))
        outbox.enqueue(note(2))
        outbox.mark_dead(key, "hook", T0, "HTTP 410 Gone from http://h/x: gone\nfor good")
        outbox.mark_dead(note(2).key, "hook", T0 + SECOND, "HTTP 404 Not Found")
    before = path.read_bytes()
    count, letters = read_dead_letters(path, limit=1)
    assert count == 2
    assert [d.key for d in letters] == [note(2).key]       # newest first
    assert path.read_bytes() == before
    lines = status_lines(path)
    assert lines[0].startswith("notifications: 2 dead letter(s)")
    assert len(lines) == 3                                  # a newline never splits one
    assert "hook model:Модель\\nβ|" in lines[2]
    assert "gone\\nfor good" in lines[2]
    assert describe(3, letters)[-1] == "  ... and 2 more"
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    assert status_lines(tmp_path / "junk.sqlite")[0].startswith(
        "notifications: dead letters unreadable")
