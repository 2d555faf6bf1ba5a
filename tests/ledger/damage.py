"""Damaged ledgers, one per fault, for the ledger tests, the e2e fault matrix and the
hostile CLI cases. Each ``damage_*`` takes a state directory holding a sound ledger
(see :func:`sound_state`) and breaks it the way the fault would.
"""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

from agent.accounting.records import LedgerRecord
from agent.ledger.merkle import leaf_hash
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from tests.ledger_helpers import SECOND, T0, record

LEDGER = "ledger.sqlite"
NODE = "node-1"


def sound_state(state: Path, checkpoints: int = 6, gpus: int = 2) -> Path:
    """A closed ledger of ``checkpoints`` x ``gpus`` records (runs ``a`` and ``b``), its
    head file and node key in ``state``; returns the ledger's path."""
    state.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(state / LEDGER, NODE, load_or_create_key(state / "node.key"))
    append(ledger, 0, checkpoints, gpus)
    ledger.close()
    return state / LEDGER


def append(ledger: Ledger, first: int, checkpoints: int, gpus: int = 2) -> None:
    """``checkpoints`` more checkpoints of 5 s each, from checkpoint ``first``, with one
    open record per GPU after each."""
    for c in range(first, first + checkpoints):
        t = 5.0 * c
        runs = ("a", "b")
        drafts = [record(g, t, t + 5, run=runs[(g + c) % 2], model=f"m-{runs[(g + c) % 2]}")
                  for g in range(gpus)]
        still_open = [record(g, t + 5, t + 7, run="a", model="m-a", central=10**14)
                      for g in range(gpus)]
        meta = {r: RunRow(r, f"m-{r}", "pre-training", {"via": "test"}) for r in runs}
        ledger.append(drafts, T0 + round((t + 7) * SECOND), meta, still_open=still_open)


def sql(path: Path, statement: str, *args: object) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(statement, args)
        db.commit()
    finally:
        db.close()


def body(path: Path, seq: int) -> bytes:
    db = sqlite3.connect(path)
    try:
        (b,) = db.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
    finally:
        db.close()
    return bytes(b)


def damage_rolled_back(state: Path) -> None:
    """An older copy of the database put back after the agent wrote more."""
    path = state / LEDGER
    backup = state.parent / f"{state.name}-backup.sqlite"
    shutil.copy(path, backup)
    ledger = Ledger(path, NODE, load_or_create_key(state / "node.key"))
    append(ledger, 100, 3)
    ledger.close()
    shutil.copy(backup, path)
    backup.unlink()


def damage_wal_deleted(state: Path) -> None:
    """What deleting ``-wal`` and ``-shm`` after a kill -9 leaves: the main file as of
    its last WAL checkpoint, behind the head file."""
    path = state / LEDGER
    ledger = Ledger(path, NODE, load_or_create_key(state / "node.key"))
    append(ledger, 100, 3)
    # The agent never closed: the last commits are only in the WAL. Copy what a crash
    # leaves on disk without them, then drop the live connection's files.
    copy = state.parent / f"{state.name}-main-only.sqlite"
    shutil.copy(path, copy)
    head = (state / (LEDGER + ".head")).read_bytes()
    ledger.close()
    shutil.copy(copy, path)
    copy.unlink()
    for suffix in ("-wal", "-shm"):
        (state / (LEDGER + suffix)).unlink(missing_ok=True)
    (state / (LEDGER + ".head")).write_bytes(head)


def damage_open_records_lost(state: Path) -> None:
    """Same size and root as the head file, but the open records went back in time (a
    WAL lost between two windows): what /metrics showed is no longer there."""
    sql(state / LEDGER, "DELETE FROM open_records")


def damage_totals_edited(state: Path) -> None:
    sql(state / LEDGER, "UPDATE totals SET flop_central = '1' WHERE scope = 'gpu'"
                        " AND key = 'GPU-00000000'")


def damage_totals_real(state: Path) -> None:
    sql(state / LEDGER, "UPDATE totals SET flop_central = 1.5 WHERE scope = 'run'")


def damage_record_edited(state: Path) -> None:
    b = bytearray(body(state / LEDGER, 5))
    i = b.index(b'"flop_central":') + len(b'"flop_central":')
    b[i] = ord("9") if b[i] != ord("9") else ord("8")
    sql(state / LEDGER, "UPDATE records SET body = ? WHERE seq = 5", bytes(b))


def damage_record_forged(state: Path) -> None:
    """An edit with its leaf hash recomputed: only the signed root catches it."""
    r = LedgerRecord.decode(body(state / LEDGER, 3))
    forged = dataclasses.replace(r, flop_central=r.flop_central // 2).encode()
    sql(state / LEDGER, "UPDATE records SET body = ?, leaf_hash = ? WHERE seq = 3", forged,
        leaf_hash(forged))


def damage_body_text(state: Path) -> None:
    sql(state / LEDGER, "UPDATE records SET body = CAST(body AS TEXT) WHERE seq = 2")


def damage_body_garbage(state: Path) -> None:
    sql(state / LEDGER, "UPDATE records SET body = x'7b226e6f7427' WHERE seq = 4")


def damage_body_wrong_types(state: Path) -> None:
    """Canonical JSON, hash recomputed, but a number stored as a string."""
    text = body(state / LEDGER, 1).decode()
    start = text.index('"flop_central":') + len('"flop_central":')
    end = text.index(",", start)
    edited = (text[:start] + f'"{text[start:end]}"' + text[end:]).encode()
    sql(state / LEDGER, "UPDATE records SET body = ?, leaf_hash = ? WHERE seq = 1", edited,
        leaf_hash(edited))


def damage_open_text(state: Path) -> None:
    sql(state / LEDGER, "UPDATE open_records SET body = CAST(body AS TEXT)")


def damage_runs_meta(state: Path) -> None:
    sql(state / LEDGER, "UPDATE runs SET meta = '{not json'")


def damage_table_dropped(state: Path) -> None:
    sql(state / LEDGER, "DROP TABLE totals")


def damage_truncated(state: Path) -> None:
    path = state / LEDGER
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damage_not_a_database(state: Path) -> None:
    (state / LEDGER).write_bytes(b"this is not a database\n" * 100)


def damage_deleted(state: Path) -> None:
    """The database gone, its head file left."""
    (state / LEDGER).unlink()


def damage_head_forged(state: Path) -> None:
    """A head file edited to claim fewer records (to hide a roll-back)."""
    head = state / (LEDGER + ".head")
    head.write_text(head.read_text().replace('"size":', '"size": 1, "x":', 1))


# name -> (damage, a fragment of the first problem the check names)
FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "rolled-back": (damage_rolled_back, "rolled back"),
    "wal-deleted": (damage_wal_deleted, "rolled back"),
    "open-records-lost": (damage_open_records_lost, "committed records lost"),
    "totals-edited": (damage_totals_edited, "totals for gpu GPU-00000000"),
    "totals-real": (damage_totals_real, "totals for run"),
    "record-edited": (damage_record_edited, "record 5"),
    "record-forged": (damage_record_forged, "do not match the signed root"),
    "body-text": (damage_body_text, "record 2: body stored as TEXT"),
    "body-garbage": (damage_body_garbage, "record 4"),
    "body-wrong-types": (damage_body_wrong_types, "flop_central"),
    "open-text": (damage_open_text, "open record 0: body stored as TEXT"),
    "runs-meta": (damage_runs_meta, "metadata of run"),
    "table-dropped": (damage_table_dropped, "table totals: missing"),
    "truncated": (damage_truncated, "damaged or truncated"),
    "not-a-database": (damage_not_a_database, "damaged or truncated"),
    "deleted": (damage_deleted, "missing, but"),
    "head-forged": (damage_head_forged, "signature does not verify"),
}
