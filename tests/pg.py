"""PostgreSQL fixtures: one throwaway server per test session, one empty database per
test.

``pg_server`` (session) is a :class:`benchmarks.pgserver.PgServer`: ``.stop()`` and
``.start()`` simulate an outage (same data and port), ``.url(db)``, ``.admin()`` and
``.create_password_role(name, password)`` for tests of password handling. ``pg_url``
(function) is the URL of a fresh empty database with trust authentication on loopback;
it restarts the server first if an earlier test left it stopped.

The server code is in ``benchmarks/pgserver.py`` so that the ingest benchmark starts the
same server without depending on pytest. Tests skip only when no PostgreSQL binaries are
installed (``make system-deps`` installs them).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.pgserver import PgServer, find_bin_dir

__all__ = ["PgServer", "pg_server", "pg_url"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if find_bin_dir() is None:
        pytest.skip("no PostgreSQL binaries in /usr/lib/postgresql/*/bin (install the Debian "
                    "package postgresql: make system-deps)")
    server = PgServer()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    pg_server.start()
    return pg_server.create_database()
