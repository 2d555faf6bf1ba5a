"""One replica leads: the holder of the advisory lock, until its session ends."""

from __future__ import annotations

import time

from agent.cluster.leader import Leadership
from agent.ledger.pgconn import connect
from benchmarks.pgserver import PgServer


def replica(url: str) -> Leadership:
    return Leadership(lambda: connect(url, autocommit=True), keepalive_s=5)


def wait_for_session_end(server: PgServer, pid: int) -> None:
    """The client closed its side; the server ends the session (and frees its locks) a
    moment later."""
    with server.admin() as admin:
        for _ in range(500):
            if admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                             (pid,)).fetchone() == (0,):
                return
            time.sleep(0.01)
    raise AssertionError(f"session {pid} did not end")


def test_one_replica_leads_and_the_next_try_after_its_end_takes_over(
        pg_url: str, pg_server: PgServer) -> None:
    a, b = replica(pg_url), replica(pg_url)
    try:
        assert a.check()
        assert not b.check()
        assert not b.check()  # retried: still held
        assert a.check()  # the leader keeps leading
        pid = a.fence_pid()
        assert pid is not None
        a.release()  # its connection closed, as when the process is killed
        wait_for_session_end(pg_server, pid)
        assert b.check()  # the first try after that leads
        assert b.fence_pid() is not None
        assert not a.check()
    finally:
        a.release()
        b.release()


def test_a_leader_whose_session_was_ended_by_the_server_stops_leading(
        pg_url: str, pg_server: PgServer) -> None:
    a, b = replica(pg_url), replica(pg_url)
    try:
        assert a.check()
        pid = a.fence_pid()
        with pg_server.admin() as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))  # waits
        assert b.check()
        # a finds its session gone, and the lock taken: it follows.
        assert not a.check()
        assert not a.leading
    finally:
        a.release()
        b.release()
