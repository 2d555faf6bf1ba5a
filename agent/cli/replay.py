"""``flopledger replay``: recorded telemetry -> ledger records.

Registered into the ``flopledger`` command by :func:`add_replay_parser`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sqlite3
import sys
from pathlib import Path

from agent.config import load_config
from agent.replay.engine import FORMATS, ReplayEngine, ReplayOptions
from agent.replay.readers.base import ReplayError
from agent.replay.readers.lines import file_size
from agent.replay.summary import Progress

_OFFSET = re.compile(r"([+-])(\d{1,2}):?(\d{2})?")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _share(text: str) -> float:
    """``0.05`` or ``5%`` to a share between 0 and 1."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1 (or 0% to 100%), "
                                         f"got {text!r}")
    return value


def _utc_offset(text: str) -> float:
    """``+02:00``, ``-0530`` or ``+2`` to seconds east of UTC."""
    m = _OFFSET.fullmatch(text.strip())
    if m is None or int(m.group(2)) > 14 or int(m.group(3) or 0) > 59:
        raise argparse.ArgumentTypeError(f"expected an offset like +02:00, got {text!r}")
    seconds = int(m.group(2)) * 3600 + int(m.group(3) or 0) * 60
    return float(seconds if m.group(1) == "+" else -seconds)


def cmd_replay(args: argparse.Namespace) -> int:
    """Run a replay; 0 if it was written, 1 (and nothing written) if a file could not
    be replayed at all, nothing in them was valid, or more than ``--max-bad-share`` of
    the rows were bad."""
    settings = load_config(Path(args.config)).estimator if args.config else None
    options = ReplayOptions(
        node=args.node, format=args.format, mapping=Path(args.mapping) if args.mapping else None,
        spec_file=Path(args.spec_file) if args.spec_file else None, gpu_model=args.gpu_model,
        interval_hint_s=args.interval_hint, utc_offset_s=args.utc_offset,
        record_s=args.record_s, max_bad_share=args.max_bad_share)
    if settings is not None:
        options = dataclasses.replace(options, settings=settings)
    files = [Path(f) for f in args.files]
    progress = None if args.quiet else Progress(sum(file_size(f) for f in files))
    try:
        engine = ReplayEngine(Path(args.ledger), options, progress)
        summary = engine.run(files)
    except ReplayError as e:
        print(f"flopledger replay: {e}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as e:
        print(f"flopledger replay: {args.ledger}: not a usable ledger ({e})", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"flopledger replay: {e.filename or args.ledger}: cannot write: "
              f"{e.strerror or e}", file=sys.stderr)
        return 1
    print(summary.format())
    if summary.failure is not None:
        tail = "" if summary.written else f"; nothing written to {args.ledger}"
        print(f"flopledger replay: {summary.failure}{tail}", file=sys.stderr)
        return 1
    return 0


def add_replay_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``flopledger replay`` on the command's subparsers."""
    p = sub.add_parser(
        "replay", help="account recorded telemetry (nvidia-smi, dcgm-exporter, dcgmi dmon, "
                       "Prometheus, traces) into a ledger",
        description="Read recorded GPU telemetry and account it with the live agent's "
                    "estimator into a signed ledger. Bad rows (unparsable or physically "
                    "impossible) are skipped and reported with their line numbers; all or "
                    "nothing is written.")
    p.add_argument("files", nargs="+", metavar="FILE", help="recordings, replayed in order")
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="format of the files (default: detected from the first bytes)")
    p.add_argument("--ledger", required=True, metavar="PATH",
                   help="ledger file to append to (created if missing; key in PATH.key)")
    p.add_argument("--node", default="replay", help="node name of the records (default replay)")
    p.add_argument("--mapping", metavar="FILE", help="TOML file: GPU and time -> run, metadata")
    p.add_argument("--spec-file", metavar="FILE", help="GPU spec table (default: built in)")
    p.add_argument("--gpu-model", metavar="KEY",
                   help="spec key for GPUs the recording does not name (e.g. h100_sxm)")
    p.add_argument("--interval-hint", type=_positive, metavar="SECONDS",
                   help="sampling interval: times files without timestamps, sets the gap "
                        "threshold (default: measured)")
    p.add_argument("--utc-offset", type=_utc_offset, default=0.0, metavar="+HH:MM",
                   help="UTC offset of nvidia-smi's local-time timestamps (default +00:00)")
    p.add_argument("--record-s", type=_positive, default=3600.0, metavar="SECONDS",
                   help="length of a ledger record in recorded time (default 3600)")
    p.add_argument("--max-bad-share", type=_share, default=0.01, metavar="SHARE",
                   help="fail, writing nothing, if more than this share of the rows are bad "
                        "(default 0.01, i.e. 1%%)")
    p.add_argument("--config", metavar="FILE", help="agent config for [estimator] settings")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=cmd_replay)
