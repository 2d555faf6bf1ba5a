"""``runs``, ``show``, ``models`` and ``verify`` on the cluster store
(``--ledger postgresql://...``): the cluster-wide answers are the sums of the node
ledgers' own; a flagged node is a WARNING and exit 1; an edit fails ``verify``; a store
that cannot be reached is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from agent import figures
from agent.compliance.lineage import load_scopes, model_view
from agent.ledger.query import RunSummary, read_view
from agent.ledger.replicate import node_key
from agent.ledger.signing import load_or_create_key, public_raw
from benchmarks.pgserver import PgServer
from tests.cli.conftest import Flopledger
from tests.ledger.cluster_nodes import ClusterNodes, build_cluster
from tests.paths import REPO


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


def summed(cluster: ClusterNodes) -> dict[str, RunSummary]:
    """Each run summed over the node ledgers, with the metadata of the fullest row."""
    out: dict[str, RunSummary] = {}
    for path in cluster.ledgers.values():
        view = read_view(path)
        for r in view.sealed:
            out.setdefault(r.run, RunSummary(r.run)).add(r)
        for name, meta in view.run_meta.items():
            if name in out and len(meta) > len(out[name].meta):
                out[name].meta = dict(meta)
    return out


def band(s: RunSummary) -> str:
    return figures.band(s.flop_low, s.flop_central, s.flop_high)


def test_runs_totals_over_every_node(cluster: ClusterNodes, flopledger: Flopledger) -> None:
    status, out, err = flopledger("runs", "--ledger", cluster.url)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split()[3] == "nodes"
    assert lines[0].split()[-1] == "seen"
    rows = {line.split()[0]: line for line in lines[1:4]}
    for name, s in summed(cluster).items():
        row = rows[name]
        assert row.split()[3] == str(len(s.nodes))
        assert band(s) in row
        assert figures.energy(s.energy_mj) in row
        assert figures.when(s.first_ns) in row
        assert figures.when(s.last_ns) in row
    assert lines[4] == (f"cluster   {cluster.url}: 2 node(s), 14 records under their signed "
                        "heads, the latest at 2025-06-15 15:06:55Z; the figures above are of "
                        "the records they cover")
    # A node ledger alone answers for itself only.
    status, local, _ = flopledger("runs", "--ledger", str(cluster.ledgers["node-1"]))
    assert status == 0
    assert "solo" not in local
    assert local.splitlines()[0].endswith(" spec")


def test_show_breaks_a_run_down_per_node_and_per_gpu(cluster: ClusterNodes,
                                                     flopledger: Flopledger) -> None:
    status, out, err = flopledger("show", "pt", "--ledger", cluster.url)
    assert status == 0, err
    want = summed(cluster)["pt"]
    assert f"FLOP      {band(want)}  (central [low .. high])" in out
    assert (f"coverage  {want.samples} samples, {want.records} records on 3 GPU(s), "
            "2 node(s); gaps 0 s") in out
    assert "declared  plan={'tokens': 1000000000000}" in out
    per_node = out.split("per node:\n")[1].split("per GPU:\n")[0].splitlines()
    for line, node in zip(per_node, ("node-1", "node-2"), strict=True):
        mine = read_view(cluster.ledgers[node]).summaries()["pt"]
        assert line.startswith(f"  {node} (key {key_of(cluster, node)[:16]})")
        assert band(mine) in line
        assert line.endswith(f", {mine.records} records")
    per_gpu = out.split("per GPU:\n")[1].splitlines()[:3]
    assert [line.split()[0] for line in per_gpu] == ["GPU-00000000", "GPU-00000001",
                                                     "GPU-00000010"]
    heads = [line for line in out.splitlines() if line.startswith("node      ")]
    assert [h.split()[1] for h in heads] == ["node-1", "node-2"]
    assert "node-1 (key" in heads[0]
    assert "9 records under signed head at " in heads[0]
    assert "5 records under signed head at " in heads[1]
    assert out.splitlines()[-1] == f"verify    flopledger verify --ledger {cluster.url}"
    status, _, err = flopledger("show", "nothing", "--ledger", cluster.url)
    assert status == 1
    assert f"no run 'nothing' in {cluster.url}" in err


def test_models_per_scope_over_every_node(cluster: ClusterNodes, tmp_path: Path,
                                          flopledger: Flopledger) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[models.base]\nbase_models = ["external"]\n'
                      '[models.external]\ndeclared_flop = 1e20\n')
    status, out, err = flopledger("models", "--config", str(config), "--ledger", cluster.url)
    assert status == 0, err
    from agent.config import load_config

    loaded = load_config(config)
    want = model_view(loaded.models, load_scopes(loaded.agent.thresholds_file),
                      summed(cluster))
    expected = []
    for name in want.model_names():
        bases = want.lineage.ancestors(name)
        own = sum(1 for r in want.runs if r.model == name)
        expected.append(f"{name}: {own} run(s)"
                        + (f", inherits from {', '.join(bases)}" if bases else ""))
        expected += [f"  {scope:<18} {figures.band(f.low, f.central, f.high)}"
                     for scope, f in want.totals(name).items()]
    assert out.splitlines() == expected
    # chat inherits base's compute through the base_models only node-1 declared.
    assert "chat: 1 run(s), inherits from base, external" in out


def test_a_flagged_node_is_a_warning_at_the_top(cluster: ClusterNodes,
                                                store: psycopg.Connection,
                                                flopledger: Flopledger) -> None:
    store.execute("UPDATE fl_nodes SET flagged = 'backwards: rolled back' WHERE node_key = %s",
                  (key_of(cluster, "node-2"),))
    warning = (f"WARNING: node node-2: flagged by the witness: backwards: rolled back "
               f"(key {key_of(cluster, 'node-2')[:16]})")
    for argv in (("runs",), ("show", "pt"), ("models",)):
        status, out, _ = flopledger(*argv, "--ledger", cluster.url)
        assert status == 1, argv
        assert out.splitlines()[0] == warning, argv
    status, out, _ = flopledger("show", "pt", "--ledger", cluster.url)
    assert "; FLAGGED: backwards: rolled back" in out
    status, out, _ = flopledger("verify", "--ledger", cluster.url)
    assert status == 1
    assert "  FAIL node node-2 (key" in out
    assert "flagged by the witness" in out


def test_verify_the_cluster(cluster: ClusterNodes, store: psycopg.Connection,
                            flopledger: Flopledger) -> None:
    status, out, err = flopledger("verify", cluster.url)
    assert status == 0, out + err
    lines = out.splitlines()
    assert lines[0] == f"cluster ledger {cluster.url}: 2 node(s), 14 records"
    assert lines[1].startswith("node node-1 (key ")
    assert lines[1].endswith(": OK")
    assert lines[2] == "  statements: 1 declaration"
    assert lines[3].startswith("node node-2 (key ")
    assert lines[3].endswith(": OK")
    assert lines[-1] == "OK: every check passed"
    key = key_of(cluster, "node-2")
    store.execute("UPDATE fl_records SET body = convert_to(replace(convert_from(body, 'UTF8'),"
                  " '\"samples\":5', '\"samples\":6'), 'UTF8') WHERE node_key = %s AND seq = 2",
                  (key,))
    status, out, _ = flopledger("verify", "--ledger", cluster.url)
    assert status == 1
    fails = [line for line in out.splitlines() if line.startswith("  FAIL ")]
    assert fails
    assert all("node node-2 (key" in f for f in fails)
    assert any("record 2: stored leaf hash does not match its body" in f for f in fails)
    assert out.splitlines()[3].endswith(": FAILED")
    assert out.splitlines()[-1] == f"FAILED: {len(fails)} problem(s)"


def test_verify_fails_a_bad_head_signature_and_an_edited_total(
        cluster: ClusterNodes, store: psycopg.Connection, flopledger: Flopledger) -> None:
    store.execute("UPDATE fl_heads SET signature = %s WHERE node_key = %s AND size = 7",
                  (bytes(64), key_of(cluster, "node-1")))
    store.execute("UPDATE fl_run_totals SET energy_mj = 1 WHERE node_key = %s AND run = 'solo'",
                  (key_of(cluster, "node-2"),))
    status, out, _ = flopledger("verify", "--ledger", cluster.url)
    assert status == 1
    assert "head of size 7: bad signature" in out
    assert "fl_run_totals of run 'solo': energy_mj 1 (records sum to 1400000)" in out
    assert out.splitlines()[-1] == "FAILED: 2 problem(s)"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, check=False,
                          env={**os.environ, **(env or {})})


def test_a_store_down_is_one_line(cluster: ClusterNodes, pg_server: PgServer) -> None:
    pg_server.stop()
    try:
        for argv in (("runs",), ("show", "pt"), ("models",), ("verify",)):
            done = cli(*argv, "--ledger", cluster.url)
            assert done.returncode == 1, argv
            assert done.stdout == ""
            (line,) = done.stderr.splitlines()
            assert line.startswith(f"flopledger: PostgreSQL at 127.0.0.1:{pg_server.port}/"), line
            assert "cannot connect" in line
    finally:
        pg_server.start()


def test_a_malformed_url_is_a_usage_error() -> None:
    for url, said in [("postgresql://u@h:port/db", "port 'port' is not a port number"),
                      ("postgresql://u:hunter2@h/db", "the URL carries a password")]:
        for argv in (("runs", "--ledger", url), ("verify", url)):
            done = cli(*argv)
            assert done.returncode == 2, argv
            assert said in done.stderr
            assert "Traceback" not in done.stderr
            assert "hunter2" not in done.stderr + done.stdout


def test_a_refused_login_names_the_store_not_the_password(
        cluster: ClusterNodes, pg_server: PgServer, tmp_path: Path) -> None:
    pg_server.create_password_role("cluster_reader", "right-password")
    url = pg_server.url(cluster.url.rsplit("/", 1)[1], user="cluster_reader")
    config = tmp_path / "agent.toml"
    config.write_text('[cluster]\npassword_env = "FL_TEST_PASSWORD"\n')
    done = cli("runs", "--config", str(config), "--ledger", url,
               env={"FL_TEST_PASSWORD": "wrong-password"})
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"flopledger: PostgreSQL at 127.0.0.1:{pg_server.port}/")
    assert "wrong-password" not in line
    assert "authentication failed" in line
    done = cli("runs", "--config", str(config), "--ledger", url,
               env={"FL_TEST_PASSWORD": "right-password"})
    assert done.returncode == 0, done.stderr
    assert "2 node(s)" in done.stdout


def test_other_commands_say_they_read_a_ledger_file(flopledger: Flopledger) -> None:
    status, _, err = flopledger("recover", "--ledger", "postgresql://u@127.0.0.1:1/db")
    assert status == 1
    assert ("recover reads a node's ledger file; runs, show, models, verify, status, "
            "report and gate read the cluster store") in err


def test_an_empty_store(pg_url: str, flopledger: Flopledger) -> None:
    status, _, err = flopledger("runs", "--ledger", pg_url)
    assert status == 1
    assert "holds no cluster ledger" in err
