"""``flopledger cluster``: the cluster service (thresholds and notifications on the
cluster-wide totals of the PostgreSQL store; one replica leads)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import MAX_EXIT_AFTER_S, parse_listen
from agent.configfile import ConfigError, ErrorCollector, Problems, in_range, range_text

if TYPE_CHECKING:
    from agent.cluster.config import ClusterConfig


def cmd_cluster(args: argparse.Namespace) -> int:
    from agent.cluster.config import load_cluster_config
    from agent.cluster.service import run_cluster

    errors = ErrorCollector()
    config = errors.attempt(lambda: load_cluster_config(Path(args.config)))
    cli = Problems("command line")
    listen = None
    if args.listen is not None:
        listen = parse_listen(args.listen)
        if listen is None:
            cli.add("--listen", "\"host:port\" with a port between 0 and 65535")
    if args.exit_after is not None and not in_range(args.exit_after, 0, MAX_EXIT_AFTER_S,
                                                     above=True):
        cli.add("--exit-after", range_text("a number of seconds", 0, MAX_EXIT_AFTER_S,
                                           above=True))
    if cli:
        errors.errors.append(ConfigError(cli.path, cli.items))
    errors.raise_if_any()
    assert config is not None  # raise_if_any: it loaded
    if args.create_schema:
        return _create_schema(config)
    return run_cluster(config, listen, args.exit_after)


def _create_schema(config: ClusterConfig) -> int:
    """``--create-schema``: the store's tables and indexes, created where missing by the
    role of the config's URL (the database's owner); 0, or 1 with one line."""
    import psycopg

    from agent.ledger.pg_schema import RELATIONS, SCHEMA_VERSION, TRIGGERS
    from agent.ledger.pgconn import PgError, connect, ensure_schema, pg_error, redact

    try:
        with connect(config.url, password_file=config.password_file,
                     password_env=config.password_env, autocommit=True) as conn:
            created = ensure_schema(conn)
    except PgError as e:
        print(f"flopledger cluster: {e}", file=sys.stderr)
        return 1
    except psycopg.Error as e:
        print(f"flopledger cluster: {pg_error(e, config.url, 'creating the schema')}",
              file=sys.stderr)
        return 1
    print(f"{redact(config.url)}: schema version {SCHEMA_VERSION} in place "
          f"({len(RELATIONS) + len(TRIGGERS)} tables, indexes and triggers, {created} "
          "created now)")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cluster``."""
    p = sub.add_parser(
        "cluster", help="run the cluster service: thresholds and notifications on the "
                        "cluster-wide totals of the PostgreSQL store, /metrics (default "
                        "port 9948); run several, one leads")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="the cluster service's TOML config file")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address for /metrics (default: cluster.listen, 0.0.0.0:9948)")
    p.add_argument("--exit-after", type=float, metavar="S",
                   help="stop after this many seconds")
    p.add_argument("--create-schema", action="store_true",
                   help="create the store's missing tables and indexes (as the database's "
                        "owner; see configs/postgresql/roles.sql) and exit")
    p.set_defaults(func=cmd_cluster)
