"""The GPU spec table (``agent/data/gpus.toml``): SM counts and FLOP per clock per SM.

Peak throughput is computed from the measured SM clock, not taken from a datasheet:
``peak_flops = sm_count x flop_per_clock_per_sm[precision] x sm_clock_hz``.

Besides its figures, a row names what identifies the GPU: the 16-bit PCI device IDs
(vendor 0x10DE) of its boards, its CUDA compute capability, the patterns of the names
NVML gives it and the board codes of its vGPU profiles. ``[architecture.<name>]``
tables list each architecture's compute capabilities, FP32 lanes per SM and the words
and model letters that name its GPUs. How a device is resolved to a peak model, with or
without a row (``SpecTable.match`` and ``SpecTable.resolve``), is described in
:mod:`agent.sources.spec_resolve`.
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
             "flop_per_clock_per_sm", "datasheet", "sources", "pci_device_ids",
             "compute_capability", "vgpu", "peak_factors")
_ARCH_KEYS = ("compute_capabilities", "fp32_lanes_per_sm", "first_year", "typical",
              "typical_desktop", "name_words", "model_prefixes", "rtx_series", "sources")
MAX_PCI_DEVICE_ID = 0xFFFF
# A row's own uncertainty (peak_factors): at most this many times its figures.
MAX_PEAK_FACTOR = 16.0
_PEAK_KEYS = ("value", "unit", "clock_mhz", "sparse", "rel_tol")
_CC = re.compile(r"(\d{1,2})\.(\d{1,2})")
_CC_TEXT = 'a compute capability as "major.minor" (e.g. "9.0")'


def parse_compute_capability(text: object) -> tuple[int, int] | None:
    """``"9.0"`` -> ``(9, 0)``; None for anything else (a number, "9", "sm_90")."""
    if not isinstance(text, str):
        return None
    m = _CC.fullmatch(text.strip())
    return None if m is None else (int(m.group(1)), int(m.group(2)))


def default_spec_path() -> Path:
    """The spec table shipped with the package (``agent/data/gpus.toml``)."""
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
    pci_device_ids: tuple[int, ...] = ()
    compute_capability: str | None = None
    vgpu: tuple[str, ...] = ()
    # Multipliers of the row's FLOP per clock for the low and high bound where the
    # figures themselves are uncertain (a product whose tensor rate is not published).
    peak_factors: tuple[float, float] = (1.0, 1.0)

    def flop_per_clock(self, precision: str) -> int:
        """Dense FLOP per SM clock cycle for the whole GPU; 0 if unsupported."""
        return self.sm_count * self.flop_per_clock_per_sm.get(precision, 0)

    def peak_flops(self, precision: str, sm_clock_mhz: float) -> float:
        """Dense peak FLOP/s at the given SM clock; 0 if the precision is unsupported."""
        return self.flop_per_clock(precision) * sm_clock_mhz * 1e6

    def supports(self, precision: str) -> bool:
        return self.flop_per_clock_per_sm.get(precision, 0) > 0

    def top_peak_flops(self) -> float:
        """The fastest precision's dense peak at the maximum clock, FLOP/s."""
        return max((self.peak_flops(p, self.max_sm_clock_mhz) for p in self.flop_per_clock_per_sm),
                   default=0.0)


@dataclass(frozen=True, slots=True)
class Architecture:
    """One ``[architecture.<name>]`` table: what the GPUs of an architecture share.

    Attributes:
        name: the table's key (``hopper``), which rows name as their ``architecture``.
        compute_capabilities: the CUDA compute capabilities it spans, "major.minor".
        fp32_lanes_per_sm: FP32 lanes (CUDA cores) per SM by compute capability; NVML's
            core count divided by it is the SM count.
        first_year: the year its first GPU shipped, None if not given.
        typical: the row central falls back on when only a name places a GPU in it.
        typical_desktop: the same for GeForce, RTX, Quadro and TITAN names.
        name_words: words that name it in a device name ("Ada", "Blackwell").
        model_prefixes: the letters its data-center model numbers begin with (H, GH).
        rtx_series: the RTX/GTX series it sold as (40 for the RTX 40xx).
    """

    name: str
    compute_capabilities: tuple[str, ...]
    fp32_lanes_per_sm: Mapping[str, int]
    first_year: int | None = None
    typical: str | None = None
    typical_desktop: str | None = None
    name_words: tuple[str, ...] = ()
    model_prefixes: tuple[str, ...] = ()
    rtx_series: tuple[int, ...] = ()
    sources: tuple[str, ...] = ()


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
        reason: one line saying what was assumed ("" for a table row taken as it is;
            for a row with the driver's SM count, or a row with uncertain figures, the
            reason says so).
    """

    spec: GpuSpec
    basis: SpecBasis
    low_factor: float = 1.0
    high_factor: float = 1.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SpecTable:
    """All rows, with lookup by key, by PCI device ID and by the driver's device name."""

    path: Path
    specs: Mapping[str, GpuSpec] = field(default_factory=dict)
    architectures: Mapping[str, Architecture] = field(default_factory=dict)

    def __getitem__(self, key: str) -> GpuSpec:
        return self.specs[key]

    def __contains__(self, key: object) -> bool:
        return key in self.specs

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def keys(self) -> Iterable[str]:
        return self.specs.keys()

    def match_name(self, device_name: str) -> GpuSpec | None:
        """The row for an NVML device name: a vGPU profile's board code, else the row
        whose longest ``match`` pattern occurs in the name.

        A pattern must stand as whole words (case-insensitive; spaces, hyphens and
        underscores alike): "A10" does not select an "A100" or an "A10G", "B200" not a
        "GB200", and "RTX 4090" not an "RTX 4090 D" (a variant suffix, "Ti", "SUPER" or
        "D", makes another GPU).
        """
        # The rules live in spec_resolve, which builds on this module's types.
        from agent.sources import spec_resolve

        return spec_resolve.match_name(self.specs.values(), device_name)

    def match(self, device_name: str, pci_device_id: int | None = None) -> GpuSpec | None:
        """The row for a device: by PCI device ID first (stable across driver renames),
        then by name. An ID several rows share (the A2 and A16 boards) is decided by the
        name, else by the row with the larger peak."""
        from agent.sources import spec_resolve

        return spec_resolve.match(self.specs.values(), device_name, pci_device_id)

    def resolve(
        self,
        device_name: str,
        *,
        pci_device_id: int | None = None,
        compute_capability: str | None = None,
        sm_count: int | None = None,
        max_sm_clock_mhz: float | None = None,
    ) -> ResolvedSpec:
        """Never None: the table row, else a derived spec, else a family's or an era's
        ceiling (rules in :mod:`agent.sources.spec_resolve`). Never raises for what a
        driver or a log may report: a fact it cannot use counts as unknown."""
        from agent.sources import spec_resolve

        return spec_resolve.resolve(self, device_name, pci_device_id=pci_device_id,
                                    compute_capability=compute_capability,
                                    sm_count=sm_count, max_sm_clock_mhz=max_sm_clock_mhz)

    def architecture_of(self, compute_capability: str | None) -> Architecture | None:
        """The architecture whose table lists this compute capability, None if none."""
        cc = parse_compute_capability(compute_capability)
        if cc is None:
            return None
        for arch in self.architectures.values():
            if cc in map(parse_compute_capability, arch.compute_capabilities):
                return arch
        return None

    def sm_count_from_cuda_cores(self, cuda_cores: int, compute_capability: str | None
                                 ) -> int | None:
        """SMs from NVML's ``nvmlDeviceGetNumGpuCores``: cores / FP32 lanes per SM of the
        compute capability; None if the architecture is unknown or it does not divide."""
        arch = self.architecture_of(compute_capability)
        cc = parse_compute_capability(compute_capability)
        if arch is None or cc is None or cuda_cores <= 0:
            return None
        lanes = next((n for text, n in arch.fp32_lanes_per_sm.items()
                      if parse_compute_capability(text) == cc), None)
        if lanes is None or cuda_cores % lanes:
            return None
        return cuda_cores // lanes


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
    pci_ids = _parse_pci_ids(problems, f"{where}.pci_device_ids", raw.get("pci_device_ids", []))
    cc = raw.get("compute_capability")
    if cc is not None and parse_compute_capability(cc) is None:
        problems.add(f"{where}.compute_capability", _CC_TEXT)
        cc = None
    vgpu = _string_list(problems, f"{where}.vgpu", raw.get("vgpu", []),
                        "a list of vGPU board codes without spaces (e.g. \"A100DX\")",
                        words=True)
    factors = _parse_peak_factors(problems, f"{where}.peak_factors", raw.get("peak_factors"))
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
        pci_device_ids=pci_ids,
        compute_capability=None if cc is None else str(cc).strip(),
        vgpu=vgpu,
        peak_factors=factors,
    )


def _string_list(problems: Problems, where: str, raw: object, expect: str, *,
                 words: bool = False) -> tuple[str, ...]:
    """A list of non-empty strings (single words if ``words``), else () and a problem."""
    if not isinstance(raw, list) or not all(
        isinstance(v, str) and v.strip() and not (words and len(v.split()) != 1) for v in raw
    ):
        problems.add(where, expect)
        return ()
    return tuple(v.strip() for v in raw)


def _parse_pci_ids(problems: Problems, where: str, raw: object) -> tuple[int, ...]:
    expect = ("a 16-bit PCI device ID: an integer from 0 to 0xFFFF (e.g. 0x2330, vendor "
              "0x10DE implied)")
    if not isinstance(raw, list):
        problems.add(where, "a list of 16-bit PCI device IDs, e.g. [0x2330, 0x2331]")
        return ()
    ids: list[int] = []
    for i, value in enumerate(raw):
        if not in_range(value, 0, MAX_PCI_DEVICE_ID, integer=True):
            problems.add(f"{where}[{i}]", expect)
        elif value in ids:
            problems.add(f"{where}[{i}]", f"each ID once (0x{value:04X} is listed twice)")
        else:
            ids.append(value)
    return tuple(ids)


def _parse_peak_factors(problems: Problems, where: str, raw: object) -> tuple[float, float]:
    if raw is None:
        return (1.0, 1.0)
    expect = (f"{{ low = <a number in (0, 1]>, high = <a number in [1, "
              f"{MAX_PEAK_FACTOR:g}]> }}: how far the row's figures may be off")
    if not isinstance(raw, dict):
        problems.add(where, expect)
        return (1.0, 1.0)
    check_keys(problems, raw, ("low", "high"), where)
    low, high = raw.get("low", 1.0), raw.get("high", 1.0)
    if not in_range(low, 0, 1, above=True):
        problems.add(f"{where}.low", "a number > 0 and <= 1")
        low = 1.0
    if not in_range(high, 1, MAX_PEAK_FACTOR):
        problems.add(f"{where}.high", range_text("a number", 1, MAX_PEAK_FACTOR))
        high = 1.0
    return (float(low), float(high))


def _parse_architecture(problems: Problems, name: str, raw: object) -> Architecture | None:
    where = f"architecture.{name}"
    if not isinstance(raw, dict):
        problems.add(where, "a table")
        return None
    check_keys(problems, raw, _ARCH_KEYS, where)
    ccs = _string_list(problems, f"{where}.compute_capabilities",
                       raw.get("compute_capabilities"),
                       'a non-empty list of compute capabilities, e.g. ["8.0", "8.6"]')
    for i, cc in enumerate(ccs):
        if parse_compute_capability(cc) is None:
            problems.add(f"{where}.compute_capabilities[{i}]", _CC_TEXT)
    if raw.get("compute_capabilities") == []:
        problems.add(f"{where}.compute_capabilities",
                     'a non-empty list of compute capabilities, e.g. ["8.0", "8.6"]')
    ccs = tuple(cc for cc in ccs if parse_compute_capability(cc) is not None)
    lanes_raw = raw.get("fp32_lanes_per_sm")
    lanes_expect = ("FP32 lanes per SM (64 or 128), or a table of compute capability = "
                    'lanes, e.g. { "8.0" = 64, "8.6" = 128 }, covering every compute '
                    "capability of the architecture")
    lanes: dict[str, int] = {}
    if isinstance(lanes_raw, dict):
        for cc_text, n in lanes_raw.items():
            if parse_compute_capability(cc_text) not in map(parse_compute_capability, ccs):
                problems.add(f"{where}.fp32_lanes_per_sm.{cc_text}",
                             f"a compute capability listed in compute_capabilities {list(ccs)}")
            elif not in_range(n, 1, MAX_SM_COUNT, integer=True) or n % 32:
                problems.add(f"{where}.fp32_lanes_per_sm.{cc_text}", "a multiple of 32")
            else:
                lanes[cc_text] = n
        if set(map(parse_compute_capability, ccs)) - set(map(parse_compute_capability, lanes)):
            problems.add(f"{where}.fp32_lanes_per_sm", lanes_expect)
    elif isinstance(lanes_raw, int) and in_range(lanes_raw, 1, MAX_SM_COUNT, integer=True) \
            and lanes_raw % 32 == 0:
        lanes = dict.fromkeys(ccs, lanes_raw)
    else:
        problems.add(f"{where}.fp32_lanes_per_sm", lanes_expect)
    year = raw.get("first_year")
    if year is not None and not in_range(year, 1990, 2100, integer=True):
        problems.add(f"{where}.first_year", "a year (an integer from 1990 to 2100)")
        year = None
    typical: dict[str, str | None] = {}
    for key in ("typical", "typical_desktop"):
        value = raw.get(key)
        if value is not None and not (isinstance(value, str) and value.strip()):
            problems.add(f"{where}.{key}", "the key of a [gpu.<key>] row of this architecture")
            value = None
        typical[key] = value
    words = _string_list(problems, f"{where}.name_words", raw.get("name_words", []),
                         'a list of words naming it in device names, e.g. ["Ada"]')
    prefixes = _string_list(problems, f"{where}.model_prefixes", raw.get("model_prefixes", []),
                            'a list of model-number letters, e.g. ["H", "GH"]', words=True)
    for i, prefix in enumerate(prefixes):
        if not prefix.isalpha() or len(prefix) > 2:
            problems.add(f"{where}.model_prefixes[{i}]", "one or two letters")
    series = raw.get("rtx_series", [])
    if not isinstance(series, list) or not all(in_range(n, 1, 99, integer=True)
                                                 for n in series):
        problems.add(f"{where}.rtx_series", "a list of RTX/GTX series, e.g. [40] for RTX 40xx")
        series = []
    sources = _string_list(problems, f"{where}.sources", raw.get("sources", []),
                           "a list of URLs")
    return Architecture(
        name=name, compute_capabilities=ccs, fp32_lanes_per_sm=lanes,
        first_year=year, typical=typical["typical"], typical_desktop=typical["typical_desktop"],
        name_words=words, model_prefixes=tuple(p.upper() for p in prefixes),
        rtx_series=tuple(series), sources=sources,
    )


def _check_across(problems: Problems, specs: Mapping[str, GpuSpec],
                  archs: Mapping[str, Architecture]) -> None:
    """What no single table can check: rows against their architecture, and names,
    letters and codes that must select one thing only."""
    owner: dict[tuple[int, int] | None, str] = {}
    prefix_owner: dict[str, str] = {}
    series_owner: dict[int, str] = {}
    for arch in archs.values():
        where = f"architecture.{arch.name}"
        for cc_text in arch.compute_capabilities:
            cc_key = parse_compute_capability(cc_text)
            if cc_key in owner:
                problems.add(f"{where}.compute_capabilities",
                             f"compute capabilities of this architecture only ({cc_text} is "
                             f"also in architecture.{owner[cc_key]})")
            owner[cc_key] = arch.name
        for prefix in arch.model_prefixes:
            if prefix in prefix_owner:
                problems.add(f"{where}.model_prefixes",
                             f"letters of this architecture only ({prefix} is also in "
                             f"architecture.{prefix_owner[prefix]})")
            prefix_owner[prefix] = arch.name
        for n in arch.rtx_series:
            if n in series_owner:
                problems.add(f"{where}.rtx_series", f"series of this architecture only ({n} "
                             f"is also in architecture.{series_owner[n]})")
            series_owner[n] = arch.name
        for field_name, row in (("typical", arch.typical),
                                ("typical_desktop", arch.typical_desktop)):
            if row is not None and (row not in specs or specs[row].architecture != arch.name):
                problems.add(f"{where}.{field_name}", f"the key of a [gpu.<key>] row with "
                             f'architecture = "{arch.name}"')
    vgpu_owner: dict[str, str] = {}
    for spec in specs.values():
        where = f"gpu.{spec.key}"
        for code in spec.vgpu:
            if code.casefold() in vgpu_owner:
                problems.add(f"{where}.vgpu", f"board codes of this row only ({code} is also "
                             f"in gpu.{vgpu_owner[code.casefold()]}.vgpu)")
            vgpu_owner[code.casefold()] = spec.key
        if not archs:
            # A table without [architecture.<name>] tables (one written by hand for a
            # single GPU) names architectures freely; only resolution without a row
            # loses its guidance.
            continue
        row_arch = archs.get(spec.architecture)
        if row_arch is None:
            problems.add(f"{where}.architecture",
                         f"one of the [architecture.<name>] tables: {sorted(archs)}")
            continue
        if spec.compute_capability is None:
            continue
        row_cc = parse_compute_capability(spec.compute_capability)
        lanes = next((n for text, n in row_arch.fp32_lanes_per_sm.items()
                      if parse_compute_capability(text) == row_cc), None)
        if lanes is None:
            problems.add(f"{where}.compute_capability",
                         f"one of architecture.{row_arch.name}.compute_capabilities "
                         f"{list(row_arch.compute_capabilities)}")
        elif spec.flop_per_clock_per_sm.get("fp32", 2 * lanes) != 2 * lanes:
            problems.add(f"{where}.flop_per_clock_per_sm.fp32",
                         f"2 x the {lanes} FP32 lanes per SM of architecture.{row_arch.name} "
                         f"at compute capability {spec.compute_capability} (= {2 * lanes})")


def load_spec_table(path: Path | None = None) -> SpecTable:
    """Read and validate the spec table.

    Raises:
        ConfigError: listing every problem in the file, with its key.
    """
    path = path or default_spec_path()
    problems = Problems(path)
    raw = drop_bad_values(problems, read_toml(path, "the GPU spec table"))
    check_keys(problems, raw, ("gpu", "architecture"))
    archs_raw = raw.get("architecture", {})
    if not isinstance(archs_raw, dict):
        problems.add("architecture", "[architecture.<name>] tables")
        archs_raw = {}
    archs = {name: arch for name, arch_raw in archs_raw.items()
             if (arch := _parse_architecture(problems, name, arch_raw)) is not None}
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
    _check_across(problems, specs, archs)
    problems.raise_if_any()
    return SpecTable(path=path, specs=specs, architectures=archs)
