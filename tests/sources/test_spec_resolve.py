"""How a device finds its peak model: by PCI ID, vGPU board, name; else derived or bounded.

Real spellings run against the shipped table; the derived and ceiling factors against
a small made-up table (tests/sources/data/resolve_gpus.toml) where they can be worked
out by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agent.sources.spec_resolve import (
    DERIVATION_UNCERTAINTY,
    UNKNOWN_ARCHITECTURE_GROWTH,
    pci_device_id,
    vgpu_board,
)
from agent.sources.specs import SpecBasis, SpecTable, load_spec_table

TABLE = load_spec_table()
SMALL = load_spec_table(Path(__file__).parent / "data" / "resolve_gpus.toml")

# As nvidia-smi and NVML (and dcgm-exporter's modelName) print them.
REAL_SPELLINGS = [
    ("Tesla V100-SXM2-16GB", "v100_sxm2"),
    ("Tesla V100-SXM2-32GB", "v100_sxm2"),
    ("Tesla V100-SXM2-32GB-LS", "v100_sxm2"),
    ("Tesla V100-DGXS-32GB", "v100_sxm2"),
    ("Tesla PG503-216", "v100_sxm2"),
    ("Tesla V100-PCIE-16GB", "v100_pcie"),
    ("Tesla V100-PCIE-32GB", "v100_pcie"),
    ("Tesla V100-FHHL-16GB", "v100_pcie"),
    ("Tesla V100S-PCIE-32GB", "v100s_pcie"),
    ("Tesla V100-SXM3-32GB", "v100_sxm3"),
    ("Tesla T4", "t4"),
    ("Quadro RTX 8000", "quadro_rtx_8000"),
    ("Quadro RTX 6000", "quadro_rtx_8000"),
    ("NVIDIA TITAN RTX", "quadro_rtx_8000"),
    ("NVIDIA GeForce RTX 2080 Ti", "rtx_2080_ti"),
    ("NVIDIA A100-SXM4-40GB", "a100_40gb"),
    ("NVIDIA A100-PCIE-40GB", "a100_40gb"),
    ("NVIDIA PG506-207", "a100_40gb"),
    ("NVIDIA A100-SXM4-80GB", "a100_80gb"),
    ("NVIDIA A100 80GB PCIe", "a100_80gb"),
    ("NVIDIA A100-SXM-80GB", "a100_80gb"),
    ("NVIDIA A800-SXM4-80GB", "a800_80gb"),
    ("NVIDIA A800 80GB PCIe", "a800_80gb"),
    ("NVIDIA A800-SXM4-40GB", "a800_40gb"),
    ("NVIDIA A800 40GB Active", "a800_40gb"),
    ("NVIDIA A30", "a30"),
    ("NVIDIA A40", "a40"),
    ("NVIDIA A10", "a10"),
    ("NVIDIA A10G", "a10g"),
    ("NVIDIA A16", "a16"),
    ("NVIDIA A2", "a2"),
    ("NVIDIA RTX A6000", "rtx_a6000"),
    ("NVIDIA GeForce RTX 3090", "rtx_3090"),
    ("NVIDIA GeForce RTX 3090 Ti", "rtx_3090_ti"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA L20", "l20"),
    ("NVIDIA L40", "l40"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA RTX 6000 Ada Generation", "rtx_6000_ada"),
    ("NVIDIA GeForce RTX 4090", "rtx_4090"),
    ("NVIDIA GeForce RTX 4090 D", "rtx_4090_d"),
    ("NVIDIA H100 80GB HBM3", "h100_sxm"),
    ("NVIDIA H100 PCIe", "h100_pcie"),
    ("NVIDIA H100 NVL", "h100_nvl"),
    ("NVIDIA H800", "h800_sxm"),
    ("NVIDIA H800 PCIe", "h800_pcie"),
    ("NVIDIA H20", "h20"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA H200 NVL", "h200_nvl"),
    ("NVIDIA GH200 480GB", "gh200"),
    ("NVIDIA GH200 144G HBM3e", "gh200"),
    ("NVIDIA B100", "b100"),
    ("NVIDIA B200", "b200"),
    ("NVIDIA GB200", "gb200"),
    ("NVIDIA B300 SXM6 AC", "b300"),
    ("NVIDIA GB300", "gb300"),
    ("NVIDIA GeForce RTX 5090", "rtx_5090"),
    ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "rtx_pro_6000_blackwell"),
    ("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", "rtx_pro_6000_blackwell"),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "rtx_pro_6000_blackwell"),
    # vGPU profiles: the physical GPU's row.
    ("GRID A100-40C", "a100_40gb"),
    ("NVIDIA A100-40C", "a100_40gb"),
    ("NVIDIA A100-3-20C", "a100_40gb"),
    ("GRID A100DX-80C", "a100_80gb"),
    ("NVIDIA A100D-80C", "a100_80gb"),
    ("GRID V100DX-32C", "v100_sxm2"),
    ("GRID V100-16Q", "v100_pcie"),
    ("GRID T4-16Q", "t4"),
    ("NVIDIA H100XM-80C", "h100_sxm"),
    ("NVIDIA H100-80C", "h100_pcie"),
    ("NVIDIA H100L-94C", "h100_nvl"),
    ("NVIDIA L40S-48Q", "l40s"),
    ("NVIDIA A10-24Q", "a10"),
    # MIG devices carry the parent's name.
    ("NVIDIA A100-SXM4-40GB MIG 3g.20gb", "a100_40gb"),
    ("NVIDIA A100-SXM4-80GB MIG 1g.10gb", "a100_80gb"),
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "h100_sxm"),
    ("NVIDIA H100 NVL MIG 2g.24gb", "h100_nvl"),
]


@pytest.mark.parametrize(("device_name", "key"), REAL_SPELLINGS)
def test_real_spellings_resolve_to_their_row(device_name: str, key: str) -> None:
    resolved = TABLE.resolve(device_name)
    assert (resolved.basis, resolved.spec.key) == (SpecBasis.TABLE, key), resolved.reason


def test_the_spelling_list_covers_forty_names_and_every_row() -> None:
    assert len({name for name, _ in REAL_SPELLINGS}) >= 40
    assert {key for _, key in REAL_SPELLINGS} == set(TABLE.specs)


@pytest.mark.parametrize(
    "device_name",
    [
        "NVIDIA GeForce RTX 5090 D",  # tensor rate capped: not the RTX 5090
        "NVIDIA RTX PRO 6000D Blackwell Workstation Edition",  # cut down
        "NVIDIA A10M",  # not an A10
        "NVIDIA GeForce RTX 4080",  # not a 4090
        "Quadro RTX 5000",  # not an RTX 6000 of any generation
        "NVIDIA H100 64GB HBM2e",  # a variant no pattern names
    ],
)
def test_near_names_take_no_row(device_name: str) -> None:
    assert TABLE.match(device_name) is None
    assert TABLE.resolve(device_name).basis is SpecBasis.CEILING


def test_pci_id_beats_a_misleading_name() -> None:
    # A driver that names an H100 SXM5 after something else: the ID decides.
    assert TABLE.resolve("NVIDIA A10", pci_device_id=0x2330).spec.key == "h100_sxm"
    # NVML's combined device/vendor form, and an unknown ID falling back on the name.
    assert TABLE.match("NVIDIA A10", 0x233010DE).key == "h100_sxm"  # type: ignore[union-attr]
    assert TABLE.match("NVIDIA A10", 0x7777).key == "a10"  # type: ignore[union-attr]
    # Another vendor's ID is not an NVIDIA device ID.
    assert pci_device_id(0x23301002) is None
    assert pci_device_id(0x2330) == 0x2330
    assert pci_device_id(True) is None
    assert pci_device_id(-1) is None


def test_a_pci_id_two_rows_share_is_decided_by_the_name() -> None:
    assert TABLE.match("NVIDIA A16", 0x25B6).key == "a16"  # type: ignore[union-attr]
    assert TABLE.match("NVIDIA A2", 0x25B6).key == "a2"  # type: ignore[union-attr]
    # Neither name: the row with the larger peak, the safe side for the high bound.
    assert SMALL.match("Beta something", 0x2002).key == "b_big"  # type: ignore[union-attr]
    assert SMALL.match("NVIDIA B900 PCIe", 0x2002).key == "b_small"  # type: ignore[union-attr]


def test_vgpu_board_codes() -> None:
    assert vgpu_board("GRID V100DX-32C") == "V100DX"
    assert vgpu_board("NVIDIA A100-3-20C") == "A100"
    assert vgpu_board("NVIDIA RTX6000-Ada-48Q") == "RTX6000-Ada"
    assert vgpu_board("NVIDIA A100-SXM4-40GB") is None
    assert vgpu_board("NVIDIA H100 80GB HBM3") is None


def test_mig_instance_keeps_the_row_with_its_own_sm_count() -> None:
    r = TABLE.resolve("NVIDIA A100-SXM4-40GB MIG 3g.20gb", sm_count=42,
                      compute_capability="8.0")
    assert r.basis is SpecBasis.TABLE
    assert (r.spec.key, r.spec.sm_count) == ("a100_40gb/42sm", 42)
    assert r.spec.flop_per_clock("bf16_tensor") == 42 * 2048
    assert (r.low_factor, r.high_factor) == (1.0, 1.0)
    assert "42 SMs" in r.reason
    # The same SM count as the row: the row itself, no note.
    plain = TABLE.resolve("NVIDIA H100 80GB HBM3", sm_count=132)
    assert (plain.spec.key, plain.reason) == ("h100_sxm", "")


def test_a_row_with_unpublished_figures_widens_its_band() -> None:
    r = TABLE.resolve("NVIDIA H20")
    assert (r.basis, r.low_factor, r.high_factor) == (SpecBasis.TABLE, 1.0, 4.0)
    assert "not all published" in r.reason


# --- derived: a compute capability and an SM count, no row -----------------------------


def test_derived_from_the_rows_of_the_same_compute_capability() -> None:
    r = SMALL.resolve("Alpha X", compute_capability="1.0", sm_count=60, max_sm_clock_mhz=1300)
    assert r.basis is SpecBasis.DERIVED
    # bf16: 1024 twice, 512 once -> central 1024; the GeForce row's 512 is 0.5 of it.
    assert dict(r.spec.flop_per_clock_per_sm) == {"fp32": 128, "bf16_tensor": 1024,
                                                  "int8_tensor": 2048}
    assert (r.spec.sm_count, r.spec.max_sm_clock_mhz) == (60, 1300.0)
    assert r.low_factor == pytest.approx(0.5 * (1 - DERIVATION_UNCERTAINTY))
    assert r.high_factor == pytest.approx(1.0 * (1 + DERIVATION_UNCERTAINTY))
    assert (r.low_factor, r.high_factor) == pytest.approx((0.45, 1.1))
    assert "compute capability 1.0" in r.reason
    assert "\n" not in r.reason


def test_derived_takes_each_rows_own_uncertainty() -> None:
    # Both beta rows have the same figures; b_small's peak_factors.high = 2 counts.
    r = SMALL.resolve("Beta X", compute_capability="2.0", sm_count=150)
    assert (r.low_factor, r.high_factor) == pytest.approx((0.9, 2.2))
    # No clock from the driver: the largest of the rows'.
    assert r.spec.max_sm_clock_mhz == 2000.0
    assert r.spec.gpm is True


def test_derived_from_the_architecture_when_no_row_has_the_compute_capability() -> None:
    r = SMALL.resolve("Alpha Y", compute_capability="1.5", sm_count=10)
    assert r.basis is SpecBasis.DERIVED
    assert (r.low_factor, r.high_factor) == pytest.approx((0.45, 1.1))
    assert "alpha rows of 1.x" in r.reason


@pytest.mark.parametrize(("cc", "low", "high"), [
    # Newer than every row: the newest architecture's rows, its largest ratio (b_small's
    # 2) doubled; low 0.
    ("3.0", 0.0, 2 * UNKNOWN_ARCHITECTURE_GROWTH),
    # Older than every row: the oldest architecture's rows (largest ratio 1), doubled.
    ("0.5", 0.0, UNKNOWN_ARCHITECTURE_GROWTH),
])
def test_unknown_compute_capability(cc: str, low: float, high: float) -> None:
    r = SMALL.resolve("Future", compute_capability=cc, sm_count=300)
    assert r.basis is SpecBasis.DERIVED
    assert (r.low_factor, r.high_factor) == pytest.approx((low, high))
    assert "every row" in r.reason


def test_derived_on_the_shipped_table() -> None:
    # An RTX 5080 (compute capability 12.0): the RTX 5090's half-rate and the RTX PRO
    # 6000's full-rate tensor math span the band.
    r = TABLE.resolve("NVIDIA GeForce RTX 5080", compute_capability="12.0", sm_count=84,
                      max_sm_clock_mhz=2617)
    assert r.basis is SpecBasis.DERIVED
    assert r.spec.flop_per_clock("bf16_tensor") == 84 * 1024
    assert (r.low_factor, r.high_factor) == pytest.approx((0.45, 1.1))


# --- ceiling: a name only -----------------------------------------------------------------


def test_ceiling_from_the_family() -> None:
    r = SMALL.resolve("NVIDIA B900 NVL")
    assert r.basis is SpecBasis.CEILING
    # Family B900: b_small (lower median by peak) is central; b_big has 2x its SMs and
    # runs 2000/1800 MHz: high = 2 x 2000/1800.
    assert r.spec.key == "ceiling/b_small"
    assert r.low_factor == 0.0
    assert r.high_factor == pytest.approx(2 * 2000 / 1800)
    assert "family B900" in r.reason
    assert "b_big" in r.reason


def test_ceiling_from_the_era_picks_the_typical_row() -> None:
    desktop = SMALL.resolve("NVIDIA GeForce RTX 1180")  # RTX 11 series -> alpha
    assert desktop.spec.key == "ceiling/a_geforce"
    # a_dc: 100 SMs x 1024 bf16 against 80 x 512.
    assert (desktop.low_factor, desktop.high_factor) == pytest.approx((0.0, 2.5))
    data_center = SMALL.resolve("NVIDIA A777")  # model letter A -> alpha
    assert data_center.spec.key == "ceiling/a_dc"
    # a_geforce: 80 x 2048 int8 at 1500 MHz against 100 x 2048 at 1000 MHz.
    assert data_center.high_factor == pytest.approx(0.8 * 1.5)
    assert "alpha era" in data_center.reason


def test_ceiling_without_any_clue_is_the_largest_peak_of_the_table() -> None:
    r = SMALL.resolve("Mystery accelerator")
    # Lower median of the five rows by peak: a_geforce. It lacks fp8, which is added at
    # its own fastest float tensor figure (512: fp8 work runs emulated at bf16 rate).
    # High: b_big's fp8, 200 x 8192 against 80 x 512, at 2000 against 1500 MHz.
    assert r.spec.key == "ceiling/a_geforce"
    assert r.spec.flop_per_clock_per_sm["fp8_tensor"] == 512
    assert (r.low_factor, r.high_factor) == pytest.approx((0.0, 40 * 2000 / 1500))
    assert "no family or era" in r.reason


@pytest.mark.parametrize(("device_name", "keys"), [
    ("NVIDIA GeForce RTX 4080", [k for k, s in TABLE.specs.items() if s.architecture == "ada"]),
    ("NVIDIA H100 64GB HBM2e", ["h100_sxm", "h100_pcie", "h100_nvl"]),
    ("Mystery accelerator", list(TABLE.specs)),
])
def test_ceiling_high_bound_holds_every_gpu_it_may_be(device_name: str,
                                                      keys: list[str]) -> None:
    r = TABLE.resolve(device_name)
    for key in keys:
        s = TABLE[key]
        for p in s.flop_per_clock_per_sm:
            # At a measured clock both share, and at each one's maximum clock.
            assert r.spec.flop_per_clock(p) * r.high_factor >= s.flop_per_clock(p) * (
                s.peak_factors[1] - 1e-9), (key, p)
            assert (r.spec.peak_flops(p, r.spec.max_sm_clock_mhz) * r.high_factor
                    >= s.peak_flops(p, s.max_sm_clock_mhz) * (1 - 1e-9)), (key, p)


def test_a_fact_that_cannot_be_used_counts_as_unknown() -> None:
    for kwargs in (
        {"compute_capability": "9.x", "sm_count": 132},
        {"compute_capability": "9.0", "sm_count": -4},
        {"compute_capability": "9.0", "sm_count": True},
        {"compute_capability": 9.0, "sm_count": 132},
        {"compute_capability": "9.0", "sm_count": 132, "max_sm_clock_mhz": math.nan},
        {"pci_device_id": "0x2330"},
        {"pci_device_id": 1 << 40},
    ):
        r = TABLE.resolve("Accelerator 9000", **kwargs)
        assert r.basis in (SpecBasis.CEILING, SpecBasis.DERIVED)
        assert r.high_factor > 0
        assert math.isfinite(r.high_factor)
        assert r.spec.max_sm_clock_mhz > 0
        assert math.isfinite(r.spec.max_sm_clock_mhz)
    not_understood = TABLE.resolve("X", compute_capability="9.x", sm_count=132)
    assert "'9.x' not understood" in not_understood.reason


def test_an_empty_table_still_answers() -> None:
    r = SpecTable(path=Path("none")).resolve("NVIDIA H100 80GB HBM3")
    assert r.basis is SpecBasis.CEILING
    assert "no rows" in r.reason


def test_sm_count_from_cuda_cores() -> None:
    assert TABLE.sm_count_from_cuda_cores(16896, "9.0") == 132
    assert TABLE.sm_count_from_cuda_cores(6912, "8.0") == 108
    assert TABLE.sm_count_from_cuda_cores(10496, "8.6") == 82
    assert TABLE.sm_count_from_cuda_cores(5120, "7.0") == 80
    assert TABLE.sm_count_from_cuda_cores(100, "9.0") is None  # does not divide
    assert TABLE.sm_count_from_cuda_cores(16896, "42.0") is None
    assert TABLE.sm_count_from_cuda_cores(16896, None) is None
