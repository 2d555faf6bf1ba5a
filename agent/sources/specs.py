"""The GPU spec table (``configs/gpus.toml``): SM counts and FLOP per clock per SM.

Peak throughput is computed from the measured SM clock, not taken from a datasheet:
``peak_flops = sm_count x flop_per_clock_per_sm[precision] x sm_clock_hz``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from agent.configfile import ConfigError, Problems, bundled_config, read_toml

# Every precision a FLOP-per-clock figure may be given for. Tensor-core precisions end
# in ``_tensor``; the others are the SMs' ordinary FP pipes.
PRECISIONS: tuple[str, ...] = (
    "fp64",
    "fp32",
    "fp16",
    "fp64_tensor",
    "tf32_tensor",
    "fp16_tensor",
    "bf16_tensor",
    "fp8_tensor",
    "int8_tensor",
    "fp4_tensor",
)

# What a run may declare as its matmul precision, and the tensor pipe it runs on.
MATMUL_PRECISIONS: dict[str, str] = {
    "fp64": "fp64_tensor",
    "tf32": "tf32_tensor",
    "fp16": "fp16_tensor",
    "bf16": "bf16_tensor",
    "fp8": "fp8_tensor",
    "int8": "int8_tensor",
    "fp4": "fp4_tensor",
}

_UNITS: dict[str, float] = {"TFLOPS": 1e12, "TOPS": 1e12, "PFLOPS": 1e15, "GFLOPS": 1e9}


def default_spec_path() -> Path:
    """``configs/gpus.toml`` of the checkout, or the copy installed with the package."""
    return bundled_config("gpus.toml")


@dataclass(frozen=True, slots=True)
class DatasheetPeak:
    """A vendor figure as printed, with the clock it corresponds to."""

    precision: str
    value: Decimal
    unit: str
    clock_mhz: float
    sparse: bool
    rel_tol: float

    @property
    def dense_flops(self) -> float:
        """The printed figure in FLOP/s, halved if it was printed with sparsity."""
        flops = float(self.value) * _UNITS[self.unit]
        return flops / 2 if self.sparse else flops

    @property
    def printed_tolerance_flops(self) -> float:
        """Half a unit of the last printed digit, in dense FLOP/s."""
        exponent = self.value.as_tuple().exponent
        assert isinstance(exponent, int)
        tol = 0.5 * 10.0**exponent * _UNITS[self.unit]
        return tol / 2 if self.sparse else tol


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One row of the spec table."""

    key: str
    name: str
    match: tuple[str, ...]
    architecture: str
    sm_count: int
    max_sm_clock_mhz: float
    gpm: bool
    flop_per_clock_per_sm: Mapping[str, int]
    datasheet: tuple[DatasheetPeak, ...] = ()
    sources: tuple[str, ...] = ()

    def flop_per_clock(self, precision: str) -> int:
        """Dense FLOP per SM clock cycle for the whole GPU; 0 if unsupported."""
        return self.sm_count * self.flop_per_clock_per_sm.get(precision, 0)

    def peak_flops(self, precision: str, sm_clock_mhz: float) -> float:
        """Dense peak FLOP/s at the given SM clock; 0 if the precision is unsupported."""
        return self.flop_per_clock(precision) * sm_clock_mhz * 1e6

    def supports(self, precision: str) -> bool:
        return self.flop_per_clock_per_sm.get(precision, 0) > 0


@dataclass(frozen=True, slots=True)
class SpecTable:
    """All rows, with lookup by key and by the driver's device name."""

    path: Path
    specs: Mapping[str, GpuSpec] = field(default_factory=dict)

    def __getitem__(self, key: str) -> GpuSpec:
        return self.specs[key]

    def __contains__(self, key: object) -> bool:
        return key in self.specs

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def keys(self) -> Iterable[str]:
        return self.specs.keys()

    def match_name(self, device_name: str) -> GpuSpec | None:
        """The row whose longest ``match`` pattern occurs in the NVML device name.

        A pattern must stand as whole words (case-insensitive): "A10" does not select
        an "A100" or an "A10G", "B200" does not select a "GB200".
        """
        best: tuple[int, GpuSpec] | None = None
        for spec in self.specs.values():
            for pattern in spec.match:
                words = re.escape(pattern.strip())
                if re.search(rf"(?<![A-Za-z0-9]){words}(?![A-Za-z0-9])", device_name, re.I) and (
                    best is None or len(pattern) > best[0]
                ):
                    best = (len(pattern), spec)
        return None if best is None else best[1]


def _parse_peak(
    problems: Problems, where: str, precision: str, raw: object
) -> DatasheetPeak | None:
    if not isinstance(raw, dict):
        problems.add(where, "a table { value, unit, clock_mhz }")
        return None
    value_raw = raw.get("value")
    try:
        value = Decimal(str(value_raw)) if isinstance(value_raw, str) else None
    except InvalidOperation:
        value = None
    if value is None:
        problems.add(f"{where}.value", "the printed figure as a string, e.g. \"989.4\"")
    unit = raw.get("unit")
    if unit not in _UNITS:
        problems.add(f"{where}.unit", f"one of {sorted(_UNITS)}")
    clock = raw.get("clock_mhz")
    if not isinstance(clock, int | float) or clock <= 0:
        problems.add(f"{where}.clock_mhz", "a positive number of MHz")
    rel_tol = raw.get("rel_tol", 0.0)
    if not isinstance(rel_tol, int | float) or not 0 <= rel_tol < 0.1:
        problems.add(f"{where}.rel_tol", "a number in [0, 0.1)")
    if value is None or unit not in _UNITS or not isinstance(clock, int | float):
        return None
    return DatasheetPeak(
        precision=precision,
        value=value,
        unit=str(unit),
        clock_mhz=float(clock),
        sparse=bool(raw.get("sparse", False)),
        rel_tol=float(rel_tol) if isinstance(rel_tol, int | float) else 0.0,
    )


def _parse_spec(problems: Problems, key: str, raw: Mapping[str, Any]) -> GpuSpec | None:
    where = f"gpu.{key}"
    ok = True

    def need(name: str, kind: type | tuple[type, ...], expect: str) -> Any:
        nonlocal ok
        value = raw.get(name)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            problems.add(f"{where}.{name}", expect)
            ok = False
            return None
        return value

    name = need("name", str, "a display name")
    match = need("match", list, "a list of device-name substrings")
    architecture = need("architecture", str, "an architecture name")
    sm_count = need("sm_count", int, "a positive integer")
    max_clock = need("max_sm_clock_mhz", (int, float), "a positive number of MHz")
    gpm = need("gpm", bool, "true or false")
    per_clock_raw = need("flop_per_clock_per_sm", dict, "a table of precision = FLOP per clock")
    if not ok:
        return None
    if sm_count <= 0:
        problems.add(f"{where}.sm_count", "a positive integer")
    if max_clock <= 0:
        problems.add(f"{where}.max_sm_clock_mhz", "a positive number of MHz")
    per_clock: dict[str, int] = {}
    for precision, value in per_clock_raw.items():
        if precision not in PRECISIONS:
            problems.add(f"{where}.flop_per_clock_per_sm.{precision}", f"one of {PRECISIONS}")
        elif not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.add(f"{where}.flop_per_clock_per_sm.{precision}", "a positive integer")
        else:
            per_clock[precision] = value
    peaks: list[DatasheetPeak] = []
    for precision, peak_raw in dict(raw.get("datasheet", {})).items():
        if precision not in per_clock:
            problems.add(
                f"{where}.datasheet.{precision}", "a precision listed in flop_per_clock_per_sm"
            )
            continue
        peak = _parse_peak(problems, f"{where}.datasheet.{precision}", precision, peak_raw)
        if peak is not None:
            peaks.append(peak)
    return GpuSpec(
        key=key,
        name=name,
        match=tuple(str(m) for m in match),
        architecture=architecture,
        sm_count=sm_count,
        max_sm_clock_mhz=float(max_clock),
        gpm=gpm,
        flop_per_clock_per_sm=per_clock,
        datasheet=tuple(peaks),
        sources=tuple(str(s) for s in raw.get("sources", [])),
    )


def load_spec_table(path: Path | None = None) -> SpecTable:
    """Read and validate the spec table.

    Raises:
        ConfigError: listing every problem in the file, with its key.
    """
    path = path or default_spec_path()
    problems = Problems(path)
    raw = read_toml(path, "the GPU spec table")
    gpus = raw.get("gpu")
    if not isinstance(gpus, dict) or not gpus:
        raise ConfigError(path, [("gpu", "one or more [gpu.<key>] tables")])
    specs: dict[str, GpuSpec] = {}
    for key, spec_raw in gpus.items():
        if not isinstance(spec_raw, dict):
            problems.add(f"gpu.{key}", "a table")
            continue
        spec = _parse_spec(problems, key, spec_raw)
        if spec is not None:
            specs[key] = spec
    problems.raise_if_any()
    return SpecTable(path=path, specs=specs)
