"""Connecting to the cluster ledger's PostgreSQL store.

The store is named by a URL, ``postgresql://user@host:port/db?sslmode=verify-full&...``
(TLS options pass through in the query). The password never travels in the URL, which
ends up in configuration files, logs and process listings: it comes from a file
(``password_file``, its first line) or from an environment variable (``password_env``).
Every message names the store by :func:`redact`'s form of the URL, and a connection
failure is one :class:`PgError` line: host, port, database and what happened.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from agent.ledger.errors import LedgerError
from agent.ledger.pg_schema import RELATIONS, SCHEMA, SCHEMA_VERSION, TRIGGERS

__all__ = ["PgError", "connect", "describe", "ensure_schema", "pg_error", "redact"]

CONNECT_TIMEOUT_S = 10

# Query parameters that carry secrets: never shown, never accepted in the URL.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})

# Any key of a schema-wide lock: concurrent writers on a fresh database run the schema
# one after the other (CREATE ... IF NOT EXISTS is not safe against a concurrent twin).
_SCHEMA_LOCK = 0x666C6C6564676572  # "flledger"


class PgError(LedgerError):
    """The PostgreSQL store cannot be reached or used; the message is one line that names
    the store (without a password) and what happened."""


def redact(url: str) -> str:
    """The URL with any password (in the user part or the query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k in _SECRET_PARAMS else v) for k, v in pairs],
                          safe="/:,*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def describe(url: str) -> str:
    """``host:port/db`` of a URL, for messages (the default port when none is given)."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return redact(url)
    host = str(info.get("host") or "localhost")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


def _check_url(url: str) -> dict[str, str]:
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep or not rest:
        raise PgError(f"{redact(url)}: not a postgresql:// URL "
                      "(postgresql://user@host:5432/db)")
    try:
        info = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    except psycopg.ProgrammingError as e:
        raise PgError(f"{redact(url)}: not a valid PostgreSQL URL ({_first_line(e)})") from e
    if _SECRET_PARAMS & info.keys():
        raise PgError(f"{redact(url)}: the URL carries a password; give it in a password "
                      "file or an environment variable instead")
    return info


def _password(password_file: Path | None, password_env: str | None) -> str | None:
    if password_file is not None and password_env is not None:
        raise PgError("give the password in a file or in an environment variable, not both")
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PgError(f"{password_file}: cannot read the password file "
                          f"({getattr(e, 'strerror', None) or e})") from e
        password = text.splitlines()[0] if text else ""
        if not password:
            raise PgError(f"{password_file}: the password file is empty (expected the "
                          "password on its first line)")
        return password
    if password_env is not None:
        password = os.environ.get(password_env, "")
        if not password:
            raise PgError(f"environment variable {password_env} is not set or empty "
                          "(expected the PostgreSQL password)")
        return password
    return None


def connect(url: str, *, password_file: Path | None = None, password_env: str | None = None,
            autocommit: bool = False,
            connect_timeout_s: int = CONNECT_TIMEOUT_S) -> psycopg.Connection:
    """Open a connection to the store at ``url``.

    Raises:
        PgError: for a URL that is not a password-free postgresql:// URL, a password that
            cannot be read, or a server that cannot be reached or refuses the login.
    """
    _check_url(url)
    password = _password(password_file, password_env)
    extra: dict[str, object] = {"connect_timeout": connect_timeout_s}
    if password is not None:
        extra["password"] = password
    try:
        return psycopg.connect(url, autocommit=autocommit, **extra)  # type: ignore[arg-type]
    except psycopg.Error as e:
        raise pg_error(e, url, "cannot connect", password) from e


def pg_error(e: BaseException, url: str, doing: str, password: str | None = None) -> PgError:
    """One line for an error talking to the store: ``PostgreSQL at host:port/db: <doing>:
    <what the server or libpq said, first line>``, with no password in it."""
    message = _first_line(e)
    if password:
        message = message.replace(password, "***")
    return PgError(f"PostgreSQL at {describe(url)}: {doing}: {message}")


# libpq's "connection to server at "h" (addr), port N failed: " repeats what describe()
# says; what follows is what happened.
_LIBPQ_PREFIX = re.compile(r'^(connection failed: )?connection to server (at|on) .*? failed: ')


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return _LIBPQ_PREFIX.sub("", text)


def ensure_schema(conn: psycopg.Connection) -> int:
    """Create the store's tables and indexes that are missing, and check the schema
    version; in one transaction, committed (the connection must not be inside another
    one). Where nothing is missing no DDL runs, so a role without the right to create
    tables (``configs/postgresql/roles.sql``) passes. Returns how many relations were
    missing.

    Raises:
        PgError: if the store holds another schema version, or lacks a relation that
            this role may not create.
        psycopg.Error: if the statements fail.
    """
    missing: list[str] = []
    user = ""
    try:
        with conn.transaction():
            missing, user = _missing_relations(conn)
            if missing:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                conn.execute(SCHEMA)
            row = conn.execute(
                "SELECT value FROM fl_meta WHERE key = 'schema_version'").fetchone()
    except psycopg.errors.InsufficientPrivilege as e:
        raise PgError(f"the store lacks {', '.join(missing)} and role {user} may not create "
                      "it: create the schema once as the database's owner (`flopledger "
                      "cluster --config FILE --create-schema`)") from e
    version = None if row is None else str(row[0])
    if version != str(SCHEMA_VERSION):
        raise PgError(f"the PostgreSQL store holds schema version {version}, this program "
                      f"writes version {SCHEMA_VERSION}")
    return len(missing)


def _missing_relations(conn: psycopg.Connection) -> tuple[list[str], str]:
    """The relations of the schema that the store lacks, and the role connected."""
    row = conn.execute(
        "SELECT current_user, array(SELECT name FROM unnest(%s::text[]) WITH ORDINALITY"
        " AS r(name, i) WHERE to_regclass(name) IS NULL ORDER BY i)"
        " || array(SELECT name FROM unnest(%s::text[]) WITH ORDINALITY AS t(name, i)"
        " WHERE NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = name) ORDER BY i)",
        [list(RELATIONS), list(TRIGGERS)]).fetchone()
    assert row is not None  # a SELECT without FROM has one row
    return [str(name) for name in row[1]], str(row[0])
