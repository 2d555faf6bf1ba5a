"""Statements in the ledger: declared, signed, proven in bundles, and never compute."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from agent.accounting.records import (
    RUN_CLOSE,
    STATEMENT_KINDS,
    LedgerRecord,
    is_compute,
    make_statement,
)
from agent.ledger import query
from agent.ledger.bundle import export_bundle, verify_bundle
from agent.ledger.integrity import check_ledger
from agent.ledger.merkle import leaf_hash
from agent.ledger.mirror import read_mirror
from agent.ledger.recover import recover_ledger
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger, RunRow
from agent.ledger.sums import pairs_of, scope_totals, with_pairs
from agent.ledger.verify import verify_ledger
from tests.ledger_helpers import SECOND, T0, record

NODE = "node-1"
RUNS = ("a", "b")


def declaration(run: str, t_s: float) -> LedgerRecord:
    return make_statement("declaration", node=NODE, time_ns=T0 + round(t_s * SECOND), run=run,
                          model=f"m-{run}", category="pre-training",
                          payload={"plan": {"tokens": 10**12}, "by": "trainer"})


def progress(run: str, t_s: float, tokens: int) -> LedgerRecord:
    return make_statement("progress", node=NODE, time_ns=T0 + round(t_s * SECOND), run=run,
                          model=f"m-{run}", payload={"tokens": tokens, "steps": tokens // 100})


def attestation(model: str, t_s: float) -> LedgerRecord:
    return make_statement("attestation", node=NODE, time_ns=T0 + round(t_s * SECOND),
                          model=model, payload={"name": "mmlu", "result": 0.71,
                                                "evidence": "sha256:00", "by": "eval-team"})


def gate(model: str, t_s: float) -> LedgerRecord:
    return make_statement("gate", node=NODE, time_ns=T0 + round(t_s * SECOND), model=model,
                          payload={"decision": "release", "by": "board"})


def build(state: Path, *, with_statements: bool, checkpoints: int = 4) -> Path:
    """A closed ledger of ``checkpoints`` checkpoints x 2 GPUs of runs a and b, with open
    records; ``with_statements`` mixes statements into the same appends, and appends a
    checkpoint of statements alone."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / "ledger.sqlite"
    ledger = Ledger(path, NODE, load_or_create_key(state / "node.key"))
    meta = {r: RunRow(r, f"m-{r}", "pre-training", {}) for r in RUNS}
    for c in range(checkpoints):
        t = 5.0 * c
        drafts = [record(g, t, t + 5, run=RUNS[(g + c) % 2], model=f"m-{RUNS[(g + c) % 2]}")
                  for g in range(2)]
        if with_statements:
            extra = [progress("a", t + 1, 1000 * (c + 1))]
            if c == 0:
                extra += [declaration("a", t), declaration("b", t)]
            drafts = [extra[0], *drafts, *extra[1:]]
        still_open = [record(g, t + 5, t + 7, run="a", model="m-a", central=10**14)
                      for g in range(2)]
        ledger.append(drafts, T0 + round((t + 7) * SECOND), meta, still_open=still_open)
    if with_statements:
        ledger.append([attestation("m-a", 30), gate("m-a", 31)], T0 + 32 * SECOND)
    ledger.close()
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """The same compute without and with statements."""
    return (build(tmp_path / "plain", with_statements=False),
            build(tmp_path / "mixed", with_statements=True))


def sql(path: Path, statement: str, *args: object) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(statement, args)
        db.commit()
    finally:
        db.close()


def body(path: Path, seq: int) -> bytes:
    db = sqlite3.connect(path)
    try:
        (b,) = db.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
    finally:
        db.close()
    return bytes(b)


def seq_of(path: Path, kind: str) -> int:
    ledger = Ledger(path, NODE, load_or_create_key(path.parent / "node.key"))
    try:
        return next(r.seq for r in ledger.statements([kind]))
    finally:
        ledger.close()


def test_make_statement_is_an_instant_without_amounts() -> None:
    s = progress("a", 3, 500)
    assert (s.kind, s.run, s.model, s.gpu_uuid, s.gpu_index) == ("progress", "a", "m-a", "", -1)
    assert s.start_ns == s.end_ns == T0 + 3 * SECOND
    assert (s.flop_low, s.flop_central, s.flop_high, s.energy_mj) == (0, 0, 0, 0)
    assert (s.samples, s.covered_ns, s.gap_ns, s.seq) == (0, 0, 0, 0)
    assert s.estimator == "statement"
    assert s.assumptions == {"tokens": 500, "steps": 5}
    assert not is_compute(s)
    assert is_compute(record(0, 0, 5))
    assert LedgerRecord.decode(s.encode()) == s


@pytest.mark.parametrize("payload", [{"a": (1, 2)}, {1: "x"}, {"x": float("nan")},
                                     {"x": object()}, {"x": {1, 2}}])
def test_make_statement_refuses_a_payload_json_would_change(payload: dict[object, object]
                                                            ) -> None:
    with pytest.raises(ValueError, match="payload"):
        make_statement("gate", node=NODE, time_ns=T0, model="m", payload=payload)  # type: ignore[arg-type]


def test_make_statement_refuses_a_compute_kind() -> None:
    for kind in ("interval", "gap", "discontinuity", "rumour"):
        with pytest.raises(ValueError, match="statement kind"):
            make_statement(kind, node=NODE, time_ns=T0, payload={})


def test_statements_change_no_total_gpu_state_or_head_file_sum(pair: tuple[Path, Path]) -> None:
    plain_path, mixed_path = pair
    plain = Ledger(plain_path, NODE, load_or_create_key(plain_path.parent / "node.key"))
    mixed = Ledger(mixed_path, NODE, load_or_create_key(mixed_path.parent / "node.key"))
    try:
        assert mixed.size == plain.size + 4 + 2 + 2
        assert mixed.totals == plain.totals
        assert mixed.gpu_states() == plain.gpu_states()
        assert list(mixed.records()) == [
            dataclasses.replace(r, seq=m.seq) for r, m in zip(plain.records(),
                                                             mixed.records(), strict=True)]
        assert [r.kind for r in mixed.statements()] == [
            "progress", "declaration", "declaration", *["progress"] * 3, "attestation", "gate"]
        assert [r.run for r in mixed.statements(["declaration"])] == ["a", "b"]
        assert [r.kind for r in mixed.statements(model="m-a")] == [
            "progress", "declaration", "progress", "progress", "progress", "attestation",
            "gate"]
        assert [r.kind for r in mixed.statements(["gate", "progress"], run="a")] == [
            "progress"] * 4
        assert mixed.statements(run="b", model="m-a") == []
    finally:
        plain.close()
        mixed.close()
    plain_mirror, mixed_mirror = read_mirror(plain_path), read_mirror(mixed_path)
    assert plain_mirror is not None
    assert mixed_mirror is not None
    assert mixed_mirror.sealed == plain_mirror.sealed
    assert mixed_mirror.open == plain_mirror.open
    assert mixed_mirror.head.size == plain_mirror.head.size + 8


def test_a_ledger_with_statements_verifies_and_counts_them(pair: tuple[Path, Path]) -> None:
    plain_path, mixed_path = pair
    report = verify_ledger(mixed_path)
    assert report.ok, report.problems
    assert report.statements == Counter(
        {"progress": 4, "declaration": 2, "attestation": 1, "gate": 1})
    assert report.statements_text() == "2 declaration, 4 progress, 1 attestation, 1 gate"
    assert verify_ledger(plain_path).statements_text() == "none"
    check = check_ledger(mixed_path)
    assert check.ok
    assert check.sealed == check_ledger(plain_path).sealed


def test_a_statement_edited_to_carry_flop_is_detected(pair: tuple[Path, Path]) -> None:
    _, path = pair
    seq = seq_of(path, "attestation")
    edited = body(path, seq).replace(b'"flop_central":0', b'"flop_central":5', 1)
    assert edited != body(path, seq)
    sql(path, "UPDATE records SET body = ? WHERE seq = ?", edited, seq)
    report = verify_ledger(path)
    assert not report.ok
    assert any(f"record {seq}" in p and "leaf hash" in p for p in report.problems)


def test_a_forged_statement_with_flop_is_refused_by_the_row_checks(
        pair: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    _, path = pair
    seq = seq_of(path, "gate")
    forged = dataclasses.replace(LedgerRecord.decode(body(path, seq)), flop_low=10**20,
                                 flop_central=10**20, flop_high=10**20).encode()
    sql(path, "UPDATE records SET body = ?, leaf_hash = ? WHERE seq = ?", forged,
        leaf_hash(forged), seq)
    check = check_ledger(path)
    assert any(f"record {seq}" in p and "carries amounts" in p for p in check.problems)
    with caplog.at_level(logging.ERROR, logger="agent.ledger.query"):
        statements = query.statements(path)
    assert seq not in [r.seq for r in statements]
    assert len(statements) == 7
    assert "carries amounts" in caplog.text
    assert all(r.flop_central < 10**20 for r in query.iter_records(path))


@pytest.mark.parametrize("change", [{"flop_high": 1}, {"energy_mj": 1}, {"gpu_uuid": "GPU-1"},
                                    {"samples": 1}, {"gap_ns": 1}])
def test_append_refuses_a_statement_with_amounts(tmp_path: Path, change: dict[str, object]
                                                 ) -> None:
    path = build(tmp_path, with_statements=False, checkpoints=1)
    ledger = Ledger(path, NODE, load_or_create_key(tmp_path / "node.key"))
    try:
        bad = dataclasses.replace(gate("m-a", 9), **change)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not appended"):
            ledger.append([record(0, 10, 15), bad], T0 + 16 * SECOND, consumed_ids=["x"])
        assert ledger.size == 2
        assert ledger.consumed(["x"]) == set()
    finally:
        ledger.close()
    assert verify_ledger(path).ok


def test_consumed_ids_survive_reopening_and_are_recorded_once(tmp_path: Path) -> None:
    path = build(tmp_path, with_statements=False, checkpoints=1)
    key = load_or_create_key(tmp_path / "node.key")
    ledger = Ledger(path, NODE, key)
    ledger.append([progress("a", 20, 7)], T0 + 21 * SECOND, consumed_ids=["m1", "m2"])
    ledger.close()
    ledger = Ledger(path, NODE, key)
    try:
        assert ledger.consumed(["m1", "m3", "m2", "m1"]) == {"m1", "m2"}
        assert ledger.consumed([]) == set()
        size = ledger.size
        with pytest.raises(sqlite3.IntegrityError):
            ledger.append([progress("a", 22, 8)], T0 + 23 * SECOND, consumed_ids=["m2"])
        assert ledger.size == size
        assert len(ledger.statements()) == 1
        many = [f"id-{i}" for i in range(1200)]
        ledger.append([], T0 + 24 * SECOND, consumed_ids=many)
        assert ledger.consumed([*many, "nope"]) == set(many)
    finally:
        ledger.close()
    assert query.consumed_ids(path, ["m1", "zz", "id-1199"]) == {"m1", "id-1199"}
    assert verify_ledger(path).ok


def test_an_old_ledger_without_the_consumed_table_opens_and_verifies(tmp_path: Path) -> None:
    path = build(tmp_path, with_statements=False)
    sql(path, "DROP TABLE spool_consumed")
    report = verify_ledger(path)
    assert report.ok, report.problems
    assert check_ledger(path).ok
    assert query.consumed_ids(path, ["m1"]) == set()
    ledger = Ledger(path, NODE, load_or_create_key(tmp_path / "node.key"))
    try:
        assert ledger.consumed(["m1"]) == set()
        ledger.append([progress("a", 40, 5)], T0 + 41 * SECOND, consumed_ids=["m1"])
        assert ledger.consumed(["m1"]) == {"m1"}
    finally:
        ledger.close()
    assert verify_ledger(path).ok


def test_a_malformed_consumed_row_is_a_problem(tmp_path: Path) -> None:
    path = build(tmp_path, with_statements=False, checkpoints=1)
    sql(path, "INSERT INTO spool_consumed (id, time_ns) VALUES (?, ?)", 7, "soon")
    assert any("spool_consumed" in p for p in verify_ledger(path).problems)


def test_compute_readers_leave_statements_out(pair: tuple[Path, Path]) -> None:
    plain_path, mixed_path = pair
    plain, mixed = query.read_view(plain_path), query.read_view(mixed_path)

    def figures(records: list[LedgerRecord]) -> list[tuple[object, ...]]:
        return [(r.kind, r.run, r.gpu_uuid, r.start_ns, r.end_ns, r.flop) for r in records]

    assert figures(mixed.sealed) == figures(plain.sealed)
    assert figures(mixed.unsealed) == figures(plain.unsealed)
    assert figures(list(query.iter_records(mixed_path))) == figures(
        list(query.iter_records(plain_path)))
    for include_open in (False, True):
        a = query.run_summaries(plain_path, include_open=include_open)
        b = query.run_summaries(mixed_path, include_open=include_open)
        assert {k: (s.flop, s.energy_mj, s.records, s.gpus) for k, s in b.items()} == {
            k: (s.flop, s.energy_mj, s.records, s.gpus) for k, s in a.items()}
        assert "" not in b
    assert set(query.summarize(query.iter_records(mixed_path), mixed_path)) == {"a", "b"}
    assert query.discontinuities(mixed_path) == []
    assert not any(query.is_declared(r) for r in query.open_records(mixed_path))
    assert len(mixed.statements) == 8
    assert plain.statements == []


def test_views_and_statements_select_by_run_or_model(pair: tuple[Path, Path]) -> None:
    _, path = pair
    by_run = query.read_view(path, run="b")
    assert [r.kind for r in by_run.statements] == ["declaration"]
    assert all(r.run == "b" for r in by_run.sealed)
    by_model = query.read_view(path, model="m-a")
    assert Counter(r.kind for r in by_model.statements) == Counter(
        {"progress": 4, "declaration": 1, "attestation": 1, "gate": 1})
    assert [r.kind for r in query.statements(path, kinds=["gate", "attestation"])] == [
        "attestation", "gate"]
    assert [r.run for r in query.statements(path, kinds=["declaration"], run="b")] == ["b"]
    assert query.statements(path, model="m-none") == []
    assert [r.seq for r in query.statements(path)] == sorted(
        r.seq for r in query.statements(path))


def test_a_run_bundle_carries_its_statements(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    plain_path, mixed_path = pair
    plain_out, mixed_out = tmp_path / "plain.json", tmp_path / "mixed.json"
    export_bundle(plain_path, plain_out, run="a")
    summary = export_bundle(mixed_path, mixed_out, run="a")
    assert summary["statements"] == 5
    plain, mixed = verify_bundle(plain_out), verify_bundle(mixed_out)
    assert mixed.ok, mixed.problems
    assert mixed.totals == plain.totals
    assert mixed.records == plain.records
    assert Counter(r.kind for r in mixed.statements) == Counter(
        {"progress": 4, "declaration": 1})
    assert all(r.run == "a" for r in mixed.statements)
    assert plain.statements == []


def test_a_model_bundle_carries_attestations_gates_and_declarations(
        tmp_path: Path, pair: tuple[Path, Path]) -> None:
    _, path = pair
    out = tmp_path / "bundle.json"
    export_bundle(path, out, model="m-a")
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert Counter(r.kind for r in report.statements) == Counter(
        {"progress": 4, "declaration": 1, "attestation": 1, "gate": 1})
    assert report.totals["records"] == report.records > 0


def test_a_model_with_only_statements_can_be_exported(tmp_path: Path) -> None:
    path = build(tmp_path, with_statements=False, checkpoints=2)
    ledger = Ledger(path, NODE, load_or_create_key(tmp_path / "node.key"))
    ledger.append([attestation("m-new", 50)], T0 + 51 * SECOND)
    ledger.close()
    out = tmp_path / "bundle.json"
    summary = export_bundle(path, out, model="m-new")
    assert summary["totals"]["records"] == 0
    assert summary["statements"] == 1
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert [r.kind for r in report.statements] == ["attestation"]
    assert report.records == 0
    with pytest.raises(ValueError, match="no record"):
        export_bundle(path, tmp_path / "none.json", model="m-nothing")


def _edit_bundle(out: Path, how: str) -> None:
    doc = json.loads(out.read_text())
    entry = doc["statements"][-1]
    if how == "payload":
        entry["body"] = entry["body"].replace('"result":0.71', '"result":0.99')
    elif how == "flop":
        r = LedgerRecord.decode(entry["body"].encode())
        entry["body"] = dataclasses.replace(r, flop_central=1).encode().decode()
    elif how == "moved-to-records":
        doc["records"].append(doc["statements"].pop())
    elif how == "dropped-proof":
        entry["inclusion_proof"] = entry["inclusion_proof"][1:]
    elif how == "malformed":
        doc["statements"] = [{"seq": "x"}]
    out.write_text(json.dumps(doc))


@pytest.mark.parametrize("how", ["payload", "flop", "moved-to-records", "dropped-proof",
                                 "malformed"])
def test_a_bundle_whose_statement_was_altered_fails(tmp_path: Path, pair: tuple[Path, Path],
                                                    how: str) -> None:
    _, path = pair
    out = tmp_path / "bundle.json"
    export_bundle(path, out, model="m-a")
    doc = json.loads(out.read_text())
    attestation_body = LedgerRecord.decode(doc["statements"][-2]["body"].encode())
    assert attestation_body.kind == "attestation"
    # The attestation is the last statement but the gate: put it last to edit it.
    doc["statements"][-1], doc["statements"][-2] = doc["statements"][-2], doc["statements"][-1]
    out.write_text(json.dumps(doc))
    assert verify_bundle(out).ok
    _edit_bundle(out, how)
    report = verify_bundle(out)
    assert not report.ok


def test_a_bundle_made_before_statements_still_verifies(tmp_path: Path,
                                                        pair: tuple[Path, Path]) -> None:
    plain_path, _ = pair
    out = tmp_path / "bundle.json"
    export_bundle(plain_path, out, run="b")
    doc = json.loads(out.read_text())
    del doc["statements"]
    out.write_text(json.dumps(doc))
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert report.statements == []
    assert report.records > 0


def test_recover_a_ledger_holding_statements(tmp_path: Path) -> None:
    path = build(tmp_path, with_statements=True)
    ledger = Ledger(path, NODE, load_or_create_key(tmp_path / "node.key"))
    ledger.append([], T0 + 60 * SECOND, consumed_ids=["m1"])
    ledger.close()
    check = check_ledger(path)
    # What recovery carries: the sealed and the open records' sums.
    before = scope_totals(with_pairs(check.sealed, pairs_of(check.open_records)).values())
    sql(path, "UPDATE totals SET flop_central = '1' WHERE scope = 'gpu'")
    recovery = recover_ledger(path, load_or_create_key(tmp_path / "node.key"), NODE,
                              now_ns=T0 + 70 * SECOND)
    assert all(p.gpu_uuid for p in recovery.carried.values())
    assert len(recovery.carried) == 4
    ledger = Ledger(path, NODE, load_or_create_key(tmp_path / "node.key"))
    try:
        assert ledger.statements() == []
        assert ledger.consumed(["m1", "m2"]) == {"m1"}
        for scope in ("gpu", "run"):
            for key, t in before[scope].items():
                assert ledger.totals[scope][key].flop == t.flop
    finally:
        ledger.close()
    assert check_ledger(path).ok


def test_every_statement_kind_round_trips(tmp_path: Path) -> None:
    path = build(tmp_path, with_statements=False, checkpoints=1)
    ledger = Ledger(path, NODE, load_or_create_key(tmp_path / "node.key"))
    # A run-close states the ledger's own count of the run; every other kind carries any
    # JSON payload.
    declared = [kind for kind in STATEMENT_KINDS if kind != RUN_CLOSE]
    drafts = [make_statement(kind, node=NODE, time_ns=T0 + k * SECOND, run="a", model="m-a",
                             payload={"k": k, "nested": {"list": [1, "x", None, True]}})
              for k, kind in enumerate(declared)]
    drafts.append(make_statement(RUN_CLOSE, node=NODE, time_ns=T0 + 9 * SECOND, run="a",
                                 model="m-a", payload={"records": 1, "last_seq": 0,
                                                       "first_run_seq": 0}))
    ledger.append(drafts, T0 + 20 * SECOND)
    stored = ledger.statements()
    ledger.close()
    assert [dataclasses.replace(r, seq=0) for r in stored] == drafts
    assert [r.seq for r in stored] == [2, 3, 4, 5, 6]
    assert verify_ledger(path).statements == Counter(dict.fromkeys(STATEMENT_KINDS, 1))
