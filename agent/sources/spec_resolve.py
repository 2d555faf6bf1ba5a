"""How a device finds its peak model: a row of the spec table, or, without one, a spec
derived from what the driver says or a ceiling from its name alone.

Matching (``SpecTable.match``), first hit wins:

1. **PCI device ID** (NVML ``pciInfo.pciDeviceId``; the combined 32-bit form
   ``0x233010DE`` is read too): the row listing it. IDs outlive the driver's renaming of
   a product. An ID several rows share (the A2 and A16 boards are both 0x25B6) is
   decided by the name among those rows, else by the row with the larger peak.
2. **vGPU profile** (``GRID A100-40C``, ``NVIDIA H100XM-80C``, ``GRID V100DX-32C``,
   MIG-backed ``NVIDIA A100-3-20C``): the board code before the profile selects the row
   whose ``vgpu`` list holds it, which is the physical GPU's row.
3. **Name patterns**: the row whose longest ``match`` pattern stands in the name as whole
   words, case-insensitive, spaces, hyphens and underscores alike. "A10" does not select
   an "A100" or an "A10G", "B200" not a "GB200", and "RTX 4090" not an "RTX 4090 D":
   a variant suffix ("Ti", "SUPER", "D") makes another GPU. MIG devices carry their
   parent's name (``NVIDIA A100-SXM4-40GB MIG 3g.20gb``) and find the parent's row.

Resolution (``SpecTable.resolve``) never returns None and never raises on a driver's or
a log's facts; a fact it cannot use counts as unknown.

* **table**: a row matched. Where the driver reports another SM count (a MIG instance
  reports its own multiprocessors; a cut-down board its fewer), the row with that count,
  key ``<row>/<n>sm``. A row whose figures are not published carries ``peak_factors``,
  which become the band factors.
* **derived**: no row, but the compute capability and the SM count are known. The per-SM
  FLOP per clock of each precision comes from the rows of that compute capability; else
  of the same architecture and major version; else of the whole architecture. Central
  is the figure most of those rows have (a tie goes to the larger). low_factor is the
  smallest figure / central and high_factor the largest / central, over those rows and
  precisions (each row's own ``peak_factors`` applied), widened by
  ``DERIVATION_UNCERTAINTY`` each way. A compute capability no architecture lists takes
  the rows of the nearest architecture below it (the newest architecture when newer
  than every row, the oldest when older than all) with low_factor 0 and high_factor
  ``UNKNOWN_ARCHITECTURE_GROWTH`` times their largest ratio. The clock is the driver's
  maximum, else the largest of those rows'.
* **ceiling**: only a name (replay), or no compute capability or SM count. low_factor
  is 0: a name alone says nothing of how slow a GPU may be. Central and high come from:

  1. its *family*: a model token of the name (``H100`` in ``NVIDIA H100 64GB HBM2e``,
     ``RTX 5090`` in ``NVIDIA GeForce RTX 5090 D``) that stands in other rows' patterns,
     kept to the name's era when it names one. Central is the family's lower-median row
     by peak, high_factor the largest family row's peak / central;
  2. else its *era*: the architecture the name points to (its ``name_words``, RTX/GTX
     series or model letters in ``[architecture.<name>]``). Central is the era's
     ``typical`` row (``typical_desktop`` for GeForce, RTX, Quadro and TITAN names),
     high_factor the era's largest peak / central;
  3. else the whole table: central on its lower-median row, high at its largest peak.

  Peaks are compared per clock and at each row's maximum clock, and the larger ratio
  kept, so the bound holds whether the estimator has the measured clock or only the
  maximum. Precisions the central row lacks are added at the smallest per-SM figure
  any row of the group has, so work in them is counted.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from agent.sources.specs import (
    MAX_CLOCK_MHZ,
    MAX_SM_COUNT,
    PRECISIONS,
    Architecture,
    GpuSpec,
    ResolvedSpec,
    SpecBasis,
    SpecTable,
    parse_compute_capability,
)

# How far a derived per-SM figure may be from the hardware's beyond the spread of the
# rows it comes from (sibling products of one compute capability differ in fused-off
# units and in tensor rates by product line).
DERIVATION_UNCERTAINTY = 0.10
# Each new architecture so far has at most doubled a precision's per-SM throughput
# (Volta -> Ampere -> Hopper -> Blackwell tensor cores).
UNKNOWN_ARCHITECTURE_GROWTH = 2.0
NVIDIA_VENDOR_ID = 0x10DE

_SEPARATORS = re.compile(r"[\s_-]+")
_VGPU_PROFILE = re.compile(r"\s*(?:GRID|NVIDIA)\s+(?P<board>\S+?)-(?:\d+-)?\d+[ABCQ]\s*", re.I)
_MODEL_TOKEN = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{1,2})(\d{1,4})[A-Za-z]{0,3}(?![A-Za-z0-9])")
_RTX_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?:RTX|GTX)[\s_-]+(?:PRO[\s_-]+)?(\d{2})\d{2}", re.I)
_DESKTOP = re.compile(r"(?<![A-Za-z0-9])(?:GeForce|RTX|Quadro|TITAN)(?![A-Za-z0-9])", re.I)


_FLOAT_TENSOR = ("tf32_tensor", "fp16_tensor", "bf16_tensor", "fp8_tensor", "fp4_tensor")


@functools.lru_cache(maxsize=4096)
def _words(text: str) -> re.Pattern[str]:
    """``text`` as whole words, any separator, not followed by a variant suffix."""
    body = r"[\s_-]+".join(re.escape(w) for w in _SEPARATORS.split(text.strip()) if w)
    return re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])"
                      r"(?!\s+(?:Ti|SUPER|D)(?![A-Za-z0-9]))", re.I)


@functools.lru_cache(maxsize=4096)
def _lower_words(text: str) -> tuple[str, ...] | None:
    """The words of an ASCII pattern in lower case; None for any other pattern."""
    if not text.isascii():
        return None
    return tuple(w.lower() for w in _SEPARATORS.split(text.strip()) if w)


def _may_match(pattern: str, lower_name: str | None) -> bool:
    """False only if ``pattern`` cannot match: one of its words is not in the name.
    For an ASCII name and pattern, where ignoring case is lower-casing, this is a
    substring test; it spares compiling the table's patterns, which costs more than
    the rest of a start-up's matching."""
    if lower_name is None:
        return True
    words = _lower_words(pattern)
    return words is None or all(w in lower_name for w in words)


def pci_device_id(value: object) -> int | None:
    """The 16-bit device ID of an NVIDIA PCI ID: ``0x2330`` and ``0x233010DE`` give
    0x2330; another vendor's ID, a negative or a non-integer gives None."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return None
    if value <= 0xFFFF:
        return value
    if value <= 0xFFFFFFFF and value & 0xFFFF == NVIDIA_VENDOR_ID:
        return value >> 16
    return None


def vgpu_board(device_name: str) -> str | None:
    """The board code of a vGPU profile name (``GRID A100DX-40C`` -> ``A100DX``)."""
    m = _VGPU_PROFILE.fullmatch(device_name)
    return None if m is None else m.group("board")


def match_name(specs: Iterable[GpuSpec], device_name: str) -> GpuSpec | None:
    """The row a name selects: by vGPU board code, else by the longest pattern."""
    rows = list(specs)
    board = vgpu_board(device_name)
    if board is not None:
        for spec in rows:
            if any(board.casefold() == code.casefold() for code in spec.vgpu):
                return spec
    best: tuple[int, GpuSpec] | None = None
    lower_name = device_name.lower() if device_name.isascii() else None
    for spec in rows:
        for pattern in spec.match:
            length = len(pattern.strip())
            if ((best is None or length > best[0]) and _may_match(pattern, lower_name)
                    and _words(pattern).search(device_name)):
                best = (length, spec)
    return None if best is None else best[1]


def match(specs: Iterable[GpuSpec], device_name: str, pci_id: object = None) -> GpuSpec | None:
    """The row for a device: by PCI device ID, then by name (module docstring)."""
    rows = list(specs)
    device = pci_device_id(pci_id)
    if device is not None:
        owners = [s for s in rows if device in s.pci_device_ids]
        if len(owners) == 1:
            return owners[0]
        if owners:
            return match_name(owners, device_name) or max(owners, key=GpuSpec.top_peak_flops)
    return match_name(rows, device_name)


def resolve(
    table: SpecTable,
    device_name: str,
    *,
    pci_device_id: object = None,
    compute_capability: object = None,
    sm_count: object = None,
    max_sm_clock_mhz: object = None,
) -> ResolvedSpec:
    """The peak model of one device (module docstring)."""
    name = device_name if isinstance(device_name, str) else ""
    rows = list(table.specs.values())
    if not rows:
        nothing = GpuSpec(key="ceiling/none", name=name.strip() or "unnamed GPU", match=(),
                          architecture="unknown", sm_count=1, max_sm_clock_mhz=1.0, gpm=False,
                          flop_per_clock_per_sm={})
        return ResolvedSpec(nothing, SpecBasis.CEILING, 0.0, 1.0,
                            f"the spec table {table.path} has no rows: no peak can be stated")
    sm = sm_count if isinstance(sm_count, int) and _is_int_in(sm_count, 1, MAX_SM_COUNT) else None
    clock = (float(max_sm_clock_mhz) if isinstance(max_sm_clock_mhz, int | float)
             and not isinstance(max_sm_clock_mhz, bool) and math.isfinite(max_sm_clock_mhz)
             and 0 < max_sm_clock_mhz <= MAX_CLOCK_MHZ else None)
    spec = match(rows, name, pci_device_id)
    if spec is not None:
        return _table_row(spec, sm)
    cc = parse_compute_capability(compute_capability)
    if cc is not None and sm is not None:
        derived = _derive(table, rows, name, cc, sm, clock)
        if derived is not None:
            return derived
    unknown = []
    if cc is None:
        unknown.append("no compute capability" if compute_capability is None
                       else f"compute capability {compute_capability!r} not understood")
    if sm is None:
        unknown.append("no SM count" if sm_count is None else f"SM count {sm_count!r} unusable")
    if cc is not None and sm is not None:
        unknown.append("no row has a compute capability")
    return _ceiling(table, rows, name, ", ".join(unknown))


def _is_int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _table_row(spec: GpuSpec, sm: int | None) -> ResolvedSpec:
    low, high = spec.peak_factors
    notes = []
    if sm is not None and sm != spec.sm_count:
        notes.append(f"{spec.key} with the {sm} SMs the driver reports (the row has "
                     f"{spec.sm_count}: a MIG instance or a cut-down board)")
        spec = dataclasses.replace(spec, key=f"{spec.key}/{sm}sm", sm_count=sm)
    if (low, high) != (1.0, 1.0):
        notes.append(f"the row's figures are not all published: band x{low:.3g}..x{high:.3g} "
                     "(its comments in the spec table say why)")
    return ResolvedSpec(spec, SpecBasis.TABLE, low, high, "; ".join(notes))


def _spread(group: Sequence[GpuSpec]) -> tuple[dict[str, int], float, float]:
    """Central per-SM figures (the most common, ties to the larger) and the smallest and
    largest ratio of any row's figure, its own peak_factors applied, to central.

    The ratios are taken over the float tensor precisions, where training runs. A pipe
    whose rows spread wider (FP64 cut to 1/64 on the H800 and H20) has its central
    figure moved, down or up, until the factors cover it, rather than every tensor
    bound widened by that gap.
    """
    central: dict[str, int] = {}
    spread: dict[str, tuple[float, float]] = {}
    for p in PRECISIONS:
        have = [r for r in group if r.flop_per_clock_per_sm.get(p, 0) > 0]
        if not have:
            continue
        counts = Counter(r.flop_per_clock_per_sm[p] for r in have)
        value = max(counts, key=lambda v: (counts[v], v))
        central[p] = value
        spread[p] = (min(r.flop_per_clock_per_sm[p] * r.peak_factors[0] / value for r in have),
                     max(r.flop_per_clock_per_sm[p] * r.peak_factors[1] / value for r in have))
    tensor = [spread[p] for p in _FLOAT_TENSOR if p in spread] or list(spread.values())
    low_ratio = min([1.0, *(lo for lo, _ in tensor)])
    high_ratio = max([1.0, *(hi for _, hi in tensor)])
    for p, (lo, hi) in spread.items():
        if lo < low_ratio:
            central[p] = max(1, math.floor(central[p] * lo / low_ratio))
        elif hi > high_ratio:
            central[p] = math.ceil(central[p] * hi / high_ratio)
    return central, low_ratio, high_ratio


def _derive(table: SpecTable, rows: Sequence[GpuSpec], name: str, cc: tuple[int, int],
            sm: int, clock: float | None) -> ResolvedSpec | None:
    ccs = {r.key: c for r in rows if (c := parse_compute_capability(r.compute_capability))}
    known = [r for r in rows if r.key in ccs]
    if not known:
        return None
    cc_text = f"{cc[0]}.{cc[1]}"
    arch = table.architecture_of(cc_text)
    in_arch = [r for r in known if arch is not None and r.architecture == arch.name]
    same_major = [r for r in in_arch if ccs[r.key][0] == cc[0]]
    unlisted = False
    if same := [r for r in known if ccs[r.key] == cc]:
        group, source = same, f"the rows of compute capability {cc_text}"
    elif same_major:
        group, source = same_major, f"the {same_major[0].architecture} rows of {cc[0]}.x"
    elif in_arch:
        group, source = in_arch, f"the {in_arch[0].architecture} rows"
    else:
        unlisted = True
        below = [r for r in known if ccs[r.key] < cc]
        nearest = (max(below, key=lambda r: ccs[r.key]) if below
                   else min(known, key=lambda r: ccs[r.key]))
        group = [r for r in known if r.architecture == nearest.architecture]
        where = ("newer than every row" if len(below) == len(known)
                 else "older than every row" if not below else "listed by no architecture")
        source = f"the {nearest.architecture} rows ({cc_text} is {where})"
    central, low_ratio, high_ratio = _spread(group)
    if unlisted:
        low, high = 0.0, UNKNOWN_ARCHITECTURE_GROWTH * high_ratio
        how = (f"low 0, high {UNKNOWN_ARCHITECTURE_GROWTH:g}x their largest: a new "
               "architecture has brought up to that much per SM")
    else:
        low = low_ratio * (1 - DERIVATION_UNCERTAINTY)
        high = high_ratio * (1 + DERIVATION_UNCERTAINTY)
        how = f"their spread widened by {DERIVATION_UNCERTAINTY:.0%}"
    architecture = Counter(r.architecture for r in group).most_common(1)[0][0]
    spec = GpuSpec(
        key=f"derived/cc{cc_text}", name=name.strip() or "unnamed GPU", match=(),
        architecture=architecture, sm_count=sm,
        max_sm_clock_mhz=clock or max(r.max_sm_clock_mhz for r in group),
        gpm=all(r.gpm for r in group), flop_per_clock_per_sm=central,
        compute_capability=cc_text,
    )
    reason = (f"no row matches {name!r}: derived from compute capability {cc_text} and "
              f"{sm} SMs, per-SM figures the most common among {source} ({len(group)} "
              f"rows), band x{low:.3g}..x{high:.3g} ({how})")
    return ResolvedSpec(spec, SpecBasis.DERIVED, low, high, reason)


def _lower_median(rows: Sequence[GpuSpec]) -> GpuSpec:
    ranked = sorted(rows, key=lambda r: (r.top_peak_flops(), r.key))
    return ranked[(len(ranked) - 1) // 2]


def _era(table: SpecTable, name: str) -> tuple[Architecture | None, str]:
    """The architecture a name points to, and what in the name says so."""
    archs = list(table.architectures.values())
    for arch in archs:
        for word in arch.name_words:
            if _words(word).search(name):
                return arch, f"{word!r} in the name"
    if m := _RTX_TOKEN.search(name):
        series = int(m.group(1))
        for arch in archs:
            if series in arch.rtx_series:
                return arch, f"an RTX/GTX {series} series name"
    for m in _MODEL_TOKEN.finditer(name):
        letters = m.group(1).upper()
        for arch in archs:
            if letters in arch.model_prefixes:
                return arch, f"model {m.group(0)}"
    return None, ""


def _family(rows: Sequence[GpuSpec], name: str,
            era: Architecture | None) -> tuple[str, list[GpuSpec]]:
    """The first model token of the name that other rows' patterns hold, with them."""
    tokens = []
    if m := _RTX_TOKEN.search(name):
        tokens.append(m.group(0))
    tokens += [m.group(1) + m.group(2) for m in _MODEL_TOKEN.finditer(name)]
    for token in tokens:
        words = _words(token)
        family = [r for r in rows if any(words.search(p) for p in r.match)
                  and (era is None or r.architecture == era.name)]
        if family:
            return token, family
    return "", []


def _ceiling(table: SpecTable, rows: Sequence[GpuSpec], name: str, unknown: str
             ) -> ResolvedSpec:
    era, era_why = _era(table, name)
    token, family = _family(rows, name, era)
    era_rows = [r for r in rows if era is not None and r.architecture == era.name]
    group: Sequence[GpuSpec]
    if family:
        group, central, what = family, _lower_median(family), f"family {token}"
    elif era is not None and era_rows:
        pick = era.typical_desktop if _DESKTOP.search(name) and era.typical_desktop else era.typical
        chosen = table.specs.get(pick) if pick else None
        central = chosen if chosen is not None and chosen in era_rows else _lower_median(era_rows)
        group, what = era_rows, f"{era.name} era ({era_why})"
    else:
        group, central, what = rows, _lower_median(rows), "no family or era in the name"
    per_sm = dict(central.flop_per_clock_per_sm)
    # A float tensor precision the central row lacks runs emulated at its fastest float
    # tensor rate (as the estimator counts it); other missing ones at the group's least.
    fastest_float = max((per_sm.get(p, 0) for p in _FLOAT_TENSOR), default=0)
    for p in PRECISIONS:
        others = [r.flop_per_clock_per_sm[p] for r in group if r.flop_per_clock_per_sm.get(p)]
        if p not in per_sm and p in _FLOAT_TENSOR and fastest_float:
            per_sm[p] = fastest_float
        elif p not in per_sm and others:
            per_sm[p] = min(others)
    spec = dataclasses.replace(central, key=f"ceiling/{central.key}",
                               name=name.strip() or "unnamed GPU", match=(), datasheet=(),
                               pci_device_ids=(), vgpu=(), peak_factors=(1.0, 1.0),
                               flop_per_clock_per_sm=per_sm)

    def ratios(precisions: Sequence[str]) -> tuple[float, GpuSpec, str]:
        best, top, top_precision = 1.0, central, ""
        for r in group:
            clock_ratio = max(1.0, r.max_sm_clock_mhz / spec.max_sm_clock_mhz)
            for p, value in r.flop_per_clock_per_sm.items():
                if p in precisions and spec.flop_per_clock(p) > 0:
                    ratio = (r.sm_count * value * r.peak_factors[1] / spec.flop_per_clock(p)
                             * clock_ratio)
                    if ratio > best:
                        best, top, top_precision = ratio, r, p
        return best, top, top_precision

    # One factor scales every pipe's high bound: the era's largest float tensor peak
    # over central's, where training runs. A non-tensor pipe whose own ratio is larger
    # (FP64 at 1/64 rate on GeForce parts) gets its central figure raised until the
    # factor covers it, rather than every tensor bound inflated by that gap.
    high, top, top_precision = ratios(_FLOAT_TENSOR)
    if not top_precision:
        high, top, top_precision = ratios(PRECISIONS)
    for p in PRECISIONS:
        need, _, _ = ratios((p,))
        if p not in _FLOAT_TENSOR and need > high * (1 + 1e-12):
            per_sm[p] = math.ceil(per_sm[p] * need / high)
    spec = dataclasses.replace(spec, flop_per_clock_per_sm=per_sm)
    at = f"{top.key}'s {top_precision} peak" if top_precision else f"{top.key}'s peaks"
    reason = (f"{unknown}: no row matches {name!r}; {what}: central on {central.key}, high at "
              f"{at} (x{high:.3g} of central's), low 0")
    return ResolvedSpec(spec, SpecBasis.CEILING, 0.0, high, reason)
