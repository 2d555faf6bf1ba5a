"""Read-only views of a ledger for the CLI and reports (safe while the agent writes).

A damaged ledger never crashes a reader: a row that is not a sound record (a body
stored as TEXT, garbage JSON, a field of the wrong type) is left out and said loudly,
once per read, on the ``agent.ledger.query`` logger at ERROR; a file that cannot be read
at all raises :class:`LedgerReadError`. The sums that come back are then incomplete:
the commands run :func:`agent.ledger.integrity.check_ledger` first and say so at the top.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.accounting.band import Band, FlopColumns
from agent.accounting.records import NO_FLOP, LedgerRecord
from agent.ledger.rows import BadRowError, Skipped, parse_body
from agent.ledger.schema import connect_read_only
from agent.ledger.signing import TreeHead
from agent.ledger.store import LedgerError

log = logging.getLogger(__name__)


class LedgerNotFoundError(FileNotFoundError):
    """No ledger file where one was expected."""


class LedgerReadError(LedgerError):
    """The file is not a readable ledger (not a database, truncated, tables missing)."""


def is_statement(r: LedgerRecord) -> bool:
    """A ``discontinuity`` statement of ``flopledger recover``: no run, no amounts."""
    return r.kind == "discontinuity" and not r.run


def spec_basis(r: LedgerRecord) -> str:
    """How the peak behind a record's figures was found: ``table``, ``derived`` or
    ``ceiling`` (the records of a GPU without a table row carry ``spec_basis``), or
    ``none`` for an interval of a GPU that had no spec at all (ledgers written before
    every GPU got one: its FLOP were counted as 0)."""
    basis = r.assumptions.get("spec_basis")
    if isinstance(basis, str) and basis:
        return basis
    if r.kind == "interval" and "spec" in r.assumptions and r.assumptions["spec"] is None:
        return "none"
    return "table"


def _say(path: Path, skipped: Skipped, what: str, text: Skipped | None = None) -> None:
    if skipped.count:
        log.error("%s: %s of %s; the sums read from this ledger are INCOMPLETE (run "
                  "`flopledger verify --ledger %s`)", path, skipped.describe(), what, path)
    if text is not None and text.count:
        log.error("%s: %d row(s) of %s stored as TEXT instead of BLOB, read anyway (%s); "
                  "the ledger was edited (run `flopledger verify --ledger %s`)", path,
                  text.count, what, "; ".join(text.first or []), path)


@dataclass(slots=True)
class RunSummary(FlopColumns):
    """A run's sums over its records (or one GPU's share of it), and what it declared."""

    run: str
    model: str = ""
    category: str = ""
    gpus: set[str] = field(default_factory=set)
    flop: Band[int] = NO_FLOP
    energy_mj: int = 0
    gap_ns: int = 0
    covered_ns: int = 0
    samples: int = 0
    records: int = 0
    first_ns: int = 0
    last_ns: int = 0
    estimators: Counter[str] = field(default_factory=Counter)
    splits: Counter[str] = field(default_factory=Counter)
    nodes: set[str] = field(default_factory=set)
    meta: dict[str, object] = field(default_factory=dict)
    spec_bases: Counter[str] = field(default_factory=Counter)  # samples per spec_basis()
    spec_reason: str = ""  # the last reason a record gave for not using a table row

    def add(self, r: LedgerRecord) -> None:
        self.model = r.model
        self.category = r.category
        self.gpus.add(r.gpu_uuid)
        self.nodes.add(r.node)
        self.flop += r.flop
        self.energy_mj += r.energy_mj
        self.gap_ns += r.gap_ns
        self.covered_ns += r.covered_ns
        self.samples += r.samples
        self.records += 1
        self.first_ns = r.start_ns if not self.first_ns else min(self.first_ns, r.start_ns)
        self.last_ns = max(self.last_ns, r.end_ns)
        self.estimators[r.estimator] += r.samples or 1
        self.splits[str(r.assumptions.get("split", ""))] += 1
        self.spec_bases[spec_basis(r)] += r.samples or 1
        self.spec_reason = str(r.assumptions.get("spec_reason") or self.spec_reason)



def connect(path: Path) -> sqlite3.Connection:
    """Raises: LedgerNotFoundError if there is no file at ``path``."""
    if not path.is_file():
        raise LedgerNotFoundError(f"no ledger at {path} (has the agent run with this state_dir?)")
    try:
        return connect_read_only(path)
    except sqlite3.Error as e:
        raise LedgerReadError(f"{path}: cannot be opened ({e})") from e


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection; any SQLite error becomes a :class:`LedgerReadError`."""
    db = connect(path)
    try:
        yield db
    except (sqlite3.Error, UnicodeDecodeError) as e:
        raise LedgerReadError(f"{path}: not a readable ledger ({e}); the file is damaged or "
                              f"truncated: `flopledger verify --ledger {path}`") from e
    finally:
        db.close()


def iter_records(path: Path, *, run: str | None = None,
                 model: str | None = None) -> Iterator[LedgerRecord]:
    """Sealed records in append order (optionally one run's or one model's), without
    ``discontinuity`` statements; unsound rows are left out, loudly.

    Raises:
        LedgerNotFoundError, LedgerReadError: for a missing or unreadable file.
    """
    skipped, text = Skipped(), Skipped()
    with _reading(path) as db:
        query, args = "SELECT seq, body FROM records", ()
        if run is not None:
            query, args = query + " WHERE run = ?", (run,)  # type: ignore[assignment]
        elif model is not None:
            query, args = query + " WHERE model = ?", (model,)  # type: ignore[assignment]
        for seq, body in db.execute(query + " ORDER BY seq", args):
            try:
                # The integrity check hashes the bytes; here only soundness matters.
                record = parse_body(body, canonical=False, wrong_type=text)
            except BadRowError as e:
                skipped.add(f"record {seq}: {e}")
                continue
            if (run is not None and record.run != run) or (
                    model is not None and record.model != model):
                skipped.add(f"record {seq}: its columns disagree with its body")
                continue
            if not is_statement(record):
                yield record
    _say(path, skipped, "the sealed records", text)


def discontinuities(path: Path) -> list[LedgerRecord]:
    """The ``discontinuity`` statements at the start of a recovered ledger."""
    out = []
    with _reading(path) as db:
        for (body,) in db.execute("SELECT body FROM records WHERE run = '' ORDER BY seq"):
            with contextlib.suppress(BadRowError):
                record = parse_body(body, canonical=False)
                if is_statement(record):
                    out.append(record)
    return out


def open_records(path: Path) -> list[LedgerRecord]:
    """The durable, not yet sealed records of the current windows (the last ~minute)."""
    skipped, text = Skipped(), Skipped()
    out = []
    with _reading(path) as db:
        try:
            rows = db.execute("SELECT position, body FROM open_records ORDER BY position")
        except sqlite3.OperationalError:  # a ledger written before open records existed
            return []
        for position, body in rows:
            try:
                out.append(parse_body(body, canonical=False, wrong_type=text))
            except BadRowError as e:
                skipped.add(f"open record {position}: {e}")
    _say(path, skipped, "the open records", text)
    return out


def run_summaries(path: Path, *, run: str | None = None, model: str | None = None,
                  include_open: bool = False) -> dict[str, RunSummary]:
    """Per-run sums over the records (optionally of one run or one model); with
    ``include_open``, also over the still-open records of the current windows."""
    records: list[LedgerRecord] = list(iter_records(path, run=run, model=model))
    if include_open:
        records += [r for r in open_records(path)
                    if (run is None or r.run == run) and (model is None or r.model == model)]
    return summarize(records, path)


def summarize(records: Iterable[LedgerRecord], path: Path) -> dict[str, RunSummary]:
    """Per-run sums over records already read, with the runs' declared metadata."""
    out: dict[str, RunSummary] = {}
    for r in records:
        out.setdefault(r.run, RunSummary(r.run)).add(r)
    skipped = Skipped()
    with _reading(path) as db:
        try:
            rows = db.execute("SELECT run, meta FROM runs").fetchall()
        except sqlite3.OperationalError as e:
            rows = []
            skipped.add(f"runs table: {e}")
        for name, meta in rows:
            if name not in out:
                continue
            try:
                doc = json.loads(meta)
            except (TypeError, ValueError, RecursionError):
                doc = None
            if isinstance(doc, dict):
                out[name].meta = doc
            else:
                skipped.add(f"metadata of run {name!r}")
    _say(path, skipped, "the runs' declared metadata")
    return out


def gpu_breakdown(path: Path, run: str) -> dict[str, RunSummary]:
    """One run's sums per GPU."""
    out: dict[str, RunSummary] = defaultdict(lambda: RunSummary(run))
    for r in iter_records(path, run=run):
        out[r.gpu_uuid].add(r)
    return dict(out)


def latest_head(path: Path) -> tuple[TreeHead | None, str]:
    """The last signed tree head and the key fingerprint."""
    with _reading(path) as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        row = db.execute("SELECT size, root, timestamp_ns, signature FROM tree_heads"
                         " ORDER BY size DESC LIMIT 1").fetchone()
    head = None
    if row is not None:
        size, root, ts, sig = row
        if isinstance(root, bytes) and isinstance(sig, bytes) and type(ts) is int:
            head = TreeHead(str(meta.get("origin", "")), int(size), root, ts, sig)
        else:
            log.error("%s: the latest tree head is malformed; not shown", path)
    return head, str(meta.get("key_fingerprint", ""))
