"""Connecting to the PostgreSQL store: the password from a file or the environment only,
one clear line for every failure, never a password in a message."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import psycopg
import pytest

from agent.ledger.errors import LedgerError
from agent.ledger.pg_schema import SCHEMA_VERSION, TABLES
from agent.ledger.pgconn import PgError, connect, ensure_schema, redact
from benchmarks.pgserver import PgServer

PASSWORD = "c0rrect horse:battery@staple"


def test_redact_hides_passwords_in_user_part_and_query() -> None:
    url = "postgresql://fl:hunter2@db.example:5433/ledger?sslmode=verify-full&sslpassword=k"
    shown = redact(url)
    assert "hunter2" not in shown
    assert "sslpassword=***" in shown
    assert shown.startswith("postgresql://fl:***@db.example:5433/ledger?sslmode=verify-full")
    assert redact("postgresql://fl@h/db") == "postgresql://fl@h/db"


@pytest.mark.parametrize(("url", "expected"), [
    ("mysql://fl@h/db", "not a postgresql:// URL"),
    ("postgresql://fl:hunter2@h/db", "the URL carries a password"),
    ("postgresql://fl@h/db?password=hunter2", "the URL carries a password"),
])
def test_bad_urls_are_refused_without_showing_the_password(url: str, expected: str) -> None:
    with pytest.raises(PgError, match=expected) as info:
        connect(url)
    assert "hunter2" not in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, LedgerError)


def test_nothing_listening_is_one_line_naming_host_and_port() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PgError) as info:
        connect(f"postgresql://fl@127.0.0.1:{port}/ledger")
    text = str(info.value)
    assert text.startswith(f"PostgreSQL at 127.0.0.1:{port}/ledger: cannot connect: ")
    assert "refused" in text.lower()
    assert "\n" not in text


def test_password_from_file(pg_server: PgServer, tmp_path: Path) -> None:
    pg_server.create_password_role("fromfile", PASSWORD)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    with connect(pg_server.url("postgres", "fromfile"), password_file=secret) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("fromfile",)
    secret.write_text("wrong\n")
    with pytest.raises(PgError, match="password authentication failed") as info:
        connect(pg_server.url("postgres", "fromfile"), password_file=secret)
    assert "wrong" not in str(info.value)
    with pytest.raises(PgError, match="no password supplied"):
        connect(pg_server.url("postgres", "fromfile"))


def test_password_from_environment(pg_server: PgServer,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pg_server.create_password_role("fromenv", PASSWORD)
    monkeypatch.setenv("FL_TEST_PG_PASSWORD", PASSWORD)
    url = pg_server.url("postgres", "fromenv")
    with connect(url, password_env="FL_TEST_PG_PASSWORD") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("fromenv",)
    monkeypatch.delenv("FL_TEST_PG_PASSWORD")
    with pytest.raises(PgError, match="FL_TEST_PG_PASSWORD is not set"):
        connect(url, password_env="FL_TEST_PG_PASSWORD")


def test_unreadable_or_empty_password_file(tmp_path: Path) -> None:
    url = "postgresql://fl@127.0.0.1:1/db"
    with pytest.raises(PgError, match="missing: cannot read the password file"):
        connect(url, password_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("")
    with pytest.raises(PgError, match="password file is empty"):
        connect(url, password_file=tmp_path / "empty")
    with pytest.raises(PgError, match="not both"):
        connect(url, password_file=tmp_path / "empty", password_env="X")


def test_schema_is_created_once_by_concurrent_writers(pg_url: str) -> None:
    errors: list[BaseException] = []

    def create() -> None:
        try:
            with connect(pg_url) as conn:
                ensure_schema(conn)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(pg_url) as conn:
        names = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert set(TABLES) <= names
        assert conn.execute("SELECT value FROM fl_meta").fetchall() == [(str(SCHEMA_VERSION),)]
        conn.execute("UPDATE fl_meta SET value = '99' WHERE key = 'schema_version'")
    with connect(pg_url) as conn, pytest.raises(PgError, match="schema version 99"):
        ensure_schema(conn)
