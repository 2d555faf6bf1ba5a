"""``flopledger verify``: check a ledger file against everything the node signed.

Every check that fails adds a message naming what is wrong (which record, which head);
a clean ledger gives no messages. :func:`agent.ledger.integrity.check_ledger` does the
work, thoroughly: the file opens and has the ledger's tables, columns and storage
classes; records are numbered 0..n-1 with no hole; each body is a canonical record
carrying its own sequence number and matching its stored leaf hash; the Merkle root
over the records matches every signed tree head and every signature verifies; no
record lies beyond the last signed head; the mirrored head file (``<file>.head``) is
not ahead of the file (a roll-back) and matches it; totals equal the sums of their
records. Here in addition: no two records of one GPU cover overlapping time (double
counting), and a ledger that starts with a recorded discontinuity (``flopledger
recover``) is named as a problem: its history before that point is not in this file.
Statements (declarations, progress, attestations, gate decisions) are checked as leaves,
counted per kind in :attr:`VerifyReport.statements`, and add to no sum.
Given the spec table's rows, the records' FLOP are also held to their GPUs' physical
maximum (:mod:`agent.ledger.energy`): what is implausible is a warning, not a problem.

Whatever the file holds, this never raises: an anomaly nobody foresaw is a problem too.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from agent.accounting.records import COMPUTE_KINDS, STATEMENT_KINDS, LedgerRecord
from agent.ledger.energy import EnergyCheck
from agent.ledger.integrity import check_ledger, when
from agent.ledger.signing import fingerprint
from agent.sources.specs import GpuSpec


@dataclass(slots=True)
class VerifyReport:
    """What ``verify`` found."""

    path: Path
    records: int = 0
    heads: int = 0
    key_fingerprint: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Implausible figures (energy plausibility): said, but no failure.
    warnings: list[str] = field(default_factory=list)
    discontinuities: list[LedgerRecord] = field(default_factory=list)
    # Sealed statements per kind (declaration, progress, attestation, gate).
    statements: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.problems

    def statements_text(self) -> str:
        """``none``, or ``2 declaration, 1 attestation`` (in the order of the kinds)."""
        return ", ".join(f"{self.statements[kind]} {kind}" for kind in STATEMENT_KINDS
                         if self.statements[kind]) or "none"


def describe_discontinuity(r: LedgerRecord) -> str:
    """One line on a ``discontinuity`` statement: when, why, and what was last known."""
    a = r.assumptions
    previous = a.get("previous")
    if not isinstance(previous, dict):
        previous = {}
    root = str(previous.get("root", ""))
    return (f"record {r.seq}: discontinuity: this ledger was started by `flopledger recover` "
            f"at {when(_int(a.get('recovered_ns')))} ({a.get('reason', 'no reason given')}); "
            f"the previous ledger, kept as {a.get('moved_to', '?')}, last had a signed head of "
            f"{previous.get('size', '?')} records (root {root[:16] or '?'}...) at "
            f"{when(_int(previous.get('timestamp_ns')))}; its records are not in this file "
            f"and their sums are carried over ({a.get('carried_from', '?')})")


def _int(value: object) -> int:
    return value if type(value) is int else 0


def verify_ledger(path: Path, trusted_fingerprint: str | None = None,
                  max_problems: int = 50,
                  specs: Mapping[str, GpuSpec] | None = None) -> VerifyReport:
    """Check a ledger file; see the module docstring for what is checked. With
    ``specs`` (the spec table's rows by key), also the energy plausibility."""
    report = VerifyReport(path)
    windows: dict[str, dict[tuple[int, int], int]] = defaultdict(dict)
    energy = EnergyCheck(specs) if specs is not None else None

    def on_record(r: LedgerRecord) -> None:
        # Records of one GPU split among runs share a window; distinct windows must
        # not overlap, or the same GPU time was counted twice. Carried sums and
        # statements are no GPU time.
        if r.kind in COMPUTE_KINDS:
            windows[r.gpu_uuid].setdefault((r.start_ns, r.end_ns), r.seq)
        if energy is not None:
            energy.add(r)

    try:
        check = check_ledger(path, thorough=True, on_record=on_record,
                             max_problems=max_problems)
    except Exception as e:  # noqa: BLE001 - verify names every anomaly, even unforeseen
        report.problems.append(f"{path}: verification could not finish "
                               f"({type(e).__name__}: {e}); treat the ledger as damaged")
        return report
    if not check.exists and not check.problems:
        check.problems.append(f"{path}: no such ledger file" if not path.exists() else
                              f"{path}: holds no ledger")
    report.records, report.heads = check.records, check.heads
    report.key_fingerprint = check.key_fingerprint
    report.notes = check.notes
    report.discontinuities = check.discontinuities
    report.statements = check.statements
    if energy is not None:
        report.warnings = [f.message for f in energy.findings()]
    problems = report.problems
    if (trusted_fingerprint and check.public_key_raw
            and fingerprint(check.public_key_raw) != trusted_fingerprint):
        problems.append(f"key: ledger signed by {report.key_fingerprint}, expected "
                        f"{trusted_fingerprint}")
    problems.extend(describe_discontinuity(r) for r in check.discontinuities)
    problems.extend(check.problems)
    for uuid, spans in windows.items():
        ordered = sorted(spans.items())
        for (a, seq_a), (b, seq_b) in pairwise(ordered):
            if b[0] < a[1]:
                problems.append(f"GPU {uuid}: records {seq_a} and {seq_b} cover overlapping "
                                f"time ({a[0]}..{a[1]} and {b[0]}..{b[1]}): counted twice")
    return report
