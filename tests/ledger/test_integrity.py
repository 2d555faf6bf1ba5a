"""The integrity check: every fault of the matrix is named, nothing crashes, nothing is
written, and a ledger that lost data never passes."""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.ledger.integrity import check_ledger
from agent.ledger.mirror import read_mirror
from agent.ledger.query import iter_records, open_records, run_summaries
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, LedgerDamagedError
from agent.ledger.sums import values, with_pairs
from agent.ledger.verify import verify_ledger
from tests.hostile.harness import tree_state
from tests.ledger.damage import FAULTS, LEDGER, NODE, append, sound_state


@pytest.fixture
def state(tmp_path: Path) -> Path:
    sound_state(tmp_path / "state")
    return tmp_path / "state"


def test_a_sound_ledger_passes_and_its_head_file_holds_what_was_exported(state: Path) -> None:
    check = check_ledger(state / LEDGER)
    assert check.ok, check.problems
    assert check.authentic
    assert check.records == 12
    mirror = read_mirror(state / LEDGER)
    assert mirror is not None
    assert mirror.problem(load_or_create_key(state / "node.key").public_key()) is None
    assert mirror.head.size == 12
    # sealed + open sums, per (GPU, run): what the counters showed.
    exported = with_pairs(check.sealed, {})
    assert mirror.sealed is not None
    assert {k: values(p.totals) for k, p in mirror.sealed.items()} == {
        k: values(p.totals) for k, p in exported.items()}
    assert mirror.open is not None
    assert sum(p.totals.flop.central for p in mirror.open.values()) == 2 * 10**14
    assert verify_ledger(state / LEDGER).ok


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_every_fault_is_named_and_refused_before_anything_is_written(state: Path,
                                                                     fault: str) -> None:
    damage, fragment = FAULTS[fault]
    damage(state)
    before = tree_state(state)
    check = check_ledger(state / LEDGER)
    assert not check.ok
    assert any(fragment in p for p in check.problems), check.problems
    assert "flopledger recover" in check.headline()
    report = verify_ledger(state / LEDGER)
    assert not report.ok
    assert any(fragment in p for p in report.problems), report.problems
    with pytest.raises(LedgerDamagedError, match="fails its consistency checks"):
        Ledger(state / LEDGER, NODE, load_or_create_key(state / "node.key"))
    assert tree_state(state) == before


@pytest.mark.parametrize(("fault", "said", "lost"), [
    ("body-garbage", "INCOMPLETE", 1), ("body-wrong-types", "INCOMPLETE", 1),
    ("runs-meta", "INCOMPLETE", 0),
    # A sound record stored as TEXT still holds the record: read, and said.
    ("body-text", "stored as TEXT instead of BLOB, read anyway", 0),
    ("open-text", "stored as TEXT instead of BLOB, read anyway", 0),
])
def test_readers_skip_or_flag_bad_rows_loudly_instead_of_crashing(
        state: Path, fault: str, said: str, lost: int,
        caplog: pytest.LogCaptureFixture) -> None:
    sound = list(iter_records(state / LEDGER)) + open_records(state / LEDGER)
    FAULTS[fault][0](state)
    with caplog.at_level(logging.ERROR, logger="agent.ledger.query"):
        records = list(iter_records(state / LEDGER)) + open_records(state / LEDGER)
        summaries = run_summaries(state / LEDGER, include_open=True)
    assert len(records) == len(sound) - lost
    assert set(summaries) == {"a", "b"}
    assert said in caplog.text


def test_the_threshold_evaluation_survives_a_text_body(state: Path) -> None:
    from agent.compliance.evaluate import evaluate
    from agent.compliance.thresholds import load_registry

    FAULTS["body-text"][0](state)
    snap = evaluate({}, load_registry(), state / LEDGER, 1_800_000_000 * 10**9)
    assert snap.evaluations


def test_a_ledger_ahead_of_its_head_file_is_sound(state: Path) -> None:
    """The head file is written after the commit: a crash between the two leaves the
    ledger ahead, which is no loss."""
    head = (state / (LEDGER + ".head")).read_bytes()
    ledger = Ledger(state / LEDGER, NODE, load_or_create_key(state / "node.key"))
    append(ledger, 20, 2)
    ledger.close()
    (state / (LEDGER + ".head")).write_bytes(head)
    check = check_ledger(state / LEDGER)
    assert check.ok, check.problems


def test_a_missing_head_file_is_a_note_not_a_failure(state: Path) -> None:
    (state / (LEDGER + ".head")).unlink()
    check = check_ledger(state / LEDGER)
    assert check.ok
    assert any("no head file" in n for n in check.notes)


def test_a_fresh_state_directory_passes(tmp_path: Path) -> None:
    check = check_ledger(tmp_path / LEDGER)
    assert check.ok
    assert not check.exists


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 8))
def test_verify_never_crashes_and_never_passes_a_ledger_whose_sums_changed(
        tmp_path_factory: pytest.TempPathFactory, seed: int, flips: int) -> None:
    d = tmp_path_factory.mktemp("flip")
    sound_state(d / "state", checkpoints=3)
    path = d / "state" / LEDGER
    want = {k: values(p.totals) for k, p in check_ledger(path).sealed.items()}
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for _ in range(flips):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    report = verify_ledger(path)  # must not raise, whatever the bytes
    check = check_ledger(path)
    if report.ok:
        assert check.ok
        assert {k: values(p.totals) for k, p in check.sealed.items()} == want
    shutil.rmtree(d)


def test_reading_a_closed_ledger_creates_no_file(state: Path) -> None:
    before = sorted(os.listdir(state))
    check_ledger(state / LEDGER)
    verify_ledger(state / LEDGER)
    run_summaries(state / LEDGER)
    assert sorted(os.listdir(state)) == before
