"""Completeness: each compute record's number within its run (``run_seq``), the node's
``run-close`` statements, and bundles that prove none of a run's records was left out."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.accounting.accountant import Accountant
from agent.accounting.attribution import AttributionSettings, Attributor
from agent.accounting.estimate import EstimatorSettings
from agent.accounting.records import (
    RUN_CLOSE,
    RUN_SEQ,
    LedgerRecord,
    RunClose,
    is_compute,
    make_statement,
    run_seq_of,
)
from agent.ledger import store
from agent.ledger.bundle import _totals, export_bundle, verify_bundle
from agent.ledger.integrity import check_ledger
from agent.ledger.merkle import leaf_hash
from agent.ledger.recover import recover_ledger
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from agent.ledger.verify import verify_ledger
from agent.sampler import Sampler, after_s
from agent.sources.clock import VirtualClock
from agent.sources.scenarios import SCENARIOS, SimJob
from agent.sources.simulated import SimulatedSource
from agent.sources.specs import SpecTable
from tests.ledger import damage
from tests.ledger_helpers import SECOND, T0, record

NODE = "node-1"


def open_ledger(directory: Path) -> Ledger:
    directory.mkdir(parents=True, exist_ok=True)
    return Ledger(directory / "ledger.sqlite", NODE, load_or_create_key(directory / "node.key"))


def run_seqs(ledger: Ledger, run: str) -> list[int | None]:
    return [run_seq_of(r) for r in ledger.records(run=run) if is_compute(r)]


def interleaved(ledger: Ledger, first: int, checkpoints: int) -> None:
    """Checkpoints of 5 s: run a on GPU 0 every time, run b on GPU 1 every other time,
    a declaration of a between, and an open record of a after each."""
    for c in range(first, first + checkpoints):
        t = 5.0 * c
        drafts = [record(0, t, t + 5, run="a")]
        if c % 2 == 0:
            drafts.append(record(1, t, t + 5, run="b"))
        drafts.insert(1, make_statement("progress", node=NODE, time_ns=T0 + round(t * SECOND),
                                        run="a", model="m", payload={"tokens": c}))
        ledger.append(drafts, T0 + round((t + 5) * SECOND),
                      still_open=[record(0, t + 5, t + 6, run="a", central=10**14)])


def test_each_run_is_numbered_in_append_order_across_appends_and_reopening(
        tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path)
    interleaved(ledger, 0, 4)
    assert run_seqs(ledger, "a") == [0, 1, 2, 3]
    assert run_seqs(ledger, "b") == [0, 1]
    # Statements and the open records carry none; the seq is the ledger's, as before.
    assert all(RUN_SEQ not in s.assumptions for s in ledger.statements())
    assert all(RUN_SEQ not in r.assumptions for r in ledger.open_records())
    assert [r.seq for r in ledger.records(run="b")] == [2, 7]
    ledger.close()

    again = open_ledger(tmp_path)
    sealed = again.seal_open(T0 + 30 * SECOND)  # as after a crash: the open one sealed
    assert [RUN_SEQ in r.assumptions for r in sealed] == [False]
    interleaved(again, 5, 2)
    assert run_seqs(again, "a") == [0, 1, 2, 3, 4, 5, 6]
    assert run_seqs(again, "b") == [0, 1, 2]
    again.close()
    assert verify_ledger(tmp_path / "ledger.sqlite").ok


def test_a_failed_append_numbers_nothing(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path)
    interleaved(ledger, 0, 2)
    size = ledger.size
    # An id given twice makes the transaction fail inside SQLite, as a full disk does.
    with pytest.raises(sqlite3.IntegrityError):
        ledger.append([record(0, 10, 15, run="a")], T0 + 15 * SECOND,
                      consumed_ids=["m1", "m1"], close_runs=["a"])
    assert ledger.size == size
    assert ledger.unclosed_runs() == {"a", "b"}
    ledger.append([record(0, 10, 15, run="a")], T0 + 15 * SECOND)
    assert run_seqs(ledger, "a") == [0, 1, 2]
    # A run-close that does not state the ledger's count is refused, nothing appended.
    wrong = make_statement(RUN_CLOSE, node=NODE, time_ns=T0 + 16 * SECOND, run="a", model="m",
                           payload={"records": 2, "last_seq": 3, "first_run_seq": 0})
    with pytest.raises(ValueError, match="run-close of run 'a' says 2 record"):
        ledger.append([record(0, 15, 16, run="a"), wrong], T0 + 16 * SECOND)
    with pytest.raises(ValueError, match="run-close statement of run 'a'"):
        ledger.append([dataclasses.replace(wrong, assumptions={"records": 0})], T0)
    assert ledger.size == size + 1
    ledger.close()
    assert check_ledger(tmp_path / "ledger.sqlite").ok


def test_close_run_states_the_count_once_and_a_later_record_reopens_the_run(
        tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path)
    interleaved(ledger, 0, 3)
    assert ledger.close_run("nobody", T0) is None
    close = ledger.close_run("a", T0 + 20 * SECOND)
    assert close is not None
    last_a = [r.seq for r in ledger.records(run="a")][-1]
    assert (close.kind, close.run, close.model, close.node) == (RUN_CLOSE, "a", "m", NODE)
    assert close.assumptions == {"records": 3, "last_seq": last_a, "first_run_seq": 0}
    assert ledger.unclosed_runs() == {"b"}
    size = ledger.size
    assert ledger.close_run("a", T0 + 21 * SECOND) is None  # nothing new: nothing appended
    assert ledger.size == size
    # Preempted and resumed: the run reopens, its next close counts the new records.
    ledger.append([record(0, 100, 105, run="a")], T0 + 105 * SECOND, close_runs=["b"])
    assert ledger.unclosed_runs() == {"a"}
    assert [s.assumptions["records"] for s in ledger.statements([RUN_CLOSE])] == [3, 2]
    again = ledger.close_run("a", T0 + 106 * SECOND)
    assert again is not None
    assert again.assumptions["records"] == 4
    ledger.close()
    check = check_ledger(tmp_path / "ledger.sqlite")
    assert check.ok, check.problems
    assert check.statements[RUN_CLOSE] == 3
    assert {run: (c.records, c.closed) for run, c in check.runs.items()} == {
        "a": (4, 4), "b": (2, 2)}
    assert open_ledger(tmp_path).unclosed_runs() == set()


def export(directory: Path, name: str, **selection: str) -> tuple[Path, dict[str, Any]]:
    out = directory / f"{name}.json"
    export_bundle(directory / "ledger.sqlite", out, **selection)
    return out, json.loads(out.read_text())


def rewrite(path: Path, doc: dict[str, Any]) -> None:
    """Save an edited bundle with totals that match what it still holds, so that only
    the completeness check can tell."""
    kept = [LedgerRecord.decode(e["body"].encode()) for e in doc["records"]]
    doc["totals"] = _totals(kept)
    path.write_text(json.dumps(doc))


def test_a_bundle_of_a_closed_run_proves_it_complete(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path)
    interleaved(ledger, 0, 5)
    close = ledger.close_run("a", T0 + 30 * SECOND)
    ledger.close()
    assert close is not None
    out, doc = export(tmp_path, "a", run="a")
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert report.complete is True
    assert report.completeness == [
        f"complete: all 5 records of run a on node {NODE} (run_seq 0..4, closed at record "
        f"{close.seq})"]
    assert RUN_CLOSE in [json.loads(s["body"])["kind"] for s in doc["statements"]]


@pytest.mark.parametrize("removed", [0, 2, 4])
def test_a_bundle_with_a_record_left_out_is_incomplete(tmp_path: Path, removed: int) -> None:
    ledger = open_ledger(tmp_path)
    interleaved(ledger, 0, 5)
    ledger.close_run("a", T0 + 30 * SECOND)
    ledger.close()
    out, doc = export(tmp_path, "a", run="a")
    doc["records"] = [e for e in doc["records"]
                      if json.loads(e["body"])["assumptions"][RUN_SEQ] != removed]
    rewrite(out, doc)
    report = verify_bundle(out)
    assert report.complete is False
    assert report.problems == [f"INCOMPLETE: run a on node {NODE}: run_seq {removed} missing"]
    assert report.completeness == report.problems


def test_a_forged_record_cannot_fill_a_gap(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path)
    interleaved(ledger, 0, 4)
    ledger.close_run("b", T0 + 30 * SECOND)
    ledger.close()
    out, doc = export(tmp_path, "b", run="b")
    second = doc["records"][1]
    genuine = LedgerRecord.decode(second["body"].encode())
    forged = dataclasses.replace(genuine, flop_central=genuine.flop_central // 2)
    doc["records"][1] = {**second, "body": forged.encode().decode()}
    rewrite(out, doc)
    report = verify_bundle(out)
    assert report.complete is False
    assert report.problems == [
        f"record {genuine.seq}: not in the signed ledger at that position (edited or moved)",
        f"INCOMPLETE: run b on node {NODE}: run_seq 1 missing"]


def test_a_bundle_of_an_open_run_says_so_and_passes(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path)
    interleaved(ledger, 0, 3)
    out, _doc = export(tmp_path, "open", run="a")
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert report.complete is None
    assert report.completeness == [
        f"open: run a on node {NODE}: 3 record(s) so far (run_seq 0..2), the run has not "
        "been closed on this node"]

    close = ledger.close_run("a", T0 + 20 * SECOND)
    assert close is not None
    ledger.append([record(0, 100, 105, run="a")], T0 + 105 * SECOND)  # reopened
    ledger.close()
    out, doc = export(tmp_path, "reopened", run="a")
    report = verify_bundle(out)
    assert report.ok
    assert report.complete is None
    assert report.completeness == [
        f"open: run a on node {NODE}: 4 record(s) so far (run_seq 0..3), the run has not "
        f"been closed on this node (reopened after its close at record {close.seq})"]
    # What the earlier close counted must still all be there.
    doc["records"] = [e for e in doc["records"]
                      if json.loads(e["body"])["assumptions"][RUN_SEQ] != 1]
    rewrite(out, doc)
    assert verify_bundle(out).problems == [
        f"INCOMPLETE: run a on node {NODE}: run_seq 1 missing"]


def test_a_model_bundle_is_checked_per_run(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path)
    interleaved(ledger, 0, 4)  # runs a and b, both of model m
    ledger.close_run("b", T0 + 30 * SECOND)
    ledger.close()
    out, doc = export(tmp_path, "m", model="m")
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert report.complete is None  # a is still open
    assert [line.split(":")[0] for line in report.completeness] == ["open", "complete"]
    doc["records"] = [e for e in doc["records"] if json.loads(e["body"])["run"] != "b"
                      or json.loads(e["body"])["assumptions"][RUN_SEQ] != 1]
    rewrite(out, doc)
    report = verify_bundle(out)
    assert report.complete is False
    assert report.problems == [f"INCOMPLETE: run b on node {NODE}: run_seq 1 missing"]


def unnumbered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Append as the ledger did before records were numbered: ``seq`` only."""
    monkeypatch.setattr(store, "_with_seq",
                        lambda r, seq, _run_seq: dataclasses.replace(r, seq=seq))


def test_a_ledger_written_before_numbering_verifies_and_continues_the_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        unnumbered(m)
        ledger = open_ledger(tmp_path)
        interleaved(ledger, 0, 3)
        ledger.close()
    path = tmp_path / "ledger.sqlite"
    assert all(RUN_SEQ not in r.assumptions for r in Ledger(
        path, NODE, load_or_create_key(tmp_path / "node.key")).records())
    check = check_ledger(path)
    assert check.ok, check.problems
    assert verify_ledger(path).ok
    out, _doc = export(tmp_path, "old", run="a")
    report = verify_bundle(out)
    assert report.ok
    assert report.complete is None
    assert report.completeness == [
        f"NOT PROVEN complete: run a on node {NODE}: its 3 record(s) carry no run_seq "
        "(written before records were numbered) and no run-close counts them"]

    # The new writer counts the old records: the numbering continues after them.
    ledger = open_ledger(tmp_path)
    interleaved(ledger, 3, 2)
    assert run_seqs(ledger, "a") == [None, None, None, 3, 4]
    close = ledger.close_run("a", T0 + 60 * SECOND)
    assert close is not None
    assert RunClose.of(close).first_run_seq == 3
    ledger.close()
    assert check_ledger(path).ok
    out, doc = export(tmp_path, "upgraded", run="a")
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert report.complete is True
    assert report.completeness == [
        f"complete: all 5 records of run a on node {NODE} (3 written before records were "
        f"numbered, then run_seq 3..4, closed at record {close.seq})"]
    doc["records"] = doc["records"][1:]  # an old, unnumbered one
    rewrite(out, doc)
    assert verify_bundle(out).problems == [
        f"INCOMPLETE: run a on node {NODE}: 3 record(s) written before records were "
        "numbered, the bundle holds 2"]


def forge(path: Path, seq: int, edit: dict[str, Any]) -> None:
    """Rewrite a record's assumptions, its leaf hash recomputed (only the signed root
    and the run's count can tell)."""
    r = LedgerRecord.decode(damage.body(path, seq))
    forged = dataclasses.replace(r, assumptions={**r.assumptions, **edit}).encode()
    damage.sql(path, "UPDATE records SET body = ?, leaf_hash = ? WHERE seq = ?", forged,
               leaf_hash(forged), seq)


def test_the_integrity_check_holds_run_seq_and_closes_to_the_runs_records(
        tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path)
    interleaved(ledger, 0, 4)
    close = ledger.close_run("a", T0 + 30 * SECOND)
    ledger.close()
    assert close is not None
    path = tmp_path / "ledger.sqlite"
    b_seqs = [r.seq for r in open_ledger(tmp_path).records(run="b")]
    forge(path, b_seqs[1], {RUN_SEQ: 5})
    forge(path, close.seq, {"records": 2})
    problems = check_ledger(path).problems
    assert (f"record {b_seqs[1]}: run_seq 5, but it is compute record 1 of run 'b' on this "
            "ledger: edited") in problems
    assert any(p.startswith(f"record {close.seq}: run-close of run 'a' says 2 record(s)")
               for p in problems)
    assert any("do not match the signed root" in p for p in problems)


def test_a_record_without_run_seq_after_numbered_ones_is_a_fault(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path)
    interleaved(ledger, 0, 3)
    ledger.close()
    path = tmp_path / "ledger.sqlite"
    last = [r.seq for r in open_ledger(tmp_path).records(run="a")][-1]
    r = LedgerRecord.decode(damage.body(path, last))
    stripped = dataclasses.replace(r, assumptions={
        k: v for k, v in r.assumptions.items() if k != RUN_SEQ}).encode()
    damage.sql(path, "UPDATE records SET body = ?, leaf_hash = ? WHERE seq = ?", stripped,
               leaf_hash(stripped), last)
    assert (f"record {last}: no run_seq, but the records of run 'a' are numbered since "
            "run_seq 0: edited") in check_ledger(path).problems


def test_a_recovered_ledger_numbers_its_carried_records_from_zero(tmp_path: Path) -> None:
    path = damage.sound_state(tmp_path)
    damage.damage_record_edited(tmp_path)
    recover_ledger(path, load_or_create_key(tmp_path / "node.key"), damage.NODE,
                   now_ns=T0 + 100 * SECOND)
    ledger = Ledger(path, damage.NODE, load_or_create_key(tmp_path / "node.key"))
    carried = [r for r in ledger.records() if r.kind == "discontinuity" and r.run]
    assert carried
    for run in ("a", "b"):
        assert [run_seq_of(r) for r in carried if r.run == run] == list(
            range(sum(r.run == run for r in carried)))
    close = ledger.close_run("a", T0 + 101 * SECOND)
    ledger.close()
    assert close is not None
    assert RunClose.of(close).first_run_seq == 0
    out = tmp_path / "a.json"
    export_bundle(path, out, run="a")
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert report.complete is True


JOBS = (
    SimJob(env={"FLOPLEDGER_RUN_ID": "run-a", "FLOPLEDGER_MODEL": "m1"}, gpus=(0,), end_s=30.0),
    SimJob(env={"FLOPLEDGER_RUN_ID": "run-b", "FLOPLEDGER_MODEL": "m2"}, gpus=(0, 1),
           start_s=30.0),
)


def sampler(directory: Path, specs: SpecTable, start_wall_s: int, seconds: float) -> Sampler:
    clock = VirtualClock(start_monotonic_ns=SECOND, start_wall_ns=start_wall_s * SECOND)
    source = SimulatedSource(specs, "h100_sxm", 2, SCENARIOS["pretrain-bf16"], clock=clock,
                             jobs=JOBS)
    devices = source.devices()
    accountant = Accountant(devices, [specs["h100_sxm"]] * len(devices), EstimatorSettings(),
                            clock.wall_ns(), "simulated", node=NODE)
    return Sampler(source, accountant, clock, 1.0, 5,
                   attributor=Attributor(AttributionSettings(), source.process_inspector(),
                                         clock_ns=clock.monotonic_ns),
                   ledger=open_ledger(directory), checkpoint_s=5.0, record_s=20.0,
                   until=after_s(seconds))


def test_the_sampler_closes_a_run_that_left_and_every_run_when_it_stops(
        tmp_path: Path, spec_table: SpecTable) -> None:
    first = sampler(tmp_path, spec_table, 1_700_000_000, 80)
    ledger = first.ledger
    assert ledger is not None
    first.sample()
    closes = ledger.statements([RUN_CLOSE])
    final_ns = max(s.start_ns for s in closes)
    by_run = {s.run: s for s in closes}
    # run-a ended at 30 s: closed at a checkpoint soon after, long before the agent stopped.
    left = by_run["run-a"]
    assert left.start_ns < final_ns
    assert [s.run for s in closes].count("run-a") == 1
    records_a = list(ledger.records(run="run-a"))
    assert RunClose.of(left) == RunClose(len(records_a), records_a[-1].seq, 0)
    # Stopping closed the rest, each once, counting every record.
    assert {s.run for s in closes if s.start_ns == final_ns} >= {"run-b"}
    assert ledger.unclosed_runs() == set()
    for run, close in by_run.items():
        assert RunClose.of(close).records == sum(1 for _ in ledger.records(run=run))
    ledger.close()
    path = tmp_path / "ledger.sqlite"
    assert check_ledger(path).ok
    for run in ("run-a", "run-b"):
        out = tmp_path / f"{run}.json"
        export_bundle(path, out, run=run)
        report = verify_bundle(out)
        assert report.ok, report.problems
        assert report.complete is True, report.completeness

    # Started again later: the gap reopens run-b, whose next close counts it too.
    second = sampler(tmp_path, spec_table, 1_700_000_200, 10)
    second.sample()
    assert second.ledger is not None
    latest_b = second.ledger.statements([RUN_CLOSE], run="run-b")[-1]
    assert RunClose.of(latest_b).records == sum(1 for _ in second.ledger.records(run="run-b"))
    assert RunClose.of(latest_b).records > RunClose.of(by_run["run-b"]).records
    second.ledger.close()
    assert check_ledger(path).ok
