"""The GPU spec table (``configs/gpus.toml``): SM counts and FLOP per clock per SM.

Peak throughput is computed from the measured SM clock, not taken from a datasheet:
``peak_flops = sm_count x flop_per_clock_per_sm[precision] x sm_clock_hz``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from agent.configfile import (
    Problems,
    bundled_config,
    check_keys,
    drop_bad_values,
    in_range,
    range_text,
    read_toml,
)

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

# Ranges of the table's numbers: generous for any GPU to come, tight enough to catch a
# figure in the wrong unit (Hz for MHz, a whole-GPU figure given per SM).
MAX_SM_COUNT = 1024
MAX_CLOCK_MHZ = 10000.0
MAX_FLOP_PER_CLOCK_PER_SM = 1 << 20
MAX_PRINTED_VALUE = Decimal(10**6)
_ROW_KEYS = ("name", "match", "architecture", "sm_count", "max_sm_clock_mhz", "gpm",
             "flop_per_clock_per_sm", "datasheet", "sources")
_PEAK_KEYS = ("value", "unit", "clock_mhz", "sparse", "rel_tol")


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


class SpecBasis(enum.StrEnum):
    """Where a GPU's peak came from: the ``spec`` label of ``flopledger_gpu_info``."""

    TABLE = "table"  # a row of the spec table matched the device
    DERIVED = "derived"  # no row: derived from what the driver reports (compute capability,
    # SM count, clock); the band is widened by the uncertainty of the derivation
    CEILING = "ceiling"  # only a name: high bound at the largest peak of the GPU's era


@dataclass(frozen=True, slots=True)
class ResolvedSpec:
    """The peak model the estimator uses for one GPU, and how sure it is.

    Attributes:
        spec: per-clock figures for central (a table row, or one made up for the GPU).
        basis: where they came from.
        low_factor: multiplies the FLOP per clock of the low bound (<= 1).
        high_factor: multiplies the FLOP per clock of the high bound (>= 1).
        reason: one line saying why the table was not enough ("" for TABLE).
    """

    spec: GpuSpec
    basis: SpecBasis
    low_factor: float = 1.0
    high_factor: float = 1.0
    reason: str = ""


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

    def match(self, device_name: str, pci_device_id: int | None = None) -> GpuSpec | None:
        """The row for a device: by PCI device ID first, then by name."""
        return self.match_name(device_name)

    def resolve(
        self,
        device_name: str,
        *,
        pci_device_id: int | None = None,
        compute_capability: str | None = None,
        sm_count: int | None = None,
        max_sm_clock_mhz: float | None = None,
    ) -> ResolvedSpec:
        """Never None: the table row, else a derived spec, else the era's ceiling."""
        spec = self.match(device_name, pci_device_id)
        if spec is not None:
            return ResolvedSpec(spec, SpecBasis.TABLE)
        widest = max(self.specs.values(), key=lambda s: s.flop_per_clock("fp8_tensor")
                     or s.flop_per_clock("fp16_tensor"))
        return ResolvedSpec(widest, SpecBasis.CEILING, low_factor=0.0,
                            reason=f"{device_name!r} matches no row of {self.path}")


def _parse_peak(
    problems: Problems, where: str, precision: str, raw: object
) -> DatasheetPeak | None:
    if not isinstance(raw, dict):
        problems.add(where, "a table { value, unit, clock_mhz }")
        return None
    check_keys(problems, raw, _PEAK_KEYS, where)
    value_raw = raw.get("value")
    try:
        value = Decimal(str(value_raw)) if isinstance(value_raw, str) else None
    except InvalidOperation:
        value = None
    # Decimal reads "NaN" and "Infinity" too.
    if value is None or not value.is_finite() or not 0 < value <= MAX_PRINTED_VALUE:
        problems.add(f"{where}.value", "the printed figure as a string, e.g. \"989.4\" "
                     f"(> 0 and <= {MAX_PRINTED_VALUE})")
        value = None
    unit = raw.get("unit")
    if not isinstance(unit, str) or unit not in _UNITS:
        problems.add(f"{where}.unit", f"one of {sorted(_UNITS)}")
        unit = None
    clock = raw.get("clock_mhz")
    if not in_range(clock, 0, MAX_CLOCK_MHZ, above=True):
        problems.add(f"{where}.clock_mhz", range_text("a number of MHz", 0, MAX_CLOCK_MHZ,
                                                      above=True))
        clock = None
    rel_tol = raw.get("rel_tol", 0.0)
    if not in_range(rel_tol, 0, 0.1) or rel_tol == 0.1:
        problems.add(f"{where}.rel_tol", "a number in [0, 0.1)")
    sparse = raw.get("sparse", False)
    if not isinstance(sparse, bool):
        problems.add(f"{where}.sparse", "true or false")
    if value is None or unit is None or not isinstance(clock, int | float):
        return None
    return DatasheetPeak(
        precision=precision,
        value=value,
        unit=str(unit),
        clock_mhz=float(clock),
        sparse=sparse is True,
        rel_tol=float(rel_tol) if isinstance(rel_tol, int | float) else 0.0,
    )


def _parse_spec(problems: Problems, key: str, raw: Mapping[str, Any]) -> GpuSpec | None:
    where = f"gpu.{key}"
    ok = True
    check_keys(problems, raw, _ROW_KEYS, where)

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
    sources = raw.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        problems.add(f"{where}.sources", "a list of URLs")
        sources = []
    datasheet = raw.get("datasheet", {})
    if not isinstance(datasheet, dict):
        problems.add(f"{where}.datasheet", "a table of precision = { value, unit, clock_mhz }")
        datasheet = {}
    if not ok:
        return None
    if not match or not all(isinstance(m, str) and m.strip() for m in match):
        problems.add(f"{where}.match", "a non-empty list of device-name substrings")
    if not in_range(sm_count, 1, MAX_SM_COUNT, integer=True):
        problems.add(f"{where}.sm_count", range_text("a positive integer", 1, MAX_SM_COUNT))
    if not in_range(max_clock, 0, MAX_CLOCK_MHZ, above=True):
        problems.add(f"{where}.max_sm_clock_mhz",
                     range_text("a positive number of MHz", 0, MAX_CLOCK_MHZ, above=True))
    per_clock: dict[str, int] = {}
    for precision, value in per_clock_raw.items():
        if precision not in PRECISIONS:
            problems.add(f"{where}.flop_per_clock_per_sm.{precision}", f"one of {PRECISIONS}")
        elif not in_range(value, 1, MAX_FLOP_PER_CLOCK_PER_SM, integer=True):
            problems.add(f"{where}.flop_per_clock_per_sm.{precision}",
                         range_text("a positive integer", 1, MAX_FLOP_PER_CLOCK_PER_SM))
        else:
            per_clock[precision] = value
    peaks: list[DatasheetPeak] = []
    for precision, peak_raw in datasheet.items():
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
        sources=tuple(sources),
    )


def load_spec_table(path: Path | None = None) -> SpecTable:
    """Read and validate the spec table.

    Raises:
        ConfigError: listing every problem in the file, with its key.
    """
    path = path or default_spec_path()
    problems = Problems(path)
    raw = drop_bad_values(problems, read_toml(path, "the GPU spec table"))
    check_keys(problems, raw, ("gpu",))
    gpus = raw.get("gpu")
    if not isinstance(gpus, dict) or not gpus:
        problems.add("gpu", "one or more [gpu.<key>] tables")
        gpus = {}
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
