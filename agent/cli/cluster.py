"""``flopledger cluster``: the cluster service (thresholds and notifications on the
cluster-wide totals of the PostgreSQL store; one replica leads)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.config import MAX_EXIT_AFTER_S, parse_listen
from agent.configfile import ConfigError, ErrorCollector, Problems, in_range, range_text


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
    return run_cluster(config, listen, args.exit_after)


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
    p.set_defaults(func=cmd_cluster)
