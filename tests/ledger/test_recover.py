"""``recover``: the damaged files kept, a signed discontinuity, totals that resume where
they were; and the state directory's lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.accounting.records import LedgerRecord
from agent.ledger import lock
from agent.ledger.integrity import check_ledger
from agent.ledger.mirror import read_mirror
from agent.ledger.query import discontinuities, iter_records, run_summaries
from agent.ledger.recover import NothingToRecoverError, recover_ledger
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, LedgerError
from agent.ledger.sums import Pairs, values
from agent.ledger.verify import verify_ledger
from tests.hostile.harness import tree_state
from tests.ledger.damage import FAULTS, LEDGER, NODE, append, sound_state
from tests.ledger_helpers import SECOND, T0, record

NOW_NS = T0 + 3600 * SECOND


@pytest.fixture
def state(tmp_path: Path) -> Path:
    sound_state(tmp_path / "state")
    return tmp_path / "state"


def exported(state: Path) -> dict[tuple[str, str], tuple[int, ...]]:
    mirror = read_mirror(state / LEDGER)
    assert mirror is not None
    return {k: values(p.totals) for k, p in mirror.combined().items()}


def sums(pairs: Pairs) -> dict[tuple[str, str], tuple[int, ...]]:
    return {k: values(p.totals) for k, p in pairs.items() if k != ("", "")}


def recover(state: Path, **kwargs: object) -> object:
    return recover_ledger(state / LEDGER, load_or_create_key(state / "node.key"), "cfg-node",
                          now_ns=NOW_NS, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_recovery_keeps_the_files_records_the_discontinuity_and_resumes_every_total(
        state: Path, fault: str) -> None:
    before = exported(state)
    damage = FAULTS[fault][0]
    damage(state)
    damaged = {name: (state / name).read_bytes() for name in os.listdir(state)
               if name.startswith(LEDGER)}
    recover(state)
    # Every damaged file is still there, byte for byte, under a new name.
    kept = {name: (state / name).read_bytes() for name in os.listdir(state)
            if ".damaged-" in name}
    assert sorted(kept.values()) == sorted(damaged.values())
    check = check_ledger(state / LEDGER)
    assert check.ok, check.problems
    # Never below what /metrics showed (the head file's sums, open records included).
    after = sums(check.sealed)
    for key, was in before.items():
        assert after[key][:7] >= was[:7], (key, after[key], was)
    # The statement names what was last known.
    [statement] = check.discontinuities
    assert statement.seq == 0
    assert statement.assumptions["previous"]["size"] >= 12
    a = statement.assumptions
    assert (a["moved_to"] or a["head_file_moved_to"]).startswith("ledger.damaged-")
    report = verify_ledger(state / LEDGER)
    assert not report.ok
    assert report.problems[0].startswith("record 0: discontinuity")
    assert len(report.problems) == 1, report.problems
    # The agent can go on: totals resume, and the GPUs' downtime is charged from where
    # the last known records end.
    ledger = Ledger(state / LEDGER, "node-1", load_or_create_key(state / "node.key"))
    assert ledger.totals["gpu"]["GPU-00000000"].flop.central >= 6 * 10**15
    ends = {s.gpu_uuid: s.last_end_ns for s in ledger.gpu_states().values()}
    assert ends == {"GPU-00000000": T0 + 32 * SECOND, "GPU-00000001": T0 + 32 * SECOND} or (
        fault in ("rolled-back", "wal-deleted"))
    ledger.close()


def test_after_recovery_the_readers_see_the_carried_sums_but_not_the_statement(
        state: Path) -> None:
    before = exported(state)
    FAULTS["totals-edited"][0](state)
    recover(state, reason="totals table edited by hand")
    runs = run_summaries(state / LEDGER)
    assert set(runs) == {"a", "b"}
    central = {run: sum(v[1] for (g, r), v in before.items() if r == run) for run in "ab"}
    assert {run: runs[run].flop.central for run in "ab"} == central
    assert all(r.run for r in iter_records(state / LEDGER))
    [statement] = discontinuities(state / LEDGER)
    assert statement.assumptions["reason"] == "totals table edited by hand"


def test_a_sound_ledger_is_not_recovered(state: Path) -> None:
    before = tree_state(state)
    with pytest.raises(NothingToRecoverError, match="passes its consistency checks"):
        recover(state)
    assert tree_state(state) == before
    with pytest.raises(NothingToRecoverError, match="no ledger"):
        recover(state.parent / "empty")


def test_recovery_needs_the_ledgers_own_key(state: Path) -> None:
    FAULTS["totals-edited"][0](state)
    before = tree_state(state)
    with pytest.raises(LedgerError, match="not by this node's key"):
        recover_ledger(state / LEDGER, load_or_create_key(state.parent / "other.key"), NODE)
    assert tree_state(state) == before


def test_with_nothing_trustworthy_recovery_refuses_unless_told_to_lose(state: Path) -> None:
    (state / (LEDGER + ".head")).unlink()
    FAULTS["not-a-database"][0](state)
    before = tree_state(state)
    with pytest.raises(LedgerError, match="--accept-loss"):
        recover(state)
    assert tree_state(state) == before
    recover(state, accept_loss=True)
    [statement] = check_ledger(state / LEDGER).discontinuities
    assert "NOTHING" in statement.assumptions["carried_from"]


def test_records_beyond_a_stale_head_file_are_carried_too(state: Path) -> None:
    """The head file lags when its write failed; the records that still verify count."""
    head = (state / (LEDGER + ".head")).read_bytes()
    ledger = Ledger(state / LEDGER, NODE, load_or_create_key(state / "node.key"))
    append(ledger, 20, 4)
    ledger.close()
    want = sums(check_ledger(state / LEDGER).sealed)
    (state / (LEDGER + ".head")).write_bytes(head)
    FAULTS["totals-edited"][0](state)
    recover(state)
    got = sums(check_ledger(state / LEDGER).sealed)
    for key, v in want.items():
        assert got[key][:7] >= v[:7]


def test_a_second_recovery_carries_the_first_ones_sums(state: Path) -> None:
    FAULTS["totals-edited"][0](state)
    recover(state)
    ledger = Ledger(state / LEDGER, NODE, load_or_create_key(state / "node.key"))
    ledger.append([record(0, 40, 45, run="a", model="m-a")], T0 + 45 * SECOND)
    ledger.close()
    want = sums(check_ledger(state / LEDGER).sealed)
    FAULTS["totals-edited"][0](state)
    recover_ledger(state / LEDGER, load_or_create_key(state / "node.key"), NODE,
                   now_ns=NOW_NS + SECOND)
    check = check_ledger(state / LEDGER)
    assert check.ok
    assert len([n for n in os.listdir(state) if n.endswith(".sqlite")]) == 3
    for key, v in want.items():
        assert sums(check.sealed)[key][:7] >= v[:7]


def test_recovery_waits_for_no_agent(state: Path) -> None:
    FAULTS["totals-edited"][0](state)
    with lock.acquire(state):
        before = tree_state(state)
        with pytest.raises(lock.StateLockedError, match=f"PID {os.getpid()}"):
            recover(state)
        assert tree_state(state) == before


def test_the_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    held = lock.acquire(tmp_path)
    assert lock.holder(tmp_path) == os.getpid()
    with pytest.raises(lock.StateLockedError, match=f"held by PID {os.getpid()}"):
        lock.acquire(tmp_path)
    held.release()
    assert lock.holder(tmp_path) is None
    # A holder killed with SIGKILL leaves the file, never the lock.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from agent.ledger import lock; lock.acquire(Path(sys.argv[1])); "
         "print('held', flush=True); time.sleep(600)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    assert lock.holder(tmp_path) == child.pid
    with pytest.raises(lock.StateLockedError, match=f"PID {child.pid}"):
        lock.acquire(tmp_path)
    child.kill()
    child.wait(30)
    lock.acquire(tmp_path).release()


def test_a_refused_start_leaves_the_lock_file_as_it_found_it(tmp_path: Path) -> None:
    held = lock.acquire(tmp_path / "fresh")
    held.release(undo=True)
    assert not (tmp_path / "fresh" / lock.LOCK_NAME).exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / lock.LOCK_NAME).write_text("12345\n")
    held = lock.acquire(tmp_path / "old")
    assert (tmp_path / "old" / lock.LOCK_NAME).read_text() == f"{os.getpid()}\n"
    held.release(undo=True)
    assert (tmp_path / "old" / lock.LOCK_NAME).read_text() == "12345\n"


def test_discontinuity_records_are_a_kind_of_their_own() -> None:
    r = LedgerRecord.decode(record(0, 0, 5, kind="discontinuity").encode())
    assert r.kind == "discontinuity"
