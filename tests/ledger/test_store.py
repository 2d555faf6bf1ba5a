"""The ledger: durable totals, signed heads, verification, tampering, audit bundles."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.accounting.band import Band
from agent.accounting.records import LedgerRecord
from agent.ledger.bundle import export_bundle, verify_bundle
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, LedgerError
from agent.ledger.verify import verify_ledger
from tests.ledger_helpers import SECOND, T0, make_ledger, record
from tests.paths import REPO


def test_totals_resume_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, checkpoints=4, gpus=2)
    ledger = Ledger(path, "node-1", load_or_create_key(tmp_path / "node.key"))
    assert ledger.size == 8
    run = ledger.totals["run"]["run-a"]
    assert run.flop.central == 8 * 10**15
    assert ledger.totals["gpu"]["GPU-00000001"].flop.central == 4 * 10**15
    assert ledger.gpu_states()["GPU-00000000"].last_end_ns == T0 + 20 * SECOND
    ledger.append([record(0, 20, 25)], T0 + 25 * SECOND)
    assert ledger.totals["run"]["run-a"].flop.central == 9 * 10**15
    ledger.close()
    assert verify_ledger(path).ok


def test_a_ledger_of_another_node_or_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path)
    with pytest.raises(LedgerError, match="node"):
        Ledger(path, "node-2", load_or_create_key(tmp_path / "node.key"))
    with pytest.raises(LedgerError, match="key"):
        Ledger(path, "node-1", load_or_create_key(tmp_path / "other.key"))


def test_clean_ledger_verifies(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, checkpoints=6, gpus=3, runs=("a", "b"))
    report = verify_ledger(path)
    assert report.ok, report.problems
    assert report.records == 18
    assert report.heads == 6


def tamper(path: Path, sql: str, *args: object) -> None:
    db = sqlite3.connect(path)
    db.execute(sql, args)
    db.commit()
    db.close()


def body(path: Path, seq: int) -> bytes:
    db = sqlite3.connect(path)
    (b,) = db.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
    db.close()
    return bytes(b)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, checkpoints=6, gpus=2)
    return path


def test_flipped_byte_in_a_record_is_detected(ledger_path: Path) -> None:
    b = bytearray(body(ledger_path, 5))
    i = b.index(b'"flop_central":') + len(b'"flop_central":')
    b[i] = ord("9") if b[i] != ord("9") else ord("8")
    tamper(ledger_path, "UPDATE records SET body = ? WHERE seq = 5", bytes(b))
    problems = verify_ledger(ledger_path).problems
    assert any("record 5" in p and "edited" in p for p in problems), problems


def test_edit_with_recomputed_leaf_hash_still_fails_the_signed_root(ledger_path: Path) -> None:
    from agent.ledger.merkle import leaf_hash

    r = LedgerRecord.decode(body(ledger_path, 3))
    forged = dataclasses.replace(r, flop_central=r.flop_central // 2)
    tamper(ledger_path, "UPDATE records SET body = ?, leaf_hash = ? WHERE seq = 3",
           forged.encode(), leaf_hash(forged.encode()))
    problems = verify_ledger(ledger_path).problems
    assert any("do not match the signed root" in p for p in problems), problems
    assert any("totals for" in p for p in problems), problems


def test_deleted_record_is_detected(ledger_path: Path) -> None:
    tamper(ledger_path, "DELETE FROM records WHERE seq = 4")
    problems = verify_ledger(ledger_path).problems
    assert any("record 4 missing" in p for p in problems), problems


def test_swapped_records_are_detected(ledger_path: Path) -> None:
    a, b = body(ledger_path, 2), body(ledger_path, 7)
    tamper(ledger_path, "UPDATE records SET body = ? WHERE seq = 2", b)
    tamper(ledger_path, "UPDATE records SET body = ? WHERE seq = 7", a)
    problems = verify_ledger(ledger_path).problems
    assert any("record 2: body says it is record 7" in p for p in problems), problems


def test_truncated_file_is_detected(ledger_path: Path) -> None:
    data = ledger_path.read_bytes()
    ledger_path.write_bytes(data[: len(data) // 2])
    problems = verify_ledger(ledger_path).problems
    assert problems
    assert any("damaged or truncated" in p or "rolled back" in p or "only" in p
               for p in problems), problems


def test_rolled_back_copy_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = make_ledger(path, checkpoints=3, close=False)
    ledger.close()
    backup = tmp_path / "backup.sqlite"
    shutil.copy(path, backup)
    ledger = Ledger(path, "node-1", load_or_create_key(tmp_path / "node.key"))
    ledger.append([record(0, 100, 105)], T0 + 105 * SECOND)
    ledger.close()
    shutil.copy(backup, path)
    problems = verify_ledger(path).problems
    assert any("rolled back" in p for p in problems), problems


def test_overlapping_records_are_double_counting(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, "node-1", load_or_create_key(tmp_path / "node.key"))
    ledger.append([record(0, 0, 10)], T0 + 10 * SECOND)
    ledger.append([record(0, 5, 15)], T0 + 15 * SECOND)
    ledger.close()
    problems = verify_ledger(path).problems
    assert any("overlapping" in p for p in problems), problems


def test_bundle_verifies_in_a_fresh_directory(tmp_path: Path) -> None:
    path = tmp_path / "node" / "ledger.sqlite"
    path.parent.mkdir()
    make_ledger(path, checkpoints=8, gpus=2, runs=("a", "b"))
    out = tmp_path / "bundle.json"
    summary = export_bundle(path, out, run="a")
    assert summary["totals"]["records"] == 8
    fresh = tmp_path / "auditor"
    fresh.mkdir()
    shutil.copy(out, fresh / "bundle.json")
    shutil.rmtree(tmp_path / "node")
    repo = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "verify", "bundle.json"], cwd=fresh,
        capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "PYTHONPATH": repo},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


@pytest.mark.parametrize("what", ["record", "totals", "proof", "head"])
def test_edited_bundle_fails(tmp_path: Path, what: str) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, checkpoints=8, gpus=2, runs=("a", "b"))
    out = tmp_path / "bundle.json"
    export_bundle(path, out, run="a")
    doc = json.loads(out.read_text())
    if what == "record":
        doc["records"][1]["body"] = doc["records"][1]["body"].replace('"samples":5', '"samples":6')
    elif what == "totals":
        doc["totals"]["flop_central"] += 1
    elif what == "proof":
        doc["records"][0]["inclusion_proof"][0] = doc["records"][0]["inclusion_proof"][1]
    else:
        doc["tree_heads"][0]["size"] += 1
    out.write_text(json.dumps(doc))
    assert not verify_bundle(out).ok


@settings(max_examples=25, deadline=None)
@given(batches=st.lists(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**18),
                                           st.sampled_from(["a", "b", "c"])),
                                 min_size=1, max_size=6), min_size=1, max_size=6))
def test_totals_equal_the_sum_of_records_and_never_go_backwards(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[tuple[int, int, str]]]
) -> None:
    d = tmp_path_factory.mktemp("prop")
    path = d / "ledger.sqlite"
    key = load_or_create_key(d / "node.key")
    ledger = Ledger(path, "node-1", key)
    seen: dict[str, int] = {}
    for t, batch in enumerate(batches):
        drafts = []
        for i, (gpu, flop, run) in enumerate(batch):
            drafts.append(record(gpu * 10 + i, t, t + 1, run=run, central=flop))
        ledger.append(drafts, T0 + (t + 1) * SECOND)
        ledger.close()
        ledger = Ledger(path, "node-1", key)  # resume from disk every time
        for run, totals in ledger.totals["run"].items():
            assert totals.flop.central >= seen.get(run, 0)
            seen[run] = totals.flop.central
    records = list(ledger.records())
    for run, totals in ledger.totals["run"].items():
        mine = [r for r in records if r.run == run]
        assert totals.flop == sum((r.flop for r in mine), Band.exact(0))
    ledger.close()
    assert verify_ledger(path).ok
