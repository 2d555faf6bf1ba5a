"""Shipping a node's sealed records, signed tree heads and runs to the PostgreSQL store,
which witnesses them.

Each :meth:`Replicator.step` is one PostgreSQL transaction under a row lock on the
node's ``fl_nodes`` row. The store's ``fl_nodes.records`` (how many of the node's records
it holds, without a hole) is the cursor: a step ships the records from there up to one
of the node's signed heads, so an outage at any point (before, during or at the commit)
leaves either the whole batch or none of it, and the next step resumes where the store
says. Two shippers of the same ledger queue on the row lock and never ship a record
twice.

Before a record leaves, its leaf hash is recomputed from its body and the batch is
folded into the Merkle frontier the store kept, so that every head in the batch is
checked against its root and its signature: a ledger damaged on the node is refused
here (:class:`ReplicationError`), never copied.

The witness: the store remembers the latest head it accepted from each node key. A
node whose ledger now ends before that head went backwards (restored from an older
copy, or replaced); one whose ledger holds another root at that size, or records that
differ from those already held, forked. Either is flagged (``fl_nodes.flagged``, with an
event in ``fl_witness_events``) and nothing more is accepted from that key. A node name
seen with a new key is only noted: a replaced disk starts a new key and a new ledger.

The local ledger is read through a read-only connection, one short snapshot per step,
so the agent's writer is never blocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg

from agent.accounting.records import LedgerRecord, Totals, is_compute
from agent.ledger.errors import LedgerError
from agent.ledger.merkle import Frontier, leaf_hash
from agent.ledger.pgconn import PgError, ensure_schema, pg_error
from agent.ledger.rows import BadRowError, parse_record
from agent.ledger.schema import connect_read_only
from agent.ledger.signing import TreeHead, fingerprint, load_public

__all__ = ["ReplicationError", "Replicator", "StepResult", "node_key"]

BATCH_RECORDS = 5000


class ReplicationError(LedgerError):
    """The local ledger cannot be shipped as it is (missing, not a ledger, or damaged):
    nothing was shipped. The message is one line naming the file."""


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step did: ``records`` newly stored, ``heads`` newly accepted,
    ``backlog`` (records signed locally that the store does not hold yet), ``cursor``
    (how many of the node's records the store holds), ``flagged`` (why the witness
    refuses this node, None while it is sound)."""

    records: int
    heads: int
    backlog: int
    cursor: int
    flagged: str | None = None


def node_key(public_key_raw: bytes) -> str:
    """The store's name for a node: the SHA-256 of its raw Ed25519 public key, in hex."""
    return hashlib.sha256(public_key_raw).hexdigest()


@dataclass(frozen=True, slots=True)
class _Local:
    node: str
    origin: str
    public_key: bytes
    key: str
    size: int  # the size of the latest signed head


@dataclass(frozen=True, slots=True)
class _Stored:
    records: int
    frontier: str
    head_size: int
    head_root: bytes | None
    flagged: str | None


class _Flag(Exception):  # noqa: N818 - a control-flow signal, not an error
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


_RECORD_COLUMNS = ("seq", "body", "leaf_hash", "kind", "run", "model", "category", "gpu_uuid",
                   "start_ns", "end_ns", "flop_low", "flop_central", "flop_high", "energy_mj")
_RECORD_TYPES = ("int8", "bytea", "bytea", "text", "text", "text", "text", "text", "int8",
                 "int8", "numeric", "numeric", "numeric", "numeric")
_INCOMING = """
CREATE TEMP TABLE IF NOT EXISTS fl_incoming (
    seq BIGINT NOT NULL, body BYTEA NOT NULL, leaf_hash BYTEA NOT NULL, kind TEXT NOT NULL,
    run TEXT NOT NULL, model TEXT NOT NULL, category TEXT NOT NULL, gpu_uuid TEXT NOT NULL,
    start_ns BIGINT NOT NULL, end_ns BIGINT NOT NULL, flop_low NUMERIC NOT NULL,
    flop_central NUMERIC NOT NULL, flop_high NUMERIC NOT NULL, energy_mj NUMERIC NOT NULL
) ON COMMIT DELETE ROWS
"""
_COLUMNS_SQL = ", ".join(_RECORD_COLUMNS)


class Replicator:
    """Ships one node's ledger at ``ledger_path`` to the store ``conn_factory`` connects
    to (a new connection after any connection error), ``batch_records`` at a time (a
    batch ends at a signed head, so a checkpoint larger than that goes whole).

    ``conn_factory`` may return a connection in either autocommit mode; the replicator
    runs its statements in explicit transactions and creates the schema on each new
    connection.
    """

    def __init__(self, ledger_path: Path, conn_factory: Callable[[], psycopg.Connection], *,
                 batch_records: int = BATCH_RECORDS, url: str = "",
                 clock: Callable[[], int] = time.time_ns) -> None:
        if batch_records < 1:
            raise ValueError("batch_records must be at least 1")
        self.ledger_path = ledger_path
        self.batch_records = batch_records
        self._factory = conn_factory
        self._url = url
        self._clock = clock
        self._conn: psycopg.Connection | None = None
        self._where = url
        self._local_size = 0
        self._cursor = 0

    # ------------------------------------------------------------------ public

    def backlog(self) -> int:
        """Records the node signed that the store did not hold at the last step (the local
        size is read at every step, so the backlog grows during an outage)."""
        return max(0, self._local_size - self._cursor)

    def step(self) -> StepResult:
        """Ship one batch in one transaction.

        Raises:
            ReplicationError: the local ledger is missing or damaged; nothing shipped.
            PgError: the store could not be reached or the transaction failed; nothing
                of this step is in the store, and the next step resumes.
        """
        with self._read_local() as db:
            local = self._local(db)
            self._local_size = local.size
            conn = self._connection()
            try:
                try:
                    with conn.transaction():
                        return self._ship(conn, db, local)
                except _Flag as flag:
                    # The batch rolled back; the flag is committed on its own.
                    with conn.transaction():
                        stored = self._lock_node(conn, local)
                        reason = self._flag(conn, local, stored, flag)
                    return self._result(0, 0, stored.records, reason)
            except psycopg.Error as e:
                self._drop_connection()
                raise pg_error(e, self._where, "replication step failed") from e
            except sqlite3.Error as e:
                raise ReplicationError(f"{self.ledger_path}: cannot read the ledger ({e}); "
                                       "nothing shipped") from e

    def run_until_caught_up(self) -> StepResult:
        """Step until the store holds every signed record (or the node is flagged, or a
        step makes no progress); the sums of what the steps did.

        Raises:
            ReplicationError, PgError: as :meth:`step`.
        """
        records = heads = 0
        while True:
            before = self._cursor
            r = self.step()
            records += r.records
            heads += r.heads
            if r.flagged is not None or r.backlog == 0 or (r.cursor == before and
                                                            r.records == 0):
                return replace(r, records=records, heads=heads)

    def close(self) -> None:
        self._drop_connection()

    # ------------------------------------------------------------------ connections

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop_connection()
        try:
            conn = self._factory()
        except psycopg.Error as e:
            raise pg_error(e, self._url or "postgresql://", "cannot connect") from e
        self._where = self._url or _conn_url(conn)
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            ensure_schema(conn)
            with conn.transaction():
                conn.execute(_INCOMING)  # lives as long as the connection
        except psycopg.Error as e:
            conn.close()
            raise pg_error(e, self._where, "cannot prepare the store") from e
        except PgError:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # ------------------------------------------------------------------ local side

    def _read_local(self) -> _Snapshot:
        path = self.ledger_path
        if not path.is_file():
            raise ReplicationError(f"{path}: no ledger file to replicate")
        try:
            db = connect_read_only(path)
        except sqlite3.Error as e:
            raise ReplicationError(f"{path}: cannot open the ledger read-only ({e})") from e
        return _Snapshot(db, path)

    def _local(self, db: sqlite3.Connection) -> _Local:
        path = self.ledger_path
        try:
            meta = dict(db.execute(
                "SELECT key, value FROM meta WHERE key IN ('node', 'origin', 'public_key')"))
            row = db.execute("SELECT MAX(size) FROM tree_heads").fetchone()
        except sqlite3.Error as e:
            raise ReplicationError(f"{path}: not a readable ledger ({e})") from e
        missing = [k for k in ("node", "origin", "public_key") if not meta.get(k)]
        if missing:
            raise ReplicationError(f"{path}: ledger meta lacks {', '.join(missing)}")
        try:
            public_key = bytes.fromhex(str(meta["public_key"]))
            load_public(public_key)
        except ValueError as e:
            raise ReplicationError(f"{path}: ledger meta public_key is not an Ed25519 "
                                   "public key in hex") from e
        size = int(row[0]) if row and row[0] is not None else 0
        return _Local(str(meta["node"]), str(meta["origin"]), public_key,
                      node_key(public_key), size)

    # ------------------------------------------------------------------ the step

    def _lock_node(self, conn: psycopg.Connection, local: _Local) -> _Stored:
        now = self._clock()
        added = conn.execute(
            "INSERT INTO fl_nodes (node_key, node, origin, public_key, first_seen_ns,"
            " last_seen_ns) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (node_key) DO NOTHING RETURNING node_key",
            (local.key, local.node, local.origin, local.public_key, now, now)).fetchone()
        if added is not None:
            self._note_new_key(conn, local, now)
        row = conn.execute(
            "SELECT records, frontier, head_size, head_root, flagged FROM fl_nodes"
            " WHERE node_key = %s FOR UPDATE", (local.key,)).fetchone()
        assert row is not None  # inserted above or already there, and never deleted
        return _Stored(int(row[0]), str(row[1]), int(row[2]),
                       None if row[3] is None else bytes(row[3]), row[4])

    def _note_new_key(self, conn: psycopg.Connection, local: _Local, now: int) -> None:
        others = [fingerprint(bytes(r[0])) for r in conn.execute(
            "SELECT public_key FROM fl_nodes WHERE node = %s AND node_key <> %s"
            " ORDER BY first_seen_ns", (local.node, local.key))]
        if not others:
            return
        known = ", ".join(others)
        detail = (f"node {local.node} now signs with key {fingerprint(local.public_key)}; "
                  f"the store already holds this name under key(s) {known}. A replaced disk "
                  "starts a new key and a new ledger: noted, not a fault")
        conn.execute(
            "INSERT INTO fl_witness_events (node_key, node, at_ns, kind, detail)"
            " VALUES (%s, %s, %s, 'new-key', %s)", (local.key, local.node, now, detail))

    def _flag(self, conn: psycopg.Connection, local: _Local, stored: _Stored,
              flag: _Flag) -> str:
        """Flag the node (if nobody did already) and record the event; the reason."""
        if stored.flagged is not None:
            return stored.flagged
        reason = str(flag)
        now = self._clock()
        conn.execute("UPDATE fl_nodes SET flagged = %s, last_seen_ns = %s WHERE node_key = %s",
                     (reason, now, local.key))
        conn.execute(
            "INSERT INTO fl_witness_events (node_key, node, at_ns, kind, detail)"
            " VALUES (%s, %s, %s, %s, %s)", (local.key, local.node, now, flag.kind, flag.detail))
        return reason

    def _result(self, records: int, heads: int, cursor: int,
                flagged: str | None = None) -> StepResult:
        self._cursor = cursor
        return StepResult(records, heads, self.backlog(), cursor, flagged)

    def _ship(self, conn: psycopg.Connection, db: sqlite3.Connection,
              local: _Local) -> StepResult:
        stored = self._lock_node(conn, local)
        if stored.flagged is not None:
            return self._result(0, 0, stored.records, stored.flagged)
        self._witness(db, local, stored)
        start = stored.records
        end = self._batch_end(db, start)
        now = self._clock()
        if end is None:
            conn.execute("UPDATE fl_nodes SET last_seen_ns = %s WHERE node_key = %s",
                         (now, local.key))
            return self._result(0, 0, start)
        frontier = self._stored_frontier(stored)
        rows, records = self._read_records(db, start, end)
        heads = self._read_heads(db, local, start, end)
        self._check_batch(local, frontier, rows, heads)
        inserted = self._insert_records(conn, local, rows)
        self._add_totals(conn, local, [r for r in records if r.seq in inserted])
        accepted = self._insert_heads(conn, local, heads)
        self._upsert_runs(conn, db, local, records)
        last = heads[-1]
        conn.execute(
            "UPDATE fl_nodes SET records = %s, frontier = %s, head_size = %s, head_root = %s,"
            " head_timestamp_ns = %s, head_signature = %s, last_seen_ns = %s"
            " WHERE node_key = %s",
            (end, json.dumps([(h, x.hex()) for h, x in frontier.to_list()]), last.size,
             last.root, last.timestamp_ns, last.signature, now, local.key))
        return self._result(len(inserted), accepted, end)

    def _witness(self, db: sqlite3.Connection, local: _Local, stored: _Stored) -> None:
        if local.size < stored.head_size:
            raise _Flag("backwards", (
                f"the node's ledger ends at signed head {local.size} but the store holds "
                f"its head {stored.head_size}: the ledger was rolled back or replaced; "
                "nothing more is accepted from this key"))
        if stored.head_size == 0:
            return
        row = db.execute("SELECT root FROM tree_heads WHERE size = ?",
                         (stored.head_size,)).fetchone()
        held = (stored.head_root or b"").hex()
        if row is None:
            raise _Flag("fork", (
                f"the store holds head {stored.head_size} (root {held}) but the node's "
                f"ledger has no head of that size: its ledger forked"))
        if bytes(row[0]) != stored.head_root:
            raise _Flag("fork", (
                f"the store holds head {stored.head_size} with root {held}, the node's "
                f"ledger has root {bytes(row[0]).hex()} at that size: its ledger forked"))

    def _batch_end(self, db: sqlite3.Connection, start: int) -> int | None:
        row = db.execute("SELECT MAX(size) FROM tree_heads WHERE size > ? AND size <= ?",
                         (start, start + self.batch_records)).fetchone()
        if row[0] is None:
            row = db.execute("SELECT MIN(size) FROM tree_heads WHERE size > ?",
                             (start,)).fetchone()
        return None if row[0] is None else int(row[0])

    def _stored_frontier(self, stored: _Stored) -> Frontier:
        try:
            frontier = Frontier.from_list(
                [(int(h), bytes.fromhex(x)) for h, x in json.loads(stored.frontier)])
        except (ValueError, TypeError) as e:
            raise PgError(f"the store's Merkle frontier for {self.ledger_path} is unreadable "
                          f"({e}); nothing shipped") from e
        if frontier.size != stored.records:
            raise PgError(f"the store's Merkle frontier covers {frontier.size} records but "
                          f"it counts {stored.records}; nothing shipped")
        return frontier

    def _damage(self, what: str) -> ReplicationError:
        return ReplicationError(f"{self.ledger_path}: {what}: the local ledger is damaged "
                                "(run `flopledger verify`); nothing shipped")

    def _read_records(self, db: sqlite3.Connection, start: int, end: int
                      ) -> tuple[list[tuple[object, ...]], list[LedgerRecord]]:
        rows: list[tuple[object, ...]] = []
        records: list[LedgerRecord] = []
        expected = start
        for seq, body, stored_hash in db.execute(
                "SELECT seq, body, leaf_hash FROM records WHERE seq >= ? AND seq < ?"
                " ORDER BY seq", (start, end)):
            if seq != expected:
                raise self._damage(f"record {expected} is missing")
            if not isinstance(body, bytes) or not isinstance(stored_hash, bytes):
                raise self._damage(f"record {seq} is not stored as BLOBs")
            h = leaf_hash(body)
            if h != stored_hash:
                raise self._damage(f"record {seq}'s leaf hash does not match its body")
            try:
                r = parse_record(body, canonical=False)
            except BadRowError as e:
                raise self._damage(f"record {seq}: {e}") from e
            if r.seq != seq:
                raise self._damage(f"record {seq} says it is record {r.seq}")
            rows.append((seq, body, h, r.kind, r.run, r.model, r.category, r.gpu_uuid,
                         r.start_ns, r.end_ns, r.flop_low, r.flop_central, r.flop_high,
                         r.energy_mj))
            records.append(r)
            expected += 1
        if expected != end:
            raise self._damage(f"record {expected} is missing")
        return rows, records

    def _read_heads(self, db: sqlite3.Connection, local: _Local, start: int,
                    end: int) -> list[TreeHead]:
        return [TreeHead(local.origin, int(size), bytes(root), int(ts), bytes(sig))
                for size, root, ts, sig in db.execute(
                    "SELECT size, root, timestamp_ns, signature FROM tree_heads"
                    " WHERE size > ? AND size <= ? ORDER BY size", (start, end))]

    def _check_batch(self, local: _Local, frontier: Frontier,
                     rows: Sequence[tuple[object, ...]], heads: Sequence[TreeHead]) -> None:
        """Fold the batch into ``frontier``; every head in it must match and verify."""
        public = load_public(local.public_key)
        by_size = {h.size: h for h in heads}
        for row in rows:
            frontier.append(row[2])  # type: ignore[arg-type]
            head = by_size.get(frontier.size)
            if head is None:
                continue
            if frontier.root() != head.root:
                raise self._damage(f"the root of its first {head.size} records does not "
                                   "match their signed head")
            if not head.verify(public):
                raise self._damage(f"the signature of head {head.size} does not verify "
                                   "with the node's key")

    def _insert_records(self, conn: psycopg.Connection, local: _Local,
                        rows: Sequence[tuple[object, ...]]) -> set[int]:
        with conn.cursor() as cur:
            with cur.copy(f"COPY fl_incoming ({_COLUMNS_SQL}) FROM STDIN"
                          " (FORMAT BINARY)") as copy:
                copy.set_types(list(_RECORD_TYPES))
                for row in rows:
                    copy.write_row(row)
            cur.execute(
                f"INSERT INTO fl_records (node_key, {_COLUMNS_SQL})"
                f" SELECT %s, {_COLUMNS_SQL} FROM fl_incoming"
                " ON CONFLICT (node_key, seq) DO NOTHING RETURNING seq", (local.key,))
            inserted = {int(r[0]) for r in cur.fetchall()}
            if len(inserted) < len(rows):
                clash = cur.execute(
                    "SELECT i.seq FROM fl_incoming i JOIN fl_records r"
                    " ON r.node_key = %s AND r.seq = i.seq WHERE r.leaf_hash <> i.leaf_hash"
                    " ORDER BY i.seq LIMIT 1", (local.key,)).fetchone()
                if clash is not None:
                    raise _Flag("fork", (
                        f"the store holds another record {clash[0]} from this key than the "
                        "node's ledger: its ledger forked"))
        return inserted

    def _add_totals(self, conn: psycopg.Connection, local: _Local,
                    records: Sequence[LedgerRecord]) -> None:
        sums: dict[str, tuple[LedgerRecord, Totals, list[int]]] = {}
        for r in records:
            if not is_compute(r):
                continue
            entry = sums.get(r.run)
            if entry is None:
                entry = sums[r.run] = (r, Totals(), [0])
            entry[1].add(r)
            entry[2][0] += 1
        if not sums:
            return
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO fl_run_totals (run, node_key, model, category, flop_low,"
                " flop_central, flop_high, energy_mj, samples, covered_ns, gap_ns, records,"
                " first_ns, last_ns)"
                " VALUES (%s, %s, %s, %s, %s::numeric, %s::numeric, %s::numeric, %s::numeric,"
                " %s::numeric, %s::numeric, %s::numeric, %s, %s, %s)"
                " ON CONFLICT (run, node_key) DO UPDATE SET"
                " flop_low = fl_run_totals.flop_low + EXCLUDED.flop_low,"
                " flop_central = fl_run_totals.flop_central + EXCLUDED.flop_central,"
                " flop_high = fl_run_totals.flop_high + EXCLUDED.flop_high,"
                " energy_mj = fl_run_totals.energy_mj + EXCLUDED.energy_mj,"
                " samples = fl_run_totals.samples + EXCLUDED.samples,"
                " covered_ns = fl_run_totals.covered_ns + EXCLUDED.covered_ns,"
                " gap_ns = fl_run_totals.gap_ns + EXCLUDED.gap_ns,"
                " records = fl_run_totals.records + EXCLUDED.records,"
                # 0 is "none yet", as in Totals
                " first_ns = CASE WHEN fl_run_totals.first_ns = 0 THEN EXCLUDED.first_ns"
                "   WHEN EXCLUDED.first_ns = 0 THEN fl_run_totals.first_ns"
                "   ELSE LEAST(fl_run_totals.first_ns, EXCLUDED.first_ns) END,"
                " last_ns = GREATEST(fl_run_totals.last_ns, EXCLUDED.last_ns)",
                [(run, local.key, first.model, first.category, t.flop_low, t.flop_central,
                  t.flop_high, t.energy_mj, t.samples, t.covered_ns, t.gap_ns, count[0],
                  t.first_ns, t.last_ns)
                 for run, (first, t, count) in sums.items()])

    def _insert_heads(self, conn: psycopg.Connection, local: _Local,
                      heads: Sequence[TreeHead]) -> int:
        sizes = [h.size for h in heads]
        for size, root in conn.execute(
                "SELECT size, root FROM fl_heads WHERE node_key = %s AND size = ANY(%s)",
                (local.key, sizes)):
            mine = next(h for h in heads if h.size == size)
            if bytes(root) != mine.root:
                raise _Flag("fork", (
                    f"the store holds head {size} with root {bytes(root).hex()}, the node's "
                    f"ledger has root {mine.root.hex()} at that size: its ledger forked"))
        accepted = conn.execute(
            "INSERT INTO fl_heads (node_key, size, root, timestamp_ns, signature)"
            " SELECT %s, * FROM unnest(%s::bigint[], %s::bytea[], %s::bigint[], %s::bytea[])"
            " ON CONFLICT (node_key, size) DO NOTHING RETURNING size",
            (local.key, sizes, [h.root for h in heads], [h.timestamp_ns for h in heads],
             [h.signature for h in heads])).fetchall()
        return len(accepted)

    def _upsert_runs(self, conn: psycopg.Connection, db: sqlite3.Connection, local: _Local,
                     records: Sequence[LedgerRecord]) -> None:
        names = sorted({r.run for r in records if r.run})
        if not names:
            return
        rows: list[tuple[object, ...]] = []
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            rows.extend(db.execute(
                f"SELECT run, model, category, meta FROM runs WHERE run IN "
                f"({', '.join('?' * len(chunk))})", chunk))
        if not rows:
            return
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO fl_runs (node_key, run, model, category, meta)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (node_key, run) DO UPDATE SET"
                " model = EXCLUDED.model, category = EXCLUDED.category, meta = EXCLUDED.meta",
                [(local.key, str(run), str(model), str(category), str(meta))
                 for run, model, category, meta in rows])


class _Snapshot:
    """A read-only connection holding one read transaction: the step sees one state of
    the ledger however the writer appends meanwhile."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db.execute("BEGIN")
        except sqlite3.Error as e:
            self.db.close()
            raise ReplicationError(f"{self.path}: cannot read the ledger ({e})") from e
        return self.db

    def __exit__(self, *exc: object) -> None:
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        finally:
            self.db.close()


def _conn_url(conn: psycopg.Connection) -> str:
    info = conn.info
    return f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
