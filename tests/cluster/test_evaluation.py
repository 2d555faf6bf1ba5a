"""The cluster's evaluation is the agent's, on the union of the node ledgers: the same
figures, outlooks, milestones and notifications as the agent's own watcher finds on one
ledger holding every node's records."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent.cluster.evaluator import ClusterWatcher, StoreMilestones
from agent.cluster.reading import compute_records, read_milestones, read_totals, run_records
from agent.compliance.evaluate import Evaluation, evaluate
from agent.compliance.milestones import read_milestones as read_file_milestones
from agent.compliance.thresholds import Registry, load_registry
from agent.compliance.watcher import ThresholdWatcher
from agent.ledger.pg_query import ClusterView
from agent.ledger.pgconn import connect, ensure_schema
from agent.ledger.query import iter_records
from tests.cluster import nodes
from tests.cluster.nodes import MODELS, NOW_NS, SETTINGS
from tests.e2e.test_thresholds import budget_registry

Enqueued = list[tuple[str, str, float, str, dict[str, object]]]


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> nodes.Nodes:
    return nodes.build(tmp_path, pg_url)


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    c = connect(pg_url, autocommit=True)
    ensure_schema(c)
    yield c
    c.close()


def collector(into: Enqueued) -> Any:
    def enqueue(key: str, kind: str, level: float, severity: str, e: Evaluation,
                payload: dict[str, object]) -> bool:
        into.append((key, kind, level, severity, payload))
        return True
    return enqueue


def by_subject(evaluations: list[Evaluation]) -> dict[str, Evaluation]:
    return {e.key_prefix: e for e in evaluations}


def sent(enqueued: Enqueued) -> list[tuple[object, ...]]:
    """What was enqueued, without the ledger cited, in key order."""
    return sorted(((*e[:4], without_ledger(e[4])) for e in enqueued), key=repr)


def without_ledger(payload: dict[str, object]) -> dict[str, object]:
    """A payload without what it cites as the ledger (a node's head, or every node's)."""
    return {k: v for k, v in payload.items() if k != "ledger"}


def test_cluster_evaluation_is_the_agents_on_the_union(
        cluster: nodes.Nodes, pg_url: str, conn: psycopg.Connection[Any]) -> None:
    registry = load_registry()
    agent_sent: Enqueued = []
    agent = ThresholdWatcher(SETTINGS, MODELS, registry, cluster.union,
                             enqueue=collector(agent_sent), wall_ns=lambda: NOW_NS)
    expected = agent.run_once()
    cluster_sent: Enqueued = []
    watcher = ClusterWatcher(SETTINGS, MODELS, registry, StoreMilestones(lambda: conn),
                             enqueue=collector(cluster_sent), wall_ns=lambda: NOW_NS)
    with ClusterView.open(pg_url) as view:
        state = watcher.evaluate_view(view, view.run_summaries())

    assert expected is not None
    # The same rows (the cluster orders its runs by name, a node by first record).
    assert sorted(state.rows, key=repr) == sorted(expected.rows, key=repr)
    assert agent.snapshot is not None
    assert watcher.snapshot is not None
    assert by_subject(watcher.snapshot.evaluations) == by_subject(agent.snapshot.evaluations)
    # What is notified, and what starts a deadline, is the same.
    assert sent(cluster_sent) == sent(agent_sent)
    with ClusterView.open(pg_url) as view:
        assert read_milestones(view) == read_file_milestones(cluster.union)
    keys = {e[0] for e in cluster_sent}
    # The union crosses what no node crosses alone, and the modifier is judged by its
    # share of its base (the one-third rule), with the plan's projection known.
    assert "model:base|eu-gpai-indicative|level:0.5" in keys
    assert "model:base|eu-gpai-indicative|will-be-met" in keys
    assert any(k.startswith("model:chat|eu-modifier") for k in
               {f"{r.subject_type}:{r.subject}|{r.regime}" for r in state.rows})
    cited = cluster_sent[0][4]["ledger"]
    assert isinstance(cited, dict)
    assert sorted(n["node"] for n in cited["nodes"]) == ["node-1", "node-2"]


def levels_reached(registry: Registry, ledger: Path) -> set[str]:
    snap = evaluate(MODELS, registry, ledger, NOW_NS)
    return {f"{e.key_prefix}|{level:g}" for e in snap.evaluations
            for level in e.assessment.levels_reached}


def test_no_node_alone_reaches_what_the_cluster_does(cluster: nodes.Nodes) -> None:
    registry = load_registry()
    union = levels_reached(registry, cluster.union)
    assert "model:base|eu-gpai-indicative|0.5" in union
    for ledger in cluster.ledgers.values():
        assert "model:base|eu-gpai-indicative|0.5" not in levels_reached(registry, ledger)


def test_the_records_read_are_every_nodes_compute_records_in_store_order(
        cluster: nodes.Nodes, pg_url: str) -> None:
    expected = [r for path in sorted(cluster.ledgers.values(), key=nodes.node_key)
                for r in iter_records(path)]
    with ClusterView.open(pg_url) as view:
        read = list(compute_records(view))
    fields = ("kind", "run", "model", "category", "gpu_uuid", "start_ns", "end_ns",
              "flop_low", "flop_central", "flop_high")
    assert [tuple(getattr(r, f) for f in fields) for r in read] == [
        tuple(getattr(r, f) for f in fields) for r in expected]
    assert any(r.kind == "gap" for r in read)


def test_totals_for_metrics_are_the_cluster_wide_sums(cluster: nodes.Nodes,
                                                      pg_url: str) -> None:
    registry = load_registry()
    by_run: dict[str, list[int]] = {}
    for r in iter_records(cluster.union):
        by_run.setdefault(r.run, [0, 0, 0])
        for i, v in enumerate(r.flop):
            by_run[r.run][i] += v
    with ClusterView.open(pg_url) as view:
        totals = read_totals(view, view.run_summaries(), MODELS, registry.scopes, 1.0)
    assert {t.run: list(t.flop) for t in totals.runs} == by_run
    assert [n.node for n in totals.nodes] == ["node-1", "node-2"]
    cumulative = {m.model: m.flop for m in totals.models if m.scope == "cumulative"}
    # chat inherits base's compute where the scope inherits.
    assert cumulative["chat"].central == by_run["ft"][1] + by_run["pt"][1]


# The records end 5 s and 10 s after T0, NOW_NS is 20 s after it: a window of 12 s cuts
# between the two checkpoints, one of 6 s holds no record (the runs look stopped).
@pytest.mark.parametrize("window_s", [6.0, 12.0])
def test_a_pass_reads_only_the_window_and_finds_what_reading_everything_finds(
        cluster: nodes.Nodes, pg_url: str, conn: psycopg.Connection[Any],
        window_s: float, tmp_path: Path) -> None:
    """The rates need the records of the last window only; the totals, first starts and
    last ends come from the stored totals, and a crossing no milestone holds yet is
    dated on its runs' whole history. Windows that cut through the records give the
    agent's evaluation of the whole file, crossings before the window included."""
    settings = replace(SETTINGS, window_s=window_s)
    # A budget that base and pt pass with the first checkpoint's records (5 s).
    registry = load_registry(budget_registry(tmp_path, 2e22))
    agent_sent: Enqueued = []
    agent = ThresholdWatcher(settings, MODELS, registry, cluster.union,
                             enqueue=collector(agent_sent), wall_ns=lambda: NOW_NS)
    agent.run_once()
    cluster_sent: Enqueued = []
    watcher = ClusterWatcher(settings, MODELS, registry, StoreMilestones(lambda: conn),
                             enqueue=collector(cluster_sent), wall_ns=lambda: NOW_NS)
    cut = NOW_NS - round(window_s * 1e9)
    with ClusterView.open(pg_url) as view:
        everything = list(compute_records(view))
        window = list(compute_records(view, ends_after_ns=cut))
        watcher.evaluate_view(view, view.run_summaries())
    assert window == [r for r in everything if r.end_ns > cut]
    assert len(window) < len(everything)
    assert (len(window) > 0) == (window_s == 12.0)
    assert agent.snapshot is not None
    assert watcher.snapshot is not None
    assert by_subject(watcher.snapshot.evaluations) == by_subject(agent.snapshot.evaluations)
    assert sent(cluster_sent) == sent(agent_sent)
    with ClusterView.open(pg_url) as view:
        stored = read_milestones(view)
    assert stored == read_file_milestones(cluster.union)
    # Crossings older than the window were dated from the runs' whole history.
    assert any(at < cut for at in stored.values()), (stored, cut)


def test_run_records_are_the_runs_compute_records_in_store_order(
        cluster: nodes.Nodes, pg_url: str) -> None:
    with ClusterView.open(pg_url) as view:
        everything = list(compute_records(view))
        assert list(run_records(view, ["ft"])) == [r for r in everything if r.run == "ft"]
        assert list(run_records(view, ["pt", "ft"])) == everything
        assert list(run_records(view, ["nothing"])) == []
