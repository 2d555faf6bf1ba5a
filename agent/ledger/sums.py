"""Sums of records per (GPU, run) pair: what the ledger's totals are made of.

A record charges one GPU's time to one run, so the per-GPU and per-run totals are both
sums over pairs. The writer keeps the pair sums, mirrors them (signed) beside the
ledger at every checkpoint, and ``flopledger recover`` carries them into a new ledger
as its opening records, so that every total, per GPU and per run, resumes where it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from agent.accounting.band import Band
from agent.accounting.records import STATEMENT_KINDS, LedgerRecord, Totals

PairKey = tuple[str, str]  # (gpu_uuid, run)

# The sums a total keeps, in a fixed order (the ledger's column names).
ADDITIVE = ("flop_low", "flop_central", "flop_high", "energy_mj", "samples", "covered_ns",
            "gap_ns")
FIELDS = (*ADDITIVE, "first_ns", "last_ns")


def values(t: Totals) -> tuple[int, ...]:
    """A total's :data:`FIELDS`, in order."""
    return (*t.flop, t.energy_mj, t.samples, t.covered_ns, t.gap_ns, t.first_ns, t.last_ns)


def from_values(v: Iterable[int]) -> Totals:
    """The inverse of :func:`values`.

    Raises:
        ValueError: if there are not exactly nine values.
    """
    low, central, high, energy, samples, covered, gap, first, last = v
    return Totals(Band(low, central, high), energy, samples, covered, gap, first, last)


def merge(into: Totals, t: Totals) -> None:
    """Add ``t`` to ``into``, as if ``t``'s records were added one by one."""
    into.flop += t.flop
    into.energy_mj += t.energy_mj
    into.samples += t.samples
    into.covered_ns += t.covered_ns
    into.gap_ns += t.gap_ns
    if t.first_ns:
        into.first_ns = t.first_ns if into.first_ns == 0 else min(into.first_ns, t.first_ns)
    into.last_ns = max(into.last_ns, t.last_ns)


@dataclass(slots=True)
class PairSum:
    """One GPU's records for one run, summed, with the labels of the latest of them
    (and its GPU spec and precision, which a report needs to state its method)."""

    gpu_uuid: str
    run: str
    gpu_index: int = -1
    model: str = ""
    category: str = ""
    node: str = ""
    spec: str = ""
    precision: str = ""
    totals: Totals = field(default_factory=Totals)

    def add(self, r: LedgerRecord) -> None:
        self.totals.add(r)
        self.gpu_index, self.model, self.category, self.node = (
            r.gpu_index, r.model, r.category, r.node)
        a = r.assumptions
        self.spec = str(a.get("spec") or self.spec)
        self.precision = str(a.get("precision") or self.precision)

    def copy(self) -> PairSum:
        return replace(self, totals=replace(self.totals))

    def take_labels(self, other: PairSum) -> None:
        self.gpu_index, self.model, self.category, self.node = (
            other.gpu_index, other.model, other.category, other.node)
        self.spec, self.precision = other.spec or self.spec, other.precision or self.precision


Pairs = dict[PairKey, PairSum]


def add_records(pairs: Pairs, records: Iterable[LedgerRecord]) -> None:
    """Add records to their pairs' sums; statements (no GPU, no amounts) are no pair's."""
    for r in records:
        if r.kind in STATEMENT_KINDS:
            continue
        pair = pairs.get((r.gpu_uuid, r.run))
        if pair is None:
            pair = pairs[(r.gpu_uuid, r.run)] = PairSum(r.gpu_uuid, r.run)
        pair.add(r)


def pairs_of(records: Iterable[LedgerRecord]) -> Pairs:
    out: Pairs = {}
    add_records(out, records)
    return out


def copy_pairs(pairs: Mapping[PairKey, PairSum]) -> Pairs:
    return {k: p.copy() for k, p in pairs.items()}


def with_records(pairs: Mapping[PairKey, PairSum], records: Iterable[LedgerRecord]) -> Pairs:
    """A copy of ``pairs`` with ``records`` added."""
    out = copy_pairs(pairs)
    add_records(out, records)
    return out


def scope_totals(pairs: Iterable[PairSum]) -> dict[str, dict[str, Totals]]:
    """``{"gpu": {uuid: Totals}, "run": {run: Totals}}``, as the ledger's totals table."""
    out: dict[str, dict[str, Totals]] = {"gpu": {}, "run": {}}
    for p in pairs:
        for scope, key in (("gpu", p.gpu_uuid), ("run", p.run)):
            merge(out[scope].setdefault(key, Totals()), p.totals)
    return out


def behind(now: Mapping[PairKey, PairSum], then: Mapping[PairKey, PairSum]) -> list[str]:
    """Where ``now`` holds less than ``then`` did: pairs and sums a ledger lost.

    Each pair's sums only grow while a ledger is appended to, so anything smaller is
    history that went missing.
    """
    lost = []
    for key, old in then.items():
        new = now.get(key)
        new_values = values(new.totals) if new is not None else (0,) * len(FIELDS)
        old_values = values(old.totals)
        fields = [f"{name} {b} -> {a}" for name, a, b in
                  zip(ADDITIVE, new_values, old_values, strict=False) if a < b]
        if fields:
            lost.append(f"GPU {key[0]} run {key[1]}: " + ", ".join(fields))
    return lost


def at_least(a: Mapping[PairKey, PairSum], b: Mapping[PairKey, PairSum]) -> Pairs:
    """Per pair and per sum, the larger of ``a`` and ``b`` (first time: the earlier).

    Both are lower bounds of what was exported (each a state the ledger once held), so
    the larger is too, and each band stays ordered.
    """
    out = copy_pairs(a)
    for key, other in b.items():
        mine = out.get(key)
        if mine is None:
            out[key] = other.copy()
            continue
        x, y = values(mine.totals), values(other.totals)
        firsts = [f for f in (x[7], y[7]) if f]
        mine.totals = from_values([*(max(p, q) for p, q in zip(x[:7], y[:7], strict=True)),
                                   min(firsts) if firsts else 0, max(x[8], y[8])])
        if other.totals.last_ns > x[8]:
            mine.take_labels(other)
    return out


def with_pairs(a: Mapping[PairKey, PairSum], b: Mapping[PairKey, PairSum]) -> Pairs:
    """``a`` and ``b`` added together (sealed and open sums: what was exported)."""
    out = copy_pairs(a)
    for key, p in b.items():
        mine = out.get(key)
        if mine is None:
            out[key] = p.copy()
        else:
            merge(mine.totals, p.totals)
            if p.totals.last_ns >= mine.totals.last_ns:
                mine.take_labels(p)
    return out
