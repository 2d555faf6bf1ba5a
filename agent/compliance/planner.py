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

A plan that cannot be what was meant is refused with a :class:`PlanError` naming the
flag, before anything is computed: a utilization outside (0, 1] ("40" is refused, "40%"
is 0.4), GPU-hours given together with GPUs or a duration, active parameters above the
total, part of the attention term, a flag that no method given would use, or a GPU
the spec table has no row for (a guessed peak would silently set the band; the
caller gives ``--peak-tflops`` instead).
"""

from __future__ import annotations

import datetime as dt
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


class PlanError(ValueError):
    """A planning input that cannot be what was meant; the message names the flag (it
    starts with it where one flag is at fault)."""


# "3e9-4e9", "30d-45d", "30%-50%": a hyphen between two values splits a range; a
# leading one is a (refused) negative value.
_RANGE = re.compile(r"(?<=[0-9a-zA-Z.%])-(?=[0-9.])")


def parse_span(text: str, what: str, unit: str = "", *, positive: bool = False) -> Span:
    """``"3.8e9"`` or ``"3e9-4e9"`` (with ``unit`` allowed, e.g. duration ``"30d"``).

    ``positive``: zero is refused too (a plan of no GPUs or no tokens is a typo, and
    would print a zero where a figure belongs).

    Raises:
        PlanError: naming ``what`` and the expected form.
    """
    parts = _RANGE.split(text.strip())
    values = [_duration(p, what) if unit == "duration" else _number(p, what) for p in parts]
    if positive and any(v == 0 for v in values):
        raise PlanError(f"{what}: expected a value above zero, got {text!r}")
    if len(values) == 1:
        return Span(values[0], values[0])
    if len(values) == 2 and values[0] <= values[1]:
        return Span(values[0], values[1])
    raise PlanError(f"{what}: expected a value or a range LOW-HIGH, got {text!r}")


def parse_utilization(text: str, what: str = "--utilization") -> Span:
    """An average MFU in (0, 1]: ``"0.4"``, ``"40%"``, or a range of either
    (``"0.3-0.5"``, ``"30%-50%"``), each end checked.

    A bare number above 1 is refused rather than read as a percentage: "40" could be
    a typo for 0.40 or for 4%, and read as a fraction it multiplies the plan by 40.

    Raises:
        PlanError: naming ``what``, the end at fault and the accepted forms.
    """
    parts = _RANGE.split(text.strip())
    if len(parts) > 2:
        raise PlanError(f"{what}: expected a fraction, a percentage or a range LOW-HIGH, "
                        f"got {text!r}")
    values = []
    for part in parts:
        part = part.strip()
        percent = part.endswith("%")
        number = part[:-1].strip() if percent else part
        try:
            value = float(number)
        except ValueError:
            raise PlanError(f"{what}: expected a fraction like 0.4 or a percentage like 40%, "
                            f"got {text!r}") from None
        if percent:
            value /= 100
        if not 0 < value <= 1:
            hint = (f"; for {value:g} percent write {number}%"
                    if not percent and 1 < value <= 100 else "")
            raise PlanError(f"{what}: {part!r} is outside (0, 1] (0 < MFU <= 100%){hint}")
        values.append(value)
    if len(values) == 2 and values[0] > values[1]:
        raise PlanError(f"{what}: expected a range LOW-HIGH, got {text!r}")
    return Span(values[0], values[-1])


def parse_start(text: str, what: str = "--start") -> float:
    """A planned start, ``YYYY-MM-DD`` or an ISO time (UTC unless it says otherwise),
    as wall-clock ns.

    Raises:
        PlanError: naming ``what``.
    """
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise PlanError(f"{what}: expected a date YYYY-MM-DD or a time "
                        f"YYYY-MM-DDTHH:MM[:SS][+HH:MM], got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp() * 1e9


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise PlanError(f"{what}: expected a number, got {text!r}") from e
    if not value >= 0 or value == float("inf"):
        raise PlanError(f"{what}: expected a non-negative finite number, got {text!r}")
    return value


def _duration(text: str, what: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise PlanError(f"{what}: expected a duration like 3600, 36h, 30d or 12w, got {text!r}")
    value = float(m.group(1)) * _SECONDS[m.group(2)]
    if value == float("inf"):
        raise PlanError(f"{what}: expected a finite duration, got {text!r}")
    return value


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
        PlanError: for GPU-hours together with a GPU count or a duration, one of GPU
            count and duration without the other, neither, a missing GPU, a GPU with no
            row in the spec table (only a row by key or by name gives a datasheet peak;
            the caller gives ``peak_tflops`` instead), or an unknown precision.
    """
    if gpu_hours is not None:
        if gpus is not None or duration_s is not None:
            given = " and ".join(f for f, v in (("--gpus", gpus), ("--duration", duration_s))
                                 if v is not None)
            raise PlanError(f"--gpu-hours: give either --gpu-hours or --gpus with --duration, "
                            f"not both (--gpu-hours with {given})")
        n, seconds = Span(1.0, 1.0), Span(gpu_hours.low * 3600, gpu_hours.high * 3600)
    elif gpus is not None and duration_s is not None:
        n, seconds = gpus, duration_s
    elif gpus is not None:
        raise PlanError("--duration: needed with --gpus (or give --gpu-hours instead)")
    elif duration_s is not None:
        raise PlanError("--gpus: needed with --duration (or give --gpu-hours instead)")
    else:
        raise PlanError("--gpus: give --gpus and --duration, or --gpu-hours")
    if peak_tflops is not None:
        peak, source = Span(peak_tflops.low * 1e12, peak_tflops.high * 1e12), (
            f"given with --peak-tflops for {gpu}" if gpu else "given with --peak-tflops")
    else:
        if gpu is None:
            raise PlanError("--gpu: give --gpu (a spec-table key or a GPU name) or "
                            "--peak-tflops")
        # Only a row matched by key or name: the table's fallback for an unknown name
        # is a ceiling, which would set the whole band from a guess.
        spec = specs.specs.get(gpu) or specs.match_name(gpu)
        if spec is None:
            raise PlanError(f"--gpu: {gpu!r} matches no row of the spec table "
                            f"({specs.path}); give its dense peak with --peak-tflops, or "
                            f"see how it would be resolved: flopledger gpus --resolve "
                            f"{_shell_word(gpu)}")
        key = MATMUL_PRECISIONS.get(precision)
        if key is None:
            raise PlanError(f"--precision: expected one of {sorted(MATMUL_PRECISIONS)}, "
                            f"got {precision!r}")
        sheet = next((p for p in spec.datasheet if p.precision == key), None)
        if sheet is not None:
            value = sheet.dense_flops
            source = f"{spec.name} datasheet, dense {precision} ({sheet.value} {sheet.unit}" + (
                " with sparsity, halved)" if sheet.sparse else ")")
        else:
            value = spec.peak_flops(key, spec.max_sm_clock_mhz)
            source = f"{spec.name}, {precision} at the maximum SM clock"
        if value <= 0:
            raise PlanError(f"--precision: {spec.name} has no {precision} tensor cores")
        peak = Span(value, value)
    return HardwarePlan(n, seconds, peak, utilization, source)


def _shell_word(text: str) -> str:
    import shlex

    return shlex.quote(text)


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
        due_ns: for a regime with a deadline that the central estimate crosses: the
            deadline, counted from when the plan is known, which is now or, for a start
            already past, the start at the latest (the estimate belongs before the run).
            None otherwise: a crossing by the high bound only is "may be met", which
            starts no deadline.
        due_passed: ``due_ns`` is before now.
    """

    regime: Regime
    threshold_flop: float
    crossed: str
    at_ns: float | None
    due_ns: float | None = None
    due_passed: bool = False


def planned_crossings(regimes: Iterable[Regime], flop: Flop, duration_s: Span | None,
                      start_ns: float, *, now_ns: float | None = None
                      ) -> list[PlannedCrossing]:
    """The provider regimes with a FLOP threshold, for a plan counted as the model's
    own pre-training compute, in the order given. ``now_ns``: when the plan is looked
    at (default: its start)."""
    now = start_ns if now_ns is None else now_ns
    known_ns = min(start_ns, now)
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
        due = (known_ns + regime.deadline_days * 86400e9
               if crossed == "central" and regime.deadline_days is not None else None)
        out.append(PlannedCrossing(regime, t, crossed, at, due,
                                   due is not None and due < now))
    return out


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked plan: one method or both, and when it starts.

    Attributes:
        hardware: N x L x H x U, if GPUs x duration or GPU-hours were given.
        architecture: (6 x P + attention) x D, if parameters and tokens were given;
            its ``params`` are the active parameters where those were given.
        active_params: the architecture uses active parameters (MoE).
        duration_s: the planned wall-clock duration, if given.
        start_ns: the planned start (wall-clock ns), None for now.
    """

    hardware: HardwarePlan | None
    architecture: ArchitecturePlan | None
    active_params: bool
    duration_s: Span | None
    start_ns: float | None


DEFAULT_UTILIZATION = "0.3-0.5"


def read_plan(specs: SpecTable, *, gpu: str | None = None, gpus: str | None = None,
              duration: str | None = None, gpu_hours: str | None = None,
              utilization: str | None = None, precision: str | None = None,
              peak_tflops: str | None = None, params: str | None = None,
              active_params: str | None = None, tokens: str | None = None,
              layers: str | None = None, d_model: str | None = None,
              context: str | None = None, start: str | None = None) -> Plan:
    """Every check of ``flopledger estimate``'s inputs (the flags' text, None where not
    given), all before anything is computed.

    Raises:
        PlanError: the first problem, naming its flag.
    """
    def span(text: str | None, flag: str, unit: str = "") -> Span | None:
        return None if text is None else parse_span(text, flag, unit, positive=True)

    hardware = None
    if gpus is not None or duration is not None or gpu_hours is not None:
        hardware = hardware_plan(
            specs, gpu=gpu, gpus=span(gpus, "--gpus"),
            duration_s=span(duration, "--duration", "duration"),
            gpu_hours=span(gpu_hours, "--gpu-hours"),
            utilization=parse_utilization(utilization or DEFAULT_UTILIZATION),
            precision=precision or "bf16", peak_tflops=span(peak_tflops, "--peak-tflops"))
    else:
        unused = next((f for f, v in (("--gpu", gpu), ("--peak-tflops", peak_tflops),
                                       ("--utilization", utilization),
                                       ("--precision", precision)) if v is not None), None)
        if unused is not None:
            raise PlanError(f"{unused}: used only by the hardware-based method; add --gpus "
                            f"and --duration, or --gpu-hours")
    architecture = None
    if any(v is not None for v in (params, active_params, tokens, layers, d_model, context)):
        if params is None:
            raise PlanError("--params: needed for the architecture-based method (the total "
                            "parameters; for a mixture of experts add --active-params)")
        if tokens is None:
            raise PlanError("--tokens: needed with --params (the training tokens D)")
        total = parse_span(params, "--params", positive=True)
        active = total if active_params is None else parse_span(
            active_params, "--active-params", positive=True)
        if active.high > total.high:
            raise PlanError(f"--active-params: {active_params} is above --params {params} "
                            f"(the parameters active per token are part of the total)")
        attention = {"--layers": layers, "--d-model": d_model, "--context": context}
        if any(v is not None for v in attention.values()):
            missing = [f for f, v in attention.items() if v is None]
            if missing:
                raise PlanError(f"{missing[0]}: needed with "
                                f"{' and '.join(f for f in attention if f not in missing)} "
                                f"for the attention term (give --layers, --d-model and "
                                f"--context, or none)")
        architecture = ArchitecturePlan(
            active, parse_span(tokens, "--tokens", positive=True),
            span(layers, "--layers"), span(d_model, "--d-model"), span(context, "--context"))
    if hardware is None and architecture is None:
        raise PlanError("give a hardware plan (--gpu with --gpus and --duration, or "
                        "--gpu-hours) or an architecture (--params and --tokens)")
    return Plan(hardware, architecture, active_params is not None,
                hardware.seconds if hardware is not None and duration is not None else None,
                None if start is None else parse_start(start))
