"""Ledger records: what is appended, and its canonical byte encoding.

A record is one stretch of one GPU's time charged to one run: FLOP (low, central,
high), energy, how many samples and how much of the stretch was a gap, and the method
and assumptions behind the figures. Its canonical encoding (sorted-key, compact,
ASCII JSON) is the Merkle leaf, so a verifier on another machine recomputes exactly
the hashes the node signed. :class:`Totals` are running sums over records (per GPU,
per run, per replay). Both live with the accounting that produces them, below the
ledger that stores them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from agent.accounting.band import Band, FlopColumns

RECORD_VERSION = 1
# ``discontinuity``: written only by ``flopledger recover`` at the start of a new
# ledger; it states what the previous ledger last held (see agent/ledger/recover.py).
COMPUTE_KINDS = ("interval", "gap")
# What a run's trainer or a person declared (see :func:`make_statement`): signed and in
# the Merkle tree like any record, but no GPU time and no amounts. ``run-close`` is the
# node's own: how many compute records of a run it holds (see :class:`RunClose`).
RUN_CLOSE = "run-close"
STATEMENT_KINDS = ("declaration", "progress", "attestation", "gate", RUN_CLOSE)
KINDS = (*COMPUTE_KINDS, "discontinuity", *STATEMENT_KINDS)
# The key of a compute record's assumptions that numbers it within its run on this
# ledger: how many compute records of the run the ledger held before it (0, 1, 2, ...).
# Assigned by the ledger on append, like ``seq``; records written before it existed lack it.
RUN_SEQ = "run_seq"


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One appended record. FLOP are whole FLOP; times are wall-clock nanoseconds.

    ``kind`` is ``interval`` for sampled time and ``gap`` for time nobody sampled (the
    agent was down): a gap adds the GPU's highest possible rate to ``flop_high`` and
    nothing to the other two. A statement (a kind in :data:`STATEMENT_KINDS`, made by
    :func:`make_statement`) has no GPU, no amounts and one instant; what was declared is
    in ``assumptions``. A compute record's ``assumptions`` also hold its number within
    its run (:data:`RUN_SEQ`), set by the ledger when it is appended.
    """

    seq: int
    kind: str
    node: str
    run: str
    model: str
    category: str
    gpu_uuid: str
    gpu_index: int
    start_ns: int
    end_ns: int
    flop_low: int
    flop_central: int
    flop_high: int
    energy_mj: int
    samples: int
    covered_ns: int
    gap_ns: int
    estimator: str
    assumptions: dict[str, Any] = field(default_factory=dict)

    @property
    def flop(self) -> Band[int]:
        """``flop_low``, ``flop_central``, ``flop_high`` as one band (whole FLOP)."""
        return Band(self.flop_low, self.flop_central, self.flop_high)

    def encode(self) -> bytes:
        """Canonical bytes: the Merkle leaf."""
        # The fields as they are (what dataclasses.asdict would give, without its deep
        # copy: six times faster, and a replay encodes every record it appends).
        doc: dict[str, Any] = {name: getattr(self, name) for name in _RECORD_FIELDS}
        doc["v"] = RECORD_VERSION
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @classmethod
    def decode(cls, body: bytes) -> LedgerRecord:
        """Raises: ValueError for bytes that are not a canonical version-1 record."""
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"not JSON: {e}") from e
        if not isinstance(doc, dict) or doc.pop("v", None) != RECORD_VERSION:
            raise ValueError("not a version-1 record")
        try:
            record = cls(**doc)
        except TypeError as e:
            raise ValueError(f"bad fields: {e}") from e
        if record.encode() != body:
            raise ValueError("not in canonical form")
        return record


_RECORD_FIELDS = tuple(f.name for f in fields(LedgerRecord))


def is_compute(r: LedgerRecord) -> bool:
    """Whether a record's amounts count toward FLOP, energy and GPU totals: an interval,
    a gap, or a pair's sums that ``flopledger recover`` carried over (a ``discontinuity``
    with a run). Statements and the recovery's own statement (no run) count nothing."""
    return r.kind in COMPUTE_KINDS or (r.kind == "discontinuity" and bool(r.run))


def run_seq_of(r: LedgerRecord) -> int | None:
    """A compute record's number within its run on its ledger (:data:`RUN_SEQ`), or None
    for a record without one (a statement, or written before records were numbered)."""
    value = r.assumptions.get(RUN_SEQ) if is_compute(r) else None
    return value if type(value) is int else None


@dataclass(frozen=True, slots=True)
class RunClose:
    """What a ``run-close`` statement says: this node's ledger holds ``records`` compute
    records of the run, the last at ``last_seq``, and none more so far. They carry
    run_seq ``first_run_seq``..``records - 1``; the ``first_run_seq`` before those were
    written before records were numbered and carry none (0 of them, normally). A later
    record of the run reopens it."""

    records: int
    last_seq: int
    first_run_seq: int = 0

    def payload(self) -> dict[str, int]:
        return {"records": self.records, "last_seq": self.last_seq,
                "first_run_seq": self.first_run_seq}

    @classmethod
    def of(cls, r: LedgerRecord) -> RunClose:
        """Raises: ValueError for a payload that is not exactly a sound closing count."""
        doc = r.assumptions
        if not isinstance(doc, dict) or set(doc) != {"records", "last_seq", "first_run_seq"}:
            keys = sorted(doc) if isinstance(doc, dict) else doc
            raise ValueError(f"payload {keys!r}: expected exactly records, last_seq and "
                             "first_run_seq")
        bad = [f"{k} is {v!r}" for k, v in doc.items() if type(v) is not int or v < 0]
        if bad:
            raise ValueError(f"{', '.join(bad)}: expected a whole number >= 0")
        close = cls(doc["records"], doc["last_seq"], doc["first_run_seq"])
        if close.records < 1 or close.first_run_seq > close.records:
            raise ValueError(f"{close.records} records numbered from {close.first_run_seq}: "
                             "expected at least one record, numbered from at most their count")
        return close


def make_statement(kind: str, *, node: str, time_ns: int, run: str = "", model: str = "",
                   category: str = "", payload: Mapping[str, Any]) -> LedgerRecord:
    """A statement record: what was declared (``payload``), by whom (``node``), when.

    Its ``seq`` is assigned when it is appended; it has no GPU and no amounts, so it
    never changes a total.

    Raises:
        ValueError: for a kind not in :data:`STATEMENT_KINDS`, or a payload that does
            not come back unchanged through JSON (the canonical encoding).
    """
    if kind not in STATEMENT_KINDS:
        raise ValueError(f"statement kind {kind!r}: expected one of {', '.join(STATEMENT_KINDS)}")
    assumptions = dict(payload)
    try:
        text = json.dumps(assumptions, sort_keys=True, ensure_ascii=True, allow_nan=False)
        same = json.loads(text) == assumptions
    except (TypeError, ValueError, RecursionError) as e:
        raise ValueError(f"{kind} payload: not JSON-serialisable ({e})") from e
    if not same:
        raise ValueError(f"{kind} payload: does not round-trip through JSON (tuples, "
                         "non-string keys?)")
    return LedgerRecord(
        seq=0, kind=kind, node=node, run=run, model=model, category=category, gpu_uuid="",
        gpu_index=-1, start_ns=time_ns, end_ns=time_ns, flop_low=0, flop_central=0,
        flop_high=0, energy_mj=0, samples=0, covered_ns=0, gap_ns=0, estimator="statement",
        assumptions=assumptions)


NO_FLOP: Band[int] = Band(0, 0, 0)


@dataclass(slots=True)
class Totals(FlopColumns):
    """Running sums over records; FLOP (whole FLOP) and energy are exact integers."""

    flop: Band[int] = NO_FLOP
    energy_mj: int = 0
    samples: int = 0
    covered_ns: int = 0
    gap_ns: int = 0
    first_ns: int = 0
    last_ns: int = 0

    def add(self, r: LedgerRecord) -> None:
        self.flop += r.flop
        self.energy_mj += r.energy_mj
        self.samples += r.samples
        self.covered_ns += r.covered_ns
        self.gap_ns += r.gap_ns
        self.first_ns = r.start_ns if self.first_ns == 0 else min(self.first_ns, r.start_ns)
        self.last_ns = max(self.last_ns, r.end_ns)

