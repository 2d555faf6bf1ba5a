"""What the command groups share: the config and ledger options.

``--ledger`` names a node's ledger file, or the cluster store
(``postgresql://user@host:5432/db``), which ``runs``, ``show``, ``models``, ``verify``,
``status``, ``report``, ``gate`` and ``export`` read. A malformed URL is a usage error (exit 2),
said before anything connects.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import Config, load_config
from agent.ledger.errors import LedgerError

if TYPE_CHECKING:
    from agent.ledger.pg_query import ClusterView

CLUSTER_COMMANDS = "runs, show, models, verify, status, report, gate and export"


class LazyChoices:
    """An option's ``choices``, read from the module that defines them only when argparse
    checks a value or prints them: the parser of every command is built at each start,
    and the module may load machinery the other commands never use (NumPy, numba).

    Give the option a ``metavar`` (argparse lists the choices of one without it as it
    builds the parser) and ``%(choices)s`` in its help.
    """

    def __init__(self, module: str, name: str) -> None:
        self._module = module
        self._name = name
        self._choices: tuple[str, ...] | None = None

    def _load(self) -> tuple[str, ...]:
        if self._choices is None:
            self._choices = tuple(getattr(importlib.import_module(self._module), self._name))
        return self._choices

    def __contains__(self, value: object) -> bool:
        return value in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())


def config_of(args: argparse.Namespace) -> Config:
    """The config named by ``--config``, or the defaults.

    Raises:
        ConfigError: for a missing, unreadable or invalid file.
    """
    path = getattr(args, "config", None)
    return load_config(Path(path) if path else None)


def names_cluster(text: str | None) -> bool:
    """Whether a ``--ledger`` (or ``verify``'s path) names the cluster store."""
    if not text or "://" not in text:
        return False  # a path: no need to load the PostgreSQL driver
    from agent.ledger.pg_query import is_cluster_url

    return is_cluster_url(text)


def cluster_url(args: argparse.Namespace) -> str | None:
    """``--ledger`` when it names the cluster store (a postgresql:// URL), else None."""
    ledger = getattr(args, "ledger", None)
    return ledger if names_cluster(ledger) else None


def ledger_path(args: argparse.Namespace, config: Config | None = None) -> Path:
    """``--ledger``, else ``ledger.sqlite`` in the config's ``agent.state_dir``.

    Raises:
        LedgerError: ``--ledger`` names the cluster store, which this command does not
            read.
    """
    url = cluster_url(args)
    if url is not None:
        from agent.ledger.pgconn import redact

        command = getattr(args, "command", None) or "this command"
        raise LedgerError(f"--ledger {redact(url)}: {command} reads a node's ledger file; "
                          f"{CLUSTER_COMMANDS} read the cluster store")
    if getattr(args, "ledger", None):
        return Path(args.ledger)
    config = config or config_of(args)
    return config.agent.state_dir / "ledger.sqlite"


def open_cluster(args: argparse.Namespace, config: Config | None = None, *,
                 run: str | None = None, model: str | None = None) -> ClusterView:
    """The cluster store ``--ledger`` names, read in one transaction (see
    :class:`agent.ledger.pg_query.ClusterView`), with the password of the config's
    ``[cluster]`` section (``password_file`` or ``password_env``; else libpq's own
    ``PGPASSWORD`` or ``~/.pgpass``).

    Raises:
        PgError: the server cannot be reached or refuses the connection.
        ClusterReadError: what it holds is not a readable cluster ledger.
        ConfigError: for a bad ``--config``.
    """
    from agent.ledger.pg_query import ClusterView

    url = cluster_url(args)
    if url is None:
        raise ValueError("--ledger does not name the cluster store")
    settings = (config or config_of(args)).cluster
    return ClusterView.open(url, password_file=settings.password_file,
                            password_env=settings.password_env, run=run, model=model)


def ledger_arg(text: str) -> str:
    """``--ledger``'s value: any path, or a well-formed postgresql:// URL.

    Raises:
        argparse.ArgumentTypeError: a malformed URL (argparse exits 2, naming the flag).
    """
    if names_cluster(text):
        from agent.ledger.pg_query import url_problem

        problem = url_problem(text)
        if problem is not None:
            from agent.ledger.pgconn import redact

            # As typed, unless a password may be in it (redact also tidies an empty host).
            shown = redact(text) if "@" in text or "password" in text else text
            raise argparse.ArgumentTypeError(f"{shown}: {problem}")
    return text


def add_ledger_args(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--ledger``, for the commands that read a ledger."""
    p.add_argument("--config", help="TOML config file (for agent.state_dir)")
    p.add_argument("--ledger", type=ledger_arg,
                   help="ledger file (default: <state_dir>/ledger.sqlite); "
                        f"{CLUSTER_COMMANDS} also read the cluster store: postgresql://...")
