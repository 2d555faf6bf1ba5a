"""Spool messages for tests: a valid one of each kind, and files the agent must refuse,
each with a fragment of the reason it must give (docs/client-spool.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

T_NS = 1_750_000_000_000_000_000
ID = "0123456789abcdef0123456789abcdef"
KIND_FIELDS: dict[str, dict[str, Any]] = {
    "attach": {},
    "declare": {"declaration": {
        "model": "llama-x", "base_models": ["base-a"], "category": "pre-training",
        "precision": "bf16", "recompute": "selective", "recompute_factor": 1.25,
        "plan": {"tokens": 1e12, "steps": 1000, "end_time": 1.8e9, "duration_s": 86400,
                 "params": 7e9, "layers": 32, "d_model": 4096, "context": 4096, "gpus": 64}}},
    "progress": {"tokens": 1000, "steps": 10, "scope": "rank", "final": False},
    "attestation": {"model": "llama-x", "evaluation": "cyber-uplift", "result": "score",
                    "score": 0.25, "evidence": "https://evals.example/run/1", "by": "alice"},
    "gate": {"model": "llama-x",
             "decision": {"model": "llama-x", "mode": "staged", "exit_code": 0}},
}


def message(kind: str = "progress", *, message_id: str = ID, **changes: Any) -> dict[str, Any]:
    """A valid message of ``kind``; ``changes`` replace or add fields (a value of
    :data:`DROP` removes the field)."""
    doc: dict[str, Any] = {
        "format": "flopledger-spool-1", "kind": kind, "id": message_id, "time_ns": T_NS,
        "pid": 4242, "pid_ns": 4026531836, "host": "node-1", "rank": 0, "world_size": 1,
        **json.loads(json.dumps(KIND_FIELDS[kind])),
    }
    if kind in ("attach", "declare", "progress"):
        doc["run"] = "run-a"
    for key, value in changes.items():
        if value is DROP:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


DROP = object()


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def file_name(kind: str, time_ns: int = T_NS, pid: int = 4242, tail: str = "0a1b2c3d") -> str:
    """A file name as the client writes it."""
    return f"{kind}-{time_ns}-{pid}-{tail}.json"


def write(directory: Path, name: str, content: bytes | dict[str, Any]) -> Path:
    path = directory / name
    path.write_bytes(content if isinstance(content, bytes) else encode(content))
    return path


def _declare(**declaration: Any) -> bytes:
    return encode(message("declare", declaration=declaration))


def _plan(**plan: Any) -> bytes:
    return encode(message("declare", declaration={"plan": plan}))


# (case id, file content, what the ERROR line must say)
BAD_MESSAGES: list[tuple[str, bytes, str]] = [
    ("not-utf8", b'{"format": "\xff\xfe"}', "is not UTF-8 (byte 12)"),
    ("not-json", b'{"format": "flopledger-spool-1", ', "is not JSON"),
    ("empty-file", b"", "is not JSON"),
    ("json-array", b"[1, 2]", "is a JSON list, not an object"),
    ("duplicate-key", b'{"format": "flopledger-spool-1", "format": "x"}', "appears twice"),
    ("nan", encode(message())[:-1] + b', "x": NaN}', "NaN is not a number JSON allows"),
    ("infinite", encode(message()).replace(b'"tokens": 1000', b'"tokens": 1e999'),
     "out of range"),
    ("huge-integer", encode(message()).replace(b'"tokens": 1000', b'"tokens": ' + b"9" * 30),
     "more than 20 digits"),
    ("nested-too-deeply", b"[" * 60000, "nested too deeply"),
    ("unpaired-surrogate", encode(message(host="a\ud800b")), "unpaired surrogate"),
    ("oversized", encode(message(host="h" * 70000)), "at most 65536"),
    ("format-missing", encode(message(format=DROP)), "format: expected 'flopledger-spool-1'"),
    ("format-other", encode(message(format="flopledger-spool-2")),
     "format: expected 'flopledger-spool-1', got 'flopledger-spool-2'"),
    ("kind-unknown", encode({**message(), "kind": "delete"}), "kind: expected one of attach"),
    ("field-missing", encode(message(pid=DROP)), "missing field 'pid'"),
    ("run-missing", encode(message(run=DROP)), "missing field 'run'"),
    ("field-unknown", encode(message(tokenz=5)), "unknown field 'tokenz'"),
    ("run-on-attestation", encode(message("attestation", run="run-a")),
     "unknown field 'run'"),
    ("pid-text", encode(message(pid="4242")), "pid: expected an integer from 1"),
    ("pid-zero", encode(message(pid=0)), "pid: expected an integer from 1"),
    ("time-float", encode(message(time_ns=1.5)), "time_ns: expected an integer"),
    ("time-negative", encode(message(time_ns=-1)), "time_ns: expected an integer from 0"),
    ("pid-ns-text", encode(message(pid_ns="ns")), "pid_ns: expected an integer"),
    ("rank-negative", encode(message(rank=-1)), "rank: expected an integer from 0"),
    ("rank-beyond-world", encode(message(rank=4, world_size=4)),
     "rank: expected an integer from 0 to 3"),
    ("world-zero", encode(message(world_size=0)), "world_size: expected an integer from 1"),
    ("id-upper", encode(message(message_id=ID.upper())), "id: expected 32 lower-case hex"),
    ("id-short", encode(message(message_id="abc")), "id: expected 32 lower-case hex"),
    ("host-control", encode(message(host="n\nFORGED")), "host: the name"),
    ("run-long", encode(message(run="r" * 201)), "is longer than 200 characters"),
    ("run-newline", encode(message(run="evil\nFORGED line")),
     "holds the control character \\n"),
    ("run-bidi", encode(message(run="run\u202eevil")), "holds the control character \\u202e"),
    ("run-unattributed", encode(message(run="Unattributed")), "is reserved"),
    ("run-empty", encode(message(run="")), "run: the name '' is empty"),
    ("run-blank-edge", encode(message(run=" run")), "starts or ends with a blank"),
    ("run-number", encode(message(run=7)), "run: expected a name"),
    ("tokens-negative", encode(message(tokens=-1)), "tokens: expected an integer from 0"),
    ("tokens-bool", encode(message(tokens=True)), "tokens: expected an integer"),
    ("steps-negative", encode(message(steps=-3)), "steps: expected an integer from 0"),
    ("scope-other", encode(message(scope="node")), "scope: expected one of rank, run"),
    ("final-text", encode(message(final="yes")), "final: expected true or false"),
    ("declaration-list", encode(message("declare", declaration=[])),
     "declaration: expected an object"),
    ("declaration-unknown-key", _declare(modle="x"), "declaration: unknown field 'modle'"),
    ("model-unattributed", _declare(model="unattributed"), "declaration.model: the name"),
    ("model-control", _declare(model="m\x1b[2J"), "holds the control character \\x1b"),
    ("base-models-text", _declare(base_models="a,b"), "declaration.base_models: expected a list"),
    ("base-model-empty", _declare(base_models=["a", ""]), "declaration.base_models[1]"),
    ("category-other", _declare(category="training"),
     "declaration.category: expected one of pre-training"),
    ("precision-other", _declare(precision="fp12"), "declaration.precision: expected one of"),
    ("recompute-other", _declare(recompute="partial"), "declaration.recompute: expected one of"),
    ("recompute-factor-without-selective", _declare(recompute="full", recompute_factor=1.5),
     "declaration.recompute_factor: expected only with recompute 'selective'"),
    ("recompute-factor-below-one", _declare(recompute="selective", recompute_factor=0.5),
     "declaration.recompute_factor: expected a finite number >= 1"),
    ("plan-list", _declare(plan=[1]), "declaration.plan: expected an object"),
    ("plan-unknown-key", _plan(flops=1e25), "declaration.plan: unknown field 'flops'"),
    ("plan-negative", _plan(tokens=-5), "declaration.plan.tokens: expected a finite number >= 0"),
    ("plan-text", _plan(params="7B"), "declaration.plan.params: expected a finite number"),
    ("plan-bool", _plan(gpus=True), "declaration.plan.gpus: expected a finite number"),
    ("evaluation-bad", encode(message("attestation", evaluation="e\x00")),
     "evaluation: the name"),
    ("result-other", encode(message("attestation", result="ok")),
     "result: expected one of pass, fail, score"),
    ("score-missing", encode(message("attestation", result="score", score=None)),
     "score: expected a finite number with result 'score', got None"),
    ("score-text", encode(message("attestation", score="high")),
     "score: expected a finite number with result 'score'"),
    ("score-with-pass", encode(message("attestation", result="pass", score=0.9)),
     "score: expected null with result 'pass', got 0.9"),
    ("evidence-relative", encode(message("attestation", evidence="reports/eval.pdf")),
     "evidence: expected a URI with a scheme or an absolute path"),
    ("evidence-trailing-blank", encode(message("attestation", evidence="/srv/e.pdf ")),
     "evidence: expected a URI with a scheme or an absolute path"),
    ("by-empty", encode(message("attestation", by="")), "by: the name '' is empty"),
    ("decision-text", encode(message("gate", decision="allowed")),
     "decision: expected an object"),
    ("gate-model-missing", encode(message("gate", model=DROP)), "missing field 'model'"),
    ("gate-model-other", encode(message("gate", decision={"model": "other-x"})),
     "decision.model: expected 'llama-x' (the message's model), got 'other-x'"),
]
