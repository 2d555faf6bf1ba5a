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
from typing import TYPE_CHECKING

from agent.cli.common import LazyChoices
from agent.config import load_config

if TYPE_CHECKING:
    from agent.replay.engine import ReplayOptions
    from agent.replay.remote import RemoteOptions

_OFFSET = re.compile(r"([+-])(\d{1,2}):?(\d{2})?")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _jobs(text: str) -> int:
    """``--jobs``: a whole number of workers, 1 to 1024."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 1024, got {text!r}")
    return int(text)


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


def _failure(e: Exception, ledger: str) -> str:
    """One line for what stopped a replay: its own errors as they say, a ledger SQLite
    cannot use, a file that cannot be written."""
    if isinstance(e, sqlite3.DatabaseError):
        return f"{ledger}: not a usable ledger ({e})"
    if isinstance(e, OSError):
        return f"{e.filename or ledger}: cannot write: {e.strerror or e}"
    return str(e)


def cmd_replay(args: argparse.Namespace) -> int:
    """Run a replay; 0 if it was written, 1 (and nothing written) if a file could not
    be replayed at all, nothing in them was valid, or more than ``--max-bad-share`` of
    the rows were bad."""
    problem = _misuse(args)
    if problem is not None:
        print(f"flopledger replay: {problem}", file=sys.stderr)
        return 2
    from agent.replay.engine import ReplayEngine, ReplayOptions
    from agent.replay.readers.base import ReplayError
    from agent.replay.readers.lines import file_size
    from agent.replay.summary import Progress

    settings = load_config(Path(args.config)).estimator if args.config else None
    options = ReplayOptions(
        node=args.node, format=args.format, mapping=Path(args.mapping) if args.mapping else None,
        spec_file=Path(args.spec_file) if args.spec_file else None, gpu_model=args.gpu_model,
        interval_hint_s=args.interval_hint, utc_offset_s=args.utc_offset,
        record_s=args.record_s, max_bad_share=args.max_bad_share, jobs=args.jobs)
    if settings is not None:
        options = dataclasses.replace(options, settings=settings)
    if args.prometheus is not None:
        return _replay_server(args, options)
    files = [Path(f) for f in args.files]
    progress = None if args.quiet else Progress(sum(file_size(f) for f in files))
    try:
        engine = ReplayEngine(Path(args.ledger), options, progress)
        summary = engine.run(files)
    except (ReplayError, sqlite3.DatabaseError, OSError) as e:
        print(f"flopledger replay: {_failure(e, args.ledger)}", file=sys.stderr)
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
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="recordings, replayed in order (or --prometheus URL)")
    p.add_argument("--format", choices=LazyChoices("agent.replay.formats", "FORMATS"),
                   default="auto", metavar="FORMAT",
                   help="format of the files: %(choices)s (default: auto, detected from the "
                        "first bytes)")
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
    p.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                   help="cores to use: nvidia-smi logs are parsed by N workers, in blocks, "
                        "ahead of the accounting; totals and records are the same for any N "
                        "(default: the cores this process may use)")
    _add_server_arguments(p)
    p.set_defaults(func=cmd_replay)


# -- from a Prometheus-compatible server (agent.replay.remote) ----------------------------

_SERVER_ONLY = ("start", "end", "selector", "step", "parallel", "max_points",
                "bearer_token_file", "basic_auth_user", "basic_auth_password_file", "ca_file",
                "insecure_skip_verify", "header", "timeout")


def _add_server_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "from a Prometheus-compatible server (instead of FILEs)",
        "Series of dcgm-exporter or flopledger read through /api/v1/query_range of "
        "Prometheus, Thanos, Mimir or VictoriaMetrics. Written slice by slice of time, each "
        "slice with a checkpoint in the ledger: the same command run again continues "
        "after it.")
    g.add_argument("--prometheus", metavar="URL",
                   help="the server's URL (http(s)://host:port[/prefix])")
    g.add_argument("--start", metavar="TIME", help="RFC 3339 or unix seconds")
    g.add_argument("--end", metavar="TIME", help="RFC 3339 or unix seconds (at most now)")
    g.add_argument("--selector", metavar="'{job=\"x\"}'",
                   help="label matchers added to every query")
    g.add_argument("--step", metavar="S",
                   help="seconds or 15s/1m (default: the series' sampling interval measured "
                        "on the server, else 15 s; the replay says which)")
    g.add_argument("--parallel", metavar="N",
                   help="queries in flight (default 4)")
    g.add_argument("--max-points", metavar="N",
                   help="series x steps per query at most (default 250000)")
    g.add_argument("--bearer-token-file", metavar="FILE", help="send this token as Bearer")
    g.add_argument("--basic-auth-user", metavar="USER", help="basic auth user")
    g.add_argument("--basic-auth-password-file", metavar="FILE", help="basic auth password")
    g.add_argument("--ca-file", metavar="FILE", help="CA certificates to trust (PEM)")
    g.add_argument("--insecure-skip-verify", action="store_true",
                   help="do not check the server's TLS certificate (unsafe)")
    g.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="another request header, e.g. 'X-Scope-OrgID: team-a' (repeatable)")
    g.add_argument("--timeout", metavar="SECONDS",
                   help="per request (default 120)")


def _misuse(args: argparse.Namespace) -> str | None:
    """Why the arguments do not make one replay, as one line; None if they do."""
    if args.prometheus is not None and args.files:
        return "give recorded FILEs or --prometheus URL, not both"
    if args.prometheus is None:
        if not args.files:
            return "give recorded FILEs, or --prometheus URL with --start and --end"
        given = [f"--{name.replace('_', '-')}" for name in _SERVER_ONLY
                 if getattr(args, name) not in (None, False, [], "")]
        if given:
            return f"{', '.join(given)}: only with --prometheus URL"
        return None
    if args.start is None or args.end is None:
        return "--prometheus needs --start and --end"
    if args.format != "auto":
        return "--format is for FILEs; a server's series need none"
    return None


def _replay_server(args: argparse.Namespace, options: ReplayOptions) -> int:
    """``replay --prometheus``: 0 if the range is accounted (or was already), 1 if it
    cannot be (bad input, the server failing: what was sealed stays, and the same command
    continues from it)."""
    from agent import figures
    from agent.ledger.errors import LedgerError
    from agent.replay.readers.base import ReplayError
    from agent.replay.remote import RemoteError, ServerReplay

    def note(message: str) -> None:
        if not args.quiet or message.startswith("warning"):
            print(f"flopledger replay: {message}", file=sys.stderr)

    try:
        remote = _remote_options(args)
        if remote.auth.insecure:
            print("flopledger replay: WARNING: --insecure-skip-verify: the server's TLS "
                  "certificate is not checked; anyone on the way can read the credentials "
                  "sent and forge the series replayed", file=sys.stderr)
        replay = ServerReplay(remote, Path(args.ledger), options,
                              progress=None if args.quiet else sys.stderr, note=note)
        result = replay.run()
    except (RemoteError, ReplayError, LedgerError, sqlite3.DatabaseError, OSError) as e:
        print(f"flopledger replay: {_failure(e, args.ledger)}", file=sys.stderr)
        return 1
    what = (f"{replay.client.url} {{{remote.selector}}} "
            f"{figures.when(min(result.first_ms, result.last_ms) * 1_000_000)} .. "
            f"{figures.when(result.last_ms * 1_000_000)}")
    summary = result.summary
    if summary is None:
        what = (f"{replay.client.url} {{{remote.selector}}} "
                f"{figures.when(remote.start_ms * 1_000_000)} .. "
                f"{figures.when(result.last_ms * 1_000_000)}")
        print(f"{what}: already accounted in {args.ledger} (up to "
              f"{figures.when(result.resumed_after_ns)}); nothing to replay")
        return 0
    s = replay.stats
    lines = summary.format().split("\n")
    lines[0] = f"replayed {what} into {args.ledger}"
    lines.insert(1, f"  server         {result.step_note}; {s.requests:,} queries, "
                    f"{s.bytes_read / 1e6:,.1f} MB, {s.points:,} points; {s.slices:,} slices")
    print("\n".join(lines))
    if summary.samples == 0 and result.resumed_after_ns is None:
        print(f"flopledger replay: no valid sample from {replay.client.url}; nothing written "
              f"to {args.ledger}", file=sys.stderr)
        return 1
    return 0


def _remote_options(args: argparse.Namespace) -> RemoteOptions:
    """The server's options from the arguments.

    Raises:
        RemoteError: for a bad value or an unreadable secret file, naming the option.
    """
    from agent.replay.httpclient import Auth
    from agent.replay.remote import (
        DEFAULT_MAX_POINTS,
        RemoteError,
        RemoteOptions,
        parse_selector,
        parse_step,
        parse_time,
    )

    def count(flag: str, text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise RemoteError(f"{flag} {text!r}: expected a whole number >= 1")
        return int(text)

    if args.bearer_token_file and (args.basic_auth_user or args.basic_auth_password_file):
        raise RemoteError("--bearer-token-file or --basic-auth-user, not both")
    if bool(args.basic_auth_user) != bool(args.basic_auth_password_file):
        raise RemoteError("--basic-auth-user and --basic-auth-password-file go together")
    headers = []
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", name.strip()):
            raise RemoteError(f"--header {h!r}: expected 'Name: value'")
        headers.append((name.strip(), value.strip()))
    try:
        timeout_s = float(args.timeout or "120")
    except ValueError:
        timeout_s = -1.0
    if not 0 < timeout_s < 1e6:
        raise RemoteError(f"--timeout {args.timeout!r}: expected seconds > 0")
    auth = Auth(
        bearer_token=_secret("--bearer-token-file", args.bearer_token_file),
        basic=(args.basic_auth_user, _secret("--basic-auth-password-file",
                                             args.basic_auth_password_file) or "")
        if args.basic_auth_user else None,
        ca_file=Path(args.ca_file) if args.ca_file else None,
        insecure=args.insecure_skip_verify, headers=tuple(headers))
    return RemoteOptions(
        url=args.prometheus, start_ms=parse_time(args.start, "--start"),
        end_ms=parse_time(args.end, "--end"), selector=parse_selector(args.selector or ""),
        step_ms=parse_step(args.step) if args.step is not None else None,
        parallel=count("--parallel", args.parallel or "4"),
        max_points=count("--max-points", args.max_points or str(DEFAULT_MAX_POINTS)), auth=auth,
        timeout_s=timeout_s)


def _secret(flag: str, path: str | None) -> str | None:
    """A token or password from its file, without surrounding whitespace.

    Raises:
        RemoteError: for a file that cannot be read or is empty.
    """
    from agent.replay.remote import RemoteError

    if path is None:
        return None
    try:
        text = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise RemoteError(f"{flag} {path}: cannot read ({getattr(e, 'strerror', None) or e})"
                          ) from None
    if not text:
        raise RemoteError(f"{flag} {path}: empty")
    return text
