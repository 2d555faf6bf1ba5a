"""The hostile-input harness: run ``flopledger`` as an operator would, on bad input.

A :class:`Case` names its input (files written into a fresh directory, an optional
setup that builds a ledger or holds a port, the command line), the exit code it must
end with, and a fragment of the one clear message it must print. :func:`run_case`
runs it as a subprocess and reports what happened; the checks every case gets:

* no Python traceback on stdout or stderr;
* the exit code and the message fragment;
* nothing created or changed in the directory unless the case allows it (a ledger's
  totals are part of that: a changed byte anywhere is a change);
* where the case names a ledger, the sum of its records equals its totals table
  afterwards (no silent change to a total).

``python -m tests.hostile`` prints the table of every case with its outcome.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.paths import REPO

# A setup gets the case directory; what it returns is kept alive until the command
# ends (a held socket, an open connection), then closed if it has close().
Setup = Callable[[Path], object]


@dataclass(frozen=True)
class Case:
    """One hostile input.

    Attributes:
        name: a short id, unique in its area.
        argv: ``flopledger`` arguments; ``{dir}`` is replaced by the case directory.
        exit_code: the status it must end with.
        message: a fragment of what it must print (stderr, else stdout); case-sensitive.
        files: files to write into the directory first (text or bytes).
        setup: builds further state (a ledger, a held port) after ``files``.
        may_change: paths (relative, ``{dir}``-free) the command may create or change;
            everything else must be byte-identical afterwards.
        ledger: a ledger file (relative) whose totals must still equal the sum of its
            records afterwards, if it exists.
        env: extra environment variables.
        shell_tail: a shell pipeline the output goes through (e.g. ``| head -1``): the
            case then runs under ``bash -o pipefail`` and ``exit_code`` is the
            pipeline's status.
        timeout_s: how long it may run.
    """

    name: str
    argv: tuple[str, ...]
    exit_code: int
    message: str
    files: Mapping[str, str | bytes] = field(default_factory=dict)
    setup: Setup | None = None
    may_change: tuple[str, ...] = ()
    ledger: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    shell_tail: str = ""
    timeout_s: float = 120.0


@dataclass(frozen=True)
class Outcome:
    case: Case
    exit_code: int
    stdout: str
    stderr: str
    traceback: bool
    changed: tuple[str, ...]
    totals_mismatch: str | None

    @property
    def message_seen(self) -> bool:
        return self.case.message in self.stderr or self.case.message in self.stdout

    @property
    def passed(self) -> bool:
        return (self.exit_code == self.case.exit_code and self.message_seen
                and not self.traceback and not self.changed and self.totals_mismatch is None)

    def explain(self) -> str:
        return (f"case {self.case.name}: exit {self.exit_code} (want {self.case.exit_code}), "
                f"message {'seen' if self.message_seen else 'MISSING: ' + self.case.message!r}, "
                f"traceback {self.traceback}, changed {list(self.changed)}, "
                f"totals {self.totals_mismatch or 'ok'}\n--- stdout\n{self.stdout[-3000:]}"
                f"\n--- stderr\n{self.stderr[-3000:]}")


def tree_state(directory: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below ``directory``."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def ledger_totals_mismatch(path: Path) -> str | None:
    """None if the ledger's stored totals equal the sum of its records (or it cannot be
    read as a ledger at all, which the case's own message covers), else what differs."""
    from agent.accounting.records import STATEMENT_KINDS, LedgerRecord, Totals

    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        summed: dict[tuple[str, str], Totals] = {}
        for (body,) in db.execute("SELECT body FROM records ORDER BY seq"):
            r = LedgerRecord.decode(bytes(body))
            if r.kind in STATEMENT_KINDS:  # signed statements carry no amount, no total
                continue
            for key in (("gpu", r.gpu_uuid), ("run", r.run)):
                summed.setdefault(key, Totals()).add(r)
        stored = {(str(s), str(k)): (int(lo), int(c), int(hi)) for s, k, lo, c, hi in db.execute(
            "SELECT scope, key, flop_low, flop_central, flop_high FROM totals")}
    except (sqlite3.Error, ValueError, TypeError, KeyError):
        return None
    finally:
        db.close()
    want = {k: (t.flop_low, t.flop_central, t.flop_high) for k, t in summed.items()}
    if stored != want:
        return f"stored totals {stored} != sum of records {want}"
    return None


def _format(arg: str, directory: Path) -> str:
    return arg.replace("{dir}", str(directory))


def run_case(case: Case, directory: Path) -> Outcome:
    """Run one case in ``directory`` (which should be empty)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in case.files.items():
        path = directory / _format(name, directory)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(_format(content, directory))
    held = case.setup(directory) if case.setup is not None else None
    before = tree_state(directory)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **case.env}
    argv = [sys.executable, "-m", "agent.cli", *(_format(a, directory) for a in case.argv)]
    try:
        if case.shell_tail:
            command = " ".join(_quote(a) for a in argv) + " " + case.shell_tail
            proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=directory,
                                  capture_output=True, text=True, env=env,
                                  timeout=case.timeout_s)
        else:
            proc = subprocess.run(argv, cwd=directory, capture_output=True, text=True, env=env,
                                  timeout=case.timeout_s, stdin=subprocess.DEVNULL)
    finally:
        close = getattr(held, "close", None)
        if callable(close):
            close()
    after = tree_state(directory)
    allowed = set(case.may_change)
    changed = tuple(sorted(
        p for p in set(before) | set(after)
        if before.get(p) != after.get(p) and not _allowed(p, allowed)))
    mismatch = (ledger_totals_mismatch(directory / case.ledger)
                if case.ledger is not None else None)
    text = proc.stdout + proc.stderr
    return Outcome(case, proc.returncode, proc.stdout, proc.stderr,
                   "Traceback (most recent call last)" in text, changed, mismatch)


def _allowed(path: str, allowed: set[str]) -> bool:
    return any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def table(outcomes: Sequence[Outcome]) -> str:
    """The case table: area/case, exit code, the message's first line, verdict."""
    lines = [f"{'case':<44} {'exit':>4}  {'verdict':<7} message",
             f"{'-' * 44} {'-' * 4}  {'-' * 7} {'-' * 40}"]
    for o in outcomes:
        first = next((line for line in (o.stderr or o.stdout).splitlines() if line.strip()),
                     "")
        verdict = "ok" if o.passed else "FAILED"
        lines.append(f"{o.case.name[:44]:<44} {o.exit_code:>4}  {verdict:<7} {first[:100]}")
    tracebacks = sum(o.traceback for o in outcomes)
    silent = sum(bool(o.changed) or o.totals_mismatch is not None for o in outcomes)
    failed = sum(not o.passed for o in outcomes)
    lines.append(f"\n{len(outcomes)} hostile cases, {failed} failed, {tracebacks} tracebacks, "
                 f"{silent} with files or totals changed")
    return "\n".join(lines)


__all__ = ["REPO", "Case", "Outcome", "run_case", "table", "tree_state"]
