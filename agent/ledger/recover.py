"""``flopledger recover``: set a damaged ledger aside and continue in a new one, saying so.

The agent refuses a ledger that fails its checks (see :mod:`agent.ledger.integrity`);
nothing repairs it behind the operator's back. Recovery is explicit, and loses nothing:

1. it takes the state directory's lock (no agent may be writing);
2. it renames the ledger, its WAL and shared-memory files and its head file to
   ``<name>.damaged-<UTC time><suffix>`` (kept for inspection, never deleted);
3. it starts a new ledger whose first signed records are of kind ``discontinuity``:
   a statement (no run, no GPU, no amounts) of when and why, which file was set aside,
   and what was last known of it (its last signed head: size, root, time), followed by
   one record per (GPU, run) carrying that pair's sums over, so that every total
   resumes where it was and a counter on ``/metrics`` never goes backwards.

What is carried over is, per pair and per sum, the larger of the head file's signed
totals (what ``/metrics`` last showed) and the sums of the old ledger's records if they
still hash to its signed head; both are lower bounds of what was exported. When neither
is usable the counters would restart from zero: that needs ``accept_loss``, and the
statement says so. ``verify`` reports the discontinuity as a problem for good: the
history before it is in the file set aside, not in this one.

Declared statements (declarations, progress, attestations, gate decisions) are no sums
and are not carried: a recovered ledger's statements are in the old ledger, set aside,
and in the bundles exported from it. The ids of the messages they came from are
carried (when the old file can still be read), so a message read again is not recorded
twice.

Completeness (each compute record's ``run_seq``, each ``run-close``) is proven per
ledger: the carried per-(GPU, run) records are the new ledger's first records of their
runs, so each run's numbering starts at 0 again, and a bundle of the new ledger proves
only what it holds since the discontinuity. A recovered node's history before it is in
the file set aside (and in the bundles exported from it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.accounting.records import LedgerRecord
from agent.ledger import lock
from agent.ledger.integrity import LedgerCheck, check_ledger, when
from agent.ledger.mirror import Mirror, head_file
from agent.ledger.schema import connect_read_only
from agent.ledger.signing import fingerprint, public_raw
from agent.ledger.store import Ledger, LedgerError, RunRow
from agent.ledger.sums import Pairs, PairSum, at_least, pairs_of, with_pairs

log = logging.getLogger(__name__)

SUFFIXES = ("", "-wal", "-shm", ".head")


class NothingToRecoverError(LedgerError):
    """The ledger passes its checks (or there is none): recovery would only lose history."""


@dataclass(slots=True)
class Recovery:
    """What ``recover`` did."""

    path: Path
    moved: list[tuple[Path, Path]] = field(default_factory=list)
    statement: LedgerRecord | None = None
    carried: Pairs = field(default_factory=dict)
    carried_from: str = ""
    problems: list[str] = field(default_factory=list)


def damaged_name(path: Path, stamp: str, suffix: str) -> Path:
    """``ledger.sqlite`` -> ``ledger.damaged-<stamp>.sqlite`` (+ ``-wal``, ``.head``...), so
    that the set-aside files still open together."""
    return path.with_name(f"{path.stem}.damaged-{stamp}{path.suffix}{suffix}")


def recover_ledger(path: Path, key: Ed25519PrivateKey, node: str, *, reason: str = "",
                   now_ns: int | None = None, accept_loss: bool = False) -> Recovery:
    """Set the ledger at ``path`` aside and start a new one (see the module docstring).

    Args:
        key: the node's key (the one the ledger and its head file were signed with).
        node: the node's name, used if neither the ledger nor its head file names it.

    Raises:
        lock.StateLockedError: if an agent holds the state directory.
        NothingToRecoverError: if the ledger passes its checks, or there is none.
        LedgerError: if ``key`` is not the ledger's, or nothing can be carried over
            and ``accept_loss`` is not set.
        OSError: if the files cannot be moved (then none is).
    """
    now_ns = now_ns if now_ns is not None else time.time_ns()
    if not path.parent.is_dir():
        raise NothingToRecoverError(f"no ledger at {path}: nothing to recover")
    held = lock.acquire(path.parent)
    try:
        return _recover(path, key, node, reason, now_ns, accept_loss)
    finally:
        # The lock file goes if recovery made it: a refusal leaves nothing behind.
        held.release(undo=True)


def _recover(path: Path, key: Ed25519PrivateKey, node: str, reason: str, now_ns: int,
             accept_loss: bool) -> Recovery:
    check = check_ledger(path)
    if check.ok and not check.exists:
        raise NothingToRecoverError(f"no ledger at {path}: nothing to recover")
    if check.ok:
        raise NothingToRecoverError(
            f"{path} passes its consistency checks: nothing to recover (recovering would "
            "only break its history; `flopledger verify` checks it in full)")
    public = public_raw(key.public_key())
    node = _node_of(check, public, node)
    recovery = Recovery(path, problems=list(check.problems))
    recovery.carried, recovery.carried_from = _carried(check, key, accept_loss)
    stamp = dt.datetime.fromtimestamp(now_ns / 1e9, tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    runs = _old_runs(path)
    consumed = _old_consumed(path)
    recovery.moved = _move_aside(path, stamp)
    statement = _statement(check, node, reason, now_ns, recovery)
    carried = [_carry(p, node) for _key, p in sorted(recovery.carried.items())]
    meta = {p.run: runs.get(p.run, RunRow(p.run, p.model, p.category, {}))
            for p in recovery.carried.values()}
    try:
        ledger = Ledger(path, node, key)
        try:
            ledger.append([statement, *carried], now_ns, meta, still_open=[],
                          consumed_ids=consumed)
        finally:
            ledger.close()
    except (OSError, sqlite3.Error, LedgerError):
        # No new ledger: put the old files back rather than leave an empty state
        # directory an agent would start from zero in.
        _undo(path, recovery.moved)
        raise
    recovery.statement = statement
    return recovery


def _node_of(check: LedgerCheck, public: bytes, node: str) -> str:
    """The node the ledger belongs to; refuses a key that is not the ledger's."""
    mine = fingerprint(public)
    if check.public_key_raw and check.public_key_raw != public:
        raise LedgerError(f"{check.path} is signed by key {check.key_fingerprint}, not by "
                          f"this node's key {mine}: recover it with its own node.key")
    mirror = check.mirror
    if mirror is not None:
        name, _, fp = mirror.head.origin.rpartition("/")
        if fp and fp != mine:
            raise LedgerError(f"{mirror.path} was signed by key {fp}, not by this node's key "
                              f"{mine}: recover it with its own node.key")
        return check.node or name or node
    return check.node or node


def _carried(check: LedgerCheck, key: Ed25519PrivateKey,
             accept_loss: bool) -> tuple[Pairs, str]:
    mirror = check.mirror
    usable: Mirror | None = None
    said = []
    if mirror is not None:
        wrong = mirror.problem(key.public_key())
        if wrong is not None:
            said.append(f"head file unusable ({wrong})")
        elif not mirror.has_state:
            said.append("head file without totals (written by an older version)")
        else:
            usable = mirror
    pairs: Pairs = {}
    sources = []
    if usable is not None:
        pairs = usable.combined()
        sources.append(f"the signed totals of {usable.path.name} written at "
                       f"{when(usable.written_ns or 0)}")
    if check.authentic:
        ledger_sums = with_pairs(check.sealed, pairs_of(check.open_records))
        pairs = at_least(pairs, ledger_sums)
        sources.append(f"the {check.records} records that hash to its signed head")
    if not sources:
        what = "; ".join(said) or "no head file"
        if not accept_loss:
            raise LedgerError(
                f"nothing trustworthy to carry over from {check.path} ({what}, and its records "
                "do not hash to a signed head): a new ledger would restart every counter from "
                "zero; rerun with --accept-loss to do that anyway")
        return {}, f"NOTHING: {what}; every total restarts from zero"
    return pairs, " and ".join(sources) + (f" ({'; '.join(said)})" if said else "")


def _old_runs(path: Path) -> dict[str, RunRow]:
    """The runs' declared metadata, from the old file if it can still be read."""
    out: dict[str, RunRow] = {}
    try:
        db = connect_read_only(path)
        try:
            rows = db.execute("SELECT run, model, category, meta FROM runs").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return out
    for run, model, category, meta in rows:
        try:
            doc = json.loads(meta)
        except (TypeError, ValueError, RecursionError):
            continue
        if all(isinstance(x, str) for x in (run, model, category)) and isinstance(doc, dict):
            out[run] = RunRow(run, model, category, doc)
    return out


def _old_consumed(path: Path) -> list[str]:
    """The ids of the messages whose statements the old file holds, if it can be read."""
    try:
        db = connect_read_only(path)
        try:
            rows = db.execute("SELECT id FROM spool_consumed").fetchall()
        finally:
            db.close()
    except sqlite3.Error:  # unreadable, or written before ids were recorded
        return []
    return list(dict.fromkeys(key for (key,) in rows if isinstance(key, str)))


def _move_aside(path: Path, stamp: str) -> list[tuple[Path, Path]]:
    """Rename the ledger's files, all or none."""
    n = 0
    while any(damaged_name(path, stamp + (f"-{n}" if n else ""), s).exists() for s in SUFFIXES):
        n += 1
    stamp += f"-{n}" if n else ""
    moved: list[tuple[Path, Path]] = []
    try:
        for suffix in SUFFIXES:
            src = path.with_name(path.name + suffix)
            if src.exists():
                dst = damaged_name(path, stamp, suffix)
                os.rename(src, dst)
                moved.append((src, dst))
    except OSError:
        for src, dst in reversed(moved):
            os.rename(dst, src)
        raise
    return moved


def _undo(path: Path, moved: list[tuple[Path, Path]]) -> None:
    # Only files of the failed new ledger are at these names now: the old ones moved.
    for suffix in SUFFIXES:
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    for src, dst in reversed(moved):
        os.rename(dst, src)


def _statement(check: LedgerCheck, node: str, reason: str, now_ns: int,
               recovery: Recovery) -> LedgerRecord:
    mirror, head = check.mirror, check.latest_head
    last = mirror.head if mirror is not None and (
        head is None or mirror.head.size >= head.size) else head
    previous: dict[str, object] = {"records_read": check.records}
    if last is not None:
        previous.update(size=last.size, root=last.root.hex(), timestamp_ns=last.timestamp_ns,
                        origin=last.origin)
    moved_to = next((dst.name for src, dst in recovery.moved if src == check.path), "")
    return LedgerRecord(
        seq=-1, kind="discontinuity", node=node, run="", model="", category="", gpu_uuid="",
        gpu_index=-1, start_ns=0, end_ns=0, flop_low=0, flop_central=0, flop_high=0,
        energy_mj=0, samples=0, covered_ns=0, gap_ns=0, estimator="recover",
        assumptions={
            "reason": reason or (check.problems[0] if check.problems else "recovered"),
            "problems": check.problems[:5], "recovered_ns": now_ns, "moved_to": moved_to,
            "head_file_moved_to": next((dst.name for src, dst in recovery.moved
                                        if src == head_file(check.path)), ""),
            "previous": previous, "carried_from": recovery.carried_from,
            "carried_pairs": len(recovery.carried),
        },
    )


def _carry(p: PairSum, node: str) -> LedgerRecord:
    t = p.totals
    return LedgerRecord(
        seq=-1, kind="discontinuity", node=p.node or node, run=p.run, model=p.model,
        category=p.category, gpu_uuid=p.gpu_uuid, gpu_index=p.gpu_index,
        start_ns=t.first_ns, end_ns=max(t.last_ns, t.first_ns), flop_low=t.flop.low,
        flop_central=t.flop.central, flop_high=t.flop.high, energy_mj=t.energy_mj,
        samples=t.samples, covered_ns=t.covered_ns, gap_ns=t.gap_ns, estimator="carried",
        assumptions={"carried_over": "sums of the previous ledger up to the discontinuity "
                                     "(record 0)",
                     **({"spec": p.spec} if p.spec else {}),
                     **({"precision": p.precision} if p.precision else {})},
    )
