"""The least-privileged roles of ``configs/postgresql/roles.sql`` on a real PostgreSQL:
each program does its work with its role (agents ship, the cluster service evaluates,
stores milestones and delivers, auditors read and verify), and none can delete or
rewrite what is stored or change the schema. A schema with a relation missing stops a
role that may not create it with one line saying what to run; the owner's
``flopledger cluster --create-schema`` creates it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from agent.ledger.pgconn import PgError, connect, ensure_schema
from benchmarks.pgserver import PgServer
from tests.cli import conftest as cli_conftest
from tests.cli.conftest import Flopledger
from tests.cluster import nodes
from tests.cluster.test_service import service
from tests.ledger.cluster_nodes import replicate
from tests.paths import REPO
from tests.receivers import Recorder

ROLES_SQL = REPO / "configs" / "postgresql" / "roles.sql"
LOGINS = {"node_a": "flopledger_node", "svc": "flopledger_service",
          "auditor": "flopledger_reader"}

flopledger = cli_conftest.flopledger


def as_role(url: str, role: str) -> str:
    return re.sub(r"^postgresql://[^@/]+@", f"postgresql://{role}@", url)


@pytest.fixture
def store(tmp_path: Path, pg_url: str, pg_server: PgServer,
          flopledger: Flopledger) -> Iterator[str]:
    """A database whose schema its owner created with ``--create-schema``, the roles
    file applied twice (it is idempotent), and one login per group role."""
    (tmp_path / "owner.toml").write_text(f'[cluster]\nurl = "{pg_url}"\n')
    status, out, err = flopledger("cluster", "--config", str(tmp_path / "owner.toml"),
                                  "--create-schema")
    assert (status, err) == (0, "")
    assert "schema version 1 in place (15 tables, indexes and triggers, 15 created now)" in out
    with psycopg.connect(pg_url, autocommit=True) as owner:
        owner.execute(ROLES_SQL.read_text())
        owner.execute(ROLES_SQL.read_text())
        for login, group in LOGINS.items():
            owner.execute(f"DROP ROLE IF EXISTS {login}")
            owner.execute(f"CREATE ROLE {login} LOGIN IN ROLE {group}")
    yield pg_url
    with psycopg.connect(pg_url, autocommit=True) as owner:
        owner.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE usename = ANY(%s)", [list(LOGINS)])
    with pg_server.admin() as admin:
        admin.autocommit = True
        admin.execute(f"DROP DATABASE {pg_url.rsplit('/', 1)[1]} WITH (FORCE)")
        for login in LOGINS:
            admin.execute(f"DROP ROLE IF EXISTS {login}")


def refused(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as c, pytest.raises(
            psycopg.errors.InsufficientPrivilege):
        c.execute(statement)


def test_each_role_does_its_work_and_nothing_else(store: str, tmp_path: Path,
                                                  flopledger: Flopledger) -> None:
    node_url, svc_url, auditor_url = (as_role(store, r) for r in LOGINS)
    # Agents ship with the node role: the schema is complete, so no DDL runs.
    with connect(node_url, autocommit=True) as c:
        assert ensure_schema(c) == 0
    for path in nodes.write_nodes(tmp_path).values():
        replicate(path, node_url)
    # The cluster service evaluates, stores milestones and notifications, and delivers.
    rec = Recorder()
    s = service(tmp_path, svc_url, rec)
    try:
        state = s.step()
        assert state.store_up
        assert state.leader
        assert state.thresholds is not None
        with connect(svc_url, autocommit=True) as c:
            assert s.dispatcher.run_channel("rec", c) > 0
    finally:
        s.close()
    assert "model:base|eu-gpai-indicative|level:0.5" in rec.keys
    # Auditors read and verify.
    status, out, err = flopledger("verify", "--ledger", auditor_url)
    assert (status, err) == (0, ""), out
    status, out, _ = flopledger("runs", "--ledger", auditor_url)
    assert status == 0
    assert "pt" in out
    # What each may not do.
    for statement in ("DELETE FROM fl_records", "UPDATE fl_records SET kind = 'x'",
                      "UPDATE fl_heads SET root = '\\x00'", "DELETE FROM fl_heads",
                      "TRUNCATE fl_records", "DROP TABLE fl_records",
                      "INSERT INTO fl_milestones VALUES ('k', 1)",
                      "DELETE FROM fl_witness_events",
                      "CREATE TABLE fl_other (x int)"):
        refused(node_url, statement)
    for statement in ("INSERT INTO fl_records SELECT * FROM fl_records LIMIT 1",
                      "UPDATE fl_run_totals SET flop_high = 0", "DELETE FROM fl_nodes",
                      "UPDATE fl_milestones SET at_ns = 0", "DELETE FROM fl_milestones",
                      "DELETE FROM fl_notifications"):
        refused(svc_url, statement)
    for statement in ("INSERT INTO fl_milestones VALUES ('k', 1)",
                      "UPDATE fl_nodes SET flagged = NULL", "DELETE FROM fl_deliveries"):
        refused(auditor_url, statement)
    # A node may update its row (the replicator counts records, keeps the latest head
    # and sets a flag), but a flag, once set, stays: not even the owner clears it.
    with psycopg.connect(node_url, autocommit=True) as c:
        c.execute("UPDATE fl_nodes SET flagged = 'went backwards' WHERE node = 'node-2'")
    refused(node_url, "UPDATE fl_nodes SET flagged = NULL WHERE node = 'node-2'")
    refused(store, "UPDATE fl_nodes SET flagged = 'fine' WHERE node = 'node-2'")


def test_a_missing_relation_is_one_line_until_the_owner_creates_it(
        store: str, flopledger: Flopledger, tmp_path: Path) -> None:
    node_url = as_role(store, "node_a")
    with psycopg.connect(store, autocommit=True) as owner:
        owner.execute("DROP INDEX fl_records_end")
    with connect(node_url, autocommit=True) as c, pytest.raises(PgError) as e:
        ensure_schema(c)
    assert str(e.value) == (
        "the store lacks fl_records_end and role node_a may not create it: create the "
        "schema once as the database's owner (`flopledger cluster --config FILE "
        "--create-schema`)")
    (tmp_path / "node.toml").write_text(f'[cluster]\nurl = "{node_url}"\n')
    status, out, err = flopledger("cluster", "--config", str(tmp_path / "node.toml"),
                                  "--create-schema")
    assert (status, out) == (1, "")
    assert err.count("\n") == 1
    assert "the store lacks fl_records_end and role node_a may not create it" in err
    (tmp_path / "owner.toml").write_text(f'[cluster]\nurl = "{store}"\n')
    status, out, err = flopledger("cluster", "--config", str(tmp_path / "owner.toml"),
                                  "--create-schema")
    assert (status, err) == (0, "")
    assert "(15 tables, indexes and triggers, 1 created now)" in out
    with connect(node_url, autocommit=True) as c:
        assert ensure_schema(c) == 0


def test_the_roles_file_names_every_table_of_the_schema() -> None:
    from agent.ledger.pg_schema import RELATIONS, SCHEMA

    tables = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA)
    granted = re.search(r"GRANT SELECT ON ([\w,\s]+?)\s+TO", ROLES_SQL.read_text())
    assert granted is not None
    assert sorted(t.strip() for t in granted.group(1).split(",")) == sorted(tables)
    assert set(tables) <= set(RELATIONS)
