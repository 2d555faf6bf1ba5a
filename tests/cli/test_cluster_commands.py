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
            "report, gate and export read the cluster store") in err


def test_an_empty_store(pg_url: str, flopledger: Flopledger) -> None:
    status, _, err = flopledger("runs", "--ledger", pg_url)
    assert status == 1
    assert "holds no cluster ledger" in err


def test_export_a_run_from_the_store_and_verify_it(
        cluster: ClusterNodes, tmp_path: Path, flopledger: Flopledger,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "pt.json"
    status, said, err = flopledger("export", "--run", "pt", "--ledger", cluster.url,
                                   "-o", str(out))
    assert status == 0, err
    want = summed(cluster)["pt"]
    assert said.splitlines() == [
        f"wrote {out}: cluster bundle of 2 node(s), 8 records, 1 statements, FLOP "
        f"{band(want)}; each node's under its latest signed head in the store",
        f"check it anywhere with: flopledger verify {out}"]
    status, shown, err = flopledger("verify", str(out))
    assert status == 0, shown + err
    keys = {n: key_of(cluster, n)[:16] for n in ("node-1", "node-2")}
    assert shown.splitlines() == [
        f"cluster audit bundle {out}: run pt; 2 node(s), 8 records, 1 statements",
        f"  FLOP {band(want)}, energy {figures.energy(want.energy_mj)} (the sum of the nodes' "
        "records)",
        f"node node-1 (key {keys['node-1']}): 5 records, 1 statements, signed by key "
        f"{keys['node-1']}: OK",
        "  open: run pt on node node-1: 5 record(s) so far (run_seq 0..4), the run has not "
        "been closed on this node",
        f"node node-2 (key {keys['node-2']}): 3 records, 0 statements, signed by key "
        f"{keys['node-2']}: OK",
        "  open: run pt on node node-2: 3 record(s) so far (run_seq 0..2), the run has not "
        "been closed on this node",
        f"NOT complete: 0 of 2 node(s) proven complete; not node-1 (key {keys['node-1']}) "
        f"(open), node-2 (key {keys['node-2']}) (open)",
        "OK: every check passed"]
    # An edited record fails its node, and the command.
    text = out.read_text()
    out.write_text(text.replace('\\"samples\\":5', '\\"samples\\":6', 1))
    status, shown, _ = flopledger("verify", str(out))
    assert status == 1
    fails = [line for line in shown.splitlines() if line.startswith("  FAIL ")]
    assert fails
    assert any("not in the signed ledger at that position" in f for f in fails)
    assert shown.splitlines()[-1] == f"FAILED: {len(fails)} problem(s)"
    # Without -o: in the current directory, named after the run.
    monkeypatch.chdir(tmp_path)
    status, _, err = flopledger("export", "--model", "base", "--ledger", cluster.url)
    assert status == 0, err
    assert (tmp_path / "flopledger-cluster-model-base.json").is_file()


def test_export_refuses_flagged_nodes_unless_allowed(
        cluster: ClusterNodes, store: psycopg.Connection, tmp_path: Path,
        flopledger: Flopledger) -> None:
    store.execute("UPDATE fl_nodes SET flagged = 'backwards: rolled back' WHERE node_key = %s",
                  (key_of(cluster, "node-2"),))
    key = key_of(cluster, "node-2")[:16]
    out = tmp_path / "pt.json"
    status, said, err = flopledger("export", "--run", "pt", "--ledger", cluster.url,
                                   "-o", str(out))
    assert status == 1
    assert said == ""
    assert err == (f"flopledger: {out}: not written: the witness flagged 1 node(s) of "
                   f"{cluster.url}: node-2 (key {key}): backwards: rolled back; give "
                   "--allow-flagged to export anyway (the bundle then says so)\n")
    assert not out.exists()
    status, said, err = flopledger("export", "--run", "pt", "--ledger", cluster.url,
                                   "-o", str(out), "--allow-flagged")
    assert status == 0, err
    assert (f"WARNING: node node-2 (key {key}): flagged by the witness: backwards: rolled "
            "back; the bundle says so") in said.splitlines()
    status, shown, _ = flopledger("verify", str(out))
    assert status == 0
    assert (f"  WARNING node node-2 (key {key}): backwards: rolled back: flagged by the "
            "witness when exported; included on request") in shown.splitlines()


def test_show_says_whether_each_node_holds_all_of_the_run(
        cluster: ClusterNodes, flopledger: Flopledger) -> None:
    keys = {n: key_of(cluster, n)[:16] for n in ("node-1", "node-2")}
    status, out, err = flopledger("show", "pt", "--ledger", cluster.url)
    assert status == 0, err
    lines = out.splitlines()
    at = lines.index("completeness per node:")
    assert lines[at - 1] == "complete  NOT proven: 0 of 2 node(s) complete; 2 open (not closed)"
    assert lines[at + 1:at + 3] == [
        f"  key {keys['node-1']}  open: run pt on node node-1: 5 record(s) so far (run_seq "
        "0..4), the run has not been closed on this node",
        f"  key {keys['node-2']}  open: run pt on node node-2: 3 record(s) so far (run_seq "
        "0..2), the run has not been closed on this node"]
    # node-1 closes the run and ships the close: its part is proven complete.
    from agent.ledger.store import Ledger
    from tests.ledger.cluster_nodes import replicate
    from tests.ledger_helpers import SECOND, T0

    path = cluster.ledgers["node-1"]
    ledger = Ledger(path, "node-1", load_or_create_key(path.parent / "node.key"))
    assert ledger.close_run("pt", T0 + 60 * SECOND) is not None
    ledger.close()
    replicate(path, cluster.url)
    status, out, err = flopledger("show", "pt", "--ledger", cluster.url)
    assert status == 0, err
    assert "complete  NOT proven: 1 of 2 node(s) complete; 1 open (not closed)" in out
    assert (f"  key {keys['node-1']}  complete: all 5 records of run pt on node node-1 "
            "(run_seq 0..4, closed at record 9)") in out.splitlines()


def test_export_and_verify_usage_errors(cluster: ClusterNodes, tmp_path: Path,
                                        flopledger: Flopledger) -> None:
    status, _, err = flopledger("export", "--run", "pt", "--allow-flagged", "--ledger",
                                str(cluster.ledgers["node-1"]), "-o", str(tmp_path / "x"))
    assert status == 2
    assert "--allow-flagged is for the cluster store" in err
    assert not (tmp_path / "x").exists()
    out = tmp_path / "pt.json"
    assert flopledger("export", "--run", "pt", "--ledger", cluster.url, "-o", str(out))[0] == 0
    status, _, err = flopledger("verify", str(out), "--key-fingerprint", "0" * 16)
    assert status == 2
    assert "each node of a cluster bundle is checked against its own key" in err
    status, _, err = flopledger("export", "--run", "nothing", "--ledger", cluster.url)
    assert status == 1
    assert err == f"flopledger: {cluster.url}: no record of run 'nothing'\n"
