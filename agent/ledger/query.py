"""Read-only views of a ledger for the CLI and reports (safe while the agent writes)."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.accounting.band import Band
from agent.accounting.records import NO_FLOP, LedgerRecord
from agent.ledger.signing import TreeHead


class LedgerNotFoundError(FileNotFoundError):
    """No ledger file where one was expected."""


@dataclass(slots=True)
class RunSummary:
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

    # The ledger's column names, for readers that take the bounds one at a time.
    @property
    def flop_low(self) -> int:
        return self.flop.low

    @property
    def flop_central(self) -> int:
        return self.flop.central

    @property
    def flop_high(self) -> int:
        return self.flop.high


def connect(path: Path) -> sqlite3.Connection:
    """Raises: LedgerNotFoundError if there is no file at ``path``."""
    if not path.is_file():
        raise LedgerNotFoundError(f"no ledger at {path} (has the agent run with this state_dir?)")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def iter_records(path: Path, *, run: str | None = None,
                 model: str | None = None) -> Iterator[LedgerRecord]:
    db = connect(path)
    try:
        query, args = "SELECT body FROM records", ()
        if run is not None:
            query, args = query + " WHERE run = ?", (run,)  # type: ignore[assignment]
        elif model is not None:
            query, args = query + " WHERE model = ?", (model,)  # type: ignore[assignment]
        for (body,) in db.execute(query + " ORDER BY seq", args):
            yield LedgerRecord.decode(bytes(body))
    finally:
        db.close()


def open_records(path: Path) -> list[LedgerRecord]:
    """The durable, not yet sealed records of the current windows (the last ~minute)."""
    db = connect(path)
    try:
        return [LedgerRecord.decode(bytes(body)) for (body,) in db.execute(
            "SELECT body FROM open_records ORDER BY position")]
    except sqlite3.OperationalError:  # a ledger written before open records existed
        return []
    finally:
        db.close()


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
    db = connect(path)
    try:
        for name, meta in db.execute("SELECT run, meta FROM runs"):
            if name in out:
                out[name].meta = json.loads(meta)
    finally:
        db.close()
    return out


def gpu_breakdown(path: Path, run: str) -> dict[str, RunSummary]:
    """One run's sums per GPU."""
    out: dict[str, RunSummary] = defaultdict(lambda: RunSummary(run))
    for r in iter_records(path, run=run):
        out[r.gpu_uuid].add(r)
    return dict(out)


def latest_head(path: Path) -> tuple[TreeHead | None, str]:
    """The last signed tree head and the key fingerprint."""
    db = connect(path)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        row = db.execute("SELECT size, root, timestamp_ns, signature FROM tree_heads"
                         " ORDER BY size DESC LIMIT 1").fetchone()
    finally:
        db.close()
    head = None
    if row is not None:
        head = TreeHead(str(meta.get("origin", "")), int(row[0]), bytes(row[1]), int(row[2]),
                        bytes(row[3]))
    return head, str(meta.get("key_fingerprint", ""))
