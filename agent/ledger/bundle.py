"""Audit bundles: a run's or a model's records with everything needed to check them.

A bundle is one JSON file: the node's public key, a chain of signed tree heads with
consistency proofs between consecutive ones (the ledger only grew), and each selected
record with an inclusion proof into the latest head (it is in the ledger the node
signed, at that position). ``verify_bundle`` needs nothing but the file: it runs on a
machine with no access to the node.

:func:`build_bundle` makes one from a :class:`NodeSource`, whatever holds the node's
ledger: its SQLite file (:func:`export_bundle`) or the cluster store's copy of it
(:mod:`agent.ledger.cluster_bundle`); either gives the same file for the same records and
heads.

The selection's statements (declarations, progress, attestations, gate decisions naming
the run, or the model) travel in ``statements``, each with its inclusion proof like a
record; they add nothing to the bundle's totals. A bundle written before statements
existed has no such list and verifies as before.

Completeness: each compute record carries ``run_seq``, its number within its run on the
node's ledger, and the node's ``run-close`` statements (among the selection's statements)
say how many there are. ``verify_bundle`` checks, per run of the selection, that the
bundle holds exactly run_seq ``first_run_seq``..n-1 of the latest close (and as many
records written before records were numbered as it says precede them), the last at the
record it names, all under the same signed head: then no record of the run on this node
was left out (:attr:`BundleReport.complete`). A run with records after its latest close
is open (more may come; not a failure); records without ``run_seq`` that no close
counts (an older ledger) cannot be proven complete.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from agent.accounting.records import (
    RUN_CLOSE,
    STATEMENT_KINDS,
    LedgerRecord,
    RunClose,
    Totals,
    is_compute,
    run_seq_of,
)
from agent.ledger.integrity import check_ledger
from agent.ledger.merkle import Tree, leaf_hash, verify_consistency, verify_inclusion
from agent.ledger.query import Unsealed, is_declared
from agent.ledger.rows import field_problem, parse_record
from agent.ledger.schema import connect_read_only
from agent.ledger.signing import TreeHead, fingerprint, load_public
from agent.ledger.store import LedgerDamagedError

BUNDLE_FORMAT = "flopledger-audit-bundle-1"
MAX_HEADS = 64


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object) -> bytes:
    return base64.b64decode(str(text), validate=True)


def _totals(records: Sequence[LedgerRecord]) -> dict[str, int]:
    t = Totals()
    for r in records:
        t.add(r)
    low, central, high = t.flop
    return {"flop_low": low, "flop_central": central, "flop_high": high,
            "energy_mj": t.energy_mj, "gap_ns": t.gap_ns, "records": len(records)}


@dataclass(frozen=True, slots=True)
class NodeSource:
    """One node's ledger as a bundle is made of it, wherever it is held (the node's
    SQLite file, or the cluster store's copy), read at one moment.

    Attributes:
        heads: every signed tree head, by size; the last is the one the bundle proves
            its entries into.
        leaves: the leaf hashes of records 0..n-1 (n at least the latest head's size):
            the Merkle tree every proof is drawn from (32 bytes a record).
        entries: ``(seq, body)`` of the selection's records and statements under the
            latest head, by seq (the only bodies read).
    """

    node: str | None
    origin: str
    public_key: bytes
    key_fingerprint: str | None
    heads: Sequence[TreeHead]
    leaves: Sequence[bytes]
    entries: Sequence[tuple[int, bytes]]


def build_bundle(source: NodeSource, *, run: str | None = None, model: str | None = None,
                 where: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundle document of one run or one model of ``source`` (as
    :func:`export_bundle` writes it), and its summary: the selection and totals the
    bundle states, how many statements it carries (``statements``) and the head it
    proves them into (``head``, as JSON). ``where`` names the ledger in messages.

    Raises:
        ValueError: if neither or both of ``run`` and ``model`` are given, nothing is
            selected, or the source disagrees with itself (a body that is no record, or
            not of the selection, or beyond the latest head, or whose leaf hash is not
            the tree's; leaves that do not make the heads' roots).
    """
    if (run is None) == (model is None):
        raise ValueError("give exactly one of run or model")
    what = f"run {run}" if run is not None else f"model {model}"
    if not source.heads:
        raise ValueError(f"{where}: no signed tree head yet")
    heads = list(source.heads)
    latest = heads[-1]
    selected: list[tuple[int, bytes, LedgerRecord]] = []
    declared: list[tuple[int, bytes, LedgerRecord]] = []
    for seq, body in source.entries:
        # Not re-encoded to compare bytes: each body's leaf hash is checked below against
        # the tree whose roots the node signed, and the node wrote them canonical.
        try:
            record = parse_record(body, canonical=False)
        except ValueError as e:
            raise ValueError(f"{where}: record {seq}: {e}") from e
        if not ((run is not None and record.run == run)
                or (model is not None and record.model == model)):
            raise ValueError(f"{where}: record {seq} is of run {record.run!r}, model "
                             f"{record.model!r}, not of {what}: its stored columns disagree "
                             "with its body")
        if record.seq != seq or seq >= latest.size:
            raise ValueError(f"{where}: record {seq} (its body says {record.seq}) is not "
                             f"under the latest signed head of {latest.size} records")
        (declared if is_declared(record) else selected).append((seq, body, record))
    if not selected and not declared:
        raise ValueError(f"{where}: no record for {what}")
    if len(source.leaves) < latest.size:
        raise ValueError(f"{where}: {len(source.leaves)} leaf hashes, the latest signed head "
                         f"covers {latest.size} records")
    tree = Tree(source.leaves)
    # A chain of heads from the first that includes the selection to the latest, thinned
    # to MAX_HEADS, each proven consistent with the one before.
    first_seq = min(seq for seq, _b, _r in (*selected[:1], *declared[:1]))
    chain = [h for h in heads if h.size > first_seq]
    if len(chain) > MAX_HEADS:
        step = len(chain) / (MAX_HEADS - 1)
        chain = [chain[round(i * step)] for i in range(MAX_HEADS - 1)] + [latest]
    chain = sorted({h.size: h for h in chain}.values(), key=lambda h: h.size)
    for h in chain:
        if tree.root(h.size) != h.root:
            raise ValueError(f"{where}: the signed head of {h.size} records does not match "
                             "the records' leaf hashes")
    for seq, body, _record in (*selected, *declared):
        if tree.leaf(seq) != leaf_hash(body):
            raise ValueError(f"{where}: record {seq}: its leaf hash does not match its body")
    consistency = [
        {"old_size": a.size, "new_size": b.size,
         "proof": [_b64(p) for p in tree.consistency_proof(a.size, b.size)]}
        for a, b in pairwise(chain)
    ]
    records, statements = (
        [{"seq": seq, "body": body.decode(),
          "inclusion_proof": [_b64(p) for p in tree.inclusion_proof(seq, latest.size)]}
         for seq, body, _record in entries]
        for entries in (selected, declared))
    summary: dict[str, Any] = {
        "selection": {"run": run} if run is not None else {"model": model},
        "totals": _totals([r for _s, _b, r in selected])}
    doc = {
        "format": BUNDLE_FORMAT,
        "node": source.node,
        "origin": source.origin,
        "public_key": _b64(source.public_key),
        "key_fingerprint": source.key_fingerprint,
        **summary,
        "tree_heads": [h.to_json() for h in chain],
        "consistency_proofs": consistency,
        "records": records,
        "statements": statements,
    }
    return doc, {**summary, "statements": len(declared), "head": latest.to_json()}


def export_bundle(ledger_path: Path, out: Path, *, run: str | None = None,
                  model: str | None = None) -> dict[str, Any]:
    """Write the bundle for one run or one model, of the records and statements the
    latest signed head covers; returns its summary: the selection and totals the bundle
    states, how many statements it carries (``statements``), that head (``head``, as
    JSON) and the selection's records it does not cover yet (``left_out``, an
    :class:`Unsealed`: in the bundle of a later export, not this one).

    Raises:
        ValueError: if neither or both of ``run`` and ``model`` are given, or nothing
            in the ledger matches (no record and no statement), or the ledger has no
            signed head yet.
        LedgerDamagedError: if the ledger fails its consistency checks.
        sqlite3.Error: if the ledger cannot be read.
    """
    if (run is None) == (model is None):
        raise ValueError("give exactly one of run or model")
    if not ledger_path.is_file():
        raise ValueError(f"no ledger at {ledger_path}")
    # A bundle vouches for what it carries: never build one from a ledger that fails
    # its own checks (they include every leaf hash and index column against its body).
    check = check_ledger(ledger_path)
    if not check.ok:
        raise LedgerDamagedError(check)
    column, name = ("run", run) if run is not None else ("model", model)
    db = connect_read_only(ledger_path)
    try:
        # One read transaction: the heads, the records under the latest and those it
        # leaves out are of one moment, whatever the agent commits meanwhile.
        db.execute("BEGIN")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        head_rows = db.execute(
            "SELECT size, root, timestamp_ns, signature FROM tree_heads ORDER BY size"
        ).fetchall()
        if not head_rows:
            raise ValueError(f"{ledger_path}: no signed tree head yet")
        latest_size = int(head_rows[-1][0])
        leaves = [bytes(h) for (h,) in db.execute(
            "SELECT leaf_hash FROM records WHERE seq < ? ORDER BY seq", (latest_size,))]
        entries = [(int(seq), bytes(body)) for seq, body in db.execute(
            f"SELECT seq, body FROM records WHERE seq < ? AND {column} = ? ORDER BY seq",
            (latest_size, name))]
        # Newer than the head: appended after it, or still open in the current windows.
        newer = [bytes(body) for (body,) in db.execute(
            f"SELECT body FROM records WHERE seq >= ? AND {column} = ? ORDER BY seq",
            (latest_size, name))]
        with contextlib.suppress(sqlite3.OperationalError):  # older ledgers lack it
            newer += [bytes(body) for (body,) in db.execute(
                "SELECT body FROM open_records ORDER BY position")]
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()
    origin = str(meta["origin"])
    heads = [TreeHead(origin, int(s), bytes(r), int(t), bytes(sig)) for s, r, t, sig in head_rows]
    left_out = Unsealed.of(r for r in map(LedgerRecord.decode, newer)
                           if not is_declared(r) and (
                               (run is not None and r.run == run)
                               or (model is not None and r.model == model)))
    if not entries:
        what = f"run {run}" if run is not None else f"model {model}"
        if left_out.records:
            raise ValueError(f"{ledger_path}: no record of {what} is under the signed head "
                             f"yet ({left_out.text()} not yet sealed); export again once "
                             "their recording window has closed")
        raise ValueError(f"{ledger_path}: no record for {what}")
    source = NodeSource(meta.get("node"), origin, bytes.fromhex(str(meta["public_key"])),
                        meta.get("key_fingerprint"), heads, leaves, entries)
    doc, summary = build_bundle(source, run=run, model=model, where=str(ledger_path))
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    # Said to the one exporting, not carried in the bundle: nothing signs it.
    return {**summary, "left_out": left_out}


@dataclass(slots=True)
class BundleReport:
    path: Path
    records: int = 0
    key_fingerprint: str = ""
    selection: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    # The selection's statements, each proven to be in the signed ledger.
    statements: list[LedgerRecord] = field(default_factory=list)
    # True: every run's records are all here (a close counts them); False: one is
    # missing; None: not proven (a run still open, or records written before runs'
    # records were numbered), or no compute record at all.
    complete: bool | None = None
    # One line per run of the selection: ``complete: ...``, ``open: ...``,
    # ``NOT PROVEN complete: ...`` or ``INCOMPLETE: ...`` (the last also a problem).
    completeness: list[str] = field(default_factory=list)
    # Each run's state, in the order of ``completeness``: one of :data:`RUN_STATES`.
    run_states: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_bundle(path: Path, trusted_fingerprint: str | None = None) -> BundleReport:
    """Check a bundle with nothing but its own contents (and optionally a pinned key)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        report = BundleReport(path)
        report.problems.append(f"{path}: unreadable or malformed bundle ({e})")
        return report
    return verify_bundle_doc(doc, path, trusted_fingerprint)


def verify_bundle_doc(doc: object, path: Path, trusted_fingerprint: str | None = None, *,
                      where: str | None = None) -> BundleReport:
    """Check a bundle already read from ``path`` (a cluster bundle holds one per node);
    ``where`` names it in messages (default: the path)."""
    report = BundleReport(path)
    p = report.problems
    name = str(path) if where is None else where
    try:
        if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
            p.append(f"{name}: not a {BUNDLE_FORMAT} file")
            return report
        key_raw = _unb64(doc["public_key"])
        public = load_public(key_raw)
        heads = [TreeHead.from_json(h) for h in doc["tree_heads"]]
        records = doc["records"]
        statements = doc.get("statements", [])  # absent from bundles made before them
        if not isinstance(records, list) or not isinstance(statements, list):
            raise TypeError("records and statements must be lists")
        selection = dict(doc["selection"])
        stated = dict(doc["totals"])
    except (ValueError, KeyError, TypeError) as e:
        p.append(f"{name}: unreadable or malformed bundle ({e})")
        return report
    report.key_fingerprint = fingerprint(key_raw)
    report.selection = selection
    if trusted_fingerprint and trusted_fingerprint != report.key_fingerprint:
        p.append(f"key: bundle signed by {report.key_fingerprint}, expected {trusted_fingerprint}")
    if not heads:
        p.append("no signed tree head")
        return report
    for head in heads:
        if head.origin != doc.get("origin") or not head.verify(public):
            p.append(f"tree head at size {head.size}: signature does not verify")
    try:
        proofs = {(c.get("old_size"), c.get("new_size")): c.get("proof", [])
                  for c in doc.get("consistency_proofs", [])}
    except (AttributeError, TypeError) as e:
        p.append(f"{name}: malformed consistency proofs ({e})")
        proofs = {}
    for a, b in pairwise(heads):
        proof = proofs.get((a.size, b.size))
        if proof is None or not _consistent(a, b, proof):
            p.append(f"tree heads {a.size} -> {b.size}: not proven consistent (the ledger "
                     "was rewritten between them)")
    latest = heads[-1]
    seen: set[int] = set()
    proven: set[int] = set()
    decoded = _entries(records, "record", latest, selection, seen, proven, p)
    report.statements = _entries(statements, "statement", latest, selection, seen, proven, p)
    for r in decoded:
        if is_declared(r):
            p.append(f"record {r.seq}: a statement ({r.kind}) listed among the records")
    for r in report.statements:
        if not is_declared(r):
            p.append(f"statement {r.seq}: a record of kind {r.kind}, not a statement")
    report.records = len(decoded)
    report.totals = _totals(decoded)
    if {k: stated.get(k) for k in report.totals} != report.totals:
        p.append("stated totals do not equal the sum of the bundle's records")
    # Only what is proven to be in the signed ledger, under the one latest head, counts.
    runs = by_run([r for r in (*decoded, *report.statements) if r.seq in proven])
    states = [run_completeness(run, records, closes, str(doc.get("node") or ""))
              for run, (records, closes) in sorted(runs.items())]
    report.completeness = [s.line for s in states]
    report.run_states = [s.state for s in states]
    p.extend(s.line for s in states if s.state == INCOMPLETE)
    report.complete = combined_completeness(report.run_states)
    return report


def _consistent(a: TreeHead, b: TreeHead, proof: object) -> bool:
    try:
        hashes = [_unb64(x) for x in proof]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return False
    return verify_consistency(a.size, b.size, a.root, b.root, hashes)


COMPLETE, OPEN, UNPROVEN, INCOMPLETE = "complete", "open", "unproven", "incomplete"
RUN_STATES = (COMPLETE, OPEN, UNPROVEN, INCOMPLETE)


def combined_completeness(states: Sequence[str]) -> bool | None:
    """False if any state is incomplete; True if there is at least one and all are
    complete; None otherwise (open, not proven, or nothing at all)."""
    found = set(states)
    return False if INCOMPLETE in found else True if found == {COMPLETE} else None


@dataclass(frozen=True, slots=True)
class RunCompleteness:
    """What one node's records of one run show (see :attr:`BundleReport.completeness`).

    Attributes:
        state: one of :data:`RUN_STATES`.
        line: the sentence that says it.
        records: the run's compute records held.
        run_seqs: the lowest and highest run_seq among them (None: none numbered).
        missing: the run_seqs missing below the highest one held or counted.
        close_seq: the record of the latest sound ``run-close`` (None: never closed).
        close_records: how many records that close counts.
        closed: whether that close counts every record held (none came after it).
    """

    run: str
    node: str
    state: str
    line: str
    records: int
    run_seqs: tuple[int, int] | None
    missing: tuple[int, ...]
    close_seq: int | None
    close_records: int | None
    closed: bool


def by_run(entries: Sequence[LedgerRecord]) -> dict[str, tuple[list[LedgerRecord],
                                                              list[tuple[LedgerRecord,
                                                                         RunClose]]]]:
    """Per run: its compute records and its sound ``run-close`` statements, by seq."""
    runs: dict[str, tuple[list[LedgerRecord], list[tuple[LedgerRecord, RunClose]]]] = {}
    for r in sorted(entries, key=lambda r: r.seq):
        if is_compute(r):
            runs.setdefault(r.run, ([], []))[0].append(r)
        elif r.kind == RUN_CLOSE:
            try:
                close = RunClose.of(r)
            except ValueError:
                continue  # already a problem of its entry
            runs.setdefault(r.run, ([], []))[1].append((r, close))
    return runs


def run_completeness(run: str, records: list[LedgerRecord],
                     closes: list[tuple[LedgerRecord, RunClose]], default_node: str, *,
                     holder: str = "the bundle") -> RunCompleteness:
    """One run's state on one node, from its compute records and sound closes (by seq)
    as ``holder`` holds them (``the bundle``, ``the store``)."""
    last = closes[-1] if closes else None
    node = (last[0].node if last else records[-1].node) or default_node
    who = f"run {run} on node {node}"
    numbered = [(n, r) for r in records if (n := run_seq_of(r)) is not None]
    unnumbered = [r for r in records if run_seq_of(r) is None]
    span = ((min(n for n, _r in numbered), max(n for n, _r in numbered)) if numbered
            else None)

    def result(state: str, line: str, missing: Sequence[int] = (),
               closed: bool = False) -> RunCompleteness:
        return RunCompleteness(run, node, state, line, len(records), span, tuple(missing),
                               last[0].seq if last else None,
                               last[1].records if last else None, closed)

    if last is None and not numbered:
        return result(UNPROVEN, (f"NOT PROVEN complete: {who}: its {len(records)} record(s) "
                                 "carry no run_seq (written before records were numbered) and "
                                 "no run-close counts them"))
    closed = last is not None and (not records or last[0].seq > records[-1].seq)
    wrong: list[str] = []
    first = last[1].first_run_seq if last else len(unnumbered)
    if numbered and unnumbered and unnumbered[-1].seq > numbered[0][1].seq:
        wrong.append(f"record {unnumbered[-1].seq} carries no run_seq but follows record "
                     f"{numbered[0][1].seq}, which does")
    if len(unnumbered) != first:
        wrong.append(f"{first} record(s) written before records were numbered, {holder} "
                     f"holds {len(unnumbered)}")
    have: dict[int, LedgerRecord] = {}
    twice = sorted({n for n, r in numbered if have.setdefault(n, r) is not r})
    if twice:
        wrong.append(f"run_seq {_ranges(twice)} twice")
    top = max(have, default=first - 1)
    if last is not None:
        # Every record a close counted must be here, open or not.
        top = max(top, last[1].records - 1) if not closed else last[1].records - 1
    missing = [n for n in range(first, top + 1) if n not in have]
    if missing:
        wrong.append(f"run_seq {_ranges(missing)} missing")
    beyond = sorted(n for n in have if n < first or n > top)
    if beyond:
        wrong.append(f"run_seq {_ranges(beyond)} outside {first}..{top}")
    if closed and last is not None and not wrong:
        said = last[1]
        end = have[said.records - 1] if said.records > first else unnumbered[-1]
        if end.seq != said.last_seq:
            wrong.append(f"the close at record {last[0].seq} names record {said.last_seq} "
                         f"as the last, {holder}'s is record {end.seq}")
    if wrong:
        return result(INCOMPLETE, f"INCOMPLETE: {who}: {'; '.join(wrong)}", missing, closed)
    if closed and last is not None:
        n = last[1].records
        numbering = (f"run_seq {first}..{n - 1}" if first == 0 else
                     f"{first} written before records were numbered, then run_seq "
                     f"{first}..{n - 1}" if first < n else
                     "all written before records were numbered")
        return result(COMPLETE, (f"complete: all {n} records of {who} ({numbering}, closed "
                                 f"at record {last[0].seq})"), closed=True)
    since = f" (reopened after its close at record {last[0].seq})" if last is not None else ""
    shown = f" (run_seq {first}..{top})" if top >= first else ""
    return result(OPEN, (f"open: {who}: {len(records)} record(s) so far{shown}, the run has "
                         f"not been closed on this node{since}"))


def _ranges(numbers: Sequence[int], most: int = 8) -> str:
    """``3, 17..25, 40`` (the first ``most`` ranges, then how many more)."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in spans[:most])
    return text + (f" and {len(spans) - most} more ranges" if len(spans) > most else "")


def _entries(entries: list[Any], what: str, latest: TreeHead, selection: dict[str, Any],
             seen: set[int], proven: set[int], p: list[str]) -> list[LedgerRecord]:
    """The records (or statements) of a bundle that could be decoded; every entry not
    proven to be in the signed ledger, at its position, in the selection, is a problem
    (the seq of each that is, in ``proven``)."""
    decoded: list[LedgerRecord] = []
    for entry in entries:
        try:
            seq = int(entry["seq"])
            body = str(entry["body"]).encode()
            proof = [_unb64(x) for x in entry["inclusion_proof"]]
            record = LedgerRecord.decode(body)
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            seq_text = entry.get("seq", "?") if isinstance(entry, dict) else "?"
            p.append(f"{what} {seq_text}: malformed ({e})")
            continue
        if seq in seen:
            p.append(f"{what} {seq}: appears twice")
        seen.add(seq)
        if record.seq != seq:
            p.append(f"{what} {seq}: body says it is record {record.seq}")
        if not verify_inclusion(leaf_hash(body), seq, latest.size, proof, latest.root):
            p.append(f"{what} {seq}: not in the signed ledger at that position (edited or "
                     "moved)")
        elif record.seq == seq:
            proven.add(seq)
        if record.kind in STATEMENT_KINDS:
            problem = field_problem(record)
            if problem is not None:
                p.append(f"{what} {seq}: {problem}")
        wanted = selection.get("run") == record.run or selection.get("model") == record.model
        if not wanted:
            p.append(f"{what} {seq}: belongs to run {record.run!r}, not the selection")
        decoded.append(record)
    return decoded
