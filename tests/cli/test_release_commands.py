"""``flopledger attest`` and ``flopledger gate`` end to end, as separate processes.

Without an agent the commands write the ledger themselves; while the state directory's
lock is held (here by the test, standing in for the agent) they write a spool message
in the documented format instead, and wait for the agent to record it: the test then
plays the agent's part, recording the statement from the message.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.accounting.records import make_statement
from agent.ledger import lock
from agent.ledger.query import read_view, statements
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from agent.sources.spool import parse_message
from tests.compliance.test_gate import POLICY, T0, write_ledger
from tests.paths import REPO

SPOOL_NAME = re.compile(r"^(attestation|gate)-(\d+)-(\d+)-[0-9a-f]{8}\.json$")


def flopledger(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env, check=False)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory with a ledger (the models of the gate's tests) and a spool."""
    directory = tmp_path / "state"
    directory.mkdir()
    write_ledger(directory / "ledger.sqlite")
    (tmp_path / "spool").mkdir()
    (tmp_path / "agent.toml").write_text(
        f'[agent]\nstate_dir = "{directory}"\nnode = "node-1"\n'
        f'[client]\nspool_dir = "{tmp_path / "spool"}"\n')
    (tmp_path / "release.toml").write_text(POLICY)
    return directory


@pytest.fixture
def held(state: Path) -> Iterator[lock.StateLock]:
    """The state directory's lock, held as the running agent holds it."""
    with lock.acquire(state) as held_lock:
        yield held_lock


def _config(state: Path) -> str:
    return str(state.parent / "agent.toml")


def _attest(state: Path, *extra: str, model: str = "medium", wait: str = "0",
            ) -> subprocess.CompletedProcess[str]:
    return flopledger("attest", model, "--evaluation", "red-team", "--result", "pass",
                      "--evidence", "https://evals.example/812", "--by", "alice", "--wait", wait,
                      "--config", _config(state), *extra)


def test_attest_writes_a_signed_statement_when_no_agent_runs(state: Path) -> None:
    result = _attest(state)
    assert result.returncode == 0, result.stderr
    ledger = state / "ledger.sqlite"
    assert result.stdout == (f"recorded attestation of medium: red-team pass as record 3 of "
                             f"the ledger {ledger}\n")
    (statement,) = statements(ledger, kinds=("attestation",), model="medium")
    payload = statement.assumptions
    assert (statement.seq, payload["evaluation"], payload["result"], payload["score"],
            payload["evidence"], payload["by"]) == (3, "red-team", "pass", None,
                                                    "https://evals.example/812", "alice")
    assert re.fullmatch(r"[0-9a-f]{32}", str(payload["message_id"]))
    assert isinstance(payload["time_ns"], int)
    verify = flopledger("verify", str(ledger))
    assert verify.returncode == 0, verify.stdout
    # The lock file the command took is left as it was found: none.
    assert not (state / lock.LOCK_NAME).exists()
    scored = flopledger("attest", "medium", "--evaluation", "refusal", "--result", "score=0.93",
                        "--evidence", "/srv/evals/refusal.json", "--ledger", str(ledger))
    assert scored.returncode == 0, scored.stderr
    assert "refusal score 0.93 as record 4" in scored.stdout
    by = statements(ledger, kinds=("attestation",), model="medium")[-1].assumptions["by"]
    assert isinstance(by, str)
    assert by  # the login user


def test_attest_while_the_agent_holds_the_ledger_queues_a_spool_message(
        state: Path, held: lock.StateLock) -> None:
    before = read_view(state / "ledger.sqlite").head_size
    result = _attest(state)
    assert result.returncode == 0, result.stderr
    spool = state.parent / "spool"
    (spooled,) = list(spool.iterdir())
    match = SPOOL_NAME.match(spooled.name)
    assert match is not None
    assert match.group(1) == "attestation"
    assert result.stdout == (f"queued attestation of medium: red-team pass in the spool for "
                             f"the running agent ({spooled}); still queued after 0 s: the "
                             "agent records it at its next checkpoint\n")
    message = json.loads(spooled.read_text())
    assert set(message) == {"format", "kind", "id", "time_ns", "pid", "pid_ns", "host",
                            "model", "evaluation", "result", "score", "evidence", "by"}
    assert (message["format"], message["kind"], message["model"], message["evaluation"],
            message["result"], message["score"], message["evidence"], message["by"]) == (
        "flopledger-spool-1", "attestation", "medium", "red-team", "pass", None,
        "https://evals.example/812", "alice")
    assert re.fullmatch(r"[0-9a-f]{32}", message["id"])
    assert str(message["time_ns"]) == match.group(2)
    assert str(message["pid"]) == match.group(3)
    assert oct(spooled.stat().st_mode & 0o777) == oct(0o644)
    parsed = parse_message(spooled, spooled.read_bytes())
    assert (parsed.kind, parsed.body["evaluation"]) == ("attestation", "red-team")
    # Nothing written to the ledger the agent holds.
    assert read_view(state / "ledger.sqlite").head_size == before


def _record_from_spool(state: Path, spooled: Path) -> int:
    """What the agent does at a checkpoint: the message as a statement, then the file
    removed."""
    message = json.loads(spooled.read_text())
    ledger = Ledger(state / "ledger.sqlite", "node-1", load_or_create_key(state / "node.key"))
    try:
        fields = {k: message[k] for k in ("evaluation", "result", "score", "evidence", "by")}
        statement = make_statement("attestation", node="node-1", time_ns=message["time_ns"],
                                   model=message["model"],
                                   payload={**fields, "time_ns": message["time_ns"],
                                            "message_id": message["id"]})
        head = ledger.append([statement], T0 + 10**12, consumed_ids=[message["id"]])
    finally:
        ledger.close()
    spooled.unlink()
    assert head is not None
    return head.size - 1


def _wait_for_file(directory: Path, suffix: str = ".json") -> Path:
    for _ in range(600):
        found = [p for p in directory.iterdir() if p.name.endswith(suffix)
                 and not p.name.startswith(".")]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no spool file in {directory}")


def _start_attest(state: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "attest", "medium", "--evaluation", "red-team",
         "--result", "pass", "--evidence", "https://evals.example/812", "--by", "alice",
         "--wait", "60", "--config", _config(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})


def test_attest_waits_for_the_running_agent_to_record_it(
        state: Path, held: lock.StateLock) -> None:
    proc = _start_attest(state)
    try:
        spooled = _wait_for_file(state.parent / "spool")
        seq = _record_from_spool(state, spooled)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out == (f"recorded attestation of medium: red-team pass as record {seq} of the "
                   f"ledger {state / 'ledger.sqlite'} by the running agent\n")


def test_attest_says_when_the_agent_rejects_the_message(state: Path,
                                                        held: lock.StateLock) -> None:
    proc = _start_attest(state)
    try:
        spooled = _wait_for_file(state.parent / "spool")
        spooled.rename(spooled.with_name(spooled.name + ".rejected"))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert out == ""
    assert "was not recorded: the agent rejected the message" in err


def test_attest_refuses_when_the_agent_reads_no_spool(state: Path, held: lock.StateLock) -> None:
    config = state.parent / "agent.toml"
    config.write_text(config.read_text().replace(
        f'spool_dir = "{state.parent / "spool"}"', 'spool_dir = ""'))
    result = _attest(state)
    assert result.returncode == 2
    assert "reads no spool ([client] spool_dir is empty" in result.stderr
    assert list((state.parent / "spool").iterdir()) == []


@pytest.mark.parametrize(("args", "expected"), [
    (("--result", "score=nan"), "--result 'score=nan': expected score=X with X a finite number"),
    (("--result", "maybe"), "--result 'maybe': expected pass, fail or score=X"),
    (("--evidence", "results/1.json"), "is neither a URI with a scheme"),
    (("--evaluation", "red\nteam"), "--evaluation 'red\\\\nteam' holds the control character"),
    (("--by", ""), "--by '' is empty"),
    (("--wait", "-1"), "--wait -1.0: expected a number of seconds >= 0"),
])
def test_attest_refuses_bad_arguments_and_writes_nothing(state: Path, args: tuple[str, str],
                                                         expected: str) -> None:
    before = sorted(p.name for p in state.iterdir())
    size = (state / "ledger.sqlite").stat().st_size
    base = ["--evaluation", "red-team", "--result", "pass", "--evidence", "https://e/1"]
    flag, value = args
    argv = base[:]
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    result = flopledger("attest", "medium", *argv, "--config", _config(state))
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in state.iterdir()) == before
    assert (state / "ledger.sqlite").stat().st_size == size


def _gate(state: Path, model: str, mode: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return flopledger("gate", model, "--mode", mode, "--policy",
                      str(state.parent / "release.toml"), "--config", _config(state),
                      "--wait", "0", *extra)


def test_gate_exit_codes(state: Path) -> None:
    allowed = _gate(state, "small", "open-weights")
    assert allowed.returncode == 0, allowed.stderr
    assert "decision  ALLOWED (exit 0)" in allowed.stdout
    not_allowed = _gate(state, "medium", "open-weights")
    assert not_allowed.returncode == 3
    assert ("mode open-weights is not allowed for tier mid (allowed: staged, structured-access, "
            "internal); the least restricted allowed mode is staged, which needs red-team, "
            "refusal") in not_allowed.stdout
    missing = _gate(state, "medium", "staged")
    assert missing.returncode == 4
    assert "but red-team missing; refusal missing" in missing.stdout
    assert _attest(state).returncode == 0
    scored = flopledger("attest", "medium", "--evaluation", "refusal", "--result", "score=0.5",
                        "--evidence", "/srv/e.json", "--config", _config(state))
    assert scored.returncode == 0, scored.stderr
    below = _gate(state, "medium", "staged")
    assert below.returncode == 4
    assert "refusal score below min (0.5 < 0.9)" in below.stdout
    unmeasured = _gate(state, "ghost", "open-weights")
    assert unmeasured.returncode == 4
    assert "no compute records for ghost: the gate cannot place ghost below any tier" in \
        unmeasured.stdout
    assert _gate(state, "ghost", "open-weights", "--allow-unmeasured").returncode == 0
    # Every decision is in the ledger, which still verifies.
    gates = statements(state / "ledger.sqlite", kinds=("gate",))
    assert [g.assumptions["exit_code"] for g in gates] == [0, 3, 4, 4, 4, 0]
    assert flopledger("verify", str(state / "ledger.sqlite")).returncode == 0


def test_gate_json_is_one_object(state: Path) -> None:
    result = _gate(state, "big", "staged", "--format", "json")
    assert result.returncode == 3
    doc = json.loads(result.stdout)
    assert (doc["verdict"], doc["suggested_mode"], doc["tier"]["name"]) == (
        "mode-not-allowed", "structured-access", "top")
    assert doc["recorded"]["status"] == "recorded"
    assert doc["evidence"]["kind"] == "ledger"


def test_gate_while_the_agent_holds_the_ledger_queues_its_decision(
        state: Path, held: lock.StateLock) -> None:
    result = _gate(state, "big", "open-weights")
    assert result.returncode == 3, result.stderr
    (spooled,) = list((state.parent / "spool").iterdir())
    assert SPOOL_NAME.match(spooled.name) is not None
    assert spooled.name.startswith("gate-")
    message = json.loads(spooled.read_text())
    assert set(message) == {"format", "kind", "id", "time_ns", "pid", "pid_ns", "host",
                            "model", "decision"}
    assert (message["kind"], message["model"]) == ("gate", "big")
    assert message["decision"]["verdict"] == "mode-not-allowed"
    # The agent's own reader takes it (a frontier model's FLOP included).
    parsed = parse_message(spooled, spooled.read_bytes())
    assert (parsed.kind, parsed.id, parsed.body["model"]) == ("gate", message["id"], "big")
    assert message["decision"]["policy_sha256"] == message["decision"]["policy"]["sha256"]
    assert "recorded" not in message["decision"]
    assert result.stdout.splitlines()[-1].startswith("queued the decision in the spool")


def test_gate_on_a_damaged_ledger_exits_1(state: Path) -> None:
    from tests.ledger.damage import FAULTS

    FAULTS["totals-edited"][0](state)
    result = _gate(state, "medium", "staged")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"flopledger: the ledger {state / 'ledger.sqlite'} fails "
                                    "verification: ")


def test_gate_refuses_a_bad_policy_and_an_unknown_mode(state: Path) -> None:
    bad = state.parent / "bad.toml"
    bad.write_text(POLICY.replace('regime = "eu-art51-systemic-risk"', 'regime = "eu-art99"'))
    result = flopledger("gate", "medium", "--mode", "staged", "--policy", str(bad),
                        "--config", _config(state))
    assert result.returncode == 2
    assert f"configuration error in {bad}" in result.stderr
    assert "tiers[0].regime: expected one of the regimes of" in result.stderr
    unknown = flopledger("gate", "medium", "--mode", "public", "--config", _config(state))
    assert unknown.returncode == 2
    assert "argument --mode: invalid choice: 'public'" in unknown.stderr
    both = flopledger("gate", "medium", "--mode", "staged", "--ledger", "x", "--bundle", "y")
    assert both.returncode == 2
    assert "give --ledger or --bundle, not both" in both.stderr
    assert statements(state / "ledger.sqlite", kinds=("gate",)) == []


def test_the_shipped_policy_is_the_default(state: Path) -> None:
    result = flopledger("gate", "small", "--mode", "open-weights", "--config", _config(state),
                        "--wait", "0")
    assert result.returncode == 0, result.stderr
    assert f"policy    {REPO / 'agent' / 'data' / 'release.toml'}" in result.stdout
    assert "tier      below-thresholds: the policy's default; the model reaches no tier" \
        in result.stdout
