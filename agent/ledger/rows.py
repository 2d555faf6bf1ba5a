"""Reading stored records that may be damaged: a bad row is a message, never a crash.

A body should be a BLOB holding a canonical version-1 record whose fields have the
types the node wrote. An edited file can hold TEXT, NULL, numbers, garbage JSON, or a
well-formed record whose ``flop_central`` is a string; every reader of the ledger goes
through :func:`parse_body` so that each of these becomes a :class:`BadRowError` naming the
record and what is wrong with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from agent.accounting.records import (
    KINDS,
    RECORD_VERSION,
    RUN_CLOSE,
    STATEMENT_KINDS,
    LedgerRecord,
    RunClose,
)

INT_FIELDS = ("seq", "gpu_index", "start_ns", "end_ns", "flop_low", "flop_central",
              "flop_high", "energy_mj", "samples", "covered_ns", "gap_ns")
AMOUNT_FIELDS = ("flop_low", "flop_central", "flop_high", "energy_mj", "samples",
                 "covered_ns", "gap_ns")
STR_FIELDS = ("kind", "node", "run", "model", "category", "gpu_uuid", "estimator")

_STORAGE = {int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB"}


class BadRowError(ValueError):
    """A stored row that is not a sound record; the message says what is wrong."""


def storage_class(value: object) -> str:
    """SQLite's name for the storage class of a value read back (``NULL``, ``TEXT``...)."""
    return "NULL" if value is None else _STORAGE.get(type(value), type(value).__name__)


def body_bytes(value: object) -> tuple[bytes, str | None]:
    """The bytes of a stored body, and what is wrong with its storage class (None if
    it is a BLOB). TEXT keeps its characters, so its hash still says whether the
    content was edited."""
    if isinstance(value, bytes):
        return value, None
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass"), "stored as TEXT, not BLOB"
    if value is None:
        return b"", "is NULL"
    return str(value).encode(), f"stored as {storage_class(value)}, not BLOB"


def field_problem(r: LedgerRecord) -> str | None:
    """What makes a decoded record unusable for sums (wrong types, a band out of order,
    an unknown kind), or None."""
    for name in INT_FIELDS:
        value = getattr(r, name)
        if type(value) is not int:
            return f"field {name} is {value!r}, not an integer"
    for name in STR_FIELDS:
        value = getattr(r, name)
        if not isinstance(value, str):
            return f"field {name} is {value!r}, not a string"
    if not isinstance(r.assumptions, dict):
        return f"field assumptions is {r.assumptions!r}, not an object"
    if r.kind not in KINDS:
        return f"unknown kind {r.kind!r}"
    if not r.flop_low <= r.flop_central <= r.flop_high:
        return (f"FLOP band out of order (low {r.flop_low}, central {r.flop_central}, "
                f"high {r.flop_high})")
    if r.end_ns < r.start_ns:
        return f"ends ({r.end_ns}) before it starts ({r.start_ns})"
    if r.kind in STATEMENT_KINDS:
        return statement_problem(r)
    return None


def statement_problem(r: LedgerRecord) -> str | None:
    """What makes a statement carry more than a statement may: a GPU, an amount, a
    stretch of time (a statement that smuggles FLOP into the ledger), a run-close that
    is no count of a run; or None."""
    if r.gpu_uuid:
        return f"{r.kind} statement names GPU {r.gpu_uuid!r}; a statement has no GPU"
    amounts = [f"{name} {getattr(r, name)}" for name in AMOUNT_FIELDS if getattr(r, name)]
    if amounts:
        return f"{r.kind} statement carries amounts ({', '.join(amounts)}); it must carry none"
    if r.start_ns != r.end_ns:
        return (f"{r.kind} statement spans {r.start_ns}..{r.end_ns}; a statement is one "
                "instant")
    if r.kind == RUN_CLOSE:
        if not r.run:
            return f"{r.kind} statement names no run"
        try:
            RunClose.of(r)
        except ValueError as e:
            return f"{r.kind} statement of run {r.run!r}: {e}"
    return None


def parse_record(body: bytes, *, canonical: bool = True) -> LedgerRecord:
    """A record from its stored bytes.

    ``canonical=False`` skips re-encoding the record to compare bytes: enough where the
    bytes are already known to hash to a signed root (the node wrote them canonical).

    Raises:
        BadRowError: for anything that is not a sound version-1 record.
    """
    try:
        if canonical:
            record = LedgerRecord.decode(body)
        else:
            doc = json.loads(body)
            if not isinstance(doc, dict) or doc.pop("v", None) != RECORD_VERSION:
                raise ValueError("not a version-1 record")
            record = LedgerRecord(**doc)
    except (ValueError, TypeError, RecursionError) as e:
        raise BadRowError(f"body is not a valid record ({e})") from e
    problem = field_problem(record)
    if problem is not None:
        raise BadRowError(problem)
    return record


def parse_body(value: object, *, canonical: bool = True,
               wrong_type: Skipped | None = None) -> LedgerRecord:
    """A record from a stored ``body`` value of any storage class.

    Args:
        wrong_type: where to note a body that is a sound record stored as TEXT (read
            anyway: its characters are the record's); None refuses it.

    Raises:
        BadRowError: naming the storage class or the content problem.
    """
    body, wrong = body_bytes(value)
    if wrong is not None and (wrong_type is None or not isinstance(value, str)):
        raise BadRowError(f"body {wrong}")
    record = parse_record(body, canonical=canonical)
    if wrong is not None and wrong_type is not None:
        wrong_type.add(f"record {record.seq}: body {wrong}")
    return record


@dataclass(slots=True)
class Skipped:
    """Rows a reader left out, to say so once and loudly."""

    count: int = 0
    first: list[str] | None = None

    def add(self, what: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = []
        if len(self.first) < 3:
            self.first.append(what)

    def describe(self) -> str:
        shown = "; ".join(self.first or [])
        more = f" and {self.count - 3} more" if self.count > 3 else ""
        return f"{self.count} unreadable row(s) left out ({shown}{more})"
