"""What trainers declare through the client spool: run metadata over the environment's,
progress merged by maximum, the compute a declared architecture implies, and the ledger
statements made of it all."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from agent.accounting import names, runs
from agent.accounting.declared import (
    DeclaredState,
    RunProgress,
    declaration_meta,
    declared_flop,
)
from agent.accounting.records import LedgerRecord
from agent.accounting.runs import RunMeta
from agent.sources import spool
from agent.sources.specs import MATMUL_PRECISIONS
from agent.sources.spool import SpoolError, SpoolMessage, parse_message
from tests.sources.spool_messages import T_NS, encode, file_name, message

SECOND = 1_000_000_000
NODE = "node-1"


def msg(kind: str = "progress", *, n: int = 0, **changes: Any) -> SpoolMessage:
    """A parsed message; ``n`` makes its id and file name unique."""
    return parse_message(Path("/spool") / file_name(kind, T_NS + n),
                         encode(message(kind, message_id=f"{n:032x}", **changes)))


def progress(n: int, tokens: int, steps: int, *, rank: int = 0, scope: str = "rank",
             final: bool = False, run: str = "run-a", world: int = 4) -> SpoolMessage:
    return msg(n=n, run=run, tokens=tokens, steps=steps, rank=rank, world_size=world,
               scope=scope, final=final, time_ns=T_NS + n)


def declare(n: int = 0, run: str = "run-a", **declaration: Any) -> SpoolMessage:
    return msg("declare", n=n, run=run, declaration=declaration)


def no_base(run: str) -> RunMeta | None:
    return None


ENV_BASE = RunMeta("run-a", model="env-model", category="fine-tuning", precision="fp8",
                   recompute="full", recompute_factor=4 / 3, recompute_declared=True,
                   plan={"gpus": 8.0, "tokens": 5e11}, base_models=("env-base",), via="env")


# -- the spool's copies of the agent's rules ------------------------------------------------

def test_the_spool_checks_the_same_sets_as_accounting() -> None:
    assert spool.CATEGORIES == runs.CATEGORIES
    assert spool.RECOMPUTE_MODES == runs.RECOMPUTE_MODES
    assert set(MATMUL_PRECISIONS) <= set(spool.PRECISIONS)
    assert spool.MAX_NAME_CHARS == names.MAX_NAME_CHARS
    assert spool.RESERVED_NAME == names.UNATTRIBUTED_RUN_ID
    assert "client" in runs.VIAS


@pytest.mark.parametrize("name", [
    "run-a", "", " a", "a ", "x" * 200, "x" * 201, "unattributed", "UNATTRIBUTED",
    "a\nb", "a\x1bb", "a\u202eb", "a\u200db", "a\u2028b", "a\ud800b", "modèle/7b", "a\tb",
])
def test_the_spool_names_follow_the_agents_rules(name: str) -> None:
    assert (spool.name_problem(name) is None) == (names.run_id_problem(name) is None)


# -- declared metadata ----------------------------------------------------------------------

def test_a_declaration_overrides_the_environment_and_keeps_the_rest() -> None:
    meta, warnings = declaration_meta(
        declare(model="llama-x", category="pre-training", base_models=["base-a"],
                plan={"tokens": 1e12, "params": 7e9}), ENV_BASE)
    assert warnings == []
    assert meta == RunMeta(
        "run-a", model="llama-x", category="pre-training", precision="fp8",
        recompute="full", recompute_factor=4 / 3, recompute_declared=True,
        plan={"gpus": 8.0, "tokens": 1e12, "params": 7e9}, base_models=("base-a",),
        via="client")


def test_a_declaration_without_a_base_starts_from_the_defaults() -> None:
    meta, warnings = declaration_meta(declare(recompute="none", precision="bf16"), None)
    assert warnings == []
    assert meta == RunMeta("run-a", precision="bf16", recompute="none", recompute_factor=1.0,
                           recompute_declared=True, via="client")


def test_selective_recomputation_without_its_factor_is_warned_about() -> None:
    m = declare(recompute="selective")
    meta, warnings = declaration_meta(m, ENV_BASE)
    assert (meta.recompute, meta.recompute_factor, meta.recompute_declared) == (
        "selective", 1.0, True)
    assert warnings == [f"{m.path.name}: declaration.recompute_factor missing: expected a "
                        "number >= 1 (hardware FLOP per model FLOP) with recompute = "
                        "selective; assuming 1.0; ignored"]


def test_a_precision_the_spec_table_lacks_is_refused_by_the_reader() -> None:
    # Plain fp32 has no tensor peak in the spec table: a run declares it by declaring no
    # precision, so the file is refused rather than half-read.
    with pytest.raises(SpoolError, match="precision"):
        declare(precision="fp32")


# -- progress --------------------------------------------------------------------------------

PROGRESS = [
    progress(1, 100, 1, rank=0),
    progress(2, 150, 2, rank=1),
    progress(3, 80, 1, rank=0),   # older than message 1: changes nothing
    progress(4, 200, 3, scope="run"),
    progress(5, 120, 2, rank=1, final=True),
]


def state_of(progress_: RunProgress) -> tuple[object, ...]:
    return (progress_.ranks, progress_.run_tokens, progress_.steps, progress_.updated_ns,
            progress_.final_ranks, progress_.tokens)


def test_progress_merges_by_maximum() -> None:
    p = RunProgress("run-a")
    grew = [p.merge(m) for m in PROGRESS]
    assert grew == [True, True, False, True, True]
    assert p.ranks == {0: (100, 1, T_NS + 3), 1: (150, 2, T_NS + 5)}
    assert (p.run_tokens, p.steps, p.updated_ns, p.final_ranks) == (200, 3, T_NS + 5, {1})
    assert p.tokens == 250  # the ranks' sum is larger than the run-scope count


def test_progress_is_the_same_whatever_the_order_and_however_often() -> None:
    reference = RunProgress("run-a")
    for m in PROGRESS:
        reference.merge(m)
    for order in itertools.permutations(PROGRESS):
        p = RunProgress("run-a")
        for m in [*order, *order]:
            p.merge(m)
        assert state_of(p) == state_of(reference)
    again = [reference.merge(m) for m in PROGRESS]
    assert again == [False] * len(PROGRESS)


@pytest.mark.parametrize(("messages", "tokens"), [
    ([progress(1, 100, 1, rank=0), progress(2, 150, 1, rank=1)], 250),
    ([progress(1, 100, 1, rank=0), progress(2, 300, 1, scope="run")], 300),
    ([progress(1, 300, 1, scope="run"), progress(2, 200, 1, scope="run")], 300),
    ([progress(1, 0, 0, rank=3)], 0),
])
def test_tokens_are_the_larger_of_the_rank_sum_and_the_run_count(
        messages: list[SpoolMessage], tokens: int) -> None:
    p = RunProgress("run-a")
    for m in messages:
        p.merge(m)
    assert p.tokens == tokens


def test_a_message_of_another_run_is_not_merged() -> None:
    with pytest.raises(ValueError, match="merged into run 'run-b'"):
        RunProgress("run-b").merge(progress(1, 5, 1))


def test_progress_survives_its_metadata_round_trip() -> None:
    p = RunProgress("run-a")
    for m in PROGRESS:
        p.merge(m)
    stored = json.loads(json.dumps(p.to_meta()))  # as the runs table keeps it
    assert stored["progress.tokens"] == 250
    assert stored["progress.ranks"] == {"0": [100, 1, T_NS + 3], "1": [150, 2, T_NS + 5]}
    assert state_of(RunProgress.from_meta("run-a", stored)) == state_of(p)


def test_progress_from_damaged_metadata_keeps_what_reads_as_counts() -> None:
    p = RunProgress.from_meta("run-a", {
        "progress.ranks": {"x": [1, 2, 3], "1": [1, "a", 3], "2": [5, 6, 7], "3": [1, 2]},
        "progress.steps": -4, "progress.run_tokens": "many", "progress.updated_ns": 7.0,
        "progress.final_ranks": [2, -1, True],
    })
    assert state_of(p) == ({2: (5, 6, 7)}, 0, 0, 7, {2}, 5)
    only_total = RunProgress.from_meta("run-a", {"progress.tokens": 900})
    assert only_total.tokens == 900


# -- declared compute ------------------------------------------------------------------------

@pytest.mark.parametrize(("plan", "tokens", "expected"), [
    ({"params": 7e9}, 1e12, (4.2e22, "6 x P x D")),
    ({"params": 7e9, "layers": 32.0, "d_model": 4096.0, "context": 4096.0}, 1e12,
     (4.2e22 + 12 * 32 * 4096 * 4096 * 1e12,
      "6 x P x D + 12 x layers x d_model x context x D")),
    ({"params": 7e9, "layers": 32.0, "d_model": 4096.0}, 1e12, (4.2e22, "6 x P x D")),
    ({"params": 1e9}, 0, (0.0, "6 x P x D")),
    ({"tokens": 1e12}, 1e12, None),
    ({"params": "7B"}, 1e12, None),
])
def test_declared_flop(plan: dict[str, float | str], tokens: float,
                       expected: tuple[float, str] | None) -> None:
    got = declared_flop(plan, tokens)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert got[0] == pytest.approx(expected[0], rel=1e-12)
        assert got[1] == expected[1]


# -- the node's state and its statements ------------------------------------------------------

def encodes(record: LedgerRecord) -> dict[str, Any]:
    """The record through its canonical encoding (what the ledger signs)."""
    decoded = LedgerRecord.decode(record.encode())
    assert decoded == record
    return decoded.assumptions


def test_a_declaration_becomes_one_statement_and_the_runs_meta() -> None:
    state = DeclaredState()
    m = declare(model="llama-x", category="pre-training", recompute="selective",
                plan={"params": 7e9})
    out = state.accept([m], NODE, T_NS + SECOND, lambda run: ENV_BASE)
    (record,) = out.statements
    assert (record.kind, record.node, record.run, record.model, record.category,
            record.start_ns, record.end_ns) == (
        "declaration", NODE, "run-a", "llama-x", "pre-training", T_NS + SECOND, T_NS + SECOND)
    payload = encodes(record)
    assert payload["declaration"] == m.body["declaration"]
    assert {k: payload[k] for k in ("message_id", "time_ns", "pid", "pid_ns", "rank",
                                    "world_size", "host", "spool_file")} == {
        "message_id": m.id, "time_ns": T_NS, "pid": 4242, "pid_ns": 4026531836, "rank": 0,
        "world_size": 1, "host": "node-1", "spool_file": m.path.name}
    assert len(payload["warnings"]) == 1  # selective without its factor
    assert out.messages_recorded == [m]
    assert state.runs["run-a"].model == "llama-x"
    assert state.runs["run-a"].plan == {"gpus": 8.0, "tokens": 5e11, "params": 7e9}
    assert state.pids == {(4242, 4026531836): "run-a"}


def test_attestations_and_gate_decisions_are_statements_about_a_model() -> None:
    state = DeclaredState()
    attestation, gate = msg("attestation", n=1), msg("gate", n=2)
    out = state.accept([attestation, gate], NODE, T_NS, no_base)
    a, g = out.statements
    assert (a.kind, a.run, a.model, g.kind, g.run, g.model) == (
        "attestation", "", "llama-x", "gate", "", "llama-x")
    assert {k: encodes(a)[k] for k in ("evaluation", "result", "score", "evidence", "by",
                                       "message_id")} == {
        "evaluation": "cyber-uplift", "result": "score", "score": 0.25,
        "evidence": "https://evals.example/run/1", "by": "alice", "message_id": attestation.id}
    assert {k: encodes(g)[k] for k in ("model", "mode", "exit_code", "message_id")} == {
        "model": "llama-x", "mode": "staged", "exit_code": 0, "message_id": gate.id}
    assert out.statement_ids == [attestation.id, gate.id]
    assert out.messages_recorded == [attestation, gate]
    assert state.pids == {}
    # The same files read again (a restart between the commit and the deletion).
    again = state.accept([attestation, gate], NODE, T_NS, no_base)
    assert again.statements == []
    assert again.messages_recorded == [attestation, gate]


def test_recorded_ids_from_the_ledger_are_not_recorded_again() -> None:
    state = DeclaredState()
    m = msg("attestation", n=1)
    state.restore({}, recorded_ids=[m.id])
    out = state.accept([m], NODE, T_NS, no_base)
    assert (out.statements, out.statement_ids, out.messages_recorded) == ([], [], [m])
    # Or as the ledger answers for the messages of one poll.
    other = DeclaredState()
    d = declare(n=2)
    out = other.accept([d, m], NODE, T_NS, no_base, recorded_ids={d.id})
    assert [r.kind for r in out.statements] == ["attestation"]
    assert out.statement_ids == [m.id]
    assert out.messages_recorded == [d, m]


def test_an_attach_binds_its_pid_and_is_held_until_the_process_ends() -> None:
    state = DeclaredState()
    attach = msg("attach", n=1)
    out = state.accept([attach], NODE, T_NS, no_base)
    assert (out.statements, out.messages_recorded, out.messages_held) == ([], [], [attach])
    assert state.pids == {(4242, 4026531836): "run-a"}
    assert state.forget_exited(lambda pid, ns: True) == []
    assert state.forget_exited(lambda pid, ns: pid != 4242) == [attach]
    assert state.pids == {}


def test_a_reused_pid_drops_the_old_runs_attach() -> None:
    state = DeclaredState()
    old = msg("attach", n=1)
    state.accept([old], NODE, T_NS, no_base)
    new = msg("attach", n=2, run="run-b")
    out = state.accept([new], NODE, T_NS, no_base)
    assert out.messages_recorded == [old]
    assert state.pids == {(4242, 4026531836): "run-b"}
    assert state.forget_exited(lambda pid, ns: False) == [new]


def accept_all(state: DeclaredState, messages: list[SpoolMessage], at_ns: int) -> None:
    state.accept(messages, NODE, at_ns, no_base)


def test_progress_records_are_throttled_per_run() -> None:
    state = DeclaredState()
    first = progress(1, 100, 1)
    out = state.accept([first], NODE, T_NS, no_base)
    assert out.progress_changed == {"run-a"}
    assert out.messages_pending == [first]
    # The run has no progress record yet: the first one is due at once.
    drafts, covered = state.progress_records(T_NS, NODE, every_s=60, final=False)
    (record,) = drafts
    assert covered == [first]
    payload = encodes(record)
    assert (record.kind, record.run, payload["progress.tokens"], payload["message_ids"]) == (
        "progress", "run-a", 100, [first.id])

    second, stale = progress(2, 200, 2), progress(3, 50, 1)
    out = state.accept([second, stale], NODE, T_NS + 10 * SECOND, no_base)
    assert out.messages_pending == [second]
    assert out.messages_recorded == [stale]  # nothing in it the state lacks
    assert state.progress_records(T_NS + 59 * SECOND, NODE, 60, False) == ([], [])
    drafts, covered = state.progress_records(T_NS + 60 * SECOND, NODE, 60, False)
    assert [encodes(d)["progress.tokens"] for d in drafts] == [200]
    assert covered == [second]
    # Nothing grew: nothing to record, even at the final checkpoint.
    assert state.progress_records(T_NS + 200 * SECOND, NODE, 60, True) == ([], [])


def test_a_final_report_or_the_final_checkpoint_records_at_once() -> None:
    state = DeclaredState()
    accept_all(state, [progress(1, 100, 1)], T_NS)
    state.progress_records(T_NS, NODE, 60, False)
    accept_all(state, [progress(2, 150, 2)], T_NS + SECOND)
    assert state.progress_records(T_NS + SECOND, NODE, 60, False) == ([], [])
    drafts, _ = state.progress_records(T_NS + SECOND, NODE, 60, final=True)
    assert len(drafts) == 1
    last = progress(3, 150, 2, final=True)
    accept_all(state, [last], T_NS + 2 * SECOND)
    drafts, covered = state.progress_records(T_NS + 2 * SECOND, NODE, 60, False)
    assert covered == [last]
    assert encodes(drafts[0])["progress.final_ranks"] == [0]


def test_progress_records_carry_the_runs_model() -> None:
    state = DeclaredState()
    accept_all(state, [declare(model="llama-x", category="pre-training"),
                       progress(1, 10, 1)], T_NS)
    accept_all(state, [progress(2, 10, 1, run="run-b")], T_NS)
    state.accept([progress(3, 10, 1, run="run-c")], NODE, T_NS,
                 lambda run: RunMeta(run, model="env-model", category="rl", via="env"))
    drafts, _ = state.progress_records(T_NS, NODE, 60, False)
    assert [(d.run, d.model, d.category) for d in drafts] == [
        ("run-a", "llama-x", "pre-training"), ("run-b", "", ""), ("run-c", "env-model", "rl")]


def test_the_snapshot_shows_declared_compute_from_reported_tokens() -> None:
    state = DeclaredState()
    accept_all(state, [declare(model="llama-x", plan={"params": 1e9, "tokens": 2e9}),
                       progress(1, 1000, 5, rank=0), progress(2, 500, 4, rank=1)],
               T_NS + 3 * SECOND)
    (snap,) = state.snapshot()
    assert (snap.run_id, snap.model, snap.tokens, snap.steps, snap.planned_tokens,
            snap.params, snap.formula) == ("run-a", "llama-x", 1500, 5, 2e9, 1e9, "6 x P x D")
    assert snap.declared_flop == pytest.approx(6 * 1e9 * 1500)
    assert snap.updated_wall_seconds == pytest.approx((T_NS + 3 * SECOND) / 1e9)


def test_a_restart_restores_the_snapshot_from_the_runs_table() -> None:
    state = DeclaredState()
    accept_all(state, [declare(model="llama-x", category="pre-training", precision="bf16",
                               base_models=["base-a"], recompute="full",
                               plan={"params": 1e9, "layers": 2, "d_model": 64,
                                     "context": 128}),
                       *PROGRESS], T_NS)
    meta = state.runs["run-a"]
    # The row as the agent stores it: its columns, its metadata and the progress.
    row: dict[str, object] = {
        "model": meta.model, "category": meta.category, "via": meta.via,
        "recompute": meta.recompute, "recompute_factor": meta.recompute_factor,
        "precision": meta.precision, "base_models": list(meta.base_models),
        **{f"plan.{k}": v for k, v in meta.plan.items()}, **state.progress["run-a"].to_meta()}
    restored = DeclaredState()
    restored.restore(json.loads(json.dumps({"run-a": row, "run-env": {"via": "env"}})))
    assert restored.runs == {"run-a": meta}
    before, after = state.snapshot(), restored.snapshot()
    assert [s.declared_flop for s in after] == [s.declared_flop for s in before]
    assert [(s.run_id, s.model, s.tokens, s.steps, s.params, s.formula) for s in after] == [
        (s.run_id, s.model, s.tokens, s.steps, s.params, s.formula) for s in before]
