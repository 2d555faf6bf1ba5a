"""The cluster ledger read back from a real, throwaway PostgreSQL: its figures are the
sums of the node ledgers' own, read at one moment; ``verify`` passes a sound store and
names the node and the record of every edit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from agent.accounting.records import LedgerRecord
from agent.ledger.pg_query import (
    ClusterReadError,
    ClusterView,
    is_cluster_url,
    merge_meta,
    url_problem,
)
from agent.ledger.pg_verify import ClusterReport, verify_cluster_url
from agent.ledger.query import RunSummary, read_view, statements
from agent.ledger.replicate import node_key
from agent.ledger.signing import load_or_create_key, public_raw
from agent.ledger.store import Ledger
from tests.ledger.cluster_nodes import PT, ClusterNodes, build_cluster, replicate
from tests.ledger_helpers import SECOND, T0, record


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> ClusterNodes:
    return build_cluster(tmp_path, pg_url)


@pytest.fixture
def store(pg_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def key_of(cluster: ClusterNodes, node: str) -> str:
    key = load_or_create_key(cluster.ledgers[node].parent / "node.key")
    return node_key(public_raw(key.public_key()))


def summed(cluster: ClusterNodes, run: str | None = None) -> dict[str, RunSummary]:
    """Each run summed over the node ledgers, as each ledger itself sums it."""
    out: dict[str, RunSummary] = {}
    for path in cluster.ledgers.values():
        view = read_view(path, run=run)
        for r in view.sealed:
            out.setdefault(r.run, RunSummary(r.run)).add(r)
    return out


def amounts(s: RunSummary) -> tuple[object, ...]:
    return (s.run, s.model, s.category, s.flop, s.energy_mj, s.gap_ns, s.covered_ns,
            s.samples, s.records, s.first_ns, s.last_ns, sorted(s.nodes))


def test_run_totals_are_the_sums_of_the_node_ledgers(cluster: ClusterNodes) -> None:
    want = summed(cluster)
    assert want["pt"].flop.central > 2**64  # beyond 64 bits, exact all the same
    with ClusterView.open(cluster.url) as view:
        got = view.summaries()
        assert got == view.run_summaries()
        assert {n.node for n in view.nodes} == {"node-1", "node-2"}
        assert all(n.flagged is None and n.head_size == n.records for n in view.nodes)
    assert sorted(got) == sorted(want) == ["ft", "pt", "solo"]
    for name, s in want.items():
        assert amounts(got[name]) == amounts(s), name
        assert got[name].gpus == set()  # not in the totals: only for a selected run
    assert got["solo"].gap_ns == 5 * SECOND  # the gap record counts, with no samples
    # pt runs on both nodes; node-1's fuller declaration wins.
    assert got["pt"].meta == PT.meta
    assert got["ft"].meta == {"base_models": ["base"]}


def test_a_selected_run_is_read_record_by_record(cluster: ClusterNodes) -> None:
    want = summed(cluster, run="pt")["pt"]
    local = [r for path in cluster.ledgers.values() for r in read_view(path, run="pt").sealed]
    with ClusterView.open(cluster.url, run="pt") as view:
        assert sorted(r.encode() for r in view.sealed) == sorted(r.encode() for r in local)
        got = view.summaries()["pt"]
        totals = view.run_summaries(run="pt")["pt"]
        per_node = {t.node.node: t.summary for t in view.node_totals(run="pt")}
        said = view.statements()
    assert amounts(got) == amounts(want) == amounts(totals)
    assert got.gpus == totals.gpus == want.gpus == {"GPU-00000000", "GPU-00000001",
                                                    "GPU-00000010"}
    assert totals.estimators == want.estimators
    assert totals.spec_bases == want.spec_bases
    assert got.meta == PT.meta
    for node, path in cluster.ledgers.items():
        mine = read_view(path, run="pt").summaries()["pt"]
        assert (per_node[node].flop, per_node[node].records) == (mine.flop, mine.records)
    # The declaration is a statement: read as one, in no total.
    assert [r.kind for r in said] == ["declaration"]
    assert said == statements(cluster.ledgers["node-1"], run="pt")


def test_records_stream_through_a_server_side_cursor(cluster: ClusterNodes) -> None:
    with ClusterView.open(cluster.url) as view:
        with pytest.raises(ValueError, match="one run or one model"):
            view.records()
        stream = view.iter_records(model="base")
        first = next(stream)
        open_cursors = view.rows("SELECT name FROM pg_cursors")
        rest = list(stream)
    assert [name for (name,) in open_cursors if str(name).startswith("fl_read_")]
    assert len([first, *rest]) == summed(cluster)["pt"].records


def test_one_view_is_one_moment(cluster: ClusterNodes) -> None:
    path = cluster.ledgers["node-2"]
    with ClusterView.open(cluster.url, run="pt") as view:
        before = (view.summaries(), view.run_summaries(), view.nodes)
        # node-2 writes on and replicates while the view is open.
        ledger = Ledger(path, "node-2", load_or_create_key(path.parent / "node.key"))
        ledger.append([replace(record(10, 100, 105, run="pt", model="base"), node="node-2")],
                      T0 + 105 * SECOND, {"pt": PT})
        ledger.close()
        replicate(path, cluster.url)
        assert (view.run_summaries(), view.nodes) == before[1:]
        assert view.summaries() == before[0]
        assert len(view.records(run="pt")) == before[0]["pt"].records
    with ClusterView.open(cluster.url) as view:
        assert view.summaries()["pt"].records == before[1]["pt"].records + 1


def test_merged_metadata_takes_each_key_from_the_fullest_row() -> None:
    assert merge_meta([{"a": 1}, {"a": 2, "b": 3}, {"c": 4}]) == {"a": 2, "b": 3, "c": 4}
    assert merge_meta([]) == {}


def test_urls() -> None:
    assert is_cluster_url("postgresql://u@h/db")
    assert is_cluster_url("postgres://h")
    assert not is_cluster_url("state/ledger.sqlite")
    assert url_problem("postgresql://u@h:5432,h2:5433/db?sslmode=verify-full") is None
    for url, said in [("postgresql://", "not a postgresql:// URL"),
                      ("postgresql://u@h:abc/db", "port 'abc'"),
                      ("postgresql://u@h:70000/db", "port '70000'"),
                      ("postgresql://u@h/db?nonsense=1", "not a valid PostgreSQL URL"),
                      ("postgresql://u:pw@h/db", "carries a password")]:
        assert said in (url_problem(url) or ""), url


def test_a_database_without_the_tables_is_one_clear_error(pg_url: str) -> None:
    with pytest.raises(ClusterReadError, match="holds no cluster ledger"):
        ClusterView.open(pg_url)


# ---------------------------------------------------------------- verify


def failures(report: ClusterReport) -> list[str]:
    return report.problems + [p for n in report.nodes for p in n.problems]


def test_verify_passes_a_sound_store(cluster: ClusterNodes) -> None:
    report = verify_cluster_url(cluster.url)
    assert report.ok, failures(report)
    lines = sorted(n.line() for n in report.nodes)
    assert lines[0].startswith("node node-1 (key ")
    assert lines[0].endswith(": 9 records, 3 heads: OK")
    assert sorted(n.statements_text() for n in report.nodes) == ["1 declaration", "none"]
    assert lines[1].endswith(": 5 records, 3 heads: OK")


def edit_body(store: psycopg.Connection, key: str, seq: int, **changes: object) -> None:
    (body,) = store.execute("SELECT body FROM fl_records WHERE node_key = %s AND seq = %s",
                            (key, seq)).fetchone() or (None,)
    edited = replace(LedgerRecord.decode(bytes(body)), **changes).encode()  # type: ignore[arg-type]
    store.execute("UPDATE fl_records SET body = %s WHERE node_key = %s AND seq = %s",
                  (edited, key, seq))


def test_verify_names_the_node_and_record_of_an_edited_body(
        cluster: ClusterNodes, store: psycopg.Connection) -> None:
    key = key_of(cluster, "node-2")
    edit_body(store, key, 3, flop_central=10**15 + 1)
    report = verify_cluster_url(cluster.url)
    assert not report.ok
    bad = [n for n in report.nodes if not n.ok]
    assert [n.node.node for n in bad] == ["node-2"]
    said = "\n".join(bad[0].problems)
    assert "node node-2 (key " in said
    assert "record 3: stored leaf hash does not match its body" in said
    assert "record 3: column flop_central" in said
    assert "head of size 4: its root does not match the records 0..3" in said


def test_verify_fails_a_head_with_a_bad_signature(cluster: ClusterNodes,
                                                 store: psycopg.Connection) -> None:
    key = key_of(cluster, "node-1")
    store.execute("UPDATE fl_heads SET signature = %s WHERE node_key = %s AND size = 4",
                  (bytes(64), key))
    report = verify_cluster_url(cluster.url)
    said = failures(report)
    assert any("node node-1" in p and "head of size 4: bad signature" in p for p in said), said


def test_verify_fails_an_edited_run_total(cluster: ClusterNodes,
                                          store: psycopg.Connection) -> None:
    key = key_of(cluster, "node-2")
    store.execute("UPDATE fl_run_totals SET flop_central = flop_central + 1"
                  " WHERE node_key = %s AND run = 'pt'", (key,))
    said = failures(verify_cluster_url(cluster.url))
    assert len(said) == 1
    assert "node node-2" in said[0]
    assert "fl_run_totals of run 'pt': flop_central" in said[0]


@pytest.mark.parametrize(("edit", "said"), [
    ("DELETE FROM fl_records WHERE node_key = %(k)s AND seq = 2",
     "records are not contiguous: record 3 follows record 1 (records 2..2 missing)"),
    ("UPDATE fl_nodes SET records = records + 1 WHERE node_key = %(k)s",
     "fl_nodes says 6 records held, the store holds 5"),
    ("UPDATE fl_nodes SET frontier = '[]' WHERE node_key = %(k)s", "Merkle frontier"),
    ("UPDATE fl_nodes SET head_size = 2 WHERE node_key = %(k)s",
     "fl_nodes' head (size 2) is not the latest of fl_heads (size 5)"),
    ("UPDATE fl_records SET run = 'elsewhere' WHERE node_key = %(k)s AND seq = 0",
     "record 0: column run ('elsewhere') disagrees with its body ('pt')"),
    ("UPDATE fl_runs SET meta = 'garbage' WHERE node_key = %(k)s AND run = 'solo'",
     "fl_runs: the metadata of run 'solo' is not a JSON object"),
    ("UPDATE fl_nodes SET flagged = 'fork: another root at 3' WHERE node_key = %(k)s",
     "flagged by the witness: fork: another root at 3"),
    ("DELETE FROM fl_heads WHERE node_key = %(k)s AND size = 5",
     "records 4..4 lie beyond the latest signed head"),
    ("UPDATE fl_nodes SET public_key = %(other)s WHERE node_key = %(k)s",
     "is not the SHA-256 of its public key"),
])
def test_verify_names_each_inconsistency(cluster: ClusterNodes, store: psycopg.Connection,
                                         edit: str, said: str) -> None:
    other = load_or_create_key(cluster.ledgers["node-1"].parent / "node.key")
    store.execute(edit, {"k": key_of(cluster, "node-2"), "other": public_raw(other.public_key())})
    report = verify_cluster_url(cluster.url)
    problems = failures(report)
    assert any(said in p and "node node-2" in p for p in problems), problems
    assert all(n.ok for n in report.nodes if n.node.node == "node-1")


def test_verify_lists_the_witness_events(cluster: ClusterNodes,
                                         store: psycopg.Connection) -> None:
    store.execute("INSERT INTO fl_witness_events (node_key, node, at_ns, kind, detail)"
                  " VALUES (%s, 'node-2', %s, 'new-key', 'noted')",
                  (key_of(cluster, "node-2"), T0))
    report = verify_cluster_url(cluster.url)
    assert report.ok
    assert report.event_lines() == [
        f"witness 2025-06-15 15:06:40Z node node-2 (key {key_of(cluster, 'node-2')[:16]}): "
        "new-key: noted"]


def test_verify_of_a_store_without_the_tables(pg_url: str) -> None:
    report = verify_cluster_url(pg_url)
    assert not report.ok
    assert "holds no cluster ledger" in report.problems[0]



def test_verify_names_a_missing_table(cluster: ClusterNodes, store: psycopg.Connection) -> None:
    store.execute("DROP TABLE fl_run_totals")
    report = verify_cluster_url(cluster.url)
    assert failures(report) == [f"{cluster.url}: table(s) fl_run_totals missing: not a "
                                "complete cluster ledger"]
