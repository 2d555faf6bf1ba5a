"""Replication of node ledgers into a real, throwaway PostgreSQL: what the store holds
equals what the nodes signed, whatever the batching, the outages, the concurrent
shippers; the witness flags a node whose ledger went backwards or forked."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from agent.accounting.records import LedgerRecord, is_compute, make_statement
from agent.ledger.errors import LedgerError
from agent.ledger.pgconn import PgError, connect
from agent.ledger.replicate import ReplicationError, Replicator, node_key
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow, head_file
from benchmarks.pgserver import PgServer
from tests.ledger_helpers import SECOND, T0, record

GPUS = 4


def compute(node: str, gpu: int, t_s: float, run: str, central: int = 10**15) -> LedgerRecord:
    return replace(record(gpu, t_s, t_s + 5, run=run, model=f"m-{run}", central=central),
                   node=node)


def declaration(node: str, run: str, t_s: float) -> LedgerRecord:
    return make_statement("declaration", node=node, time_ns=T0 + round(t_s * SECOND), run=run,
                          model=f"m-{run}", category="pre-training",
                          payload={"plan": {"tokens": 10**12}, "by": "trainer"})


class Node:
    """A node's ledger being written: checkpoints of GPUS records over two runs, a
    declaration now and then, one run with amounts beyond 64 bits."""

    def __init__(self, state: Path, name: str = "node-1", key_file: Path | None = None,
                 central: int = 10**15) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.path = state / "ledger.db"
        if key_file is not None:
            shutil.copy(key_file, state / "node.key")
        self.key_file = state / "node.key"
        self.name = name
        self.central = central
        self.t_s = 0.0
        self.ledger: Ledger | None = None

    def open(self) -> Ledger:
        if self.ledger is None:
            self.ledger = Ledger(self.path, self.name, load_or_create_key(self.key_file))
        return self.ledger

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None

    def append(self, checkpoints: int, *, gpus: int = GPUS) -> None:
        ledger = self.open()
        for c in range(checkpoints):
            drafts = [compute(self.name, g, self.t_s, ("a", "huge")[(g + c) % 2],
                              self.central if g % 2 else 10**20 + g)
                      for g in range(gpus)]
            if c % 3 == 0:
                drafts.insert(1, declaration(self.name, "a", self.t_s))
            self.t_s += 5
            ledger.append(drafts, T0 + round(self.t_s * SECOND), run_meta={
                "a": RunRow("a", "m-a", "pre-training", {"plan": {"tokens": 10**12}}),
                "huge": RunRow("huge", "m-huge", "fine-tuning", {"base_models": ["m-a"]})})

    def local(self) -> tuple[list[tuple[int, bytes, bytes]], list[tuple[int, bytes, int, bytes]]]:
        db = sqlite3.connect(self.path)
        try:
            records = [(int(s), bytes(b), bytes(h)) for s, b, h in db.execute(
                "SELECT seq, body, leaf_hash FROM records ORDER BY seq")]
            heads = [(int(s), bytes(r), int(t), bytes(g)) for s, r, t, g in db.execute(
                "SELECT size, root, timestamp_ns, signature FROM tree_heads ORDER BY size")]
        finally:
            db.close()
        return records, heads

    @property
    def key(self) -> str:
        return node_key(bytes.fromhex(self.meta("public_key")))

    def meta(self, name: str) -> str:
        db = sqlite3.connect(self.path)
        try:
            return str(db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()[0])
        finally:
            db.close()


def replicator(node: Node, url: str, batch: int = 5000) -> Replicator:
    return Replicator(node.path, lambda: connect(url), batch_records=batch, url=url)


@pytest.fixture
def store(pg_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def stored_records(conn: psycopg.Connection, key: str) -> list[tuple[int, bytes, bytes]]:
    return [(int(s), bytes(b), bytes(h)) for s, b, h in conn.execute(
        "SELECT seq, body, leaf_hash FROM fl_records WHERE node_key = %s ORDER BY seq", (key,))]


def stored_heads(conn: psycopg.Connection, key: str) -> list[tuple[int, bytes, int, bytes]]:
    return [(int(s), bytes(r), int(t), bytes(g)) for s, r, t, g in conn.execute(
        "SELECT size, root, timestamp_ns, signature FROM fl_heads WHERE node_key = %s"
        " ORDER BY size", (key,))]


def assert_store_equals_ledger(conn: psycopg.Connection, node: Node) -> None:
    """Records and heads byte for byte, the node's cursor and head, and the totals of
    every run exactly the ledger's own."""
    records, heads = node.local()
    key = node.key
    assert stored_records(conn, key) == records
    assert stored_heads(conn, key) == heads
    row = conn.execute("SELECT records, head_size, head_root, flagged FROM fl_nodes"
                       " WHERE node_key = %s", (key,)).fetchone()
    assert row == (len(records), heads[-1][0], heads[-1][1], None)
    ledger = Ledger(node.path, node.name, load_or_create_key(node.key_file)) \
        if node.ledger is None else node.ledger
    try:
        expected = ledger.totals["run"]
        decoded = [LedgerRecord.decode(b) for _s, b, _h in records]
    finally:
        if node.ledger is None:
            ledger.close()
    totals = {str(r[0]): r[1:] for r in conn.execute(
        "SELECT run, flop_low, flop_central, flop_high, energy_mj, samples, covered_ns,"
        " gap_ns, records, first_ns, last_ns FROM fl_run_totals WHERE node_key = %s", (key,))}
    assert set(totals) == set(expected)
    for run, t in expected.items():
        count = sum(1 for r in decoded if r.run == run and is_compute(r))
        assert totals[run] == (Decimal(t.flop_low), Decimal(t.flop_central),
                               Decimal(t.flop_high), Decimal(t.energy_mj), Decimal(t.samples),
                               Decimal(t.covered_ns), Decimal(t.gap_ns), count, t.first_ns,
                               t.last_ns), run


def test_batches_ship_exactly_the_ledger(tmp_path: Path, pg_url: str,
                                         store: psycopg.Connection) -> None:
    node = Node(tmp_path / "n1")
    node.append(9)
    node.append(1, gpus=12)  # one checkpoint larger than a batch: shipped whole
    node.append(4)
    node.close()
    records, heads = node.local()
    rep = replicator(node, pg_url, batch=7)
    results = []
    while True:
        r = rep.step()
        results.append(r)
        assert r.flagged is None
        if r.backlog == 0:
            break
    assert len(results) > 5
    assert sum(r.records for r in results) == len(records)
    assert sum(r.heads for r in results) == len(heads)
    assert all(r.records <= 7 or r.records == 13 for r in results)  # 12 + a declaration
    assert rep.backlog() == 0
    assert_store_equals_ledger(store, node)
    # The huge run's FLOP exceed 64 bits and stay exact.
    huge = store.execute("SELECT SUM(flop_central) FROM fl_run_totals WHERE run = 'huge'"
                         ).fetchone()
    assert huge is not None
    assert huge[0] > 2**64
    # Statements are stored with the records, never added to the totals.
    kinds: dict[str, int] = dict(store.execute(
        "SELECT kind, COUNT(*) FROM fl_records GROUP BY kind").fetchall())
    assert kinds["declaration"] == 3 + 1 + 2
    counted = store.execute("SELECT SUM(records) FROM fl_run_totals").fetchone()
    assert counted == (len(records) - kinds["declaration"],)
    runs = {r[0]: r[1:] for r in store.execute(
        "SELECT run, model, category, meta FROM fl_runs WHERE node_key = %s", (node.key,))}
    assert runs == {"a": ("m-a", "pre-training", json.dumps({"plan": {"tokens": 10**12}})),
                    "huge": ("m-huge", "fine-tuning", json.dumps({"base_models": ["m-a"]}))}
    # Read through a read-only connection: nothing created beside the closed ledger.
    assert sorted(p.name for p in node.path.parent.iterdir()) == [
        "ledger.db", "ledger.db.head", "node.key", "node.pub"]
    # Caught up: another step ships nothing.
    assert rep.step().records == 0
    assert_store_equals_ledger(store, node)


def test_two_shippers_of_one_ledger_ship_each_record_once(tmp_path: Path, pg_url: str,
                                                          store: psycopg.Connection) -> None:
    node = Node(tmp_path / "n1")
    node.append(30)
    node.close()
    first, second = replicator(node, pg_url, batch=9), replicator(node, pg_url, batch=13)
    shipped = 0
    for _ in range(40):
        shipped += first.step().records + second.step().records
    records, _heads = node.local()
    assert shipped == len(records)
    assert_store_equals_ledger(store, node)

    # And at the same time, from threads.
    node.append(60)
    node.close()
    counts: list[int] = []
    errors: list[BaseException] = []

    def ship(rep: Replicator) -> None:
        try:
            counts.append(rep.run_until_caught_up().records)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=ship, args=(rep,)) for rep in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(counts) == len(node.local()[0]) - len(records)
    assert_store_equals_ledger(store, node)


def wait_until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_an_outage_loses_nothing_and_leaves_nothing_half_done(
        tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    node = Node(tmp_path / "n1")
    node.append(20)
    node.close()
    rep = replicator(node, pg_url, batch=10)
    rep.step()
    rep.step()

    def store_state() -> tuple[object, ...]:
        with psycopg.connect(pg_url) as conn:
            return (conn.execute("SELECT records FROM fl_nodes").fetchone(),
                    conn.execute("SELECT COUNT(*), MAX(seq) FROM fl_records").fetchone(),
                    conn.execute("SELECT COUNT(*) FROM fl_heads").fetchone(),
                    conn.execute("SELECT run, flop_central, records FROM fl_run_totals"
                                 " ORDER BY run").fetchall())

    before = store_state()
    # The server goes down in the middle of a step: the step has copied its records and
    # added to the totals, and waits to insert its heads.
    blocker = psycopg.connect(pg_url)
    blocker.execute("LOCK TABLE fl_heads IN EXCLUSIVE MODE")
    failure: list[BaseException] = []

    def step() -> None:
        try:
            rep.step()
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            failure.append(e)

    worker = threading.Thread(target=step)
    worker.start()
    with psycopg.connect(pg_url, autocommit=True) as watcher:
        wait_until(lambda: watcher.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'INSERT INTO fl_heads%%'").fetchone() == (1,))
    pg_server.stop()
    worker.join()
    blocker.close()
    assert len(failure) == 1
    error = failure[0]
    assert isinstance(error, PgError)
    assert str(error).startswith(f"PostgreSQL at 127.0.0.1:{pg_server.port}/")
    assert "\n" not in str(error)

    # While it is down: one clear line per step, and the backlog grows with the ledger.
    with pytest.raises(PgError, match=f"127.0.0.1:{pg_server.port}/.*cannot connect") as info:
        rep.step()
    assert "\n" not in str(info.value)
    backlog = rep.backlog()
    node.append(3)
    node.close()
    with pytest.raises(PgError):
        rep.step()
    assert rep.backlog() > backlog

    pg_server.start()
    assert store_state() == before  # nothing of the interrupted step
    rep.run_until_caught_up()
    with psycopg.connect(pg_url) as conn:
        assert_store_equals_ledger(conn, node)


def test_appending_while_replicating(tmp_path: Path, pg_url: str,
                                     store: psycopg.Connection) -> None:
    node = Node(tmp_path / "n1")
    node.append(5)  # the writer stays open: the WAL is live
    rep = replicator(node, pg_url, batch=6)
    for _ in range(12):
        rep.step()
        node.append(2)
    # And a writer thread appending while the steps run.
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            node.append(1)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(20):
            rep.step()
    finally:
        stop.set()
        writer.join()
    rep.run_until_caught_up()
    assert rep.backlog() == 0
    assert_store_equals_ledger(store, node)
    node.close()


def events(conn: psycopg.Connection, key: str) -> list[tuple[str, str]]:
    return [(str(k), str(d)) for k, d in conn.execute(
        "SELECT kind, detail FROM fl_witness_events WHERE node_key = %s ORDER BY id", (key,))]


def test_a_ledger_rolled_back_is_flagged_backwards(tmp_path: Path, pg_url: str,
                                                   store: psycopg.Connection) -> None:
    node = Node(tmp_path / "n1")
    node.append(4)
    node.close()
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(node.path, old / "ledger.db")
    shutil.copy(head_file(node.path), old / "ledger.db.head")
    old_size = len(node.local()[0])
    node.append(6)
    node.close()
    rep = replicator(node, pg_url, batch=10)
    rep.run_until_caught_up()
    size = len(node.local()[0])

    shutil.copy(old / "ledger.db", node.path)
    shutil.copy(old / "ledger.db.head", head_file(node.path))
    result = rep.step()
    assert result.flagged is not None
    assert result.flagged.startswith("backwards: ")
    assert result.records == 0
    [(kind, detail)] = events(store, node.key)
    assert kind == "backwards"
    assert f"signed head {old_size}" in detail
    assert f"its head {size}" in detail
    assert store.execute("SELECT flagged FROM fl_nodes").fetchone() == (result.flagged,)

    # The restored ledger grows past what the store holds: still nothing accepted.
    node.append(20)
    node.close()
    assert len(node.local()[0]) > size
    again = replicator(node, pg_url).run_until_caught_up()
    assert (again.records, again.flagged) == (0, result.flagged)
    assert store.execute("SELECT COUNT(*) FROM fl_records").fetchone() == (size,)
    assert len(events(store, node.key)) == 1


def test_a_fork_is_flagged_and_other_nodes_are_not(tmp_path: Path, pg_url: str,
                                                   store: psycopg.Connection) -> None:
    node = Node(tmp_path / "n1")
    node.append(6)
    node.close()
    other = Node(tmp_path / "n2", name="node-2")
    other.append(3)
    other.close()
    replicator(node, pg_url).run_until_caught_up()
    replicator(other, pg_url).run_until_caught_up()
    # Same key and name, different records at the same places.
    twin = Node(tmp_path / "twin", key_file=node.key_file, central=3 * 10**15)
    twin.append(9)
    twin.close()
    assert twin.key == node.key
    held = stored_records(store, node.key)

    result = replicator(twin, pg_url).run_until_caught_up()
    assert result.flagged is not None
    assert result.flagged.startswith("fork: ")
    assert [k for k, _d in events(store, node.key)] == ["fork"]
    assert stored_records(store, node.key) == held

    # The genuine ledger is refused too now: the key is flagged.
    node.append(2)
    node.close()
    assert replicator(node, pg_url).step().flagged == result.flagged
    # The other node ships on.
    other.append(2)
    other.close()
    assert replicator(other, pg_url).run_until_caught_up().flagged is None
    assert_store_equals_ledger(store, other)
    assert events(store, other.key) == []


def test_a_record_already_held_with_other_content_is_a_fork(
        tmp_path: Path, pg_url: str, store: psycopg.Connection) -> None:
    node = Node(tmp_path / "n1")
    node.append(2)
    node.close()
    rep = replicator(node, pg_url)
    rep.run_until_caught_up()
    cursor = rep.step().cursor
    node.append(2)
    node.close()
    # Something else put a record at the node's next place.
    store.execute(
        "INSERT INTO fl_records SELECT node_key, seq + %s, body, leaf_hash, kind, run, model,"
        " category, gpu_uuid, start_ns, end_ns, flop_low, flop_central, flop_high, energy_mj"
        " FROM fl_records WHERE seq = 0", (cursor,))
    totals = store.execute("SELECT flop_central FROM fl_run_totals ORDER BY run").fetchall()
    result = rep.step()
    assert result.flagged is not None
    assert result.flagged.startswith("fork: ")
    assert f"record {cursor}" in result.flagged
    assert store.execute("SELECT records FROM fl_nodes").fetchone() == (cursor,)
    assert store.execute("SELECT flop_central FROM fl_run_totals ORDER BY run"
                         ).fetchall() == totals


def test_a_node_name_with_a_new_key_is_noted_not_flagged(
        tmp_path: Path, pg_url: str, store: psycopg.Connection) -> None:
    node = Node(tmp_path / "n1")
    node.append(2)
    node.close()
    replicator(node, pg_url).run_until_caught_up()
    replaced = Node(tmp_path / "new-disk")  # same name, new key
    replaced.append(3)
    replaced.close()
    assert replicator(replaced, pg_url).run_until_caught_up().flagged is None
    [(kind, detail)] = events(store, replaced.key)
    assert kind == "new-key"
    assert "replaced disk" in detail
    assert "not a fault" in detail
    assert replaced.meta("key_fingerprint") in detail
    assert node.meta("key_fingerprint") in detail
    assert_store_equals_ledger(store, node)
    assert_store_equals_ledger(store, replaced)


@pytest.mark.parametrize("damage", ["body", "signature"])
def test_local_damage_is_refused_and_nothing_ships(tmp_path: Path, pg_url: str,
                                                   store: psycopg.Connection,
                                                   damage: str) -> None:
    node = Node(tmp_path / "n1")
    node.append(3)
    node.close()
    rep = replicator(node, pg_url, batch=5)
    rep.step()
    cursor = rep.step().cursor
    node.append(3)
    node.close()
    db = sqlite3.connect(node.path)
    if damage == "body":
        body = db.execute("SELECT body FROM records WHERE seq = ?", (cursor + 1,)).fetchone()[0]
        db.execute("UPDATE records SET body = ? WHERE seq = ?",
                   (body.replace(b'"samples":5', b'"samples":6'), cursor + 1))
        expected = f"record {cursor + 1}'s leaf hash does not match its body"
    else:
        db.execute("UPDATE tree_heads SET signature = zeroblob(64) WHERE size > ?", (cursor,))
        expected = "does not verify"
    db.commit()
    db.close()
    with pytest.raises(ReplicationError, match=expected) as info:
        rep.step()
    assert isinstance(info.value, LedgerError)
    assert str(info.value).startswith(str(node.path))
    assert "nothing shipped" in str(info.value)
    assert store.execute("SELECT records FROM fl_nodes").fetchone() == (cursor,)
    assert store.execute("SELECT COUNT(*) FROM fl_records").fetchone() == (cursor,)


def test_eight_nodes_from_eight_threads(tmp_path: Path, pg_url: str,
                                        store: psycopg.Connection) -> None:
    nodes = [Node(tmp_path / f"n{i}", name=f"node-{i}") for i in range(8)]
    for node in nodes:
        node.append(25)
        node.close()
    errors: list[BaseException] = []

    def ship(node: Node) -> None:
        try:
            rep = replicator(node, pg_url, batch=11)
            while rep.step().backlog:
                pass
            rep.close()
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=ship, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for node in nodes:
        assert_store_equals_ledger(store, node)
    assert store.execute("SELECT COUNT(*) FROM fl_witness_events").fetchone() == (0,)


def test_a_missing_ledger_is_one_line(tmp_path: Path, pg_url: str) -> None:
    rep = Replicator(tmp_path / "none.db", lambda: connect(pg_url))
    with pytest.raises(ReplicationError, match=r"none\.db: no ledger file to replicate"):
        rep.step()
    assert not (tmp_path / "none.db").exists()
