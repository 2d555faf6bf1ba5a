"""``flopledger verify --ledger postgresql://...``: check the cluster ledger against
everything its nodes signed.

For every node key the store holds, in one pass over its records (a server-side cursor:
memory flat in the number of records): the records are numbered from 0 with no hole;
each body is a canonical record carrying its own sequence number, agreeing with the
columns stored beside it and with its stored leaf hash; the Merkle tree over the bodies'
leaf hashes is rebuilt (:class:`agent.ledger.merkle.Frontier`) and every head of
``fl_heads`` is checked at its size: its root, and its signature with the node's public
key from ``fl_nodes``, whose SHA-256 must be the node key. ``fl_nodes``' record count,
Merkle frontier and latest head must be what the records and heads make them;
``fl_run_totals`` must equal the sums of the node's compute records per run; each
``fl_runs`` document must be a JSON object. A node the witness flagged is a failure, and
the witness's events are listed.

All of it in one repeatable-read, read-only transaction: what replicators commit
meanwhile changes nothing checked. Whatever the store holds, this never raises for its
content: an anomaly nobody foresaw is a problem too. A store that cannot be reached
raises :class:`agent.ledger.pgconn.PgError` from :func:`verify_cluster_url`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg import sql

from agent import figures
from agent.accounting.records import STATEMENT_KINDS, LedgerRecord, Totals, is_compute
from agent.ledger.merkle import Frontier, leaf_hash
from agent.ledger.pg_query import ClusterNode, ClusterReadError, ClusterView, WitnessEvent
from agent.ledger.pg_schema import SCHEMA_VERSION, TABLES
from agent.ledger.rows import BadRowError, parse_record
from agent.ledger.signing import TreeHead, fingerprint, load_public

# The columns of fl_records that queries read instead of the body: each must agree.
_COLUMNS = ("kind", "run", "model", "category", "gpu_uuid", "start_ns", "end_ns",
            "flop_low", "flop_central", "flop_high", "energy_mj")


@dataclass(slots=True)
class NodeReport:
    """What verify found for one node key."""

    node: ClusterNode
    records: int = 0
    heads: int = 0
    statements: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        """``node N (key K): R records, H heads: OK`` (or ``: FAILED``)."""
        return (f"node {self.node.label()}: {self.records} records, {self.heads} heads"
                + (": OK" if self.ok else ": FAILED"))

    def statements_text(self) -> str:
        """``none``, or ``2 declaration, 1 attestation`` (in the order of the kinds)."""
        return ", ".join(f"{self.statements[kind]} {kind}" for kind in STATEMENT_KINDS
                         if self.statements[kind]) or "none"


@dataclass(slots=True)
class ClusterReport:
    """What verify found: one report per node key, and problems of the store itself."""

    where: str
    nodes: list[NodeReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    events: list[WitnessEvent] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(n.ok for n in self.nodes)

    @property
    def problem_count(self) -> int:
        return len(self.problems) + sum(len(n.problems) for n in self.nodes)

    @property
    def records(self) -> int:
        return sum(n.records for n in self.nodes)

    def event_lines(self) -> list[str]:
        """One line per event of the witness, oldest first."""
        return [f"witness {figures.when(e.at_ns)} node {e.node} (key {e.node_key[:16]}): "
                f"{e.kind}: {e.detail}" for e in self.events]


class _EnoughError(Exception):
    """A node gave ``max_problems`` problems: the rest of its pass is skipped."""


def verify_cluster_url(url: str, *, password_file: Path | None = None,
                       password_env: str | None = None,
                       max_problems: int = 50) -> ClusterReport:
    """Check the cluster ledger at ``url`` (see the module docstring).

    Raises:
        PgError: the server cannot be reached or refuses the connection.
    """
    from agent.ledger.pgconn import connect, redact

    conn = connect(url, password_file=password_file, password_env=password_env)
    return verify_cluster(conn, redact(url), max_problems=max_problems)


def verify_cluster(conn: psycopg.Connection[Any], where: str, *,
                   max_problems: int = 50) -> ClusterReport:
    """Check the cluster ledger on ``conn`` (which is closed afterwards); ``where``
    names the store in messages. At most ``max_problems`` are listed per node."""
    report = ClusterReport(where)
    try:
        view = ClusterView(conn, where)
    except ClusterReadError as e:
        report.problems.append(str(e))
        return report
    with view:
        try:
            if not _check_store(view, report):
                return report
            report.events = view.witness_events
            for node in view.nodes:
                node_report = NodeReport(node)
                report.nodes.append(node_report)
                try:
                    _NodePass(view, node_report, max_problems).run()
                except _EnoughError:
                    node_report.problems.append(f"(stopped after {max_problems} problems)")
        except ClusterReadError as e:
            report.problems.append(f"verification could not finish: {e}")
        except Exception as e:  # noqa: BLE001 - verify names every anomaly, even unforeseen
            report.problems.append(f"{where}: verification could not finish "
                                   f"({type(e).__name__}: {e}); treat the store as damaged")
    return report


def _check_store(view: ClusterView, report: ClusterReport) -> bool:
    """Whether every table is there (else a problem says which are not); a schema
    version other than this program's is a problem too."""
    found = {str(name) for (name,) in view.rows(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_name = ANY(%s)", [list(TABLES)])}
    missing = [t for t in TABLES if t not in found]
    if missing:
        report.problems.append(f"{view.where}: table(s) {', '.join(missing)} missing: not "
                               "a complete cluster ledger")
        return False
    rows = view.rows("SELECT value FROM fl_meta WHERE key = 'schema_version'")
    version = str(rows[0][0]) if rows else None
    if version != str(SCHEMA_VERSION):
        report.problems.append(f"{view.where}: schema version {version}, expected "
                               f"{SCHEMA_VERSION}")
    return True


@dataclass(slots=True)
class _Head:
    size: int
    root: bytes
    timestamp_ns: int
    signature: bytes


class _NodePass:
    """One node key's records and heads, streamed side by side in order."""

    def __init__(self, view: ClusterView, report: NodeReport, max_problems: int) -> None:
        self.view = view
        self.report = report
        self.node = report.node
        self.max_problems = max_problems
        self.frontier = Frontier()
        self.totals: dict[str, Totals] = {}
        self.compute: Counter[str] = Counter()  # compute records per run
        self.key: Ed25519PublicKey | None = None
        self.last_head: _Head | None = None

    def problem(self, text: str) -> None:
        self.report.problems.append(f"node {self.node.label()}: {text}")
        if len(self.report.problems) >= self.max_problems:
            raise _EnoughError

    def run(self) -> None:
        node = self.node
        if node.flagged is not None:
            self.problem(f"flagged by the witness: {node.flagged}")
        self.check_key()
        heads = self.heads()
        head = self.check_heads_at(next(heads, None), heads)  # heads of size 0
        hole_at: int | None = None
        for seq, body, stored_leaf, *columns in self.view.stream(sql.SQL(
                "SELECT seq, body, leaf_hash, " + ", ".join(_COLUMNS)
                + " FROM fl_records WHERE node_key = %s ORDER BY seq"), [node.node_key]):
            self.report.records += 1
            if hole_at is None and seq != self.frontier.size:
                hole_at = self.frontier.size
                self.problem(f"records are not contiguous: record {seq} follows record "
                             f"{hole_at - 1} (records {hole_at}..{seq - 1} missing)")
            body = bytes(body)
            leaf = leaf_hash(body)
            if bytes(stored_leaf) != leaf:
                self.problem(f"record {seq}: stored leaf hash does not match its body")
            self.check_body(seq, body, columns)
            if hole_at is None:
                self.frontier.append(leaf)
                head = self.check_heads_at(head, heads)
        rest = ([head] if head is not None else []) + list(heads)
        self.report.heads += len(rest)
        if rest and hole_at is not None:
            self.problem(f"{len(rest)} head(s) from size {rest[0].size} not checked: records "
                         f"from {hole_at} are missing")
        elif rest:
            self.problem(f"{len(rest)} head(s) from size {rest[0].size} cover records the "
                         f"store does not hold (it holds {self.frontier.size})")
        last = rest[-1] if rest else self.last_head
        if hole_at is None and self.frontier.size > (last.size if last else 0):
            self.problem(f"records {last.size if last else 0}..{self.frontier.size - 1} lie "
                         "beyond the latest signed head: no signature vouches for them")
        self.check_node_row(self.frontier.size, last)
        self.check_totals()
        self.check_runs()

    def check_key(self) -> None:
        node = self.node
        if hashlib.sha256(node.public_key).hexdigest() != node.node_key:
            self.problem(f"node key {node.node_key} is not the SHA-256 of its public key "
                         f"({hashlib.sha256(node.public_key).hexdigest()})")
        try:
            self.key = load_public(node.public_key)
        except ValueError as e:
            self.problem(f"public key is not an Ed25519 key ({e}): no head can be checked")
        expected = f"{node.node}/{fingerprint(node.public_key)}"
        if node.origin != expected:
            self.problem(f"origin {node.origin!r} is not {expected!r} (node name and key)")

    def heads(self) -> Iterator[_Head]:
        for size, root, ts, sig in self.view.stream(sql.SQL(
                "SELECT size, root, timestamp_ns, signature FROM fl_heads"
                " WHERE node_key = %s ORDER BY size"), [self.node.node_key]):
            yield _Head(int(size), bytes(root), int(ts), bytes(sig))

    def check_heads_at(self, head: _Head | None, heads: Iterator[_Head]) -> _Head | None:
        """Check every head of the current size; return the next one beyond it."""
        while head is not None and head.size <= self.frontier.size:
            self.report.heads += 1
            self.last_head = head
            signed = TreeHead(self.node.origin, head.size, head.root, head.timestamp_ns,
                              head.signature)
            if head.size < 0:
                self.problem(f"head of size {head.size}: a size is never negative")
            elif head.root != self.frontier.root():
                self.problem(f"head of size {head.size}: its root does not match the "
                             f"records 0..{head.size - 1}")
            if self.key is not None and not signed.verify(self.key):
                self.problem(f"head of size {head.size}: bad signature (not signed by key "
                             f"{self.node.fingerprint})")
            head = next(heads, None)
        return head

    def check_body(self, seq: int, body: bytes, columns: list[Any]) -> None:
        try:
            record = parse_record(body)
        except BadRowError as e:
            self.problem(f"record {seq}: {e}")
            return
        if record.seq != seq:
            self.problem(f"record {seq}: its body carries sequence number {record.seq}")
        for name, stored in zip(_COLUMNS, columns, strict=True):
            value = getattr(record, name)
            if (int(stored) if isinstance(value, int) else stored) != value:
                self.problem(f"record {seq}: column {name} ({stored!r}) disagrees with its "
                             f"body ({value!r})")
        if record.kind in STATEMENT_KINDS:
            self.report.statements[record.kind] += 1
        elif is_compute(record):
            self.add(record)

    def add(self, record: LedgerRecord) -> None:
        self.totals.setdefault(record.run, Totals()).add(record)
        self.compute[record.run] += 1

    def check_node_row(self, held: int, last: _Head | None) -> None:
        node = self.node
        if node.records != held:
            self.problem(f"fl_nodes says {node.records} records held, the store holds "
                         f"{held} contiguous from 0")
        try:
            stored = [(int(h), str(x)) for h, x in json.loads(self.frontier_text())]
        except (TypeError, ValueError, RecursionError):
            stored = None
        if stored != [(h, x.hex()) for h, x in self.frontier.to_list()]:
            self.problem("fl_nodes' Merkle frontier is not that of the records held")
        want = (last.size, last.root, last.timestamp_ns, last.signature) if last else None
        have = ((node.head.size, node.head.root, node.head.timestamp_ns, node.head.signature)
                if node.head is not None else None)
        if want != have:
            self.problem(f"fl_nodes' head (size {node.head_size}) is not the latest of "
                         f"fl_heads (size {last.size if last else 0})")

    def frontier_text(self) -> str:
        rows = self.view.rows("SELECT frontier FROM fl_nodes WHERE node_key = %s",
                              [self.node.node_key])
        return str(rows[0][0]) if rows else ""

    def check_totals(self) -> None:
        stored: dict[str, tuple[int, ...]] = {}
        for row in self.view.rows(
                "SELECT run, flop_low, flop_central, flop_high, energy_mj, samples,"
                " covered_ns, gap_ns, records, first_ns, last_ns FROM fl_run_totals"
                " WHERE node_key = %s ORDER BY run", [self.node.node_key]):
            stored[str(row[0])] = tuple(int(x) for x in row[1:])
        summed = {run: (t.flop_low, t.flop_central, t.flop_high, t.energy_mj, t.samples,
                        t.covered_ns, t.gap_ns, self.compute[run], t.first_ns, t.last_ns)
                  for run, t in self.totals.items()}
        names = ("flop_low", "flop_central", "flop_high", "energy_mj", "samples",
                 "covered_ns", "gap_ns", "records", "first_ns", "last_ns")
        for run in sorted(set(stored) | set(summed)):
            have, want = stored.get(run), summed.get(run)
            if have is None:
                self.problem(f"fl_run_totals lacks run {run!r} ({want[7] if want else 0} "
                             "compute records)")
            elif want is None:
                self.problem(f"fl_run_totals holds run {run!r}, which none of its compute "
                             "records names")
            elif have != want:
                wrong = ", ".join(f"{n} {h} (records sum to {w})"
                                  for n, h, w in zip(names, have, want, strict=True) if h != w)
                self.problem(f"fl_run_totals of run {run!r}: {wrong}")

    def check_runs(self) -> None:
        for name, doc_text in self.view.rows(
                "SELECT run, meta FROM fl_runs WHERE node_key = %s ORDER BY run",
                [self.node.node_key]):
            try:
                doc = json.loads(doc_text)
            except (TypeError, ValueError, RecursionError):
                doc = None
            if not isinstance(doc, dict):
                self.problem(f"fl_runs: the metadata of run {name!r} is not a JSON object")
