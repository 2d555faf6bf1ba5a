"""The notification outbox in the store, and its delivery by the leader only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from agent.cluster.delivery import ClusterDispatcher
from agent.cluster.leader import Leadership
from agent.cluster.outbox import ClusterOutbox
from agent.ledger.pgconn import connect, ensure_schema
from agent.notify.message import DeliveryError, Notification
from tests.receivers import T0, Clock, Recorder, note

Conn = psycopg.Connection[Any]


@pytest.fixture
def conn(pg_url: str) -> Iterator[Conn]:
    c = connect(pg_url, autocommit=True)
    ensure_schema(c)
    yield c
    c.close()


@pytest.fixture
def leadership(pg_url: str) -> Iterator[Leadership]:
    lead = Leadership(lambda: connect(pg_url, autocommit=True), keepalive_s=5)
    assert lead.check()
    yield lead
    lead.release()


def dispatcher(pg_url: str, outbox: ClusterOutbox, channels: dict[str, Any],
               leader_pid: Any, clock: Clock | None = None) -> ClusterDispatcher:
    return ClusterDispatcher(outbox, channels, lambda: connect(pg_url, autocommit=True),
                             leader_pid, clock_ns=clock or Clock())


def test_a_key_is_enqueued_once(conn: Conn) -> None:
    outbox = ClusterOutbox(["a", "b"])
    n = note()
    assert outbox.enqueue(conn, n, T0)
    assert not outbox.enqueue(conn, n, T0 + 1)
    # Another leader re-deriving it later, with its own creation time: still the first.
    assert not ClusterOutbox(["a", "b"]).enqueue(
        conn, Notification(**{**n.to_dict(), "created_ns": T0 + 99}), T0 + 2)
    rows = conn.execute("SELECT key, created_ns FROM fl_notifications").fetchall()
    assert rows == [(n.key, n.created_ns)]
    deliveries = conn.execute("SELECT channel, state FROM fl_deliveries ORDER BY channel")
    assert deliveries.fetchall() == [("a", "pending"), ("b", "pending")]


def test_the_leader_delivers_each_key_once(pg_url: str, conn: Conn,
                                           leadership: Leadership) -> None:
    outbox = ClusterOutbox(["rec"])
    for i in range(3):
        outbox.enqueue(conn, note(i), T0)
    rec = Recorder()
    d = dispatcher(pg_url, outbox, {"rec": rec}, leadership.fence_pid)
    with connect(pg_url, autocommit=True) as c:
        assert d.run_channel("rec", c) == 3
        assert d.run_channel("rec", c) == 0
    assert sorted(rec.keys) == sorted(note(i).key for i in range(3))
    status = outbox.status(conn)["rec"]
    assert (status.delivered, status.pending) == (3, 0)


def test_a_replica_that_does_not_hold_the_lock_sends_nothing(
        pg_url: str, conn: Conn, leadership: Leadership) -> None:
    outbox = ClusterOutbox(["rec"])
    outbox.enqueue(conn, note(), T0)
    rec = Recorder()
    with connect(pg_url, autocommit=True) as c:
        # A replica that believes it leads, with a session that holds no lock (its own
        # was lost): the claim checks the lock, and finds nothing to send.
        stale = dispatcher(pg_url, outbox, {"rec": rec}, lambda: c.info.backend_pid)
        assert stale.run_channel("rec", c) == 0
        follower = dispatcher(pg_url, outbox, {"rec": rec}, lambda: None)
        assert follower.run_channel("rec", c) == 0
        assert rec.keys == []
        leader = dispatcher(pg_url, outbox, {"rec": rec}, leadership.fence_pid)
        assert leader.run_channel("rec", c) == 1
    assert rec.keys == [note().key]


def test_failures_back_off_and_hopeless_ones_become_dead_letters(
        pg_url: str, conn: Conn, leadership: Leadership) -> None:
    outbox = ClusterOutbox(["rec", "bad"])
    outbox.enqueue(conn, note(), T0)
    rec = Recorder()
    rec.failing = True

    class Refusing:
        resend_ns = None

        def deliver(self, n: Notification) -> None:
            raise DeliveryError("HTTP 400", retryable=False)

    clock = Clock(T0)
    d = dispatcher(pg_url, outbox, {"rec": rec, "bad": Refusing()}, leadership.fence_pid,
                   clock)
    with connect(pg_url, autocommit=True) as c:
        assert d.run_channel("rec", c) == 0
        assert d.run_channel("rec", c) == 0  # not due again before its backoff
        assert d.run_channel("bad", c) == 0
        clock.advance(60)
        rec.failing = False
        assert d.run_channel("rec", c) == 1
        assert d.run_channel("bad", c) == 0  # dead: never tried again
    status = outbox.status(conn)
    assert (status["rec"].delivered, status["rec"].failed_attempts) == (1, 1)
    assert (status["bad"].dead, status["bad"].last_error) == (1, "HTTP 400")


def test_a_resolved_notification_ends_the_active_one(pg_url: str, conn: Conn,
                                                     leadership: Leadership) -> None:
    outbox = ClusterOutbox(["am"])
    will = note(kind="will-be-met", level=1.0)
    outbox.enqueue(conn, will, T0)
    rec = Recorder(resend_ns=60 * 10**9)
    clock = Clock(T0)
    d = dispatcher(pg_url, outbox, {"am": rec}, leadership.fence_pid, clock)
    with connect(pg_url, autocommit=True) as c:
        assert d.run_channel("am", c) == 1
        clock.advance(1)
        assert d.run_channel("am", c) == 0  # active: re-sent only after resend_s
        ended = Notification(key=will.key + "-resolved", kind="resolved",
                             subject_type="model", subject=will.subject, regime=will.regime,
                             level=1.0, severity="info", created_ns=T0 + 1,
                             payload={"resolves": will.key})
        outbox.enqueue(conn, ended, clock())
        assert d.run_channel("am", c) == 2  # the end of the alert, and the resolution
        clock.advance(3600)
        assert d.run_channel("am", c) == 0
    assert [n.key for n in rec.sent].count(will.key) == 2
    assert [n.resolved_ns is not None for n in rec.sent if n.key == will.key] == [False, True]
    assert outbox.status(conn)["am"].active == 0
