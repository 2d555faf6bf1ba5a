"""The ``flopledger`` command: the parser, and what each kind of failure exits with.

Each command group registers its own subcommands: :mod:`agent.cli.agent` (run, gpus),
:mod:`agent.cli.ledger` (verify, export, runs, show, models),
:mod:`agent.cli.thresholds` (thresholds, status, rules), :mod:`agent.cli.replay` and
:mod:`agent.cli.report` (report, estimate), :mod:`agent.cli.release` (attest, gate),
:mod:`agent.cli.cluster` (cluster).

Exit codes: 0 success; 1 a failed check, a missing ledger or run, or a bad value on
the command line; 2 a configuration error (the config files, the state directory, the
listen address), a usage error, or a plan ``estimate`` refuses (like a usage error, it
names the flag); 3 no usable GPU source; 130 interrupted; 141 the output's reader went
away (``| head``), quietly.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from agent import __version__
from agent.cli import agent, cluster, ledger, notifications, release, replay, report, thresholds
from agent.configfile import ConfigError, ConfigFilesError
from agent.ledger.errors import LedgerError
from agent.ledger.query import LedgerNotFoundError
from agent.sources.base import SourceError

log = logging.getLogger("flopledger")

# What a shell reports for a command killed by SIGPIPE (128 + 13): the reader of the
# output went away (``flopledger runs | head -1``). Distinct from 1, a failed check.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


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
    notifications.add_parsers(sub)
    release.add_parsers(sub)
    cluster.add_parsers(sub)
    return parser


def _report_config_error(e: ConfigError) -> None:
    for error in e.errors if isinstance(e, ConfigFilesError) else [e]:
        print(f"flopledger: configuration error in {error}", file=sys.stderr)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's own flush at exit does not raise
    BrokenPipeError again (the recipe of the Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        # No file descriptor behind stdout (an in-process caller): nothing to flush.
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``flopledger`` command; returns the exit status (see the module
    docstring). Never raises for bad input: every failure is one message on stderr."""
    try:
        try:
            status = _main(argv)
        finally:
            # Flushed here rather than at exit (argparse's --help exits through
            # SystemExit), where a reader that went away (``| head``) could only be
            # reported as an ignored exception, with status 120.
            sys.stdout.flush()
        return status
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("flopledger: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.func(args)
    except ConfigError as e:
        _report_config_error(e)
        return 2
    except SourceError as e:
        print(f"flopledger: {e}", file=sys.stderr)
        return 3
    except (LedgerNotFoundError, LedgerError, ValueError) as e:
        print(f"flopledger: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise
    except OSError as e:
        # A file the command reads or writes (an -o path, a ledger directory) that the
        # command's own checks did not foresee: still one line, not a traceback.
        print(f"flopledger: {e}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
