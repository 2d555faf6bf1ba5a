"""The ``flopledger`` command: the parser, and what each kind of failure exits with.

Each command group registers its own subcommands: :mod:`agent.cli.agent` (run, gpus),
:mod:`agent.cli.ledger` (verify, export, runs, show, models),
:mod:`agent.cli.thresholds` (thresholds, status, rules), :mod:`agent.cli.replay` and
:mod:`agent.cli.report` (report, estimate).

Exit codes: 0 success; 1 a failed check, a missing ledger or run, or a bad value on
the command line; 2 a configuration error; 3 no usable GPU source.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from agent import __version__
from agent.cli import agent, ledger, replay, report, thresholds
from agent.configfile import ConfigError
from agent.ledger.query import LedgerNotFoundError
from agent.ledger.store import LedgerError
from agent.sources.base import SourceError

log = logging.getLogger("flopledger")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flopledger",
        description="Measure the training compute (FLOP) of every GPU, run and model.",
    )
    parser.add_argument("--version", action="version", version=f"flopledger {__version__}")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    agent.add_parsers(sub)
    ledger.add_parsers(sub)
    thresholds.add_parsers(sub)
    replay.add_replay_parser(sub)
    report.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.func(args)
    except ConfigError as e:
        print(f"flopledger: configuration error in {e}", file=sys.stderr)
        return 2
    except SourceError as e:
        print(f"flopledger: {e}", file=sys.stderr)
        return 3
    except (LedgerNotFoundError, LedgerError, ValueError) as e:
        print(f"flopledger: {e}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
