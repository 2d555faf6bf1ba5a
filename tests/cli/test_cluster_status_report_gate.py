"""``status``, ``report`` and ``gate`` on the cluster store (``--ledger
postgresql://...``): each says on the store what it says on one node ledger holding
every node's records (the union), in FLOP figures and decisions; a flagged node is a
WARNING and exit 1 (``gate``: a verification failure, exit 1); a store that cannot be
reached is one line. The gate's attestations are the latest across the nodes by the
time each node recorded them, and its decision is written nowhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent import figures
from agent.accounting.records import LedgerRecord, make_statement
from agent.cli.thresholds import evaluate_store
from agent.compliance.attestations import attestation_payload
from agent.compliance.thresholds import load_registry
from agent.ledger.pg_query import ClusterView
from agent.ledger.query import iter_records, read_view, statements
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from agent.reports.report import build_cluster_report, build_report
from agent.sources.specs import load_spec_table
from benchmarks.pgserver import PgServer
from tests.cli.conftest import Flopledger
from tests.cluster import nodes
from tests.cluster.nodes import E21, MODELS, RUNS
from tests.ledger.cluster_nodes import replicate
from tests.ledger_helpers import SECOND, T0, record
from tests.paths import REPO

# After every record: the runs are idle, as they are at the wall-clock time the commands
# read (their records are of 2025).
NOW_NS = T0 + 3600 * SECOND

CONFIG = '[models.chat]\nbase_models = ["base"]\nrole = "modifier"\n'

# A tier only the cluster-wide total reaches: base's high bound over both nodes is
# 5.8e22 FLOP in scope cumulative; node-1 alone holds 2.6e22 of it.
POLICY = """
estimate = "high"

[[tiers]]
name = "cluster-scale"
min_flop = 5e22
scope = "cumulative"
modes = ["staged", "structured-access", "internal"]
[tiers.evaluations]
staged = ["red-team", "safety"]

[default]
name = "small"
modes = ["open-weights", "staged", "structured-access", "internal"]
"""


@dataclass(frozen=True)
class Cluster:
    url: str
    ledgers: dict[str, Path]  # by node name
    union: Path  # every node's records and attestations in one ledger file
    config: Path
    policy: Path

    def replicate(self) -> None:
        for path in self.ledgers.values():
            replicate(path, self.url)


def attest(ledger: Path, node: str, evaluation: str, result: str, at_s: float,
           model: str = "base") -> None:
    """An attestation the node records at ``T0 + at_s`` (its statement's time)."""
    at_ns = T0 + round(at_s * SECOND)
    store = Ledger(ledger, node, load_or_create_key(ledger.parent / "node.key"))
    try:
        store.append([make_statement(
            "attestation", node=node, time_ns=at_ns, model=model,
            payload=attestation_payload(evaluation=evaluation, result=result, score=None,
                                        evidence=f"https://evals.example/{node}", by="alice",
                                        time_ns=at_ns, message_id=uuid.uuid4().hex))], at_ns)
    finally:
        store.close()


def grow(ledger: Path, node: str, at_s: float, central: int) -> LedgerRecord:
    """One more compute record of ``pt`` on the node, sealed at ``T0 + at_s``."""
    r = replace(record(10, at_s - 5, at_s, run="pt", model="base", central=central),
                node=node, category="pre-training")
    store = Ledger(ledger, node, load_or_create_key(ledger.parent / "node.key"))
    try:
        store.append([r], T0 + round(at_s * SECOND), run_meta={"pt": RUNS["pt"]})
    finally:
        store.close()
    return r


def union_ledger(directory: Path, ledgers: dict[str, Path]) -> Path:
    """Every node's compute records in the store's order (node key, then seq), then
    every attestation in the order the cluster's gate takes as latest (the time the node
    recorded it, node, seq): one ledger's record numbers then agree with that order."""
    path = directory / "union" / "ledger.sqlite"
    path.parent.mkdir(parents=True)
    store = Ledger(path, "union", load_or_create_key(path.parent / "node.key"))
    try:
        for source in sorted(ledgers.values(), key=nodes.node_key):
            records = list(iter_records(source))
            store.append(records, max(r.end_ns for r in records), run_meta=RUNS)
        said = sorted((s for source in ledgers.values()
                       for s in statements(source, kinds=("attestation",))),
                      key=lambda s: (s.start_ns, s.node, s.seq))
        store.append(said, NOW_NS, run_meta=RUNS)
    finally:
        store.close()
    return path


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Cluster:
    """The two nodes of tests/cluster/nodes.py (base at 0.58 of 1e23 FLOP only over
    both), node-1 attesting red-team and node-2 safety, replicated; and their union."""
    ledgers = nodes.write_nodes(tmp_path)
    attest(ledgers["node-1"], "node-1", "red-team", "pass", 30)
    attest(ledgers["node-2"], "node-2", "safety", "pass", 30)
    config, policy = tmp_path / "agent.toml", tmp_path / "release.toml"
    config.write_text(CONFIG)
    policy.write_text(POLICY)
    c = Cluster(pg_url, ledgers, tmp_path / "union", config, policy)
    c.replicate()
    return replace(c, union=union_ledger(tmp_path, ledgers))


@pytest.fixture
def store(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def key_of(c: Cluster, node: str) -> str:
    return nodes.node_key(c.ledgers[node])


def flag(store: psycopg.Connection[Any], c: Cluster, node: str) -> str:
    """Flag the node as the witness does; the WARNING the read commands print."""
    store.execute("UPDATE fl_nodes SET flagged = 'backwards: rolled back' WHERE node_key = %s",
                  (key_of(c, node),))
    return (f"WARNING: node {node}: flagged by the witness: backwards: rolled back "
            f"(key {key_of(c, node)[:16]})")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


# ---------------------------------------------------------------------------------------
# status


def test_status_on_the_store_is_the_unions(cluster: Cluster, flopledger: Flopledger) -> None:
    config = str(cluster.config)
    heads = {}
    for name, path in cluster.ledgers.items():
        head = read_view(path).head
        assert head is not None
        heads[name] = head
    oldest = min(heads, key=lambda n: (heads[n].timestamp_ns, n))
    for estimate, extra in (("high", ()), ("high", ("--all",)),
                            ("central", ("--estimate", "central"))):
        status, out, err = flopledger("status", "--config", config, "--ledger", cluster.url,
                                      *extra)
        assert status == 0, err
        local_status, local, _ = flopledger("status", "--config", config, "--ledger",
                                            str(cluster.union), *extra)
        assert local_status == 0
        *figures_lines, tail = out.splitlines()
        assert figures_lines == local.splitlines()[:-1]
        assert "model base" in out
        assert local.splitlines()[-1] == (f"fractions use the {estimate} estimate; ledger "
                                          "head 9 records")
        assert tail == (
            f"fractions use the {estimate} estimate; cluster ledger {cluster.url}: 2 "
            f"node(s), 9 records; every node's latest signed head, the oldest at "
            f"{figures.when(heads[oldest].timestamp_ns)} of {oldest} (key "
            f"{key_of(cluster, oldest)[:16]})")
    # The union reaches half of the indicative GPAI threshold; no node alone does.
    status, out, _ = flopledger("status", "--ledger", cluster.url)
    assert "57.8% of 1.0e+23  eu-gpai-indicative" in out
    for path in cluster.ledgers.values():
        _, alone, _ = flopledger("status", "--ledger", str(path))
        assert "57.8%" not in alone


def declared_lines(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("declared compute"))
    return [lines[start], *(line for line in lines[start + 1:] if line.startswith("  run "))]


def test_status_on_the_store_checks_declared_compute_over_every_node(
        cluster: Cluster, flopledger: Flopledger) -> None:
    """A trainer's reported tokens against the run's measured compute up to the count,
    summed over every node: only the runs that reported are read whole."""
    reported = replace(RUNS["pt"], meta={**RUNS["pt"].meta, "plan.params": 2e9,
                                         "progress.tokens": 4.5e12,
                                         "progress.updated_ns": T0 + 8 * SECOND})
    for path, node in ((cluster.ledgers["node-2"], "node-2"), (cluster.union, "union")):
        store = Ledger(path, node, load_or_create_key(path.parent / "node.key"))
        try:
            store.append([replace(record(12, 10, 11, run="pt", model="base",
                                         central=E21), node=node,
                                  category="pre-training")], NOW_NS,
                         run_meta={"pt": reported})
        finally:
            store.close()
    cluster.replicate()
    status, out, err = flopledger("status", "--ledger", cluster.url)
    assert status == 0, err
    local_status, local, _ = flopledger("status", "--ledger", str(cluster.union))
    assert local_status == 0
    lines = declared_lines(out)
    assert lines == declared_lines(local)
    assert len(lines) == 2
    assert lines[1].startswith("  run pt: 4,500,000,000,000 tokens processed at ")


def test_status_says_a_flagged_node_first(cluster: Cluster, store: psycopg.Connection[Any],
                                         flopledger: Flopledger) -> None:
    warning = flag(store, cluster, "node-2")
    status, out, _ = flopledger("status", "--ledger", cluster.url)
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == warning
    assert "57.8% of 1.0e+23  eu-gpai-indicative" in out  # the figures still follow


def test_status_lists_the_cluster_services_dead_letters(
        cluster: Cluster, store: psycopg.Connection[Any], flopledger: Flopledger) -> None:
    store.execute("INSERT INTO fl_notifications (key, kind, payload, created_ns, enqueued_ns)"
                  " VALUES ('model:base|eu-gpai-indicative|level:0.5', 'level', '{}', 1, 1)")
    store.execute("INSERT INTO fl_deliveries (key, channel, state, attempts, next_attempt_ns,"
                  " last_attempt_ns, last_error) VALUES ('model:base|eu-gpai-indicative|"
                  "level:0.5', 'webhook', 'dead', 3, 0, %s, 'HTTP 410 Gone')", (NOW_NS,))
    status, out, _ = flopledger("status", "--ledger", cluster.url)
    assert status == 0
    assert out.splitlines()[-2] == ("notifications: 1 dead letter(s), never delivered and "
                                    "not retried until requeued:")
    assert out.splitlines()[-1].startswith(
        "  webhook model:base|eu-gpai-indicative|level:0.5: HTTP 410 Gone (at ")
    assert out.splitlines()[-1].endswith(", 3 attempt(s))")


# ---------------------------------------------------------------------------------------
# report


def _without_source(doc: dict[str, Any]) -> dict[str, Any]:
    """A report's figures, without what they are read from (a file, or the store)."""
    return {k: v for k, v in doc.items() if k not in ("ledger", "node_shares")}


@pytest.mark.parametrize(("run", "model"), [("pt", None), ("ft", None), (None, "base"),
                                            (None, "chat")])
def test_report_on_the_store_is_the_unions(cluster: Cluster, run: str | None,
                                           model: str | None) -> None:
    registry, specs = load_registry(), load_spec_table()
    with ClusterView.open(cluster.url, run=run, model=model) as view:
        snap = evaluate_store(view, MODELS, registry, NOW_NS)
        on_store = build_cluster_report(MODELS, registry, specs, view, snap, run=run,
                                        model=model, now_ns=NOW_NS)
    local = build_report(MODELS, registry, specs, cluster.union, run=run, model=model,
                         now_ns=NOW_NS)
    doc = json.loads(on_store.to_json())
    assert _without_source(doc) == _without_source(json.loads(local.to_json()))
    assert doc["regimes"]  # the thresholds are part of what is compared
    assert doc["ledger"]["verify"] == f"flopledger verify --ledger {cluster.url}"
    assert doc["ledger"]["subject_records"] == local.ledger["subject_records"]
    # Each node's share is its own ledger's sum of the subject's records.
    shares = {s["node"]: s for s in doc["node_shares"]}
    for name, path in cluster.ledgers.items():
        mine = [r for r in iter_records(path, run=run, model=model)]
        if not mine:
            assert name not in shares
            continue
        share = shares[name]
        assert share["records"] == len(mine)
        assert [share["flop"][b] for b in ("low", "central", "high")] == [
            sum(getattr(r, f"flop_{b}") for r in mine) for b in ("low", "central", "high")]
        head = read_view(path).head
        assert head is not None
        assert share["head"]["size"] == head.size
        assert share["head"]["root"] == head.root.hex()
        assert share["key_fingerprint"] == key_of(cluster, name)[:16]


def test_report_markdown_on_the_store(cluster: Cluster, flopledger: Flopledger) -> None:
    config = str(cluster.config)
    status, out, err = flopledger("report", "--model", "base", "--config", config,
                                  "--ledger", cluster.url)
    assert status == 0, err
    _, local, _ = flopledger("report", "--model", "base", "--config", config, "--ledger",
                             str(cluster.union))
    assert f"from the cluster ledger (`{cluster.url}`)" in out
    # The same sections, with the same figures.
    for section in ("## Total", "## Thresholds", "## Method", "## Data quality"):
        assert section in out
    for part in ("## Thresholds", "## Data quality"):
        assert (out.split(part)[1].split("\n## ")[0]
                == local.split(part)[1].split("\n## ")[0])
    total = local.split("## Total\n\n")[1].splitlines()[0]
    assert out.split("## Total\n\n")[1].splitlines()[0] == total
    rows = [line for line in out.split("Per node")[1].split("\n\n")[1].splitlines()[2:]]
    assert [r.split(" | ")[0] for r in rows] == ["| node-1", "| node-2"]
    for row, name in zip(rows, ("node-1", "node-2"), strict=True):
        mine = list(iter_records(cluster.ledgers[name], model="base"))
        head = read_view(cluster.ledgers[name]).head
        assert head is not None
        central = sum(r.flop_central for r in mine)
        assert (f"| {name} | `{key_of(cluster, name)[:16]}` | {len(mine)} | "
                f"{figures.flop(central)} | ") in row
        assert row.endswith(f"| {head.size} records, {figures.when(head.timestamp_ns)} |")
    verification = out.split("## Verification\n\n")[1]
    assert verification.splitlines()[-1] == f"`flopledger verify --ledger {cluster.url}`"
    assert "node-1 (key `" in verification
    assert "node-2 (key `" in verification


def test_report_csv_png_and_forms_on_the_store(cluster: Cluster, tmp_path: Path,
                                              flopledger: Flopledger) -> None:
    args = ("report", "--run", "pt", "--config", str(cluster.config))
    _, csv_store, _ = flopledger(*args, "--format", "csv", "--ledger", cluster.url)
    _, csv_local, _ = flopledger(*args, "--format", "csv", "--ledger", str(cluster.union))
    assert csv_store == csv_local
    assert len(csv_store.splitlines()) > 2
    png = tmp_path / "pt.png"
    status, _, err = flopledger(*args, "--format", "png", "-o", str(png), "--ledger",
                                cluster.url)
    assert status == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for form in ("eu-notification", "eu-model-documentation"):
        _, on_store, _ = flopledger(*args, "--form", form, "--format", "json", "--ledger",
                                    cluster.url)
        _, local, _ = flopledger(*args, "--form", form, "--format", "json", "--ledger",
                                 str(cluster.union))
        a, b = json.loads(on_store), json.loads(local)
        head = a.pop("signed_head")
        b.pop("signed_head")
        for doc in (a, b):  # when each was written
            doc.pop("generated")
            doc.pop("generated_ns")
        assert a == b
        assert head["verify"] == f"flopledger verify --ledger {cluster.url}"
        assert [n["node"] for n in head["nodes"]] == ["node-1", "node-2"]
        status, md, _ = flopledger(*args, "--form", form, "--ledger", cluster.url)
        assert status == 0
        assert f"The cluster ledger `{cluster.url}`, the latest signed tree head" in md


def test_report_under_a_flagged_node(cluster: Cluster, store: psycopg.Connection[Any],
                                     flopledger: Flopledger) -> None:
    warning = flag(store, cluster, "node-1")
    status, out, err = flopledger("report", "--run", "pt", "--ledger", cluster.url)
    assert status == 1
    assert err.splitlines() == [warning]
    assert out.startswith(f"> **{warning}**\n\n# Training compute report: run `pt`")
    assert "FLAGGED by the witness: backwards: rolled back" in out


def test_report_of_nothing_in_the_store(cluster: Cluster, flopledger: Flopledger) -> None:
    status, out, err = flopledger("report", "--run", "nothing", "--ledger", cluster.url)
    assert status == 1
    assert out == ""
    assert err == f"flopledger: no records for run nothing in {cluster.url}\n"


# ---------------------------------------------------------------------------------------
# gate


def gate_json(flopledger: Flopledger, c: Cluster, ledger: str, *args: str
              ) -> tuple[int, dict[str, Any]]:
    status, out, err = flopledger("gate", *args, "--policy", str(c.policy), "--config",
                                  str(c.config), "--format", "json", "--ledger", ledger)
    assert out, err
    return status, json.loads(out)


def decision_of(doc: dict[str, Any]) -> dict[str, Any]:
    """What a decision rests on, without where it was read or when."""
    keep = ("exit_code", "verdict", "headline", "tier", "estimate", "estimate_reason",
            "checks", "ancestors", "own_records", "unsealed_records", "unmeasured",
            "missing", "suggested_mode")
    out = {k: doc[k] for k in keep}
    out["evaluations"] = [(e["evaluation"], e["status"],
                           e["attestation"] and {k: e["attestation"][k] for k in (
                               "evaluation", "result", "score", "by", "evidence", "time_ns")})
                          for e in doc["evaluations"]]
    return out


def test_gate_on_the_store_decides_as_on_the_union(cluster: Cluster,
                                                   flopledger: Flopledger) -> None:
    for model, mode in (("base", "staged"), ("base", "open-weights"), ("chat", "staged"),
                        ("base", "internal")):
        status, on_store = gate_json(flopledger, cluster, cluster.url, model, "--mode", mode)
        local_status, local = gate_json(flopledger, cluster, str(cluster.union), model,
                                        "--mode", mode)
        assert status == local_status == on_store["exit_code"]
        assert decision_of(on_store) == decision_of(local)
        assert on_store["recorded"]["status"] == "not-recorded"
        assert on_store["evidence"]["kind"] == "cluster"
    # The tier is the cluster-wide total's: node-1's ledger alone places base lower.
    status, on_store = gate_json(flopledger, cluster, cluster.url, "base", "--mode", "staged")
    assert (status, on_store["tier"]["name"]) == (0, "cluster-scale")
    assert [e["evaluation"] for e in on_store["evaluations"]] == ["red-team", "safety"]
    _, alone = gate_json(flopledger, cluster, str(cluster.ledgers["node-1"]), "base",
                         "--mode", "staged")
    assert alone["tier"]["name"] == "small"
    status, on_store = gate_json(flopledger, cluster, cluster.url, "base", "--mode",
                                 "open-weights")
    assert (status, on_store["suggested_mode"]) == (3, "staged")


def test_gate_text_names_the_store_and_writes_nothing(
        cluster: Cluster, store: psycopg.Connection[Any], flopledger: Flopledger) -> None:
    before = store.execute("SELECT count(*), max(seq) FROM fl_records").fetchone()
    sizes = {n: p.stat().st_size for n, p in cluster.ledgers.items()}
    status, out, err = flopledger("gate", "base", "--mode", "staged", "--policy",
                                  str(cluster.policy), "--ledger", cluster.url)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"evidence  cluster ledger {cluster.url}: verified; 2 node(s), "
                               "9 records; every node's latest signed head, the oldest at ")
    attested = [line for line in lines if line.startswith("attested  ")]
    assert attested == [
        "attested  red-team: pass by alice, evidence https://evals.example/node-1, record 4 "
        "of node node-1",
        "attested  safety: pass by alice, evidence https://evals.example/node-2, record 3 "
        "of node node-2"]
    assert lines[-2].startswith("decision  ALLOWED (exit 0): mode staged is allowed for tier "
                                "cluster-scale")
    assert lines[-1] == ("the decision was not recorded: the cluster store holds the nodes' "
                         "own records, and a gate decision belongs to a node's ledger (run the "
                         "gate with --ledger on a node's ledger to record one there)")
    assert store.execute("SELECT count(*), max(seq) FROM fl_records").fetchone() == before
    assert {n: p.stat().st_size for n, p in cluster.ledgers.items()} == sizes
    assert not statements(cluster.ledgers["node-1"], kinds=("gate",))


def test_gate_takes_the_latest_attestation_across_nodes_by_recorded_time(
        cluster: Cluster, flopledger: Flopledger) -> None:
    one, two = cluster.ledgers["node-1"], cluster.ledgers["node-2"]
    # red-team: node-2's pass (35 s) is overtaken by node-1's fail (40 s); safety:
    # node-1's fail (42 s) by node-2's pass (45 s). Whatever the order of the node keys,
    # one of the two latest comes from the node read last and one from the node read first.
    attest(two, "node-2", "red-team", "pass", 35)
    attest(one, "node-1", "red-team", "fail", 40)
    attest(one, "node-1", "safety", "fail", 42)
    attest(two, "node-2", "safety", "pass", 45)
    cluster.replicate()
    status, doc = gate_json(flopledger, cluster, cluster.url, "base", "--mode", "staged")
    assert status == 4
    found = {e["evaluation"]: e for e in doc["evaluations"]}
    assert found["red-team"]["status"] == "failed"
    assert (found["red-team"]["attestation"]["node"],
            found["red-team"]["attestation"]["recorded_ns"]) == ("node-1", T0 + 40 * SECOND)
    assert found["safety"]["status"] == "passes"
    assert found["safety"]["attestation"]["node"] == "node-2"
    assert doc["missing"] == ["red-team"]
    assert doc["evidence"]["attestation_order"].startswith("latest by (the time the node")


def test_gate_counts_no_statement_that_arrived_after_verification(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, flopledger: Flopledger) -> None:
    """Records that reach the store between its verification and the read: their
    compute is counted (conservative), their attestations are not (unverified)."""
    from agent.ledger import pg_verify

    verify = pg_verify.verify_cluster_url
    two = cluster.ledgers["node-2"]

    def verify_then_ship(*args: Any, **kwargs: Any) -> pg_verify.ClusterReport:
        report = verify(*args, **kwargs)
        grow(two, "node-2", 50, 4 * 10**22)
        attest(two, "node-2", "safety", "fail", 55)
        replicate(two, cluster.url)
        return report

    monkeypatch.setattr(pg_verify, "verify_cluster_url", verify_then_ship)
    status, out, err = flopledger("gate", "base", "--mode", "staged", "--policy",
                                  str(cluster.policy), "--ledger", cluster.url)
    assert status == 0, out + err
    assert ("NOTE      2 record(s) reached the store after it was verified: their compute "
            "is counted (more compute only places the model higher), their statements are "
            "not") in out
    assert "attested  safety: pass by alice" in out
    monkeypatch.undo()
    # Verified now: the fail counts, and the grown compute was counted before too.
    status, doc = gate_json(flopledger, cluster, cluster.url, "base", "--mode", "staged")
    assert status == 4
    assert doc["missing"] == ["safety"]
    union = [r for p in cluster.ledgers.values() for r in iter_records(p, model="base")]
    check = next(c for c in doc["checks"] if c["tier"] == "cluster-scale")
    assert check["total"]["high"] == float(sum(r.flop_high for r in union))


def test_gate_refuses_a_store_that_fails_verification(
        cluster: Cluster, store: psycopg.Connection[Any], flopledger: Flopledger) -> None:
    key = key_of(cluster, "node-2")
    store.execute("UPDATE fl_records SET body = convert_to(replace(convert_from(body, 'UTF8'),"
                  " '\"samples\":5', '\"samples\":6'), 'UTF8') WHERE node_key = %s AND seq = 1",
                  (key,))
    status, out, err = flopledger("gate", "base", "--mode", "staged", "--ledger", cluster.url)
    assert status == 1
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"flopledger: the cluster ledger {cluster.url} fails verification: "
                           f"node node-2 (key {key[:16]}): record 1: ")
    assert line.endswith(f"`flopledger verify --ledger {cluster.url}`")


def test_gate_refuses_a_flagged_node(cluster: Cluster, store: psycopg.Connection[Any],
                                     flopledger: Flopledger) -> None:
    flag(store, cluster, "node-1")
    for fmt in ("text", "json"):
        status, out, err = flopledger("gate", "base", "--mode", "staged", "--format", fmt,
                                      "--ledger", cluster.url)
        assert status == 1
        assert out == ""
        (line,) = err.splitlines()
        assert (f"fails verification: node node-1 (key {key_of(cluster, 'node-1')[:16]}): "
                "flagged by the witness: backwards: rolled back") in line


def test_gate_usage_on_the_store(cluster: Cluster, flopledger: Flopledger) -> None:
    status, _, err = flopledger("gate", "base", "--mode", "staged", "--key-fingerprint",
                                "0123456789abcdef", "--ledger", cluster.url)
    assert status == 2
    assert "each node of the cluster store is checked against its own key" in err
    status, _, err = flopledger("gate", "base", "--mode", "staged", "--bundle", "b.json",
                                "--ledger", cluster.url)
    assert status == 2
    assert "give --ledger or --bundle, not both" in err


def export_cluster(flopledger: Flopledger, c: Cluster, out: Path, *selection: str) -> Path:
    status, _, err = flopledger("export", *selection, "--ledger", c.url, "-o", str(out))
    assert status == 0, err
    return out


def gate_bundle_json(flopledger: Flopledger, c: Cluster, bundle: Path, *args: str
                     ) -> tuple[int, dict[str, Any]]:
    status, out, err = flopledger("gate", *args, "--policy", str(c.policy), "--config",
                                  str(c.config), "--format", "json", "--bundle", str(bundle))
    assert out, err
    return status, json.loads(out)


def test_gate_on_a_cluster_bundle_decides_as_on_the_store(
        cluster: Cluster, tmp_path: Path, flopledger: Flopledger) -> None:
    # red-team: node-2's pass is overtaken by node-1's later fail, as on the store.
    attest(cluster.ledgers["node-2"], "node-2", "red-team", "pass", 35)
    attest(cluster.ledgers["node-1"], "node-1", "red-team", "fail", 40)
    cluster.replicate()
    bundle = export_cluster(flopledger, cluster, tmp_path / "base.json", "--model", "base")
    for mode in ("staged", "open-weights", "internal"):
        status, on_store = gate_json(flopledger, cluster, cluster.url, "base", "--mode", mode)
        bundle_status, from_bundle = gate_bundle_json(flopledger, cluster, bundle, "base",
                                                      "--mode", mode)
        assert status == bundle_status == from_bundle["exit_code"]
        assert decision_of(from_bundle) == decision_of(on_store)
        assert from_bundle["evidence"]["kind"] == "cluster-bundle"
        assert sorted(n["node"] for n in from_bundle["evidence"]["nodes"]) == ["node-1",
                                                                              "node-2"]
        assert from_bundle["recorded"]["status"] == "not-recorded"
    status, doc = gate_bundle_json(flopledger, cluster, bundle, "base", "--mode", "staged")
    assert (status, doc["tier"]["name"], doc["missing"]) == (4, "cluster-scale", ["red-team"])
    status, out, err = flopledger("gate", "base", "--mode", "staged", "--policy",
                                  str(cluster.policy), "--bundle", str(bundle))
    assert status == 4, err
    assert out.splitlines()[0] == (
        f"evidence  cluster bundle {bundle}: verified; 5 records and 4 statements of model "
        "base from 2 node(s), each against its own key (runs: open)")


def test_gate_refuses_a_cluster_bundle_that_fails_or_does_not_fit(
        cluster: Cluster, tmp_path: Path, flopledger: Flopledger) -> None:
    bundle = export_cluster(flopledger, cluster, tmp_path / "base.json", "--model", "base")
    doc = json.loads(bundle.read_text())
    body = doc["nodes"][1]["records"][0]["body"]
    doc["nodes"][1]["records"][0]["body"] = body.replace('"samples":5', '"samples":6')
    assert doc["nodes"][1]["records"][0]["body"] != body
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    status, out, err = flopledger("gate", "base", "--mode", "staged", "--bundle",
                                  str(tampered))
    assert (status, out) == (1, "")
    (line,) = err.splitlines()
    assert line.startswith(f"flopledger: the cluster bundle {tampered} fails verification: "
                           "node ")
    run = export_cluster(flopledger, cluster, tmp_path / "pt.json", "--run", "pt")
    status, out, err = flopledger("gate", "base", "--mode", "staged", "--bundle", str(run))
    assert (status, out) == (2, "")
    assert "is of run pt, not of model base: export it with `flopledger export --model " \
           "base --ledger postgresql://...`" in err
    status, out, err = flopledger("gate", "base", "--mode", "staged", "--bundle",
                                  str(bundle), "--key-fingerprint", "0123456789abcdef")
    assert (status, out) == (2, "")
    assert "a cluster bundle holds each node's own" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------
# a store that cannot be read


def test_a_store_down_is_one_line(cluster: Cluster, pg_server: PgServer) -> None:
    pg_server.stop()
    try:
        for argv in (("status",), ("report", "--run", "pt"),
                     ("gate", "base", "--mode", "staged"),
                     ("gate", "base", "--mode", "staged", "--format", "json")):
            done = cli(*argv, "--ledger", cluster.url)
            assert done.returncode == 1, argv
            assert done.stdout == ""
            (line,) = done.stderr.splitlines()
            assert line.startswith(f"flopledger: PostgreSQL at 127.0.0.1:{pg_server.port}/"), line
            assert "cannot connect" in line
    finally:
        pg_server.start()


def test_an_empty_store(pg_url: str, flopledger: Flopledger) -> None:
    for argv in (("status",), ("report", "--model", "base")):
        status, out, err = flopledger(*argv, "--ledger", pg_url)
        assert status == 1, argv
        assert "holds no cluster ledger" in err
    status, out, err = flopledger("gate", "base", "--mode", "staged", "--ledger", pg_url)
    assert status == 1
    assert out == ""
    assert f"the cluster ledger {pg_url} fails verification: " in err
    assert "holds no cluster ledger" in err
