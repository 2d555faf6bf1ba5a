"""The client spool read into the ledger's checkpoints (agent/intake.py), with a real
spool directory and a real ledger: who may speak for a run, a failed checkpoint kept
and retried, and the run's owner and progress carried across a restart."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from agent.intake import OWNER_KEY, SpoolIntake
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from agent.sources.spool import SpoolReader
from tests.ledger_helpers import T0
from tests.sources.spool_messages import encode, file_name, message, write

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as others")


def _spool(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o1733)
    return spool


def _write(spool: Path, kind: str, uid: int, n: int, **changes: object) -> Path:
    doc = message(kind, message_id=f"{n:032x}", **changes)
    path = write(spool, file_name(kind, tail=f"{n:08x}"), encode(doc))
    os.chown(path, uid, uid)
    return path


def _ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite", "node-1", load_or_create_key(tmp_path / "node.key"))


def test_only_the_user_who_first_wrote_for_a_run_may_declare_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = _spool(tmp_path)
    ledger = _ledger(tmp_path)
    intake = SpoolIntake(SpoolReader(spool), "node-1", 60.0)
    _write(spool, "declare", 1000, 1)
    pending = intake.collect(ledger, T0, False, lambda _: None)
    ledger.append(pending.statements, T0, consumed_ids=pending.consumed_ids)
    intake.committed(pending)
    assert [r.run for r in pending.statements] == ["run-a"]
    # Another user names the same run: refused, kept for people to read, not recorded.
    intruder = _write(spool, "declare", 1001, 2,
                      declaration={"category": "evaluation"})
    root = _write(spool, "declare", 0, 3, declaration={"model": "by-root"})
    pending = intake.collect(ledger, T0 + 1, False, lambda _: None)
    assert [r.assumptions["message_id"] for r in pending.statements] == [f"{3:032x}"]
    assert not intruder.exists()
    assert Path(f"{intruder}.rejected").exists()
    assert "user 1001 may not speak for it" in caplog.text
    assert root.exists()  # deleted only once committed
    ledger.append(pending.statements, T0 + 1, consumed_ids=pending.consumed_ids)
    intake.committed(pending)
    assert not root.exists()
    assert intake.run_meta("run-a")[OWNER_KEY] == 1000
    ledger.close()


def test_a_failed_checkpoint_keeps_the_statements_and_their_files(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    ledger = _ledger(tmp_path)
    intake = SpoolIntake(SpoolReader(spool), "node-1", 60.0)
    path = _write(spool, "declare", 0, 1)
    pending = intake.collect(ledger, T0, False, lambda _: None)
    assert len(pending.statements) == 1
    intake.failed(pending)  # as the sampler does when the ledger append raised
    assert path.exists()
    retry = intake.collect(ledger, T0 + 1, False, lambda _: None)
    assert [r.assumptions["message_id"] for r in retry.statements] == [f"{1:032x}"]
    ledger.append(retry.statements, T0 + 1, consumed_ids=retry.consumed_ids)
    intake.committed(retry)
    assert not path.exists()
    # A file left behind by a stop between the commit and the deletion is deleted
    # without being recorded twice.
    again = _write(spool, "declare", 0, 1)
    fresh = SpoolIntake(SpoolReader(spool), "node-1", 60.0)
    pending = fresh.collect(ledger, T0 + 2, False, lambda _: None)
    assert pending.statements == []
    ledger.append(pending.statements, T0 + 2, consumed_ids=pending.consumed_ids)
    fresh.committed(pending)
    assert not again.exists()
    with pytest.raises(sqlite3.IntegrityError):
        ledger.append(retry.statements, T0 + 3, consumed_ids=retry.consumed_ids)
    ledger.close()


def test_progress_and_owner_survive_a_restart_through_the_runs_table(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    ledger = _ledger(tmp_path)
    intake = SpoolIntake(SpoolReader(spool), "node-1", 0.0)
    _write(spool, "progress", 1000, 1, tokens=500, steps=5)
    pending = intake.collect(ledger, T0, False, lambda _: None)
    row = intake.row("run-a")
    assert row is not None
    ledger.append(pending.statements, T0, {"run-a": row}, consumed_ids=pending.consumed_ids)
    intake.committed(pending)
    restarted = SpoolIntake(SpoolReader(spool), "node-1", 0.0)
    restarted.restore(ledger.runs())
    assert restarted.run_meta("run-a")["progress.tokens"] == 500
    assert restarted.run_meta("run-a")[OWNER_KEY] == 1000
    # An older count read after the restart changes nothing; another user is refused.
    _write(spool, "progress", 1000, 2, tokens=400, steps=4)
    _write(spool, "progress", 1001, 3, tokens=10**9, steps=9)
    pending = restarted.collect(ledger, T0 + 1, False, lambda _: None)
    assert pending.statements == []
    assert restarted.run_meta("run-a")["progress.tokens"] == 500
    ledger.close()
