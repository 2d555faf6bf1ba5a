"""A throwaway PostgreSQL server for the tests and the cluster benchmarks.

It lives in a fresh temporary directory (data, unix socket and log), listens on
127.0.0.1 on a free port, trusts every loopback connection except those of the members
of :data:`PASSWORD_GROUP` (which must give a SCRAM password, so that password handling
can be tested for real), and is tuned for throwaway speed (fsync off). Running as root,
every PostgreSQL program runs as the ``postgres`` OS user (``runuser``), since the
server refuses to run as root.

Debian's binaries live in /usr/lib/postgresql/<version>/bin (package ``postgresql``,
installed by ``make system-deps``); :func:`find_bin_dir` finds the newest.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import psycopg
from psycopg import sql

SUPERUSER = "postgres"
# Roles in this group authenticate with a password over TCP; everyone else is trusted.
PASSWORD_GROUP = "password_users"

_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "max_wal_size": "'4GB'",
    "checkpoint_timeout": "'30min'",
    "log_min_messages": "warning",
    "password_encryption": "'scram-sha-256'",
}


class PgServerError(RuntimeError):
    """The server could not be set up, started or stopped; the message says why."""


def find_bin_dir() -> Path | None:
    """The directory of the newest installed PostgreSQL's programs, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: _version_key(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else 0 for x in name.split("."))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL server in a temporary directory: :meth:`start`, :meth:`stop` (an
    outage: same data directory and port), :meth:`start` again, :meth:`destroy`.

    Raises:
        PgServerError: from the constructor when no binaries are found or the cluster
            cannot be initialised.
    """

    def __init__(self, bin_dir: Path | None = None) -> None:
        found = bin_dir or find_bin_dir()
        if found is None:
            raise PgServerError("no PostgreSQL binaries (install the Debian package "
                                "postgresql: make system-deps)")
        self.bin_dir = found
        self._as_postgres = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="flopledger-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "socket"
        self.log = self.base / "server.log"
        self.port = 0
        self.running = False
        self._lock = threading.Lock()
        self._databases = 0
        try:
            self._init_cluster()
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ lifecycle

    def _run(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  check=False, cwd=self.base)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PgServerError(f"{args[0]}: {e}") from e
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise PgServerError(f"{args[0]} failed ({done.returncode}): {' / '.join(tail)}")
        return done

    def _init_cluster(self) -> None:
        self.socket_dir.mkdir()
        self.log.touch()
        if self._as_postgres:
            try:
                pw = pwd.getpwnam(SUPERUSER)
            except KeyError as e:
                raise PgServerError(f"running as root but there is no {SUPERUSER!r} OS user "
                                    "to run PostgreSQL as") from e
            for path in (self.base, self.socket_dir, self.log):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        hba = (
            f"local all all trust\n"
            f"host all +{PASSWORD_GROUP} 127.0.0.1/32 scram-sha-256\n"
            f"host all all 127.0.0.1/32 trust\n"
        )
        (self.data / "pg_hba.conf").write_text(hba)
        settings = dict(_SETTINGS, unix_socket_directories=f"'{self.socket_dir}'")
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n# throwaway test server\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())
        if self._as_postgres:
            pw = pwd.getpwnam(SUPERUSER)
            os.chown(self.data / "pg_hba.conf", pw.pw_uid, pw.pw_gid)
        self.start()
        with self.admin() as conn:
            conn.execute(f"CREATE ROLE {PASSWORD_GROUP} NOLOGIN")

    def start(self) -> None:
        """Start the server (on a free port the first time, on the same port after an
        outage); waits until it accepts connections."""
        with self._lock:
            if self.running:
                return
            attempts = 1 if self.port else 5
            for attempt in range(attempts):
                port = self.port or _free_port()
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                              "-t", "60", "-o", f"-p {port}", "start")
                except PgServerError as e:
                    if attempt == attempts - 1:
                        raise PgServerError(f"{e}; log: {self._log_tail()}") from e
                    continue
                self.port = port
                self.running = True
                return

    def stop(self) -> None:
        """Stop the server now (fast shutdown: open connections are cut, as in an
        outage); :meth:`start` brings it back with its data."""
        with self._lock:
            if not self.running:
                return
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
            self.running = False

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        with contextlib.suppress(PgServerError):
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " / ".join(lines[-3:])

    # ------------------------------------------------------------------ access

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def admin(self, database: str = "postgres") -> psycopg.Connection:
        """A superuser connection in autocommit mode (close it, or use ``with``)."""
        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=10)

    def create_database(self, prefix: str = "test") -> str:
        """A fresh, empty database; returns its URL (trusted: no password)."""
        with self._lock:
            self._databases += 1
            name = f"{prefix}_{self._databases}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def create_password_role(self, name: str, password: str) -> None:
        """A login role that must authenticate with ``password`` over TCP."""
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(name), sql.Literal(password),
                    sql.Identifier(PASSWORD_GROUP)))
