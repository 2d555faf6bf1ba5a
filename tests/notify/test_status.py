"""The dispatcher's published notification status: read from the outbox by its own
threads, immutable, kept when the outbox cannot be read."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.notify.dispatcher import Dispatcher
from agent.notify.outbox import Outbox
from agent.notify.status import ChannelStatus, NotifyStatus
from tests.receivers import SECOND, T0, Clock, Recorder, note


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def test_status_is_none_until_read_then_a_frozen_copy(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", ["hook", "am"])
    clock = Clock()
    hook = Recorder()
    dispatcher = Dispatcher(outbox, {"hook": hook, "am": Recorder()}, clock)
    unread = dispatcher.status
    assert unread is None
    for i in (1, 2):
        outbox.enqueue(note(i), now_ns=T0 + i)
    hook.failing = True
    dispatcher.run_once(clock())
    first = dispatcher.status
    assert first is not None
    assert list(first.channels) == ["am", "hook"]
    assert first.channels["am"] == ChannelStatus(delivered=2)
    assert first.channels["hook"].pending == 2
    assert first.channels["hook"].failed_attempts == 1
    assert first.read_wall_ns == clock()
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.read_wall_ns = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        first.channels["hook"] = ChannelStatus()  # type: ignore[index]
    # A new read is a new object; the one a scrape may still hold does not change.
    outbox.enqueue(note(3), now_ns=T0 + 3)
    clock.advance(1)
    assert dispatcher.refresh_status()
    second = dispatcher.status
    assert second is not first
    assert second is not None
    assert second.channels["hook"].pending == 3
    assert first.channels["hook"].pending == 2


def test_of_copies_the_mapping() -> None:
    counts = {"b": ChannelStatus(pending=1), "a": ChannelStatus()}
    status = NotifyStatus.of(counts, 5)
    counts["c"] = ChannelStatus(pending=9)
    del counts["b"]
    assert list(status.channels) == ["a", "b"]


def test_an_unreadable_outbox_keeps_the_last_status(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", ["hook"])
    outbox.enqueue(note(1))
    dispatcher = Dispatcher(outbox, {"hook": Recorder()}, Clock())
    assert dispatcher.refresh_status()
    before = dispatcher.status
    assert before is not None

    def locked() -> dict[str, ChannelStatus]:
        raise sqlite3.OperationalError("database is locked")

    real = outbox.status
    monkeypatch.setattr(outbox, "status", locked)
    caplog.set_level(logging.INFO, logger="agent.notify.dispatcher")
    for _ in range(3):
        assert not dispatcher.refresh_status()
        assert dispatcher.status is before
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once when it starts failing, not at every read
    assert "database is locked" in warnings[0].getMessage()
    monkeypatch.setattr(outbox, "status", real)
    assert dispatcher.refresh_status()
    assert dispatcher.status is not before
    assert any("readable again" in r.getMessage() for r in caplog.records)


def test_the_threads_publish_on_start_and_after_deliveries(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", ["hook"])
    outbox.enqueue(note(1))
    hook = Recorder()
    hook.failing = True
    # Long poll and status intervals: only the start, passes and wakes refresh here.
    dispatcher = Dispatcher(outbox, {"hook": hook}, poll_s=3600, status_every_s=3600)
    dispatcher.start()
    try:
        def counts() -> ChannelStatus | None:
            status = dispatcher.status
            return None if status is None else status.channels.get("hook")

        wait_until(lambda: counts() is not None, "no status published on start")
        wait_until(lambda: (c := counts()) is not None and c.failed_attempts == 1,
                   "the failed attempt never showed")
        hook.failing = False
        outbox.enqueue(note(2))
        dispatcher.wake()
        # The wake's pass delivers the new one; the failed one waits for its backoff.
        wait_until(lambda: (c := counts()) is not None and c.delivered == 1,
                   "the delivery never showed")
        c = counts()
        assert c is not None
        assert (c.pending, c.retrying) == (1, 1)
    finally:
        assert dispatcher.stop(5)


def test_a_non_positive_status_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="status_every_s"):
        Dispatcher(Outbox(tmp_path / "o.sqlite"), {}, status_every_s=0)


def test_without_channels_the_status_still_counts_old_rows(tmp_path: Path) -> None:
    # A channel removed from the config keeps its rows; they stay visible.
    path = tmp_path / "o.sqlite"
    with Outbox(path, ["old"]) as outbox:
        outbox.enqueue(note(1), now_ns=T0 + SECOND)
    outbox = Outbox(path, [])
    dispatcher = Dispatcher(outbox, {})
    dispatcher.start()
    try:
        wait_until(lambda: dispatcher.status is not None, "no status published on start")
        status = dispatcher.status
        assert status is not None
        assert status.channels["old"].pending == 1
    finally:
        assert dispatcher.stop(5)
