"""``flopledger verify``: check a ledger file against everything the node signed.

Every check that fails adds a message naming what is wrong (which record, which head);
a clean ledger gives no messages. Checks, in order: the file opens; records are
numbered 0..n-1 with no hole; each body is a canonical record carrying its own
sequence number and matching its stored leaf hash; the Merkle root over the records
matches every signed tree head and every signature verifies; no record lies beyond
the last signed head; the mirrored head file (``<file>.head``) is not ahead of the
file (a roll-back) and matches it; totals equal the sums of their records; and no
two records of one GPU cover overlapping time (double counting).
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from agent.accounting.records import LedgerRecord, Totals
from agent.ledger.merkle import Frontier, leaf_hash
from agent.ledger.signing import TreeHead, fingerprint, load_public
from agent.ledger.store import head_file


@dataclass(slots=True)
class VerifyReport:
    """What ``verify`` found."""

    path: Path
    records: int = 0
    heads: int = 0
    key_fingerprint: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _open_read_only(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.execute("PRAGMA query_only=1")
    return db


def verify_ledger(path: Path, trusted_fingerprint: str | None = None,
                  max_problems: int = 50) -> VerifyReport:
    """Check a ledger file; see the module docstring for what is checked."""
    report = VerifyReport(path)
    problems = report.problems
    if not path.is_file():
        problems.append(f"{path}: no such ledger file")
        return report
    try:
        db = _open_read_only(path)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        rows = db.execute("SELECT seq, body, leaf_hash FROM records ORDER BY rowid").fetchall()
        heads = [TreeHead(str(meta.get("origin", "")), int(s), bytes(r), int(t), bytes(sig))
                 for s, r, t, sig in db.execute(
                     "SELECT size, root, timestamp_ns, signature FROM tree_heads ORDER BY size")]
        totals_rows = db.execute(
            "SELECT scope, key, flop_low, flop_central, flop_high, energy_mj FROM totals"
        ).fetchall()
        db.close()
    except sqlite3.DatabaseError as e:
        problems.append(f"{path}: not a readable ledger ({e}); the file is damaged or truncated")
        return report
    try:
        public = load_public(bytes.fromhex(str(meta["public_key"])))
        report.key_fingerprint = fingerprint(bytes.fromhex(str(meta["public_key"])))
    except (KeyError, ValueError):
        problems.append("meta: the node's public key is missing or malformed")
        return report
    if trusted_fingerprint and trusted_fingerprint != report.key_fingerprint:
        problems.append(f"key: ledger signed by {report.key_fingerprint}, expected "
                        f"{trusted_fingerprint}")
    report.records = len(rows)
    report.heads = len(heads)

    def problem(message: str) -> None:
        problems.append(message)

    # Records: position, sequence number, canonical body, leaf hash.
    leaves: list[bytes] = []
    decoded: list[LedgerRecord | None] = []
    for position, (seq, body, stored_hash) in enumerate(rows):
        if len(problems) >= max_problems:
            break
        body = bytes(body)
        h = leaf_hash(body)
        leaves.append(h)
        if seq != position:
            problem(f"record {position} missing or out of order: found sequence number {seq} "
                    f"at position {position}")
        try:
            record: LedgerRecord | None = LedgerRecord.decode(body)
        except ValueError as e:
            record = None
            problem(f"record {seq}: body is not a valid record ({e}): edited")
        if record is not None and record.seq != seq:
            problem(f"record {seq}: body says it is record {record.seq}: records swapped or "
                    "moved")
        if bytes(stored_hash) != h:
            problem(f"record {seq}: content does not match its leaf hash: edited")
        decoded.append(record)
    if len(problems) >= max_problems:
        return report

    # Tree heads: signature and root over the records at each head's size.
    frontier = Frontier()
    roots_at: dict[int, bytes] = {}
    wanted = {h.size for h in heads}
    if 0 in wanted:
        roots_at[0] = frontier.root()
    for i, h in enumerate(leaves):
        frontier.append(h)
        if i + 1 in wanted:
            roots_at[i + 1] = frontier.root()
    for head in heads:
        if not head.verify(public):
            problem(f"tree head at size {head.size}: signature does not verify")
        root = roots_at.get(head.size)
        if root is None:
            problem(f"tree head at size {head.size}: the ledger has only {len(rows)} records: "
                    "records were removed or the file truncated")
        elif root != head.root:
            problem(f"tree head at size {head.size}: records 0..{head.size - 1} do not match "
                    "the signed root: a record was edited, removed or reordered")
        if len(problems) >= max_problems:
            return report
    last_size = heads[-1].size if heads else 0
    if len(rows) > last_size:
        problem(f"records {last_size}..{len(rows) - 1} are not covered by any signed head")

    # The mirrored head: a ledger rolled back to an older copy is behind it.
    mirror_path = head_file(path)
    if mirror_path.is_file():
        try:
            mirror = TreeHead.from_json(json.loads(mirror_path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            problem(f"{mirror_path}: malformed ({e})")
        else:
            if not mirror.verify(public):
                problem(f"{mirror_path}: signature does not verify")
            elif mirror.size > len(rows):
                problem(f"rolled back: the node signed a head of size {mirror.size} at "
                        f"{mirror.timestamp_ns} ns but the ledger has only {len(rows)} records")
            elif mirror.size in roots_at and roots_at[mirror.size] != mirror.root:
                problem(f"{mirror_path}: the signed head of size {mirror.size} does not match "
                        "the ledger's records")
            elif mirror.size not in roots_at:
                problem(f"{mirror_path}: head of size {mirror.size} is not among the ledger's "
                        "heads: the ledger was replaced")

    records = [r for r in decoded if r is not None]
    _check_totals(records, totals_rows, problem)
    _check_overlaps(records, problem)
    return report


def _check_totals(records: list[LedgerRecord], rows: list[tuple[str, ...]],
                  problem: object) -> None:
    assert callable(problem)
    sums: dict[tuple[str, str], Totals] = defaultdict(Totals)
    for r in records:
        sums[("gpu", r.gpu_uuid)].add(r)
        sums[("run", r.run)].add(r)
    stored = {(row[0], row[1]): tuple(int(x) for x in row[2:6]) for row in rows}
    for key, t in sums.items():
        expected = (*t.flop, t.energy_mj)
        if stored.get(key) != expected:
            problem(f"totals for {key[0]} {key[1]} do not equal the sum of its records")
    for key in stored.keys() - sums.keys():
        problem(f"totals for {key[0]} {key[1]} have no records")


def _check_overlaps(records: list[LedgerRecord], problem: object) -> None:
    assert callable(problem)
    windows: dict[str, dict[tuple[int, int], int]] = defaultdict(dict)
    for r in records:
        # Records of one GPU split among runs share a window; distinct windows must
        # not overlap, or the same GPU time was counted twice.
        windows[r.gpu_uuid].setdefault((r.start_ns, r.end_ns), r.seq)
    for uuid, spans in windows.items():
        ordered = sorted(spans.items())
        for (a, seq_a), (b, seq_b) in pairwise(ordered):
            if b[0] < a[1]:
                problem(f"GPU {uuid}: records {seq_a} and {seq_b} cover overlapping time "
                        f"({a[0]}..{a[1]} and {b[0]}..{b[1]}): counted twice")
