"""Cluster audit bundles: a run or a model exported from the store node by node, each
node's part the very bundle its own ledger gives, checked against its own key; the
totals the sum of the nodes' records; complete only if every node is. And the small
version of ``benchmarks.cluster_run512``: the store's total is exactly the node ledgers'
sum, and a node that withholds the end of its ledger is seen."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent.accounting.band import Band
from agent.ledger.bundle import (
    COMPLETE,
    INCOMPLETE,
    OPEN,
    _totals,
    export_bundle,
    verify_bundle,
)
from agent.ledger.cluster_bundle import (
    CLUSTER_BUNDLE_FORMAT,
    ClusterExportError,
    FlaggedNodesError,
    export_cluster_bundle,
    verify_cluster_bundle,
)
from agent.ledger.pg_query import ClusterReadError, ClusterView
from agent.ledger.pgconn import connect
from agent.ledger.replicate import node_key
from agent.ledger.signing import load_or_create_key, public_raw
from benchmarks import cluster_run512 as bench
from benchmarks.pgserver import PgServer
from tests.ledger.cluster_nodes import ClusterNodes, build_cluster


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> ClusterNodes:
    return build_cluster(tmp_path / "nodes", pg_url)


@pytest.fixture
def store(pg_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def key_of(ledger: Path) -> str:
    return node_key(public_raw(load_or_create_key(ledger.parent / "node.key").public_key()))


def export(url: str, out: Path, **selection: Any) -> Any:
    with ClusterView(connect(url), url) as view:
        return export_cluster_bundle(view, out, **selection)


def rewrite(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc))


def refresh_totals(doc: dict[str, Any]) -> None:
    """Make every stated total match what the bundle still holds, so that only the
    check under test can fail."""
    from agent.accounting.records import LedgerRecord

    for node in doc["nodes"]:
        node["totals"] = _totals([LedgerRecord.decode(e["body"].encode())
                                  for e in node["records"]])
    doc["totals"] = {k: sum(n["totals"][k] for n in doc["nodes"]) for k in doc["totals"]}


@pytest.mark.parametrize("selection", [{"run": "pt"}, {"model": "base"}, {"run": "ft"}])
def test_each_node_part_is_the_bundle_of_its_own_ledger(
        cluster: ClusterNodes, tmp_path: Path, selection: dict[str, str]) -> None:
    out = tmp_path / "cluster.json"
    done = export(cluster.url, out, **selection)
    doc = json.loads(out.read_text())
    assert doc["format"] == CLUSTER_BUNDLE_FORMAT
    assert doc["selection"] == selection
    holding = [n for n in ("node-1", "node-2")
               if selection != {"run": "ft"} or n == "node-1"]
    assert [n.node for n in done.nodes] == holding
    assert doc["node_keys"] == [key_of(cluster.ledgers[n]) for n in holding]
    for node, part in zip(holding, doc["nodes"], strict=True):
        own = tmp_path / f"{node}.json"
        export_bundle(cluster.ledgers[node], own, **selection)
        assert part == json.loads(own.read_text())
        # Cut out of the cluster bundle, a node's part is a bundle like any other.
        alone = tmp_path / f"{node}-alone.json"
        alone.write_text(json.dumps(part))
        assert verify_bundle(alone).ok
    summed = {k: sum(n["totals"][k] for n in doc["nodes"]) for k in doc["totals"]}
    assert doc["totals"] == summed == done.totals


def test_the_cluster_bundle_verifies_with_its_totals_the_sum_of_the_nodes(
        cluster: ClusterNodes, tmp_path: Path) -> None:
    out = tmp_path / "pt.json"
    export(cluster.url, out, run="pt")
    report = verify_cluster_bundle(out)
    assert report.ok, [n.report.problems for n in report.nodes] + report.problems
    assert [n.node for n in report.nodes] == ["node-1", "node-2"]
    assert report.records == 8
    assert report.statements == 1
    assert report.totals["flop_central"] == 6 * 10**15 + 5 * 10**15 + 10**20
    # The runs of these ledgers were never closed: open, so the whole is not proven.
    assert all(n.report.run_states == [OPEN] for n in report.nodes)
    assert report.complete is None
    assert report.completeness_line().startswith("NOT complete: 0 of 2 node(s) proven "
                                                 "complete; not node-1 (key ")


def test_tampering_with_a_cluster_bundle_fails_it(cluster: ClusterNodes,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "pt.json"
    export(cluster.url, out, run="pt")
    original = json.loads(out.read_text())

    def verify(doc: dict[str, Any]) -> list[str]:
        rewrite(out, doc)
        report = verify_cluster_bundle(out)
        assert not report.ok
        return report.problems + [p for n in report.nodes for p in n.report.problems]

    doc = json.loads(json.dumps(original))
    body = doc["nodes"][1]["records"][0]["body"]
    doc["nodes"][1]["records"][0]["body"] = body.replace('"samples":5', '"samples":6')
    refresh_totals(doc)
    problems = verify(doc)
    assert any(p.startswith("node node-2 (key ") and "not in the signed ledger" in p
               for p in problems), problems

    doc = json.loads(json.dumps(original))
    doc["node_keys"][0] = "0" * 64
    assert any("node key 0000000000000000000000000000000000000000000000000000000000000000 "
               "is not the SHA-256 of the bundle's public key" in p for p in verify(doc))

    doc = json.loads(json.dumps(original))
    doc["nodes"].append(doc["nodes"][0])
    doc["node_keys"].append(doc["node_keys"][0])
    refresh_totals(doc)
    assert any("the same node key as node bundle 0: its records would count twice" in p
               for p in verify(doc))

    doc = json.loads(json.dumps(original))
    doc["totals"]["flop_central"] += 1
    assert verify(doc) == ["stated totals do not equal the sum of the nodes' records"]

    doc = json.loads(json.dumps(original))
    doc["nodes"][0]["selection"] = {"run": "ft"}
    problems = verify(doc)
    assert any("not of the cluster bundle's selection" in p for p in problems)

    doc = json.loads(json.dumps(original))
    doc["node_keys"].pop()
    assert "2 node bundle(s) but 1 node key(s)" in verify(doc)

    for broken in ({"format": CLUSTER_BUNDLE_FORMAT, "nodes": 5}, [1, 2]):
        out.write_text(json.dumps(broken))
        report = verify_cluster_bundle(out)
        assert not report.ok
        assert report.nodes == []


def test_a_flagged_node_stops_the_export_unless_allowed(
        cluster: ClusterNodes, store: psycopg.Connection, tmp_path: Path) -> None:
    key = key_of(cluster.ledgers["node-2"])
    store.execute("UPDATE fl_nodes SET flagged = 'fork: another record 3' WHERE node_key = %s",
                  (key,))
    out = tmp_path / "pt.json"
    with pytest.raises(FlaggedNodesError, match=r"node-2 \(key [0-9a-f]{16}\): fork: another "
                                                r"record 3; give --allow-flagged"):
        export(cluster.url, out, run="pt")
    assert list(tmp_path.iterdir()) == [tmp_path / "nodes"]  # nothing written
    done = export(cluster.url, out, run="pt", allow_flagged=True)
    assert [n.node for n in done.flagged] == ["node-2"]
    assert json.loads(out.read_text())["flagged"] == [
        {"node": "node-2", "node_key": key, "reason": "fork: another record 3"}]
    report = verify_cluster_bundle(out)
    assert report.ok
    assert report.flagged == [f"node node-2 (key {key[:16]}): fork: another record 3"]


def test_a_store_that_lost_a_record_exports_nothing_and_shows_the_gap(
        cluster: ClusterNodes, store: psycopg.Connection, tmp_path: Path) -> None:
    key = key_of(cluster.ledgers["node-1"])
    # Record 2 is node-1's second record of pt (run_seq 1): the store loses it.
    row = store.execute("SELECT body FROM fl_records WHERE node_key = %s AND seq = 2",
                        (key,)).fetchone()
    assert row is not None
    assert b'"run_seq":1' in bytes(row[0])
    store.execute("DELETE FROM fl_records WHERE node_key = %s AND seq = 2", (key,))
    out = tmp_path / "pt.json"
    with pytest.raises(ClusterReadError, match=r"node node-1 \(key [0-9a-f]{16}\): record 2 "
                                               "of the 9 its latest signed head covers is "
                                               "missing"):
        export(cluster.url, out, run="pt")
    assert not out.exists()
    with ClusterView(connect(cluster.url), cluster.url) as view:
        states = {c.node.node: c.of for c in view.run_completeness("pt")}
    assert states["node-1"].state == INCOMPLETE
    assert states["node-1"].missing == (1,)
    assert states["node-1"].line == "INCOMPLETE: run pt on node node-1: run_seq 1 missing"
    assert states["node-2"].state == OPEN
    assert states["node-2"].run_seqs == (0, 2)


def test_kept_totals_that_disagree_with_the_records_export_nothing(
        cluster: ClusterNodes, store: psycopg.Connection, tmp_path: Path) -> None:
    store.execute("UPDATE fl_run_totals SET flop_central = flop_central + 1 WHERE run = 'pt'"
                  " AND node_key = %s", (key_of(cluster.ledgers["node-2"]),))
    out = tmp_path / "pt.json"
    with pytest.raises(ClusterExportError, match=r"node-2 .* the totals the store keeps for "
                                                 r"run 'pt'"):
        export(cluster.url, out, run="pt")
    assert not out.exists()


def test_nothing_selected_is_said(cluster: ClusterNodes, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no record of run 'nothing'"):
        export(cluster.url, tmp_path / "x.json", run="nothing")
    with pytest.raises(ValueError, match="no directory"):
        export(cluster.url, tmp_path / "no" / "x.json", run="pt")


def test_small_cluster_run_totals_exact_and_withholding_detected(
        tmp_path: Path, pg_server: PgServer) -> None:
    """benchmarks.cluster_run512 at 16 nodes x 40 records."""
    pg_server.start()
    ledgers = bench.build_cluster(tmp_path / "nodes", 16, 40, processes=1)
    url = pg_server.create_database("run16")
    bench.replicate_all(url, ledgers)
    store, summed = bench.store_total(url), bench.ledgers_sum(ledgers)
    assert summed.records == 16 * 40
    assert summed.flop.central > 2**64  # NUMERIC all the way
    assert store == summed  # exactly: integers
    done, report, _, _ = bench.export_and_verify(url, tmp_path / "run.json")
    assert len(done.nodes) == 16
    assert report.ok
    assert report.complete is True
    assert all(n.report.run_states == [COMPLETE] for n in report.nodes)
    t = report.totals
    assert (Band(t["flop_low"], t["flop_central"], t["flop_high"]), t["energy_mj"],
            t["records"]) == (summed.flop, summed.energy_mj, summed.records)
    status, lines = bench.show_lines(url)
    assert status == 0
    assert ("complete  on all 16 node(s): each closed the run and the store holds every "
            "record its latest close counts") in lines

    # One node ships only its first batches: its later records and its close never arrive.
    withheld = ledgers[5]
    url2 = pg_server.create_database("withheld")
    bench.replicate_all(url2, ledgers, withhold=withheld)
    _, report2, _, _ = bench.export_and_verify(url2, tmp_path / "withheld.json")
    assert report2.ok  # every signature and proof holds: what is there is sound
    assert report2.complete is None
    states = {n.node: n.report.run_states for n in report2.nodes}
    assert states.pop("node-0005") == [OPEN]
    assert set(map(tuple, states.values())) == {(COMPLETE,)}
    assert report2.completeness_line().startswith(
        "NOT complete: 15 of 16 node(s) proven complete; not node-0005 (key ")
    shipped = bench.WITHHELD_STEPS * bench.WITHHELD_BATCH
    line = (f"open: run {bench.RUN} on node node-0005: {shipped} record(s) so far (run_seq "
            f"0..{shipped - 1}), the run has not been closed on this node")
    node = next(n for n in report2.nodes if n.node == "node-0005")
    assert node.report.completeness == [line]
    status, lines = bench.show_lines(url2)
    assert status == 0  # open is no fault: more may come
    assert ("complete  NOT proven: 15 of 16 node(s) complete; 1 open (not closed)"
            in lines)
    assert f"  key {key_of(withheld)[:16]}  {line}" in lines
    found = {c.node.node: c.of for c in bench.completeness(url2)}
    assert found["node-0005"].closed is False
    assert found["node-0005"].close_seq is None
    assert found["node-0004"].closed is True
    assert found["node-0004"].close_records == 40


def test_an_edited_record_in_the_store_exports_nothing(
        cluster: ClusterNodes, store: psycopg.Connection, tmp_path: Path) -> None:
    store.execute("UPDATE fl_records SET body = convert_to(replace(convert_from(body, 'UTF8'),"
                  " '\"samples\":5', '\"samples\":6'), 'UTF8') WHERE node_key = %s AND seq = 2",
                  (key_of(cluster.ledgers["node-2"]),))
    out = tmp_path / "pt.json"
    with pytest.raises(ClusterExportError, match=r"node node-2 \(key [0-9a-f]{16}\): record 2: "
                                                 "its leaf hash does not match its body"):
        export(cluster.url, out, run="pt")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "nodes"]  # no temporary file left
