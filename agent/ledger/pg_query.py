"""Read-only view of the cluster ledger in PostgreSQL (see :mod:`agent.ledger.pg_schema`):
every node's records, heads and run totals, read in one transaction.

:class:`ClusterView` opens one ``REPEATABLE READ READ ONLY`` transaction and reads
everything through it: what replicators commit meanwhile changes nothing it states, so
the figures of one view agree with the heads it cites. It reads cheaply what is small
(the nodes, the runs' metadata, the witness's events) when it opens, and the rest on
demand: run totals come from ``fl_run_totals`` (a few rows per run, whatever the number
of records); records are decoded from their bodies only for a selection (one run or one
model), through a server-side cursor.

It offers what the commands read of a node's :class:`agent.ledger.query.LedgerView`
(``sealed``, :meth:`ClusterView.summaries`, :meth:`ClusterView.unsealed_of`), so
``runs``, ``show`` and ``models`` state the cluster's figures through the code that states
one node's. A row that is not a sound record is left out and said loudly on this
module's logger at ERROR, as the local readers do; ``flopledger verify --ledger URL``
names it.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from agent.accounting.band import Band
from agent.accounting.records import (
    COMPUTE_KINDS,
    RUN_CLOSE,
    STATEMENT_KINDS,
    LedgerRecord,
    is_compute,
)
from agent.ledger.errors import LedgerError
from agent.ledger.query import RunSummary, Unsealed
from agent.ledger.rows import BadRowError, Skipped, parse_body
from agent.ledger.signing import TreeHead

if TYPE_CHECKING:
    from agent.ledger.bundle import RunCompleteness

log = logging.getLogger(__name__)

CLUSTER_SCHEMES = ("postgresql://", "postgres://")

# Rows fetched per round trip by the server-side cursors.
CURSOR_ROWS = 2000


def is_cluster_url(text: str) -> bool:
    """Whether ``--ledger`` names the cluster store (a PostgreSQL URL), not a file."""
    return text.startswith(CLUSTER_SCHEMES)


def url_problem(url: str) -> str | None:
    """What makes ``url`` no usable address of the store (not a postgresql:// URL, a
    syntax libpq refuses, a port that is no port number, a password written into it),
    or None. Said before connecting: a malformed address is a usage error."""
    if not is_cluster_url(url) or url.partition("://")[2] == "":
        return "not a postgresql:// URL (postgresql://user@host:5432/db)"
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        return f"not a valid PostgreSQL URL ({_first_line(e)})"
    if {"password", "sslpassword"} & info.keys():
        return ("the URL carries a password; give it with [cluster] password_file or "
                "password_env in the config, or in PGPASSWORD")
    for port in str(info.get("port") or "5432").split(","):
        if not port.strip().isdigit() or not 0 < int(port) < 65536:
            return f"port {port!r} is not a port number (1..65535)"
    return None


class ClusterReadError(LedgerError):
    """The store cannot be read as a cluster ledger (tables missing, the connection
    lost while reading); the message is one line naming the store, without password."""


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node key the store knows (a node whose disk was replaced has a new key).

    Attributes:
        records: how many of its records the store holds (seq 0..records-1, no hole).
        head: the latest signed tree head the witness accepted (None: none yet).
        flagged: why the witness stopped accepting this node (None while it is sound).
    """

    node_key: str
    node: str
    origin: str
    public_key: bytes
    records: int
    head: TreeHead | None
    flagged: str | None
    first_seen_ns: int
    last_seen_ns: int

    @property
    def fingerprint(self) -> str:
        """The key's short name, as the node's own ledger states it."""
        return self.node_key[:16]

    @property
    def head_size(self) -> int:
        return self.head.size if self.head is not None else 0

    def label(self) -> str:
        """``node-1 (key 0123456789abcdef)``."""
        return f"{self.node} (key {self.fingerprint})"


@dataclass(frozen=True, slots=True)
class WitnessEvent:
    """What the witness refused of a node, and why (never deleted)."""

    id: int
    node_key: str
    node: str
    at_ns: int
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class NodeRunTotal:
    """One row of ``fl_run_totals``: a run's compute on one node key."""

    node: ClusterNode
    summary: RunSummary


@dataclass(frozen=True, slots=True)
class NodeRunCompleteness:
    """One node key's records of a run as the store holds them: how many, their run_seq
    range and gaps, the latest ``run-close`` and whether it counts them (``of.state``:
    complete, open, not proven, incomplete; ``of.line`` says it)."""

    node: ClusterNode
    of: RunCompleteness


class ClusterView:
    """The cluster ledger at one moment, read in one repeatable-read, read-only
    transaction on ``conn`` (which it owns and closes: use it as a context manager).

    ``run`` or ``model`` selects the records :attr:`sealed` streams (and the statements
    :meth:`statements` returns by default); without a selection no record is decoded and
    :meth:`summaries` are the stored totals. On it, :attr:`nodes`, :attr:`run_meta` and
    :attr:`witness_events` are read once, when it opens.

    Raises (from the constructor and every read):
        ClusterReadError: the tables are missing or a read fails.
    """

    def __init__(self, conn: psycopg.Connection[Any], where: str, *, run: str | None = None,
                 model: str | None = None) -> None:
        self.where = where
        self.run = run
        self.model = model
        self._conn = conn
        self._cursors = itertools.count()
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
        except psycopg.Error as e:
            conn.close()
            raise self._error(e) from e
        try:
            self.nodes: list[ClusterNode] = self._read_nodes()
            self.run_meta: dict[str, dict[str, object]] = self._read_run_meta()
            self.witness_events: list[WitnessEvent] = self._read_events()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, url: str, *, password_file: Path | None = None,
             password_env: str | None = None, run: str | None = None,
             model: str | None = None) -> ClusterView:
        """Connect to the store at ``url`` and read it (see the class).

        Raises:
            PgError: the server cannot be reached or refuses the connection.
            ClusterReadError: what it holds is not a readable cluster ledger.
        """
        from agent.ledger.pgconn import connect, redact

        conn = connect(url, password_file=password_file, password_env=password_env)
        return cls(conn, redact(url), run=run, model=model)

    def __enter__(self) -> ClusterView:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """End the transaction (nothing was written) and the connection."""
        try:
            if not self._conn.closed:
                self._conn.rollback()
        except psycopg.Error:
            pass  # the server went away: there is nothing left to end
        finally:
            self._conn.close()

    # ------------------------------------------------------------------ reading

    def _error(self, e: BaseException) -> ClusterReadError:
        if isinstance(e, psycopg.errors.UndefinedTable):
            return ClusterReadError(
                f"{self.where}: holds no cluster ledger ({_first_line(e)}); has any agent "
                "with [cluster] url set replicated to it yet?")
        return ClusterReadError(f"{self.where}: reading the cluster ledger failed "
                                f"({type(e).__name__}: {_first_line(e)})")

    def rows(self, query: sql.SQL | sql.Composed | str, params: Sequence[object] = ()
             ) -> list[tuple[Any, ...]]:
        """Every row of a query in this view's transaction."""
        try:
            with self._conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall())
        except psycopg.Error as e:
            raise self._error(e) from e

    def stream(self, query: sql.SQL | sql.Composed, params: Sequence[object] = ()
               ) -> Iterator[tuple[Any, ...]]:
        """Rows through a server-side cursor: memory flat in the number of rows."""
        name = f"fl_read_{next(self._cursors)}"
        try:
            with self._conn.cursor(name=name) as cur:
                cur.itersize = CURSOR_ROWS
                cur.execute(query, params)
                yield from cur
        except psycopg.Error as e:
            raise self._error(e) from e

    def _read_nodes(self) -> list[ClusterNode]:
        return [node_of(row) for row in self.rows(
            f"SELECT {NODE_COLUMNS} FROM fl_nodes ORDER BY node, node_key")]

    def _read_run_meta(self) -> dict[str, dict[str, object]]:
        skipped = Skipped()
        docs: dict[str, list[dict[str, object]]] = {}
        for node_key, name, doc_text in self.rows(
                "SELECT node_key, run, meta FROM fl_runs ORDER BY run, node_key"):
            try:
                doc = json.loads(doc_text)
            except (TypeError, ValueError, RecursionError):
                doc = None
            if isinstance(doc, dict):
                docs.setdefault(str(name), []).append(doc)
            else:
                skipped.add(f"metadata of run {name!r} from node key {node_key}")
        self._say(skipped, "the runs' declared metadata")
        return {name: merge_meta(found) for name, found in docs.items()}

    def _read_events(self) -> list[WitnessEvent]:
        return [WitnessEvent(int(i), str(key), str(node), int(at), str(kind), str(detail))
                for i, key, node, at, kind, detail in self.rows(
                    "SELECT id, node_key, node, at_ns, kind, detail FROM fl_witness_events"
                    " ORDER BY id")]

    def _decode(self, rows: Iterable[tuple[Any, ...]], skipped: Skipped,
                text: Skipped) -> Iterator[LedgerRecord]:
        """Records of ``(node_key, seq, run, model, body)`` rows; a body that is not a
        sound record, or that disagrees with its row, goes to ``skipped``."""
        for node_key, seq, run, model, body in rows:
            where = f"node key {str(node_key)[:16]} record {seq}"
            try:
                record = parse_body(bytes(body) if isinstance(body, memoryview) else body,
                                    canonical=False, wrong_type=text)
            except BadRowError as e:
                skipped.add(f"{where}: {e}")
                continue
            if record.seq != seq or record.run != run or record.model != model:
                skipped.add(f"{where}: its columns disagree with its body")
                continue
            yield record

    def _say(self, skipped: Skipped, what: str, text: Skipped | None = None) -> None:
        if skipped.count:
            log.error("%s: %s of %s; the figures read from the cluster ledger are "
                      "INCOMPLETE (run `flopledger verify --ledger %s`)", self.where,
                      skipped.describe(), what, self.where)
        if text is not None and text.count:
            log.error("%s: %d row(s) of %s not stored as a record's bytes, read anyway (%s)",
                      self.where, text.count, what, "; ".join(text.first or []))

    # ------------------------------------------------------------------ what it states

    @property
    def node_by_key(self) -> dict[str, ClusterNode]:
        return {n.node_key: n for n in self.nodes}

    def flagged(self) -> list[ClusterNode]:
        """The nodes the witness stopped accepting."""
        return [n for n in self.nodes if n.flagged is not None]

    def warnings(self) -> list[str]:
        """WARNING lines for the top of a read command's output: one per flagged node."""
        return [f"WARNING: node {n.node}: flagged by the witness: {n.flagged} "
                f"(key {n.fingerprint})" for n in self.flagged()]

    def iter_records(self, *, run: str | None = None, model: str | None = None,
                     kinds: Iterable[str] | None = None) -> Iterator[LedgerRecord]:
        """The records of one run or one model (both: of the run, naming the model),
        node by node in append order, decoded as they stream; of ``kinds`` if given
        (default: the compute records); unsound rows are left out, loudly.

        Raises:
            ValueError: neither ``run`` nor ``model`` (the whole cluster is not read
                record by record here; :func:`agent.ledger.pg_verify.verify_cluster`
                does, node by node).
        """
        if run is None and model is None:
            raise ValueError("records of the cluster are read for one run or one model")
        conditions, params = _selection(run, model)
        wanted = None if kinds is None else frozenset(kinds)
        if wanted is not None:
            conditions.append(sql.SQL("kind = ANY(%s)"))
            params.append(sorted(wanted))
        query = sql.SQL("SELECT node_key, seq, run, model, body FROM fl_records WHERE {}"
                        " ORDER BY node_key, seq").format(sql.SQL(" AND ").join(conditions))
        skipped, text = Skipped(), Skipped()
        for record in self._decode(self.stream(query, params), skipped, text):
            if wanted is not None:
                if record.kind in wanted:
                    yield record
            elif is_compute(record):
                yield record
        self._say(skipped, "the records", text)

    def records(self, *, run: str | None = None, model: str | None = None
                ) -> list[LedgerRecord]:
        """The compute records of one run or one model (see :meth:`iter_records`)."""
        return list(self.iter_records(run=run, model=model))

    def statements(self, kinds: Iterable[str] | None = None, *, run: str | None = None,
                   model: str | None = None) -> list[LedgerRecord]:
        """Declared statements of ``kinds`` (default: all) naming ``run`` and/or
        ``model`` (default: the view's selection), node by node in append order."""
        wanted = frozenset(STATEMENT_KINDS if kinds is None else kinds) & frozenset(
            STATEMENT_KINDS)
        if run is None and model is None:
            run, model = self.run, self.model
        if not wanted:
            return []
        if run is None and model is None:
            query = sql.SQL("SELECT node_key, seq, run, model, body FROM fl_records"
                            " WHERE kind = ANY(%s) ORDER BY node_key, seq")
            skipped, text = Skipped(), Skipped()
            out = list(self._decode(self.stream(query, [sorted(wanted)]), skipped, text))
            self._say(skipped, "the statements", text)
            return [r for r in out if r.kind in wanted]
        return list(self.iter_records(run=run, model=model, kinds=wanted))

    @property
    def sealed(self) -> Iterable[LedgerRecord]:
        """The compute records of the selection (none without one), streamed anew each
        time they are iterated: memory flat in the number of records."""
        return _Selected(self)

    def run_summaries(self, *, run: str | None = None, model: str | None = None
                      ) -> dict[str, RunSummary]:
        """Per-run sums over every node, from ``fl_run_totals`` (optionally of one run
        or one model), with the runs' merged metadata. The GPUs, estimators, splits and
        spec bases are in no total: they are filled from the records for a selected
        ``run`` only, and empty otherwise."""
        out: dict[str, RunSummary] = {}
        for row in self.node_totals(run=run, model=model):
            s = row.summary
            total = out.get(s.run)
            if total is None:
                total = out[s.run] = RunSummary(s.run, meta=dict(self.run_meta.get(s.run, {})))
            if s.last_ns >= total.last_ns:  # the latest node's view of the run's names
                total.model, total.category = s.model, s.category
            total.flop += s.flop
            total.energy_mj += s.energy_mj
            total.gap_ns += s.gap_ns
            total.covered_ns += s.covered_ns
            total.samples += s.samples
            total.records += s.records
            total.first_ns = min(total.first_ns or s.first_ns, s.first_ns)
            total.last_ns = max(total.last_ns, s.last_ns)
            total.nodes |= s.nodes
        if run is not None and run in out:
            detail = RunSummary(run)
            for record in self.iter_records(run=run):
                detail.add(record)
            total = out[run]
            total.gpus, total.estimators, total.splits = (detail.gpus, detail.estimators,
                                                          detail.splits)
            total.spec_bases, total.spec_reason = detail.spec_bases, detail.spec_reason
        return out

    def node_totals(self, *, run: str | None = None, model: str | None = None
                    ) -> list[NodeRunTotal]:
        """The rows of ``fl_run_totals`` (optionally of one run or one model), each as
        the run's summary on one node key; ordered by run, then node name and key."""
        selected, params = _selection(run, model)
        conditions: list[sql.Composable] = [sql.SQL("TRUE"), *selected]
        query = sql.SQL(
            "SELECT run, node_key, model, category, flop_low, flop_central, flop_high,"
            " energy_mj, samples, covered_ns, gap_ns, records, first_ns, last_ns"
            " FROM fl_run_totals WHERE {} ORDER BY run, node_key").format(
                sql.SQL(" AND ").join(conditions))
        nodes = self.node_by_key
        out = []
        for (name, node_key, model_name, category, low, central, high, energy, samples,
             covered, gap, records, first, last) in self.rows(query, params):
            node = nodes.get(str(node_key))
            if node is None:  # the foreign key forbids it; a reader says so, never crashes
                log.error("%s: run totals of node key %s, which fl_nodes lacks; left out",
                          self.where, node_key)
                continue
            summary = RunSummary(
                str(name), str(model_name), str(category), flop=Band(int(low), int(central),
                                                                     int(high)),
                energy_mj=int(energy), gap_ns=int(gap), covered_ns=int(covered),
                samples=int(samples), records=int(records), first_ns=int(first),
                last_ns=int(last), nodes={node.node})
            out.append(NodeRunTotal(node, summary))
        out.sort(key=lambda t: (t.summary.run, t.node.node, t.node.node_key))
        return out

    def summaries(self, records: Iterable[LedgerRecord] | None = None
                  ) -> dict[str, RunSummary]:
        """Per-run sums with the runs' merged metadata: over ``records`` if given, else
        over the selection's records (:attr:`sealed`), else (no selection) the stored
        totals of every run (:meth:`run_summaries`)."""
        if records is None and self.run is None and self.model is None:
            return self.run_summaries()
        out: dict[str, RunSummary] = {}
        for r in self.sealed if records is None else records:
            out.setdefault(r.run, RunSummary(r.run)).add(r)
        for name, summary in out.items():
            summary.meta = dict(self.run_meta.get(name, {}))
        return out

    def unsealed_of(self, *, run: str | None = None, model: str | None = None) -> Unsealed:
        """None: the store holds a node's records only with the signed head that covers
        them (they arrive in one transaction; ``verify`` fails any beyond its heads)."""
        return Unsealed()

    @property
    def records_held(self) -> int:
        """Records (statements included) held, over every node."""
        return sum(n.records for n in self.nodes)

    @property
    def latest_head_ns(self) -> int:
        """The time of the latest head accepted from any node (0: none)."""
        return max((n.head.timestamp_ns for n in self.nodes if n.head is not None), default=0)

    # ------------------------------------------------------------------ bundles, completeness

    def selection_nodes(self, *, run: str | None = None, model: str | None = None
                        ) -> list[ClusterNode]:
        """The node keys holding any record or statement of one run or one model (both:
        of the run, naming the model), in the order of :attr:`nodes`."""
        query, params = _selection_sql("SELECT DISTINCT node_key FROM fl_records", run, model)
        held = {str(key) for (key,) in self.rows(query, params)}
        return [n for n in self.nodes if n.node_key in held]

    def heads_of(self, node: ClusterNode) -> list[TreeHead]:
        """Every signed tree head the store accepted from ``node``, by size."""
        return [TreeHead(node.origin, int(size), bytes(root), int(ts), bytes(sig))
                for size, root, ts, sig in self.rows(
                    "SELECT size, root, timestamp_ns, signature FROM fl_heads"
                    " WHERE node_key = %s ORDER BY size", [node.node_key])]

    def leaf_hashes(self, node: ClusterNode, size: int) -> list[bytes]:
        """The leaf hashes of ``node``'s records 0..size-1, in order (32 bytes each).

        Raises:
            ClusterReadError: the store lacks one of them.
        """
        leaves: list[bytes] = []
        for seq, leaf in self.stream(sql.SQL(
                "SELECT seq, leaf_hash FROM fl_records WHERE node_key = %s AND seq < %s"
                " ORDER BY seq"), [node.node_key, size]):
            if seq != len(leaves):
                break
            leaves.append(bytes(leaf))
        if len(leaves) != size:
            raise ClusterReadError(
                f"{self.where}: node {node.label()}: record {len(leaves)} of the {size} its "
                "latest signed head covers is missing (run `flopledger verify --ledger "
                f"{self.where}`)")
        return leaves

    def bodies(self, node: ClusterNode, *, run: str | None = None, model: str | None = None,
               below: int | None = None) -> list[tuple[int, bytes]]:
        """``(seq, body)`` of ``node``'s records and statements of one run or one model,
        below seq ``below`` if given, by seq: the bytes the node signed."""
        query, params = _selection_sql("SELECT seq, body FROM fl_records", run, model)
        query = sql.SQL("{} AND node_key = %s AND seq < %s ORDER BY seq").format(query)
        limit = below if below is not None else 2**63 - 1
        return [(int(seq), bytes(body)) for seq, body in self.stream(
            query, [*params, node.node_key, limit])]

    def run_completeness(self, run: str) -> list[NodeRunCompleteness]:
        """Per node key holding compute records or a ``run-close`` of ``run``: whether
        the store holds every record of it the node's latest close counts (see
        :func:`agent.ledger.bundle.run_completeness`), in the order of :attr:`nodes`.
        Read node by node: memory holds one node's records of the run at a time."""
        from agent.ledger.bundle import by_run, run_completeness

        kinds = sorted({*COMPUTE_KINDS, "discontinuity", RUN_CLOSE})
        query = sql.SQL("SELECT node_key, seq, run, model, body FROM fl_records"
                        " WHERE run = %s AND kind = ANY(%s) ORDER BY node_key, seq")
        nodes = self.node_by_key
        skipped, text = Skipped(), Skipped()
        found: dict[str, NodeRunCompleteness] = {}
        for key, rows in itertools.groupby(self.stream(query, [run, kinds]),
                                           key=lambda row: str(row[0])):
            node = nodes.get(key)
            if node is None:  # the foreign key forbids it
                continue
            entries = by_run(list(self._decode(rows, skipped, text))).get(run)
            if entries is not None:
                records, closes = entries
                found[key] = NodeRunCompleteness(node, run_completeness(
                    run, records, closes, node.node, holder="the store"))
        self._say(skipped, "the run's records", text)
        return [found[n.node_key] for n in self.nodes if n.node_key in found]


class _Selected:
    """The compute records of a view's selection, read anew at each iteration."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view

    def __iter__(self) -> Iterator[LedgerRecord]:
        view = self.view
        if view.run is None and view.model is None:
            return iter(())
        return view.iter_records(run=view.run, model=view.model)


NODE_COLUMNS = ("node_key, node, origin, public_key, records, head_size, head_root,"
                " head_timestamp_ns, head_signature, flagged, first_seen_ns, last_seen_ns")


def node_of(row: Sequence[Any]) -> ClusterNode:
    """A :class:`ClusterNode` from a row of :data:`NODE_COLUMNS`."""
    (node_key, node, origin, public_key, records, head_size, head_root, head_ts, head_sig,
     flagged, first_seen, last_seen) = row
    head = None
    if head_size and head_root is not None and head_ts is not None and head_sig is not None:
        head = TreeHead(str(origin), int(head_size), bytes(head_root), int(head_ts),
                        bytes(head_sig))
    return ClusterNode(str(node_key), str(node), str(origin), bytes(public_key), int(records),
                       head, None if flagged is None else str(flagged), int(first_seen),
                       int(last_seen))


def _selection(run: str | None, model: str | None) -> tuple[list[sql.Composable], list[object]]:
    """The conditions selecting one run and/or one model, and their parameters."""
    conditions: list[sql.Composable] = []
    params: list[object] = []
    if run is not None:
        conditions.append(sql.SQL("run = %s"))
        params.append(run)
    if model is not None:
        conditions.append(sql.SQL("model = %s"))
        params.append(model)
    return conditions, params


def _selection_sql(select: str, run: str | None, model: str | None
                   ) -> tuple[sql.Composed, list[object]]:
    """``select`` with the WHERE of one run and/or one model, and its parameters."""
    conditions, params = _selection(run, model)
    if not conditions:
        raise ValueError("give a run or a model")
    return sql.SQL("{} WHERE {}").format(sql.SQL(select),
                                         sql.SQL(" AND ").join(conditions)), params


def merge_meta(docs: Sequence[dict[str, object]]) -> dict[str, object]:
    """One run's declared metadata from the rows of the nodes it ran on: per key, the
    value of the row with the most keys that has it (the fullest declaration wins; ties
    go to the node key first in order, so the answer does not depend on the read)."""
    merged: dict[str, object] = {}
    # sorted() is stable: among rows of as many keys, the node-key order of the query.
    for doc in sorted(docs, key=len, reverse=True):
        for key, value in doc.items():
            merged.setdefault(key, value)
    return merged


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
