"""Attestations: a person's signed word that a model passed or failed an evaluation.

``flopledger attest`` writes one as an ``attestation`` statement (directly, or through
the client spool while the agent holds the ledger). Its payload is
:func:`attestation_payload`; what comes back from the ledger or a bundle is read with
:func:`from_statement`. A model's evaluations are judged on the *latest* attestation of
each (the highest record number: the order the ledger signed them in, which no clock on
the attester's side can move), so a failed evaluation that is run again and passes is
passed, and a pass withdrawn by a later fail is failed.

The checks of what a person types (:func:`parse_result`, :func:`evidence_problem`,
names by :func:`agent.accounting.names.name_problem`) live here too, so the command and
every reader hold an attestation to the same rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.accounting.names import name_problem, printable
from agent.accounting.records import LedgerRecord

KIND = "attestation"
RESULTS = ("pass", "fail", "score")
MAX_EVIDENCE_CHARS = 2000
# RFC 3986: a scheme is a letter, then letters, digits, "+", "-" or "."; a URI has more
# than its scheme.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S")
_MESSAGE_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class Attestation:
    """One attestation as the ledger holds it.

    Attributes:
        model: the model it is about.
        evaluation: the evaluation's name (as the release policy names it).
        result: ``pass``, ``fail`` or ``score``.
        score: the score, with ``score`` (None otherwise).
        evidence: where the evaluation's results are (a URI or an absolute path).
        by: who attests.
        time_ns: when, by the attester's clock (Unix nanoseconds).
        message_id: the id of the message it was written with (32 hex digits).
        seq: its record number in the ledger.
    """

    model: str
    evaluation: str
    result: str
    score: float | None
    evidence: str
    by: str
    time_ns: int
    message_id: str
    seq: int

    def to_json(self) -> dict[str, Any]:
        return {"evaluation": self.evaluation, "result": self.result, "score": self.score,
                "by": self.by, "evidence": self.evidence, "time_ns": self.time_ns,
                "message_id": self.message_id, "record": self.seq}


def parse_result(text: str) -> tuple[str, float | None]:
    """``pass``, ``fail`` or ``score=X`` -> (result, score).

    Raises:
        ValueError: naming what was expected.
    """
    if text in ("pass", "fail"):
        return text, None
    if text.startswith("score="):
        try:
            score = float(text.removeprefix("score="))
        except ValueError:
            score = math.nan
        if math.isfinite(score):
            return "score", score
        raise ValueError(f"--result {text!r}: expected score=X with X a finite number")
    raise ValueError(f"--result {text!r}: expected pass, fail or score=X")


def evidence_problem(evidence: str) -> str | None:
    """Why ``evidence`` cannot point at an evaluation's results, or None: it must be a
    URI with a scheme (``https://...``, ``s3://...``) or an absolute path, on one line."""
    if not evidence:
        return "is empty"
    if len(evidence) > MAX_EVIDENCE_CHARS:
        return f"is longer than {MAX_EVIDENCE_CHARS} characters"
    if printable(evidence, len(evidence)) != evidence:
        return "holds a control character or a line break"
    if evidence != evidence.strip():
        return "starts or ends with a blank"
    if not (evidence.startswith("/") or _SCHEME.match(evidence)):
        return "is neither a URI with a scheme (https://..., s3://...) nor an absolute path"
    return None


def attestation_payload(*, evaluation: str, result: str, score: float | None, evidence: str,
                        by: str, time_ns: int, message_id: str) -> dict[str, Any]:
    """The payload of an ``attestation`` statement (the model is the statement's own)."""
    return {"evaluation": evaluation, "result": result, "score": score,
            "evidence": evidence, "by": by, "time_ns": time_ns, "message_id": message_id}


def payload_problem(payload: Mapping[str, Any]) -> str | None:
    """Why a payload is no attestation (a field missing or of the wrong type), or None."""
    evaluation = payload.get("evaluation")
    if not isinstance(evaluation, str) or name_problem(evaluation):
        return "evaluation: not a name"
    result = payload.get("result")
    if result not in RESULTS:
        return f"result: not one of {', '.join(RESULTS)}"
    score = payload.get("score")
    if result == "score":
        if not isinstance(score, int | float) or isinstance(score, bool) \
                or not math.isfinite(score):
            return "score: not a finite number"
    elif score is not None:
        return f"score: given with result {result}"
    evidence = payload.get("evidence")
    if not isinstance(evidence, str) or evidence_problem(evidence):
        return "evidence: not a URI or an absolute path"
    by = payload.get("by")
    if not isinstance(by, str) or name_problem(by):
        return "by: not a name"
    if type(payload.get("time_ns")) is not int:
        return "time_ns: not an integer"
    if not isinstance(message_id_of(payload), str):
        return "message_id: not 32 hexadecimal digits"
    return None


def message_id_of(payload: Mapping[str, Any]) -> str | None:
    """The id of the message a statement was written with (``message_id``; a statement
    recorded from the spool may carry it as ``id``), or None."""
    for key in ("message_id", "id"):
        value = payload.get(key)
        if isinstance(value, str) and _MESSAGE_ID.match(value):
            return value
    return None


def from_statement(record: LedgerRecord) -> Attestation:
    """The attestation an ``attestation`` statement holds.

    Raises:
        ValueError: if the record is no attestation or its payload is malformed.
    """
    if record.kind != KIND:
        raise ValueError(f"record {record.seq}: a {record.kind} record, not an attestation")
    payload = record.assumptions
    problem = payload_problem(payload)
    if problem is not None:
        raise ValueError(f"record {record.seq}: malformed attestation ({problem})")
    score = payload.get("score")
    return Attestation(
        model=record.model, evaluation=str(payload["evaluation"]),
        result=str(payload["result"]), score=float(score) if score is not None else None,
        evidence=str(payload["evidence"]), by=str(payload["by"]),
        time_ns=int(payload["time_ns"]), message_id=str(message_id_of(payload)),
        seq=record.seq)


@dataclass(frozen=True, slots=True)
class Attested:
    """The latest attestation of each evaluation of one model, and the statements that
    could not be read as attestations (said, never counted)."""

    latest: Mapping[str, Attestation]
    malformed: tuple[str, ...] = ()


def latest_attestations(records: Iterable[LedgerRecord], model: str) -> Attested:
    """Per evaluation, the attestation of ``model`` with the highest record number."""
    latest: dict[str, Attestation] = {}
    malformed: list[str] = []
    for record in records:
        if record.kind != KIND or record.model != model:
            continue
        try:
            a = from_statement(record)
        except ValueError as e:
            malformed.append(str(e))
            continue
        current = latest.get(a.evaluation)
        if current is None or a.seq > current.seq:
            latest[a.evaluation] = a
    return Attested(dict(sorted(latest.items())), tuple(malformed))
