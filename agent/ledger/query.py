"""Read-only views of a ledger for the CLI and reports (safe while the agent writes).

A damaged ledger never crashes a reader: a row that is not a sound record (a body
stored as TEXT, garbage JSON, a field of the wrong type) is left out and said loudly,
once per read, on the ``agent.ledger.query`` logger at ERROR; a file that cannot be read
at all raises :class:`LedgerReadError`. The sums that come back are then incomplete:
the commands run :func:`agent.ledger.integrity.check_ledger` first and say so at the top.

:func:`read_view` reads everything a command states in one read transaction: the latest
signed head, the records it covers, the records it does not cover yet (the open records
of the current windows) and the runs' metadata. The other readers here each read once,
on their own.

Statements (declarations, progress, attestations, gate decisions: what was declared, no
amounts) are never a run's compute: the compute readers leave them out, and
:func:`statements` and :attr:`LedgerView.statements` read them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent import figures
from agent.accounting.band import Band, FlopColumns
from agent.accounting.records import NO_FLOP, STATEMENT_KINDS, LedgerRecord, is_compute
from agent.ledger.errors import LedgerError
from agent.ledger.rows import BadRowError, Skipped, parse_body
from agent.ledger.schema import connect_read_only
from agent.ledger.signing import TreeHead

log = logging.getLogger(__name__)


class LedgerNotFoundError(FileNotFoundError):
    """No ledger file where one was expected."""


class LedgerReadError(LedgerError):
    """The file is not a readable ledger (not a database, truncated, tables missing)."""


def is_statement(r: LedgerRecord) -> bool:
    """A ``discontinuity`` statement of ``flopledger recover``: no run, no amounts.
    (Declared statements are :func:`is_declared`; neither is compute.)"""
    return r.kind == "discontinuity" and not r.run


def is_declared(r: LedgerRecord) -> bool:
    """A statement of what was declared (a kind in ``STATEMENT_KINDS``): no amounts."""
    return r.kind in STATEMENT_KINDS


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
    """Sealed compute records in append order (optionally one run's or one model's),
    without ``discontinuity`` or declared statements; unsound rows are left out, loudly.

    Raises:
        LedgerNotFoundError, LedgerReadError: for a missing or unreadable file.
    """
    skipped, text = Skipped(), Skipped()
    with _reading(path) as db:
        for _, record in _sound_records(db, run, model, skipped, text):
            yield record
    _say(path, skipped, "the sealed records", text)


def _sound_records(db: sqlite3.Connection, run: str | None, model: str | None,
                   skipped: Skipped, text: Skipped) -> Iterator[tuple[object, LedgerRecord]]:
    """``(seq, record)`` of the compute records in append order (one run's or model's if
    given), without statements of any kind; unsound rows go to ``skipped``."""
    for seq, record in _sound_rows(db, run, model, skipped, text):
        if is_compute(record):
            yield seq, record


def _sound_rows(db: sqlite3.Connection, run: str | None, model: str | None,
                skipped: Skipped, text: Skipped) -> Iterator[tuple[object, LedgerRecord]]:
    """``(seq, record)`` of every sound row of the records table in append order (one
    run's or model's if given); unsound rows go to ``skipped``."""
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
        if not _matches(record, run, model):
            skipped.add(f"record {seq}: its columns disagree with its body")
            continue
        yield seq, record


def statements(path: Path, *, kinds: Iterable[str] | None = None, run: str | None = None,
               model: str | None = None) -> list[LedgerRecord]:
    """Declared statements in append order: of ``kinds`` (default: all), optionally only
    those naming ``run`` and/or ``model``; unsound rows are left out, loudly.

    Raises:
        LedgerNotFoundError, LedgerReadError: for a missing or unreadable file.
    """
    wanted = _kinds(kinds)
    skipped, text = Skipped(), Skipped()
    with _reading(path) as db:
        out = [r for _, r in _sound_rows(db, run, model, skipped, text)
               if r.kind in wanted and _matches(r, run, model)]
    _say(path, skipped, "the records", text)
    return out


def _kinds(kinds: Iterable[str] | None) -> frozenset[str]:
    return frozenset(STATEMENT_KINDS if kinds is None else kinds) & frozenset(STATEMENT_KINDS)


def consumed_ids(path: Path, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` the ledger records as consumed (their statements appended); none
    for a ledger written before it recorded them.

    Raises:
        LedgerNotFoundError, LedgerReadError: for a missing or unreadable file.
    """
    wanted: Sequence[str] = list(dict.fromkeys(str(i) for i in ids))
    found: set[str] = set()
    with _reading(path) as db:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            try:
                rows = db.execute(f"SELECT id FROM spool_consumed WHERE id IN ({marks})",
                                  list(chunk)).fetchall()
            except sqlite3.OperationalError as e:
                if "no such table" in str(e):  # written before ids were recorded
                    return set()
                raise
            found.update(str(row[0]) for row in rows)
    return found


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
    """The durable, not yet sealed records of the current windows (the last ~minute);
    statements are never open, and one found there is left out."""
    skipped, text = Skipped(), Skipped()
    out = []
    with _reading(path) as db:
        try:
            rows = db.execute("SELECT position, body FROM open_records ORDER BY position")
        except sqlite3.OperationalError:  # a ledger written before open records existed
            return []
        for position, body in rows:
            try:
                record = parse_body(body, canonical=False, wrong_type=text)
            except BadRowError as e:
                skipped.add(f"open record {position}: {e}")
                continue
            if not is_declared(record):
                out.append(record)
    _say(path, skipped, "the open records", text)
    return out


def run_summaries(path: Path, *, run: str | None = None, model: str | None = None,
                  include_open: bool = False) -> dict[str, RunSummary]:
    """Per-run sums over the records the latest signed head covers (optionally of one
    run or one model); with ``include_open``, also over those it does not cover yet (the
    still-open records of the current windows). One read: see :func:`read_view`."""
    view = read_view(path, run=run, model=model)
    return view.summaries([*view.sealed, *view.unsealed] if include_open else None)


def summarize(records: Iterable[LedgerRecord], path: Path) -> dict[str, RunSummary]:
    """Per-run sums over records already read, with the runs' declared metadata."""
    out: dict[str, RunSummary] = {}
    for r in records:
        out.setdefault(r.run, RunSummary(r.run)).add(r)
    skipped = Skipped()
    with _reading(path) as db:
        for name, doc in _runs_meta(db, skipped, out).items():
            out[name].meta = doc
    _say(path, skipped, "the runs' declared metadata")
    return out


def _runs_meta(db: sqlite3.Connection, skipped: Skipped,
               only: Container[str] | None = None) -> dict[str, dict[str, object]]:
    """Each run's declared metadata (of the runs in ``only`` if given); a missing table
    or an unreadable document goes to ``skipped``."""
    try:
        rows = db.execute("SELECT run, meta FROM runs").fetchall()
    except sqlite3.OperationalError as e:
        skipped.add(f"runs table: {e}")
        return {}
    out: dict[str, dict[str, object]] = {}
    for name, doc_text in rows:
        if only is not None and name not in only:
            continue
        try:
            doc = json.loads(doc_text)
        except (TypeError, ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict):
            out[str(name)] = doc
        else:
            skipped.add(f"metadata of run {name!r}")
    return out


def latest_head(path: Path) -> tuple[TreeHead | None, str]:
    """The last signed tree head and the key fingerprint."""
    with _reading(path) as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        head = _head_row(path, db, str(meta.get("origin", "")))
    return head, str(meta.get("key_fingerprint", ""))


def _head_row(path: Path, db: sqlite3.Connection, origin: str) -> TreeHead | None:
    row = db.execute("SELECT size, root, timestamp_ns, signature FROM tree_heads"
                     " ORDER BY size DESC LIMIT 1").fetchone()
    if row is None:
        return None
    size, root, ts, sig = row
    if isinstance(root, bytes) and isinstance(sig, bytes) and type(ts) is int:
        return TreeHead(origin, int(size), root, ts, sig)
    log.error("%s: the latest tree head is malformed; not shown", path)
    return None


@dataclass(frozen=True, slots=True)
class Unsealed:
    """Records the cited head does not cover yet (the open records of the current
    windows, and any appended after it): how many, their FLOP and energy, their runs."""

    records: int = 0
    flop: Band[int] = NO_FLOP
    energy_mj: int = 0
    runs: tuple[str, ...] = ()
    last_end_ns: int = 0

    @classmethod
    def of(cls, records: Iterable[LedgerRecord]) -> Unsealed:
        rows = list(records)
        return cls(len(rows), sum((r.flop for r in rows), NO_FLOP),
                   sum(r.energy_mj for r in rows), tuple(sorted({r.run for r in rows})),
                   max((r.end_ns for r in rows), default=0))

    def text(self) -> str:
        """``none``, or ``2 records, FLOP 1.0e+14 [9.5e+13 .. 1.1e+14], up to TIME``."""
        if not self.records:
            return "none"
        return (f"{self.records} record(s), FLOP "
                f"{figures.band(self.flop.low, self.flop.central, self.flop.high)}, up to "
                f"{figures.when(self.last_end_ns)}")

    def to_json(self) -> dict[str, object]:
        return {"records": self.records, "flop_low": self.flop.low,
                "flop_central": self.flop.central, "flop_high": self.flop.high,
                "energy_mj": self.energy_mj, "runs": list(self.runs),
                "last_end_ns": self.last_end_ns}


@dataclass(frozen=True, slots=True)
class LedgerView:
    """A ledger at one moment, read in one read transaction: the latest signed head,
    the records it covers (``sealed``: ``seq < head.size``) and those it does not cover
    yet (``unsealed``: any appended after it, then the open records of the current
    windows). A writer committing a checkpoint meanwhile changes none of it, so every
    figure drawn from one view agrees with the head it cites. ``discontinuity`` and
    declared statements are left out of both lists (they carry no amounts); the declared
    statements the head covers are in ``statements`` (of the selection: those naming the
    run, or the model). Unsound rows are left out loudly, as :func:`iter_records` does."""

    path: Path
    head: TreeHead | None
    key_fingerprint: str
    sealed: list[LedgerRecord]
    unsealed: list[LedgerRecord]
    run_meta: dict[str, dict[str, object]]
    statements: list[LedgerRecord] = field(default_factory=list)

    @property
    def head_size(self) -> int:
        """Records (statements included) under the cited head; 0 without one."""
        return self.head.size if self.head is not None else 0

    def unsealed_of(self, *, run: str | None = None, model: str | None = None) -> Unsealed:
        """The not yet sealed records of one run or one model (all of them: neither)."""
        return Unsealed.of(r for r in self.unsealed if _matches(r, run, model))

    def summaries(self, records: Iterable[LedgerRecord] | None = None
                  ) -> dict[str, RunSummary]:
        """Per-run sums over ``records`` (default: the sealed ones) with the runs'
        declared metadata as this view read it."""
        out: dict[str, RunSummary] = {}
        for r in self.sealed if records is None else records:
            out.setdefault(r.run, RunSummary(r.run)).add(r)
        for name, summary in out.items():
            summary.meta = dict(self.run_meta.get(name, {}))
        return out


def _matches(r: LedgerRecord, run: str | None, model: str | None) -> bool:
    return (run is None or r.run == run) and (model is None or r.model == model)


def read_view(path: Path, *, run: str | None = None, model: str | None = None) -> LedgerView:
    """The ledger at one moment (optionally only one run's or one model's records).

    Raises:
        LedgerNotFoundError, LedgerReadError: for a missing or unreadable file.
    """
    skipped, text = Skipped(), Skipped()
    sealed: list[LedgerRecord] = []
    unsealed: list[LedgerRecord] = []
    declared: list[LedgerRecord] = []
    run_meta: dict[str, dict[str, object]] = {}
    with _reading(path) as db:
        # One read transaction: in WAL mode every SELECT below sees the snapshot the
        # first one fixed, whatever the agent commits meanwhile. In autocommit each
        # statement would see its own, and a checkpoint between two of them (records
        # sealed, open records replaced) would count a record twice or not at all.
        db.execute("BEGIN")
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            head = _head_row(path, db, str(meta.get("origin", "")))
            size = head.size if head is not None else 0
            for seq, record in _sound_rows(db, run, model, skipped, text):
                under = type(seq) is int and seq < size
                if is_declared(record):
                    if under:  # appended with their head: beyond it only in a damaged file
                        declared.append(record)
                elif is_compute(record):
                    (sealed if under else unsealed).append(record)
            with contextlib.suppress(sqlite3.OperationalError):  # older ledgers lack it
                for position, body in db.execute(
                        "SELECT position, body FROM open_records ORDER BY position"):
                    try:
                        record = parse_body(body, canonical=False, wrong_type=text)
                    except BadRowError as e:
                        skipped.add(f"open record {position}: {e}")
                        continue
                    if _matches(record, run, model) and not is_declared(record):
                        unsealed.append(record)
            run_meta = _runs_meta(db, skipped)
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")
    _say(path, skipped, "the ledger", text)
    return LedgerView(path, head, str(meta.get("key_fingerprint", "")), sealed, unsealed,
                      run_meta, declared)
