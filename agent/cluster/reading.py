"""What one pass of the cluster service reads from the store, through one
:class:`~agent.ledger.pg_query.ClusterView` (one repeatable-read transaction, so the
totals, the records and the milestones of a pass agree with each other).

- :func:`read_totals`: every run's and model's cluster-wide totals and the nodes, for
  ``/metrics`` (every replica, every pass), from the stored run totals (a few rows per
  run, whatever the number of records).
- :func:`compute_records`: the compute records the evaluation needs besides those
  totals (the leader, every pass): those that end within the rate window (an index on
  ``end_ns``), streamed through a server-side cursor, only the columns the evaluation
  uses (no body is read). A pass reads what the window holds, however long the
  history: the runs' totals, first starts and last ends come from the stored totals.
- :func:`run_records`: every compute record of some runs, read only when a crossing
  must be dated that no milestone holds yet (once per subject, regime and level).
- :func:`read_milestones` and :func:`cluster_head`: what the evaluation's notifications
  count deadlines from and cite.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from agent.accounting.band import Band
from agent.accounting.records import COMPUTE_KINDS, LedgerRecord
from agent.compliance.lineage import ModelInfo, Scope, model_view
from agent.ledger.pg_query import ClusterView
from agent.ledger.query import RunSummary

__all__ = ["ClusterTotals", "ModelTotal", "NodeState", "RunTotal", "cluster_head",
           "compute_records", "read_milestones", "read_totals", "run_records"]


@dataclass(frozen=True, slots=True)
class RunTotal:
    """A run's compute over every node (whole FLOP)."""

    run: str
    model: str
    category: str
    flop: Band[int]


@dataclass(frozen=True, slots=True)
class ModelTotal:
    """A model's compute in one regulatory scope, with its lineage (whole FLOP)."""

    model: str
    scope: str
    flop: Band[int]


@dataclass(frozen=True, slots=True)
class NodeState:
    """A node name; ``flagged``: the witness stopped accepting one of its keys."""

    node: str
    flagged: bool


@dataclass(frozen=True, slots=True)
class ClusterTotals:
    """The cluster-wide figures of one read, for ``/metrics``."""

    read_wall_seconds: float
    runs: tuple[RunTotal, ...] = ()
    models: tuple[ModelTotal, ...] = ()
    nodes: tuple[NodeState, ...] = ()


def read_totals(view: ClusterView, summaries: Mapping[str, RunSummary],
                models: Mapping[str, ModelInfo], scopes: Mapping[str, Scope],
                wall_s: float) -> ClusterTotals:
    """Run totals (``summaries``: :meth:`ClusterView.run_summaries`, the stored totals
    summed over the nodes), model totals per scope (with the configured and declared
    lineage, as the evaluation builds them) and the nodes (a node whose disk was
    replaced has two keys, one name)."""
    runs = tuple(RunTotal(s.run, s.model, s.category, s.flop)
                 for s in sorted(summaries.values(), key=lambda s: s.run))
    mv = model_view(models, scopes, summaries)
    model_totals = tuple(ModelTotal(name, scope, flop)
                         for name in mv.model_names()
                         for scope, flop in sorted(mv.totals(name).items()))
    flagged: dict[str, bool] = {}
    for n in view.nodes:
        flagged[n.node] = flagged.get(n.node, False) or n.flagged is not None
    nodes = tuple(NodeState(name, f) for name, f in sorted(flagged.items()))
    return ClusterTotals(wall_s, runs, model_totals, nodes)


# The evaluation needs of a record its run, model, category, GPU, times and FLOP band
# (its rates and crossings; the runs' sums and GPU time come from the stored totals).
# FLOP are NUMERIC (beyond 64 bits) and travel as text.
_COLUMNS = ("SELECT kind, run, model, category, gpu_uuid, start_ns, end_ns,"
            " flop_low::text, flop_central::text, flop_high::text FROM fl_records"
            " WHERE (kind = ANY(%s) OR (kind = 'discontinuity' AND run <> ''))")
_RECORDS = sql.SQL(_COLUMNS + " ORDER BY node_key, seq")
_RECORDS_ENDING_AFTER = sql.SQL(_COLUMNS + " AND end_ns > %s ORDER BY node_key, seq")
_RECORDS_OF_RUNS = sql.SQL(_COLUMNS + " AND run = ANY(%s) ORDER BY node_key, seq")

# Shared by every record read here, never written to: a dict per record would cost
# more than the rest of the record.
_NO_ASSUMPTIONS: dict[str, Any] = {}


def compute_records(view: ClusterView, *, ends_after_ns: int | None = None
                    ) -> Iterator[LedgerRecord]:
    """Every compute record of every node (:func:`agent.accounting.records.is_compute`),
    or only those that end after ``ends_after_ns``, node key by node key in append
    order, with the fields the evaluation reads of a record (the rest empty: no node
    name, energy, samples, GPU time, estimator or assumptions; the runs' sums are
    :meth:`ClusterView.run_summaries`).

    Raises:
        ClusterReadError: a read failed.
    """
    if ends_after_ns is None:
        return _records(view, _RECORDS, [list(COMPUTE_KINDS)])
    return _records(view, _RECORDS_ENDING_AFTER, [list(COMPUTE_KINDS), ends_after_ns])


def run_records(view: ClusterView, runs: Sequence[str]) -> Iterator[LedgerRecord]:
    """Every compute record of ``runs``, as :func:`compute_records` gives them.

    Raises:
        ClusterReadError: a read failed.
    """
    return _records(view, _RECORDS_OF_RUNS, [list(COMPUTE_KINDS), list(runs)])


def _records(view: ClusterView, query: sql.SQL | sql.Composed, params: list[Any]
             ) -> Iterator[LedgerRecord]:
    names: dict[str, str] = {}  # one string object per distinct run, model, GPU...

    def shared(text: str) -> str:
        return names.setdefault(text, text)

    for (kind, run, model, category, gpu, start, end, low, central,
         high) in view.stream(query, params):
        yield LedgerRecord(
            seq=0, kind=shared(kind), node="", run=shared(run), model=shared(model),
            category=shared(category), gpu_uuid=shared(gpu), gpu_index=-1,
            start_ns=start, end_ns=end, flop_low=int(low), flop_central=int(central),
            flop_high=int(high), energy_mj=0, samples=0, covered_ns=0, gap_ns=0,
            estimator="", assumptions=_NO_ASSUMPTIONS)


def read_milestones(view: ClusterView) -> dict[str, int]:
    """Every stored milestone (``fl_milestones``).

    Raises:
        ClusterReadError: a read failed.
    """
    return {str(key): int(at_ns)
            for key, at_ns in view.rows("SELECT key, at_ns FROM fl_milestones")}


def cluster_head(view: ClusterView) -> dict[str, Any]:
    """What a notification cites as its ledger: every node key's latest accepted head."""
    return {"nodes": [
        {"node": n.node, "key_fingerprint": n.fingerprint, "size": n.head_size,
         "root": base64.b64encode(n.head.root).decode() if n.head is not None else None,
         "timestamp_ns": n.head.timestamp_ns if n.head is not None else None,
         "flagged": n.flagged is not None}
        for n in view.nodes]}
