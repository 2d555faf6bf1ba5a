"""The ledger: an append-only SQLite file of records, totals and signed tree heads.

One writer (the agent's sampler thread) commits a checkpoint every few seconds in a
single transaction: the records whose window closed (appended to the Merkle tree, the
running totals and a new signed tree head) and the still-open records of the current
windows (kept in ``open_records``, replaced at every checkpoint, sealed into the tree
when their window closes or, after a crash, when the agent starts again). Committed
with ``synchronous=FULL``, so a checkpoint that returned survives a crash or power loss;
records stay minutes long while a crash loses at most one checkpoint interval. After
every checkpoint the latest head and the sums per (GPU, run) are mirrored, signed, to
``<file>.head`` (see :mod:`agent.ledger.mirror`), so that a ledger file rolled back to an
older copy, or that lost its WAL, no longer matches it.

Opening a ledger runs :func:`agent.ledger.integrity.check_ledger` first: a ledger that
fails it is refused (:class:`LedgerDamagedError`) before anything is written.

Totals are stored as decimal text: cluster-scale FLOP (1e26) and GPU-nanoseconds
overflow SQLite's 64-bit integers.

Statements (what a run's trainer or a person declared: kinds in
:data:`agent.accounting.records.STATEMENT_KINDS`) are appended like records, signed under
the same heads, but change no total, no GPU state and no pair sum. The ids of the
messages they came from are recorded in the same transaction (``spool_consumed``), so a
message read again is recognised (:meth:`Ledger.consumed`).

Completeness: every compute record appended gets ``run_seq`` in its assumptions, how many
compute records of its run the ledger held before it, assigned here as ``seq`` is (an
open record gets its number when it is sealed). A ``run-close`` statement
(:meth:`Ledger.close_run`, or ``close_runs`` of :meth:`Ledger.append`) states how many
there are so far; with it a bundle proves that none of the run's records was left out.
The counts per run resume from the opening check, which counts a ledger's records
written before they were numbered too, so the numbering continues.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.accounting.band import Band
from agent.accounting.records import (
    RUN_CLOSE,
    RUN_SEQ,
    STATEMENT_KINDS,
    LedgerRecord,
    RunClose,
    Totals,
    is_compute,
    make_statement,
)
from agent.ledger.errors import LedgerError, LedgerRefusedError
from agent.ledger.integrity import LedgerCheck, RunCount, check_ledger
from agent.ledger.lock import StateLock
from agent.ledger.merkle import EMPTY_ROOT, Frontier, leaf_hash
from agent.ledger.mirror import head_file, write_atomically, write_mirror
from agent.ledger.rows import statement_problem
from agent.ledger.schema import LEDGER_FORMAT, SCHEMA
from agent.ledger.signing import TreeHead, fingerprint, public_raw
from agent.ledger.sums import Pairs, add_records, copy_pairs

log = logging.getLogger(__name__)

__all__ = ["GpuState", "Ledger", "LedgerDamagedError", "LedgerError", "LedgerRefusedError",
           "RunRow", "head_file", "write_atomically"]

class LedgerDamagedError(LedgerRefusedError):
    """The ledger fails its consistency checks; ``check`` says how."""

    def __init__(self, check: LedgerCheck) -> None:
        super().__init__(check.headline())
        self.check = check


@dataclass(frozen=True, slots=True)
class RunRow:
    run: str
    model: str
    category: str
    meta: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GpuState:
    """Where a GPU's accounting stopped: the end of its last record and its runs."""

    gpu_uuid: str
    gpu_index: int
    last_end_ns: int
    last_runs: tuple[str, ...]


class Ledger:
    """The writer's handle on a ledger file.

    Args:
        path: the SQLite file (created with its directory if missing).
        node: this node's name; recorded at creation and checked on every open.
        key: the node's signing key; its fingerprint is checked on every open.
        check: the result of :func:`check_ledger` on ``path`` if the caller has just
            run it (the agent, to refuse with its own message); else it is run here.

    Raises:
        LedgerDamagedError: if the file fails its consistency checks (nothing written).
        LedgerError: if the file belongs to another node or key.
        sqlite3.Error: if the file cannot be opened for writing.
    """

    def __init__(self, path: Path, node: str, key: Ed25519PrivateKey, *,
                 check: LedgerCheck | None = None) -> None:
        self.path = path
        self.node = node
        self._key = key
        self.public_key_raw = public_raw(key.public_key())
        self.origin = f"{node}/{fingerprint(self.public_key_raw)}"
        # Held for the writer's lifetime by the agent (see agent.ledger.lock).
        self.lock: StateLock | None = None
        if check is None:
            check = check_ledger(path)
        if not check.ok:
            raise LedgerDamagedError(check)
        # Sums per (GPU, run) of the sealed and of the open records, for the head file.
        self._sealed: Pairs = copy_pairs(check.sealed)
        # Per run: its compute records so far (the next run_seq) and its latest close.
        self._runs: dict[str, RunCount] = dict(check.runs)
        self._unclosed = {run for run, c in self._runs.items() if not c.is_closed}
        self._open: Pairs = {}
        add_records(self._open, check.open_records)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a checkpoint that returned is on disk, power loss included.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._init_meta()
        self._frontier = self._load_frontier()
        self._next_seq = self._frontier.size
        self.totals: dict[str, dict[str, Totals]] = {"gpu": {}, "run": {}}
        self._load_totals()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _init_meta(self) -> None:
        node = self._meta("node")
        key_fp = self._meta("key_fingerprint")
        mine = fingerprint(self.public_key_raw)
        if node is None:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("format", LEDGER_FORMAT), ("node", self.node),
                 ("key_fingerprint", mine), ("public_key", self.public_key_raw.hex()),
                 ("origin", self.origin), ("frontier", "[]")],
            )
            self._db.execute("COMMIT")
            return
        if node != self.node:
            raise LedgerError(f"{self.path}: ledger of node {node!r}, not {self.node!r}")
        if key_fp != mine:
            raise LedgerError(f"{self.path}: signed by key {key_fp}, this node's key is {mine}")

    def _load_frontier(self) -> Frontier:
        raw = json.loads(self._meta("frontier") or "[]")
        frontier = Frontier.from_list([(int(h), bytes.fromhex(x)) for h, x in raw])
        count = int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])
        head = self.latest_head()
        if frontier.size != count or (head is not None and head.size != count):
            raise LedgerError(
                f"{self.path}: {count} records but the Merkle state covers {frontier.size} "
                f"and the last signed head {head.size if head else 0}; run `flopledger verify`"
            )
        if head is not None and frontier.root() != head.root:
            raise LedgerError(f"{self.path}: Merkle state does not match the last signed head")
        return frontier

    def _load_totals(self) -> None:
        for row in self._db.execute(
            "SELECT scope, key, flop_low, flop_central, flop_high, energy_mj, samples,"
            " covered_ns, gap_ns, first_ns, last_ns FROM totals"
        ):
            low, central, high, *rest = (int(x) for x in row[2:])
            self.totals.setdefault(row[0], {})[row[1]] = Totals(Band(low, central, high), *rest)

    @property
    def size(self) -> int:
        return self._frontier.size

    def latest_head(self) -> TreeHead | None:
        row = self._db.execute(
            "SELECT size, root, timestamp_ns, signature FROM tree_heads ORDER BY size DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return TreeHead(self._meta("origin") or self.origin, int(row[0]), bytes(row[1]),
                        int(row[2]), bytes(row[3]))

    def gpu_states(self) -> dict[str, GpuState]:
        return {
            row[0]: GpuState(row[0], int(row[1]), int(row[2]), tuple(json.loads(row[3])))
            for row in self._db.execute(
                "SELECT gpu_uuid, gpu_index, last_end_ns, last_runs FROM gpu_state"
            )
        }

    def runs(self) -> dict[str, RunRow]:
        return {
            row[0]: RunRow(row[0], row[1], row[2], json.loads(row[3]))
            for row in self._db.execute("SELECT run, model, category, meta FROM runs")
        }

    def open_records(self) -> list[LedgerRecord]:
        """The durable but unsealed records of the last checkpoint."""
        return [LedgerRecord.decode(bytes(body)) for (body,) in self._db.execute(
            "SELECT body FROM open_records ORDER BY position")]

    def seal_open(self, timestamp_ns: int) -> list[LedgerRecord]:
        """After a crash: append the open records of the last checkpoint as they are.

        Raises:
            sqlite3.Error: if the transaction could not be committed.
        """
        drafts = self.open_records()
        if drafts:
            self.append(drafts, timestamp_ns, still_open=[])
        return drafts

    def append(
        self, drafts: Sequence[LedgerRecord], timestamp_ns: int,
        run_meta: dict[str, RunRow] | None = None,
        still_open: Sequence[LedgerRecord] | None = None,
        *, consumed_ids: Sequence[str] = (), close_runs: Iterable[str] = (),
        replay_checkpoint: tuple[str, int] | None = None,
    ) -> TreeHead | None:
        """Append records (their ``seq``, and a compute record's ``run_seq``, are assigned
        here), sign a new tree head, and (unless ``still_open`` is None) replace the open
        records.

        ``drafts`` may mix statements with compute records: a statement gets its seq and
        its leaf under the same head, and adds to no total. ``consumed_ids`` (the ids of
        the messages the statements came from) are recorded in the same transaction.
        ``close_runs``: after the drafts, a ``run-close`` for each of these runs that has
        compute records not yet counted by a close (see :meth:`close_run`).
        ``replay_checkpoint``: (source, last ns) a replay from a server accounted in full
        with these records, recorded in the same transaction (replacing the source's
        previous one; see :mod:`agent.ledger.checkpoints`).

        All or nothing: on any error (a full disk, an I/O error, an id already recorded)
        the transaction rolls back, the ledger is unchanged and the caller keeps the
        records to retry.

        Returns:
            the new signed head, None if no record was appended.

        Raises:
            ValueError: if a statement carries a GPU, an amount or a stretch of time, or a
                run-close does not state the run's records (the ledger would refuse it on
                its next check): nothing was appended.
            sqlite3.IntegrityError: if an id of ``consumed_ids`` is already recorded (or
                given twice): nothing was appended.
            sqlite3.Error: if the transaction could not be committed.
        """
        return self._append(drafts, timestamp_ns, run_meta, still_open, consumed_ids,
                            close_runs, replay_checkpoint)[0]

    def close_run(self, run: str, timestamp_ns: int) -> LedgerRecord | None:
        """Append a ``run-close`` of ``run`` (one transaction, a signed head): "this node
        holds n compute records of the run, run_seq 0..n-1, and none more so far".

        Returns:
            the statement appended; None if the run has no compute record here, or its
            latest close already states the same count (nothing appended).

        Raises:
            sqlite3.Error: if the transaction could not be committed.
        """
        count = self._runs.get(run)
        if count is None or not count.records or count.is_closed:
            return None
        return next(iter(self._append([], timestamp_ns, None, None, (), [run])[1]), None)

    def unclosed_runs(self) -> set[str]:
        """The runs with compute records that no ``run-close`` counts yet (never closed,
        or reopened by a record after their latest close)."""
        return set(self._unclosed)

    def _append(
        self, drafts: Sequence[LedgerRecord], timestamp_ns: int,
        run_meta: dict[str, RunRow] | None, still_open: Sequence[LedgerRecord] | None,
        consumed_ids: Sequence[str], close_runs: Iterable[str],
        replay_checkpoint: tuple[str, int] | None = None,
    ) -> tuple[TreeHead | None, list[LedgerRecord]]:
        for draft in drafts:
            problem = statement_problem(draft) if draft.kind in STATEMENT_KINDS else None
            if problem is not None:
                raise ValueError(f"not appended: {problem}")
        counts = dict(self._runs)

        def closes() -> Iterator[LedgerRecord]:
            # Drawn after the drafts are numbered: a close counts them too.
            for run in dict.fromkeys(close_runs):
                count = counts.get(run, RunCount())
                if count.records and not count.is_closed:
                    yield make_statement(
                        RUN_CLOSE, node=self.node, time_ns=timestamp_ns, run=run,
                        model=count.model, category=count.category,
                        payload=count.close().payload())

        frontier = Frontier.from_list(self._frontier.to_list())
        totals = {scope: dict(v) for scope, v in self.totals.items()}
        changed: dict[tuple[str, str], Totals] = {}
        rows = []
        gpu_rows: dict[str, tuple[int, int, list[str]]] = {}
        sealed = copy_pairs(self._sealed)
        seq = self._next_seq
        appended_closes = []
        counted: set[str] = set()
        for draft in itertools.chain(drafts, closes()):
            count = counts.get(draft.run, RunCount())
            record = _with_seq(draft, seq, count.records if is_compute(draft) else None)
            seq += 1
            if is_compute(record):
                counts[record.run] = count.added(record)
                counted.add(record.run)
            elif record.kind == RUN_CLOSE:
                said = RunClose.of(record)
                if not count.records or said != count.close():
                    raise ValueError(f"not appended: run-close of run {record.run!r} says "
                                     f"{said.records} record(s), the last at record "
                                     f"{said.last_seq}; the ledger holds {count.records} "
                                     f"before it, the last at record {count.last_seq}")
                counts[record.run] = replace(count, closed=said.records)
                counted.add(record.run)
                appended_closes.append(record)
            body = record.encode()
            h = leaf_hash(body)
            frontier.append(h)
            rows.append((record.seq, body, h, record.run, record.model, record.gpu_uuid,
                         record.start_ns, record.end_ns))
            if record.kind in STATEMENT_KINDS:
                continue  # declared, not computed: no total, no GPU time, no pair sum
            for scope, key in (("gpu", record.gpu_uuid), ("run", record.run)):
                current = totals[scope].get(key)
                t = replace(current) if current is not None else Totals()
                t.add(record)
                totals[scope][key] = t
                changed[(scope, key)] = t
            add_records(sealed, [record])
            if not record.gpu_uuid:
                continue  # a discontinuity statement: no GPU time to resume from
            previous = gpu_rows.get(record.gpu_uuid)
            if previous is None or record.end_ns > previous[1]:
                gpu_rows[record.gpu_uuid] = (record.gpu_index, record.end_ns, [record.run])
            elif record.end_ns == previous[1] and record.run not in previous[2]:
                previous[2].append(record.run)
        head = None
        if rows:
            head = TreeHead(self.origin, frontier.size, frontier.root(), timestamp_ns).signed(
                self._key)
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO records (seq, body, leaf_hash, run, model, gpu_uuid, start_ns,"
                " end_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany(
                "INSERT OR REPLACE INTO totals (scope, key, flop_low, flop_central, flop_high,"
                " energy_mj, samples, covered_ns, gap_ns, first_ns, last_ns)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(scope, key, *(str(x) for x in t.flop), str(t.energy_mj), str(t.samples),
                  str(t.covered_ns), str(t.gap_ns), t.first_ns, t.last_ns)
                 for (scope, key), t in changed.items()])
            db.executemany(
                "INSERT OR REPLACE INTO gpu_state (gpu_uuid, gpu_index, last_end_ns, last_runs)"
                " VALUES (?, ?, ?, ?)",
                [(uuid, idx, end, json.dumps(runs)) for uuid, (idx, end, runs) in
                 gpu_rows.items()])
            db.executemany("INSERT INTO spool_consumed (id, time_ns) VALUES (?, ?)",
                           [(str(i), timestamp_ns) for i in consumed_ids])
            if replay_checkpoint is not None:
                db.execute("INSERT OR REPLACE INTO replay_checkpoints (source, last_ns, time_ns)"
                           " VALUES (?, ?, ?)", (replay_checkpoint[0], int(replay_checkpoint[1]),
                                                 timestamp_ns))
            for row in (run_meta or {}).values():
                db.execute(
                    "INSERT OR REPLACE INTO runs (run, model, category, meta) VALUES (?, ?, ?, ?)",
                    (row.run, row.model, row.category, json.dumps(row.meta, sort_keys=True)))
            if head is not None:
                db.execute(
                    "INSERT INTO tree_heads (size, root, timestamp_ns, signature)"
                    " VALUES (?, ?, ?, ?)",
                    (head.size, head.root, head.timestamp_ns, head.signature))
            if still_open is not None:
                db.execute("DELETE FROM open_records")
                db.executemany("INSERT INTO open_records (position, body) VALUES (?, ?)",
                               [(k, r.encode()) for k, r in enumerate(still_open)])
            db.execute("UPDATE meta SET value = ? WHERE key = 'frontier'",
                       (json.dumps([(h, x.hex()) for h, x in frontier.to_list()]),))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._frontier = frontier
        self._next_seq = seq
        for run in counted:
            self._runs[run] = counts[run]
            if counts[run].is_closed:
                self._unclosed.discard(run)
            else:
                self._unclosed.add(run)
        self.totals = totals
        self._sealed = sealed
        if still_open is not None:
            self._open = {}
            add_records(self._open, still_open)
        latest = head or self.latest_head() or TreeHead(
            self.origin, 0, EMPTY_ROOT, timestamp_ns).signed(self._key)
        try:
            write_mirror(self.path, latest, self._sealed, self._open, self._key, timestamp_ns)
        except OSError as e:
            # The ledger itself is committed. A stale head file only makes a later roll-back
            # check and a recovery less precise, so the agent keeps counting; said loudly.
            log.error("could not write %s (%s): the ledger is committed, but a recovery "
                      "would resume from the previous head file", head_file(self.path), e)
        return head, appended_closes

    def records(
        self, *, run: str | None = None, model: str | None = None
    ) -> Iterator[LedgerRecord]:
        """Records in append order, optionally only one run's or one model's; statements
        are left out (see :meth:`statements`)."""
        for record in self._select(run, model):
            if record.kind not in STATEMENT_KINDS:
                yield record

    def statements(self, kinds: Iterable[str] | None = None, *, run: str | None = None,
                   model: str | None = None) -> list[LedgerRecord]:
        """Statements in append order: of ``kinds`` (default: every statement kind),
        optionally only those naming ``run`` and/or ``model``."""
        wanted = set(STATEMENT_KINDS if kinds is None else kinds) & set(STATEMENT_KINDS)
        return [r for r in self._select(run, model, statements=True)
                if r.kind in wanted and (run is None or r.run == run)
                and (model is None or r.model == model)]

    def _select(self, run: str | None, model: str | None, *,
                statements: bool = False) -> Iterator[LedgerRecord]:
        query = "SELECT body FROM records"
        args: tuple[str, ...] = ()
        if run is not None:
            query, args = query + " WHERE run = ?", (run,)
        elif model is not None:
            query, args = query + " WHERE model = ?", (model,)
        if statements:  # a statement has no GPU
            query += (" AND" if args else " WHERE") + " gpu_uuid = ''"
        for (body,) in self._db.execute(query + " ORDER BY seq", args):
            yield LedgerRecord.decode(bytes(body))

    def consumed(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` are recorded as consumed (their statements appended)."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        found: set[str] = set()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start:start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            found.update(str(row[0]) for row in self._db.execute(
                f"SELECT id FROM spool_consumed WHERE id IN ({marks})", chunk))
        return found

    def close(self) -> None:
        # Fold the WAL into the main file so the ledger is one self-contained file.
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


# Ids per query: below SQLite's limit on bound parameters.
_CHUNK = 500


def _with_seq(record: LedgerRecord, seq: int, run_seq: int | None) -> LedgerRecord:
    """The draft as appended: its ``seq``, and a compute record's ``run_seq``."""
    if run_seq is None:
        return replace(record, seq=seq)
    return replace(record, seq=seq, assumptions={**record.assumptions, RUN_SEQ: run_seq})
