"""Where a replay from a server stopped: per source, the last time it accounted in full.

A replay that reads a Prometheus-compatible server (``flopledger replay --prometheus``)
appends its records slice by slice of time; with each slice's records it records, in
the same transaction (:meth:`agent.ledger.store.Ledger.append`, ``replay_checkpoint``),
the slice's last time under its source: the server's URL without credentials, the
selector and the step. A replay of the same source that was stopped (killed, a lost
connection) continues after it; one whose records were never committed finds no
checkpoint, or the previous one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.ledger.schema import connect_read_only


def read_checkpoint(path: Path, source: str) -> int | None:
    """The last time (ns since the epoch) ``source`` was accounted up to in the ledger
    at ``path``; None if the ledger, its table or the source's row does not exist.

    Raises:
        sqlite3.Error: if the ledger cannot be read.
    """
    if not path.exists():
        return None
    db = connect_read_only(path)
    try:
        row = db.execute("SELECT last_ns FROM replay_checkpoints WHERE source = ?",
                         (source,)).fetchone()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):  # a ledger written before checkpoints existed
            return None
        raise
    finally:
        db.close()
    return None if row is None or type(row[0]) is not int else int(row[0])
