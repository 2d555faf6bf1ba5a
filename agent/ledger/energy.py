"""Energy plausibility: the FLOP a ledger's records claim against what their GPUs could
physically have done in their time and with their energy.

Three checks, each against a GPU's row of the spec table (records of a GPU without one,
or without an energy reading, are not judged, and are counted as such):

* **time**: no GPU does more than the dense peak of its fastest tensor precision at its
  maximum SM clock (x the row's high peak factor), per second of its time. A record
  whose central FLOP exceed that x its covered and gap GPU-seconds (with
  :data:`CLOCK_ALLOWANCE` for clock readings above the table's maximum) claims more
  compute than the time allows.
* **energy**: no GPU does more FLOP per joule than that peak over the least power a
  board can draw while running it. The spec table carries no board power, so the floor
  is :data:`MIN_WATTS_PER_SM` per SM: at least 2x below every board's rated power per SM
  (the most frugal, an L4: 72 W over 58 SMs, 1.24 W per SM; H100 SXM: 700 W over 132
  SMs, 5.3 W). The bound is loose (an H100 at its fastest precision reaches about a
  tenth of it) but physical: a record beyond it has FLOP over-counted or energy
  under-read.
* **low efficiency**: a run's central FLOP per joule on one kind of GPU, over at least
  :data:`MIN_GPU_SECONDS_LOW` GPU-seconds with energy, below
  :data:`LOW_EFFICIENCY_FRACTION` of the declared precision's (bf16 when none was
  declared) peak per watt at the power the run drew. The GPU was powered and the
  tensor pipes barely counted: work in a precision or pipe the figures do not count
  (e.g. FP32 on the CUDA cores) may be missing.

Findings are grouped per check, run and GPU kind (the first record and the worst ratio
named), so a large ledger gives a few lines, not one per record. They are warnings: a
figure may be implausible without the ledger being damaged. Pure: records and the spec
rows are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.accounting.names import UNATTRIBUTED_RUN_ID
from agent.accounting.records import LedgerRecord
from agent.sources.specs import MATMUL_PRECISIONS, GpuSpec

# Boost clocks read a few percent above the table's maximum on some boards.
CLOCK_ALLOWANCE = 1.05
MIN_WATTS_PER_SM = 0.5
LOW_EFFICIENCY_FRACTION = 0.01
MIN_GPU_SECONDS_LOW = 3600.0


@dataclass(frozen=True, slots=True)
class EnergyFinding:
    """One group of implausible records.

    Attributes:
        check: ``time``, ``energy`` or ``low-efficiency``.
        run: the run the records are charged to.
        spec: the spec-table key of their GPUs.
        records: how many records (0 for ``low-efficiency``, judged on the run's sums).
        first_seq: the first such record's sequence number (None for ``low-efficiency``).
        ratio: the worst claimed / allowed (``time``, ``energy``), or the efficiency as
            a fraction of the reference (``low-efficiency``).
        message: one line saying all of it.
    """

    check: str
    run: str
    spec: str
    records: int
    first_seq: int | None
    ratio: float
    message: str


def max_flops(spec: GpuSpec) -> float:
    """The most FLOP/s the GPU can do: its fastest tensor precision, maximum clock."""
    return spec.top_peak_flops() * spec.peak_factors[1] * CLOCK_ALLOWANCE


def max_flop_per_joule(spec: GpuSpec) -> float:
    """The most FLOP per joule the GPU can do: :func:`max_flops` over the power floor."""
    return max_flops(spec) / (MIN_WATTS_PER_SM * spec.sm_count)


def _reference_flops(spec: GpuSpec, precision: str) -> tuple[float, str]:
    """The peak the low-efficiency check compares with: the declared precision's
    tensor peak at the maximum clock, bf16 when none (or an unknown one) was declared."""
    tensor = MATMUL_PRECISIONS.get(precision)
    if tensor is None or not spec.supports(tensor):
        precision, tensor = "bf16", "bf16_tensor"
    peak = spec.peak_flops(tensor, spec.max_sm_clock_mhz)
    if peak <= 0:  # no bf16 tensor cores (older GPUs): their fastest precision
        return spec.top_peak_flops(), "fastest"
    return peak, precision


@dataclass(slots=True)
class _Over:
    records: int = 0
    first_seq: int = -1
    worst: float = 0.0


@dataclass(slots=True)
class _Sums:
    flop_central: float = 0.0
    energy_j: float = 0.0
    gpu_seconds: float = 0.0
    precisions: set[str] = field(default_factory=set)


@dataclass(slots=True)
class EnergyCheck:
    """Records in, findings out: :meth:`add` each record (in any order), then
    :meth:`findings`. ``specs`` are the spec table's rows by key."""

    specs: Mapping[str, GpuSpec]
    checked: int = 0
    without_spec: int = 0
    without_energy: int = 0
    _over: dict[tuple[str, str, str], _Over] = field(default_factory=dict)
    _sums: dict[tuple[str, str], _Sums] = field(default_factory=dict)

    def add(self, r: LedgerRecord) -> None:
        if r.kind != "interval" or (r.flop_central <= 0 and r.energy_mj <= 0):
            return
        key = r.assumptions.get("spec")
        spec = self.specs.get(key) if isinstance(key, str) else None
        # A derived or ceiling spec's row is not the table's: no physical bound to hold
        # the record to.
        if spec is None or r.assumptions.get("spec_basis") not in (None, "table"):
            self.without_spec += 1
            return
        seconds = (r.covered_ns + r.gap_ns) / 1e9
        if seconds > 0:
            self._note("time", r, spec.key, r.flop_central / (max_flops(spec) * seconds))
        elif r.flop_central > 0:
            self._note("time", r, spec.key, float("inf"))
        if r.energy_mj <= 0:
            self.without_energy += 1
            return
        self.checked += 1
        energy_j = r.energy_mj / 1e3
        self._note("energy", r, spec.key, r.flop_central / energy_j / max_flop_per_joule(spec))
        if r.run != UNATTRIBUTED_RUN_ID:
            sums = self._sums.setdefault((r.run, spec.key), _Sums())
            sums.flop_central += r.flop_central
            sums.energy_j += energy_j
            sums.gpu_seconds += r.covered_ns / 1e9
            sums.precisions.add(str(r.assumptions.get("precision") or ""))

    def _note(self, check: str, r: LedgerRecord, spec_key: str, ratio: float) -> None:
        if ratio <= 1.0:
            return
        over = self._over.setdefault((check, r.run, spec_key), _Over(first_seq=r.seq))
        over.records += 1
        over.first_seq = min(over.first_seq, r.seq)
        over.worst = max(over.worst, ratio)

    def findings(self) -> list[EnergyFinding]:
        out = []
        for (check, run, key), over in sorted(self._over.items()):
            spec = self.specs[key]
            if check == "time":
                bound = (f"what a {spec.name} can do in the records' GPU time at its fastest "
                         f"precision and maximum clock ({max_flops(spec):.3g} FLOP/s)")
                verdict = "more compute than the time allows"
            else:
                bound = (f"the physical maximum of a {spec.name}, {max_flop_per_joule(spec):.3g} "
                         f"FLOP per joule ({max_flops(spec):.3g} FLOP/s at no less than "
                         f"{MIN_WATTS_PER_SM * spec.sm_count:.0f} W)")
                verdict = "more compute than the energy allows (or energy under-read)"
            out.append(EnergyFinding(
                check, run, key, over.records, over.first_seq, over.worst,
                f"{over.records} record(s) of run {run} (first: record {over.first_seq}) claim "
                f"up to {over.worst:.3g}x {bound}: {verdict}"))
        for (run, key), s in sorted(self._sums.items()):
            if s.gpu_seconds < MIN_GPU_SECONDS_LOW or s.energy_j <= 0:
                continue
            spec = self.specs[key]
            declared = sorted(p for p in s.precisions if p)
            peak, precision = _reference_flops(spec, declared[0] if len(declared) == 1 else "")
            power_w = s.energy_j / s.gpu_seconds
            # (FLOP / J) / (peak / W) is the utilisation of that peak: the power cancels.
            reference = peak / power_w
            ratio = s.flop_central / s.energy_j / reference
            if ratio >= LOW_EFFICIENCY_FRACTION:
                continue
            out.append(EnergyFinding(
                "low-efficiency", run, key, 0, None, ratio,
                f"run {run} on {spec.name}: {s.flop_central / s.energy_j:.3g} FLOP per joule "
                f"over {s.gpu_seconds / 3600:,.1f} GPU-hours at {power_w:.0f} W on average is "
                f"{ratio:.2%} of the {precision} peak per watt at that power "
                f"({reference:.3g} FLOP/J): the GPUs drew power while the counted tensor "
                "work was near zero; work in a precision or pipe the figures do not count "
                "(e.g. FP32 on the CUDA cores) may be missing: declare the run's precision "
                "(FLOPLEDGER_PRECISION)"))
        return out

    def summary(self) -> str:
        """How many records were judged, and why the others were not."""
        return (f"{self.checked} record(s) checked against their GPU's physical maximum; "
                f"{self.without_energy} without an energy reading (time bound only), "
                f"{self.without_spec} on a GPU without a spec-table row (not judged)")


def check_energy(records: Iterable[LedgerRecord],
                 specs: Mapping[str, GpuSpec]) -> EnergyCheck:
    """Every record through one :class:`EnergyCheck`."""
    check = EnergyCheck(specs)
    for r in records:
        check.add(r)
    return check
