"""The ledger's tables, and the column types a sound ledger holds in them.

SQLite stores any value in any column, so a declared ``BLOB`` can hold TEXT after a
careless edit; :data:`COLUMNS` is what the integrity check holds each row to.
``spool_consumed`` holds the ids of the messages whose statements were appended (in the
same transaction), so that a message read twice is recorded once. ``replay_checkpoints``
holds, per source a replay reads from a server, the last time it accounted in full
(written in the transaction of the records it covers; see :mod:`agent.ledger.checkpoints`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    body BLOB NOT NULL,
    leaf_hash BLOB NOT NULL,
    run TEXT NOT NULL,
    model TEXT NOT NULL,
    gpu_uuid TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_run ON records (run);
CREATE INDEX IF NOT EXISTS records_model ON records (model);
CREATE TABLE IF NOT EXISTS tree_heads (
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    timestamp_ns INTEGER NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    flop_low TEXT NOT NULL,
    flop_central TEXT NOT NULL,
    flop_high TEXT NOT NULL,
    energy_mj TEXT NOT NULL,
    samples TEXT NOT NULL,
    covered_ns TEXT NOT NULL,
    gap_ns TEXT NOT NULL,
    first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    category TEXT NOT NULL,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS open_records (
    position INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS gpu_state (
    gpu_uuid TEXT PRIMARY KEY,
    gpu_index INTEGER NOT NULL,
    last_end_ns INTEGER NOT NULL,
    last_runs TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS spool_consumed (
    id TEXT PRIMARY KEY,
    time_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS replay_checkpoints (
    source TEXT PRIMARY KEY,
    last_ns INTEGER NOT NULL,
    time_ns INTEGER NOT NULL
);
"""

# table -> column -> the SQLite storage class (``typeof``) every row must have.
COLUMNS: dict[str, dict[str, str]] = {
    "meta": {"key": "text", "value": "text"},
    "records": {"seq": "integer", "body": "blob", "leaf_hash": "blob", "run": "text",
                "model": "text", "gpu_uuid": "text", "start_ns": "integer",
                "end_ns": "integer"},
    "tree_heads": {"size": "integer", "root": "blob", "timestamp_ns": "integer",
                   "signature": "blob"},
    "totals": {"scope": "text", "key": "text", "flop_low": "text", "flop_central": "text",
               "flop_high": "text", "energy_mj": "text", "samples": "text",
               "covered_ns": "text", "gap_ns": "text", "first_ns": "integer",
               "last_ns": "integer"},
    "runs": {"run": "text", "model": "text", "category": "text", "meta": "text"},
    "open_records": {"position": "integer", "body": "blob"},
    "gpu_state": {"gpu_uuid": "text", "gpu_index": "integer", "last_end_ns": "integer",
                  "last_runs": "text"},
    "spool_consumed": {"id": "text", "time_ns": "integer"},
    "replay_checkpoints": {"source": "text", "last_ns": "integer", "time_ns": "integer"},
}

# Tables a ledger written by an older version lacks (the writer creates them on open);
# their absence is no fault.
OPTIONAL_TABLES = frozenset({"spool_consumed", "replay_checkpoints"})

META_KEYS = ("format", "node", "key_fingerprint", "public_key", "origin", "frontier")
LEDGER_FORMAT = "flopledger-ledger-1"

# The decimal-text columns of ``totals``, in the order of :data:`sums.FIELDS`' sums.
TOTALS_TEXT = ("flop_low", "flop_central", "flop_high", "energy_mj", "samples",
               "covered_ns", "gap_ns")


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection that creates nothing beside a closed ledger.

    With a WAL beside the file (a writer is running, or crashed) SQLite must read it
    through its shared-memory index, which it may create; without one, ``immutable``
    keeps it from creating ``-wal`` and ``-shm`` files in a directory it only reads.

    Raises:
        sqlite3.Error: if the file cannot be opened.
    """
    wal = path.with_name(path.name + "-wal")
    mode = "?mode=ro" if wal.exists() else "?mode=ro&immutable=1"
    return sqlite3.connect(path.resolve().as_uri() + mode, uri=True, isolation_level=None)
