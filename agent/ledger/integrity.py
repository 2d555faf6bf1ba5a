"""Is this ledger whole? The agent's start-up check, the core of ``flopledger verify``,
and the warning of the read commands.

One read-only pass in one read transaction, so a writer appending meanwhile cannot make
a sound ledger look inconsistent; the head file is read first, for the same reason (the
writer updates it after each commit, so the database read afterwards is never behind a
sound head file). Every anomaly becomes a message naming the table, the record or the
head, and what is wrong; nothing raises, whatever the file holds:

* the file: missing while its head file says the node signed records; not a database;
  truncated; tables or columns missing; values of the wrong storage class (a body
  stored as TEXT, a total stored as a float);
* records: numbered 0..n-1, each body a sound record whose hash is its stored leaf hash
  and whose index columns agree with it;
* the Merkle root over the records against the latest signed head (every head with
  ``thorough``) and its signature, the stored Merkle state, and the head file: a
  ledger shorter than the head file, or whose root at its size differs, was rolled
  back; sums per (GPU, run) smaller than the head file's lost committed records;
* the totals table against the sums of the records (what ``/metrics`` resumes from);
* open records, GPU state, run metadata and consumed message ids readable.

Statements (kinds in :data:`agent.accounting.records.STATEMENT_KINDS`) are leaves like
any record (hash, canonical form, columns against the body) and must carry no GPU, no
amounts and one instant (else the record is a fault: it would smuggle FLOP); they add
to no sum, and are counted per kind in :attr:`LedgerCheck.statements`.

A ledger recovered with ``flopledger recover`` starts with a ``discontinuity`` record;
it is listed in :attr:`LedgerCheck.discontinuities` (``verify`` reports it).

Completeness: a compute record's ``run_seq`` must count the compute records of its run
before it (0, 1, 2, ... in append order, from the first record that has one; a ledger
written before records were numbered counts its older records too), and a ``run-close``
must state exactly the run's records before it. Either wrong is a fault (edited). The
counts per run (:attr:`LedgerCheck.runs`) are what the writer resumes its numbering from;
memory grows with the number of runs, not of records.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import figures
from agent.accounting.records import (
    RUN_CLOSE,
    RUN_SEQ,
    STATEMENT_KINDS,
    LedgerRecord,
    RunClose,
    is_compute,
)
from agent.ledger.merkle import Frontier, leaf_hash
from agent.ledger.mirror import Mirror, MirrorError, head_file, read_mirror
from agent.ledger.rows import BadRowError, body_bytes, parse_body, parse_record, storage_class
from agent.ledger.schema import (
    COLUMNS,
    META_KEYS,
    OPTIONAL_TABLES,
    TOTALS_TEXT,
    connect_read_only,
)
from agent.ledger.signing import TreeHead, fingerprint, load_public
from agent.ledger.sums import (
    FIELDS,
    Pairs,
    add_records,
    behind,
    pairs_of,
    scope_totals,
    values,
    with_pairs,
)

_DECIMAL = re.compile(r"-?[0-9]+")


class _EnoughError(Exception):
    """Stops a scan that has found ``max_problems``."""


@dataclass(frozen=True, slots=True)
class RunCount:
    """One run's compute records in a ledger, as a ``run-close`` would state them.

    Attributes:
        records: how many compute records of the run the ledger holds.
        first_run_seq: the ``run_seq`` of the first that has one (None: none has; the
            records were written before records were numbered).
        last_seq: the ``seq`` of the last of them (-1: none).
        model, category: the labels of the last of them (a close carries them).
        closed: how many records the latest ``run-close`` of the run stated (None: none).
    """

    records: int = 0
    first_run_seq: int | None = None
    last_seq: int = -1
    model: str = ""
    category: str = ""
    closed: int | None = None

    def added(self, r: LedgerRecord) -> RunCount:
        """This count with compute record ``r`` (its ``run_seq`` as it carries it)."""
        first = self.first_run_seq
        if first is None and RUN_SEQ in r.assumptions:
            first = self.records
        return replace(self, records=self.records + 1, first_run_seq=first, last_seq=r.seq,
                       model=r.model, category=r.category)

    def close(self) -> RunClose:
        """What a ``run-close`` written now states (the count must be at least one)."""
        first = self.records if self.first_run_seq is None else self.first_run_seq
        return RunClose(self.records, self.last_seq, first)

    @property
    def is_closed(self) -> bool:
        """The latest close states the current count (no record of the run since)."""
        return self.closed == self.records


@dataclass(slots=True)
class LedgerCheck:
    """What one pass over a ledger found.

    Attributes:
        exists: the file holds a ledger (False for a missing or empty file).
        sealed: sums per (GPU, run) over the sealed records that could be read.
        authentic: every record was read, matches its leaf hash, and together they hash
            to the latest signed head: ``sealed`` is exactly what the node signed.
        discontinuities: the statements of ``flopledger recover`` at the start of the
            ledger (kind ``discontinuity``, no run): history before them is elsewhere.
        statements: how many sealed statements of each kind could be read.
        runs: per run, its compute records and latest close (see :class:`RunCount`).
        notes: what is worth saying but is no fault (no head file yet).
    """

    path: Path
    exists: bool = False
    records: int = 0
    heads: int = 0
    node: str = ""
    origin: str = ""
    public_key_raw: bytes = b""
    key_fingerprint: str = ""
    latest_head: TreeHead | None = None
    mirror: Mirror | None = None
    sealed: Pairs = field(default_factory=dict)
    authentic: bool = False
    open_records: list[LedgerRecord] = field(default_factory=list)
    discontinuities: list[LedgerRecord] = field(default_factory=list)
    statements: Counter[str] = field(default_factory=Counter)
    runs: dict[str, RunCount] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def headline(self) -> str:
        """One line: what is wrong and how to go on (empty for a sound ledger)."""
        if self.ok:
            return ""
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return (f"{self.path} fails its consistency checks: {self.problems[0]}{more}. "
                f"`flopledger verify --ledger {self.path}` lists every problem; "
                f"`flopledger recover --ledger {self.path}` moves the damaged files aside "
                "and starts a new ledger that records the discontinuity")


def check_ledger(path: Path, public_key_raw: bytes | None = None, *, thorough: bool = False,
                 on_record: Callable[[LedgerRecord], None] | None = None,
                 max_problems: int = 50) -> LedgerCheck:
    """Check a ledger file (read-only; see the module docstring).

    Args:
        public_key_raw: the key the ledger must be signed with (default: its own).
        thorough: also check every signed head and every body's canonical encoding
            (``verify``); the start-up check needs only the latest head.
        on_record: called with every sealed record that could be read.
    """
    check = LedgerCheck(path)
    scan = _Scan(check, public_key_raw, thorough, on_record, max_problems)
    try:
        scan.run()
    except _EnoughError:
        check.problems.append(f"(stopped after {max_problems} problems)")
    return check


class _Scan:
    def __init__(self, check: LedgerCheck, public_key_raw: bytes | None, thorough: bool,
                 on_record: Callable[[LedgerRecord], None] | None, max_problems: int) -> None:
        self.c = check
        self.trusted = public_key_raw
        self.public: Ed25519PublicKey | None = None
        self.thorough = thorough
        self.on_record = on_record
        self.max_problems = max_problems
        self.heads: list[TreeHead] = []
        self.roots: dict[int, bytes] = {}
        self.frontier_state: str | None = None
        self.record_faults = 0

    def problem(self, message: str) -> None:
        self.c.problems.append(message)
        if len(self.c.problems) >= self.max_problems:
            raise _EnoughError

    def fault(self, message: str) -> None:
        """A problem with the records themselves: their sums are not what was signed."""
        self.record_faults += 1
        self.problem(message)

    def run(self) -> None:
        c = self.c
        # The head file first: a writer updates it after its commit, so the database
        # read afterwards is at least as new.
        try:
            c.mirror = read_mirror(c.path)
        except MirrorError as e:
            self.problem(str(e))
        if not c.path.exists():
            if c.mirror is not None:
                self.problem(
                    f"{c.path}: missing, but {c.mirror.path.name} says the node signed "
                    f"{c.mirror.head.size} record(s) at {when(c.mirror.head.timestamp_ns)}: "
                    "the ledger was deleted or moved")
            return
        try:
            db = connect_read_only(c.path)
        except sqlite3.Error as e:
            self.problem(f"{c.path}: cannot be opened ({e})")
            return
        try:
            db.execute("BEGIN")
            self._scan(db)
        except (sqlite3.Error, UnicodeDecodeError) as e:
            # A flipped byte in the schema's text reaches Python as bad UTF-8.
            self.problem(f"{c.path}: not a readable ledger ({e}); the file is damaged or "
                         "truncated")
        finally:
            db.close()

    def _scan(self, db: sqlite3.Connection) -> None:
        c = self.c
        tables = {str(name): [str(r[1]) for r in db.execute(f"PRAGMA table_info('{name}')")]
                  for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if isinstance(name, str) and name in COLUMNS}
        if not tables:
            if c.mirror is not None:
                self.problem(f"{c.path}: holds no ledger tables, but {c.mirror.path.name} "
                             f"says the node signed {c.mirror.head.size} record(s): the "
                             "ledger was replaced or its WAL deleted")
            return
        c.exists = True
        for table, columns in COLUMNS.items():
            if table not in tables:
                if table not in OPTIONAL_TABLES:
                    self.problem(f"table {table}: missing")
                continue
            missing = [col for col in columns if col not in tables[table]]
            if missing:
                self.problem(f"table {table}: column(s) {', '.join(missing)} missing")
                del tables[table]
        if "meta" in tables:
            self._meta(db)
        if "tree_heads" in tables:
            self._heads(db)
        if "records" in tables:
            self._records(db)
            self._signed_heads(db if "meta" in tables else None)
        if "totals" in tables and "records" in tables:
            self._totals(db)
        if "open_records" in tables:
            self._open(db)
        if "gpu_state" in tables:
            self._gpu_state(db)
        if "runs" in tables:
            self._runs(db)
        if "spool_consumed" in tables:
            self._consumed(db)
        if "replay_checkpoints" in tables:
            self._replay_checkpoints(db)
        self._mirror()

    def _meta(self, db: sqlite3.Connection) -> None:
        c = self.c
        meta: dict[str, str] = {}
        for key, value in db.execute("SELECT key, value FROM meta"):
            if not isinstance(key, str) or not isinstance(value, str):
                self.problem(f"meta {key!r}: stored as {storage_class(value)}, not TEXT")
                continue
            meta[key] = value
        for key in META_KEYS:
            if key not in meta:
                self.problem(f"meta: {key} missing")
        c.node, c.origin = meta.get("node", ""), meta.get("origin", "")
        try:
            raw = bytes.fromhex(meta.get("public_key", ""))
            self.public = load_public(raw)
            c.public_key_raw, c.key_fingerprint = raw, fingerprint(raw)
        except ValueError:
            self.problem("meta: the node's public key is missing or malformed")
        if self.trusted is not None and c.public_key_raw and self.trusted != c.public_key_raw:
            self.problem(f"key: ledger signed by {c.key_fingerprint}, expected "
                         f"{fingerprint(self.trusted)}")
        self.frontier_state = meta.get("frontier")

    def _heads(self, db: sqlite3.Connection) -> None:
        origin = self.c.origin
        previous = -1
        for size, root, ts, sig in db.execute(
                "SELECT size, root, timestamp_ns, signature FROM tree_heads ORDER BY size"):
            if not (isinstance(root, bytes) and len(root) == 32 and type(ts) is int
                    and isinstance(sig, bytes)):
                self.problem(f"tree head at size {size}: malformed (root {storage_class(root)}, "
                             f"time {storage_class(ts)}, signature {storage_class(sig)})")
                continue
            if size <= previous:
                self.problem(f"tree head at size {size}: out of order")
            previous = size
            self.heads.append(TreeHead(origin, int(size), root, ts, sig))
        self.c.heads = len(self.heads)
        self.c.latest_head = self.heads[-1] if self.heads else None

    def _records(self, db: sqlite3.Connection) -> None:
        c = self.c
        wanted = {h.size for h in (self.heads if self.thorough else self.heads[-1:])}
        if c.mirror is not None:
            wanted.add(c.mirror.head.size)
        frontier = Frontier()
        self.roots = {0: frontier.root()} if 0 in wanted else {}
        sealed = c.sealed
        position = 0
        for seq, body_value, stored_hash, run, model, uuid, start, end in db.execute(
                "SELECT seq, body, leaf_hash, run, model, gpu_uuid, start_ns, end_ns"
                " FROM records ORDER BY seq"):
            if seq != position:
                self.fault(f"record {position} missing or out of order: found sequence "
                           f"number {seq} at position {position}")
            position += 1
            body, wrong_type = body_bytes(body_value)
            h = leaf_hash(body)
            frontier.append(h)
            if frontier.size in wanted:
                self.roots[frontier.size] = frontier.root()
            if wrong_type is not None:
                self.fault(f"record {seq}: body {wrong_type}")
            if stored_hash != h:
                self.fault(f"record {seq}: content does not match its leaf hash: edited")
            try:
                record = parse_record(body, canonical=self.thorough)
            except BadRowError as e:
                self.fault(f"record {seq}: {e}: edited")
                continue
            if record.seq != seq:
                self.fault(f"record {seq}: body says it is record {record.seq}: records "
                           "swapped or moved")
            if (run, model, uuid, start, end) != (record.run, record.model, record.gpu_uuid,
                                                  record.start_ns, record.end_ns):
                self.fault(f"record {seq}: its run, model, GPU or time columns disagree "
                           "with its body: edited")
            if record.kind == "discontinuity" and not record.run:
                c.discontinuities.append(record)
            elif record.kind in STATEMENT_KINDS:
                c.statements[record.kind] += 1
            self._count(record)
            add_records(sealed, [record])
            if self.on_record is not None:
                self.on_record(record)
        c.records = position

    def _count(self, r: LedgerRecord) -> None:
        """Hold a record's ``run_seq``, or a run-close's count, to the run's records
        before it."""
        runs = self.c.runs
        if is_compute(r):
            count = runs.get(r.run, RunCount())
            if RUN_SEQ in r.assumptions:
                said = r.assumptions[RUN_SEQ]
                if type(said) is not int or said != count.records:
                    self.fault(f"record {r.seq}: run_seq {said!r}, but it is compute record "
                               f"{count.records} of run {r.run!r} on this ledger: edited")
            elif count.first_run_seq is not None:
                self.fault(f"record {r.seq}: no run_seq, but the records of run {r.run!r} "
                           f"are numbered since run_seq {count.first_run_seq}: edited")
            runs[r.run] = count.added(r)
        elif r.kind == RUN_CLOSE:
            count = runs.get(r.run, RunCount())
            said = RunClose.of(r)  # sound: parse_record checked the statement
            held = count.close() if count.records else None
            if said != held:
                self.fault(f"record {r.seq}: run-close of run {r.run!r} says {said.records} "
                           f"record(s), the last at record {said.last_seq}, numbered from "
                           f"run_seq {said.first_run_seq}; the ledger holds "
                           + (f"{held.records}, the last at record {held.last_seq}, numbered "
                              f"from run_seq {held.first_run_seq}" if held else "none")
                           + " before it: edited")
            runs[r.run] = replace(count, closed=said.records)

    def _signed_heads(self, db: sqlite3.Connection | None) -> None:
        c = self.c
        n = c.records
        for head in (self.heads if self.thorough else self.heads[-1:]):
            if self.public is not None and not head.verify(self.public):
                self.fault(f"tree head at size {head.size}: signature does not verify")
            root = self.roots.get(head.size)
            if root is None:
                self.fault(f"tree head at size {head.size}: the ledger has only {n} records: "
                           "records were removed or the file truncated")
            elif root != head.root:
                self.fault(f"tree head at size {head.size}: records 0..{head.size - 1} do not "
                           "match the signed root: a record was edited, removed or reordered")
        last = c.latest_head.size if c.latest_head is not None else 0
        if n > last:
            self.fault(f"records {last}..{n - 1} are not covered by any signed head")
        latest = c.latest_head
        c.authentic = self.record_faults == 0 and (
            n == 0 if latest is None else
            self.public is not None and latest.verify(self.public)
            and self.roots.get(latest.size) == latest.root)
        state = self.frontier_state
        if db is None or state is None:
            return
        try:
            raw = json.loads(state)
            frontier = Frontier.from_list([(int(h), bytes.fromhex(x)) for h, x in raw])
        except (ValueError, TypeError, RecursionError) as e:
            self.problem(f"meta frontier: malformed ({e})")
            return
        if frontier.size != n:
            self.problem(f"meta frontier: the stored Merkle state covers {frontier.size} "
                         f"records, the ledger has {n}")
        elif c.latest_head is not None and frontier.root() != c.latest_head.root:
            self.problem("meta frontier: the stored Merkle state does not match the last "
                         "signed head")

    def _totals(self, db: sqlite3.Connection) -> None:
        expected = scope_totals(self.c.sealed.values())
        stored: dict[tuple[str, str], tuple[int, ...]] = {}
        for row in db.execute(
                "SELECT scope, key, flop_low, flop_central, flop_high, energy_mj, samples,"
                " covered_ns, gap_ns, first_ns, last_ns FROM totals"):
            scope, key, *rest = row
            name = f"totals for {scope} {key}"
            bad = [f"{col} is {v!r} ({storage_class(v)})"
                   for col, v in zip(TOTALS_TEXT, rest[:7], strict=True)
                   if not (isinstance(v, str) and _DECIMAL.fullmatch(v))]
            bad += [f"{col} is {v!r} ({storage_class(v)})"
                    for col, v in zip(("first_ns", "last_ns"), rest[7:], strict=True)
                    if type(v) is not int]
            if bad or not isinstance(scope, str) or not isinstance(key, str):
                self.problem(f"{name}: malformed ({'; '.join(bad) or 'scope or key not text'})")
                continue
            stored[(scope, key)] = tuple(int(v) for v in rest)
        for scope, by_key in expected.items():
            for key, t in by_key.items():
                want = values(t)
                got = stored.pop((scope, key), None)
                if got != want:
                    diff = ("missing" if got is None else ", ".join(
                        f"{f} stored {g} but its records sum to {w}"
                        for f, g, w in zip(FIELDS, got, want, strict=True) if g != w))
                    self.problem(f"totals for {scope} {key} do not equal the sum of its "
                                 f"records ({diff})")
        for scope, key in stored:
            self.problem(f"totals for {scope} {key} have no records")

    def _open(self, db: sqlite3.Connection) -> None:
        for position, body in db.execute("SELECT position, body FROM open_records"
                                         " ORDER BY position"):
            try:
                self.c.open_records.append(parse_body(body))
            except BadRowError as e:
                self.problem(f"open record {position}: {e}")

    def _gpu_state(self, db: sqlite3.Connection) -> None:
        for uuid, index, end, runs in db.execute(
                "SELECT gpu_uuid, gpu_index, last_end_ns, last_runs FROM gpu_state"):
            try:
                ok = (isinstance(uuid, str) and type(index) is int and type(end) is int
                      and isinstance(runs, str) and isinstance(json.loads(runs), list))
            except (ValueError, RecursionError):
                ok = False
            if not ok:
                self.problem(f"gpu_state for {uuid!r}: malformed")

    def _runs(self, db: sqlite3.Connection) -> None:
        for run, model, category, meta in db.execute(
                "SELECT run, model, category, meta FROM runs"):
            try:
                ok = (isinstance(run, str) and isinstance(model, str)
                      and isinstance(category, str) and isinstance(meta, str)
                      and isinstance(json.loads(meta), dict))
            except (ValueError, RecursionError):
                ok = False
            if not ok:
                self.problem(f"runs: metadata of run {run!r} malformed")

    def _consumed(self, db: sqlite3.Connection) -> None:
        for key, time_ns in db.execute("SELECT id, time_ns FROM spool_consumed"):
            if not isinstance(key, str) or type(time_ns) is not int:
                self.problem(f"spool_consumed {key!r}: malformed (id {storage_class(key)}, "
                             f"time {storage_class(time_ns)})")

    def _replay_checkpoints(self, db: sqlite3.Connection) -> None:
        for source, last_ns, time_ns in db.execute(
                "SELECT source, last_ns, time_ns FROM replay_checkpoints"):
            if not isinstance(source, str) or type(last_ns) is not int or \
                    type(time_ns) is not int:
                self.problem(f"replay_checkpoints {source!r}: malformed (source "
                             f"{storage_class(source)}, last {storage_class(last_ns)}, time "
                             f"{storage_class(time_ns)})")

    def _mirror(self) -> None:
        c, mirror = self.c, self.c.mirror
        if mirror is None:
            if c.records:
                c.notes.append(f"no head file {head_file(c.path).name}: a roll-back of this "
                               "ledger cannot be detected until the agent writes one")
            return
        if self.public is not None:
            wrong = mirror.problem(self.public)
            if wrong is not None:
                self.problem(wrong)
                return
        if c.origin and mirror.head.origin != c.origin:
            self.problem(f"{mirror.path}: written for {mirror.head.origin}, not this ledger's "
                         f"{c.origin}: the ledger was replaced")
            return
        size, n = mirror.head.size, c.records
        if size > n:
            self.problem(f"rolled back: the node signed a head of size {size} at "
                         f"{when(mirror.head.timestamp_ns)} but the ledger has only "
                         f"{n} records (an older copy, or its WAL deleted)")
            return
        if self.roots.get(size, mirror.head.root) != mirror.head.root:
            self.problem(f"{mirror.path}: the signed head of size {size} does not match the "
                         "ledger's records: the ledger was replaced or rewritten")
            return
        if mirror.has_state:
            now = with_pairs(c.sealed, pairs_of(c.open_records))
            lost = behind(now, mirror.combined())
            if lost:
                self.problem(f"rolled back: the ledger holds less than when "
                             f"{mirror.path.name} was written at "
                             f"{when(mirror.written_ns or 0)} (committed records lost: "
                             f"{'; '.join(lost[:3])}{' ...' if len(lost) > 3 else ''})")


def when(ns: int) -> str:
    """A time stamp from a file that may hold anything: UTC, or the raw number."""
    try:
        return figures.when(ns)
    except (OverflowError, ValueError, OSError):
        return f"{ns} ns"
