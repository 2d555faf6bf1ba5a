"""``flopledger estimate``: compute of a planned training run, before it starts.

The EU asks providers to estimate the cumulative training compute *before* the large
pre-training run and to notify within two weeks of knowing it will exceed 10^25 FLOP.
Two methods, as in the Commission Guidelines Annex A.2:

* hardware-based: ``C = N x L x H x U`` (GPUs, seconds, peak FLOP/s per GPU, average
  utilization: MFU, not ``utilization.gpu``);
* architecture-based: ``C = (6 x P_active + 12 x layers x d_model x context) x D``,
  i.e. 6 x P x D for a dense transformer plus the attention term when the context is
  long relative to the width; active parameters for mixture-of-experts models.

Every input may be a range ("0.3-0.5"); the result is a (low, central, high) band.
When both methods are used, Annex A.2 expects them to agree within :data:`EU_MARGIN`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from agent.compliance.lineage import Flop
from agent.compliance.thresholds import Regime
from agent.sources.specs import MATMUL_PRECISIONS, SpecTable

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([smhdw]?)\s*$")
_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
# Commission Guidelines C(2025) 5045, Annex A.2: estimates may be off by up to 30%.
EU_MARGIN = 0.30


@dataclass(frozen=True, slots=True)
class Span:
    """A number given as a single value or a ``low-high`` range."""

    low: float
    high: float

    @property
    def central(self) -> float:
        return (self.low + self.high) / 2

    def __mul__(self, other: Span) -> Span:
        return Span(self.low * other.low, self.high * other.high)


def parse_span(text: str, what: str, unit: str = "") -> Span:
    """``"3.8e9"`` or ``"3e9-4e9"`` (with ``unit`` allowed, e.g. duration ``"30d"``).

    Raises:
        ValueError: naming ``what`` and the expected form.
    """
    parts = re.split(r"(?<=[0-9a-zA-Z.])-(?=[0-9.])", text.strip())
    values = [_duration(p, what) if unit == "duration" else _number(p, what) for p in parts]
    if len(values) == 1:
        return Span(values[0], values[0])
    if len(values) == 2 and values[0] <= values[1]:
        return Span(values[0], values[1])
    raise ValueError(f"{what}: expected a value or a range LOW-HIGH, got {text!r}")


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise ValueError(f"{what}: expected a number, got {text!r}") from e
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{what}: expected a non-negative finite number, got {text!r}")
    return value


def _duration(text: str, what: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{what}: expected a duration like 3600, 36h, 30d or 12w, got {text!r}")
    return float(m.group(1)) * _SECONDS[m.group(2)]


@dataclass(frozen=True, slots=True)
class HardwarePlan:
    gpus: Span
    seconds: Span
    peak_flops: Span
    utilization: Span
    source_of_peak: str

    def compute(self) -> Flop:
        low = self.gpus.low * self.seconds.low * self.peak_flops.low * self.utilization.low
        high = self.gpus.high * self.seconds.high * self.peak_flops.high * self.utilization.high
        central = (self.gpus.central * self.seconds.central * self.peak_flops.central
                   * self.utilization.central)
        return Flop(int(low), int(central), int(high))


def hardware_plan(specs: SpecTable, *, gpu: str | None, gpus: Span | None,
                  duration_s: Span | None, gpu_hours: Span | None, utilization: Span,
                  precision: str = "bf16", peak_tflops: Span | None = None) -> HardwarePlan:
    """N x L x H x U from either GPUs x duration or GPU-hours.

    H is the dense datasheet peak of ``precision`` for the GPU (what the Commission's
    own examples use) unless ``peak_tflops`` is given.

    Raises:
        ValueError: for a missing or unknown GPU, or neither GPU count x duration nor
            GPU-hours.
    """
    if gpu_hours is not None:
        n, seconds = Span(1.0, 1.0), Span(gpu_hours.low * 3600, gpu_hours.high * 3600)
    elif gpus is not None and duration_s is not None:
        n, seconds = gpus, duration_s
    else:
        raise ValueError("give --gpus and --duration, or --gpu-hours")
    if peak_tflops is not None:
        peak, source = Span(peak_tflops.low * 1e12, peak_tflops.high * 1e12), "given"
    else:
        if gpu is None:
            raise ValueError("give --gpu (a spec-table key or a GPU name) or --peak-tflops")
        spec = specs.specs.get(gpu) or specs.match_name(gpu)
        if spec is None:
            raise ValueError(f"--gpu: {gpu!r} is not in the spec table ({', '.join(specs.keys())})")
        key = MATMUL_PRECISIONS.get(precision)
        if key is None:
            raise ValueError(f"--precision: expected one of {sorted(MATMUL_PRECISIONS)}")
        sheet = next((p for p in spec.datasheet if p.precision == key), None)
        if sheet is not None:
            value = sheet.dense_flops
            source = f"{spec.name} datasheet, dense {precision} ({sheet.value} {sheet.unit}" + (
                " with sparsity, halved)" if sheet.sparse else ")")
        else:
            value = spec.peak_flops(key, spec.max_sm_clock_mhz)
            source = f"{spec.name}, {precision} at the maximum SM clock"
        if value <= 0:
            raise ValueError(f"--precision: {spec.name} has no {precision} tensor cores")
        peak = Span(value, value)
    return HardwarePlan(n, seconds, peak, utilization, source)


@dataclass(frozen=True, slots=True)
class ArchitecturePlan:
    params: Span
    tokens: Span
    layers: Span | None
    d_model: Span | None
    context: Span | None

    def flop_per_token(self) -> tuple[Span, str]:
        per = Span(6 * self.params.low, 6 * self.params.high)
        formula = "6 x P"
        if self.layers and self.d_model and self.context:
            attention = self.layers * self.d_model * self.context
            per = Span(per.low + 12 * attention.low, per.high + 12 * attention.high)
            formula += " + 12 x layers x d_model x context"
        return per, formula

    def compute(self) -> Flop:
        per, _ = self.flop_per_token()
        return Flop(int(per.low * self.tokens.low), int(per.central * self.tokens.central),
                    int(per.high * self.tokens.high))


def cross_check(estimate: float, reference: float) -> tuple[float, bool]:
    """How far ``estimate`` is from ``reference``, as a signed fraction of it, and
    whether that is beyond the EU's margin (0.0 and within, for a zero reference)."""
    difference = (estimate - reference) / reference if reference else 0.0
    return difference, abs(difference) > EU_MARGIN


@dataclass(frozen=True, slots=True)
class PlannedCrossing:
    """One provider threshold against a plan.

    Attributes:
        crossed: "central" if the plan's central estimate reaches it, "high" if only
            its high bound does, "" if neither.
        at_ns: when the plan reaches it at its central rate (wall-clock ns), if the
            plan has a duration and crosses it.
    """

    regime: Regime
    threshold_flop: float
    crossed: str
    at_ns: float | None


def planned_crossings(regimes: Iterable[Regime], flop: Flop, duration_s: Span | None,
                      start_ns: float) -> list[PlannedCrossing]:
    """The provider regimes with a FLOP threshold, for a plan counted as the model's
    own pre-training compute, in the order given."""
    out = []
    for regime in regimes:
        if regime.applies_to != "provider" or regime.threshold_flop is None:
            continue
        t = regime.threshold_flop
        crossed = ("central" if regime.reached(flop.central, t)
                   else "high" if regime.reached(flop.high, t) else "")
        at = None
        if crossed and duration_s is not None:
            at = start_ns + duration_s.central * 1e9 * min(1.0, t / max(1, flop.central))
        out.append(PlannedCrossing(regime, t, crossed, at))
    return out
