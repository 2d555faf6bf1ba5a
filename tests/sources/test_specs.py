"""The GPU spec table: every datasheet peak recomputed from the per-clock figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.configfile import ConfigError
from agent.sources.specs import PRECISIONS, load_spec_table

TABLE = load_spec_table()
REQUIRED = ("v100_sxm2", "a100_40gb", "a100_80gb", "h100_sxm", "h100_pcie", "h200", "b200",
            "gb200", "l40s", "l4", "a10")


def test_table_has_the_required_gpus_with_sources() -> None:
    for key in REQUIRED:
        spec = TABLE[key]
        assert spec.sources, key
        assert spec.datasheet, key
        assert spec.sm_count > 0
        assert spec.max_sm_clock_mhz > 0


@pytest.mark.parametrize(
    ("key", "precision"),
    [(k, p.precision) for k in TABLE for p in TABLE[k].datasheet],
)
def test_datasheet_peak_recomputes_from_per_clock_figures(key: str, precision: str) -> None:
    spec = TABLE[key]
    peak = next(p for p in spec.datasheet if p.precision == precision)
    computed = spec.peak_flops(precision, peak.clock_mhz)
    tolerance = max(peak.printed_tolerance_flops, peak.rel_tol * peak.dense_flops)
    assert abs(computed - peak.dense_flops) <= tolerance, (
        f"{key} {precision}: {computed / 1e12:.2f} TFLOP/s from {spec.sm_count} SMs x "
        f"{spec.flop_per_clock_per_sm[precision]} FLOP/clk x {peak.clock_mhz} MHz, "
        f"datasheet {peak.value} {peak.unit}{' sparse' if peak.sparse else ''}"
    )


def test_h100_peak_scales_with_the_measured_clock() -> None:
    h100 = TABLE["h100_sxm"]
    assert h100.peak_flops("bf16_tensor", 1830) == pytest.approx(989.4e12, rel=1e-4)
    # At its 1980 MHz maximum an H100 is ~8% above the datasheet figure.
    assert h100.peak_flops("bf16_tensor", 1980) == pytest.approx(1070.5e12, rel=1e-4)
    assert h100.peak_flops("fp8_tensor", 1980) == 2 * h100.peak_flops("bf16_tensor", 1980)
    assert h100.peak_flops("fp4_tensor", 1980) == 0


@pytest.mark.parametrize(
    ("device_name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "h100_sxm"),
        ("NVIDIA H100 PCIe", "h100_pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-40GB", "a100_40gb"),
        ("NVIDIA A100-SXM4-80GB", "a100_80gb"),
        ("NVIDIA A100 80GB PCIe", "a100_80gb"),
        ("Tesla V100-SXM2-32GB", "v100_sxm2"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA A10", "a10"),
        ("NVIDIA B200", "b200"),
        ("NVIDIA GB200", "gb200"),
    ],
)
def test_nvml_names_select_the_right_row(device_name: str, key: str) -> None:
    spec = TABLE.match_name(device_name)
    assert spec is not None
    assert spec.key == key


@pytest.mark.parametrize("device_name", ["NVIDIA GeForce GTX 1080", "NVIDIA A10G"])
def test_unknown_device_matches_nothing(device_name: str) -> None:
    # The AWS A10G has less tensor throughput than the A10: it must not borrow its row.
    assert TABLE.match_name(device_name) is None


def test_bad_table_reports_every_problem_with_its_key(tmp_path: Path) -> None:
    bad = tmp_path / "gpus.toml"
    bad.write_text(
        """
[gpu.x]
name = "X"
match = ["X"]
architecture = "hopper"
sm_count = -3
max_sm_clock_mhz = 1000
gpm = "yes"
[gpu.x.flop_per_clock_per_sm]
bf16_tensor = 1024

[gpu.y]
name = "Y"
match = ["Y"]
architecture = "ada"
sm_count = 10
max_sm_clock_mhz = 1000
gpm = false
[gpu.y.flop_per_clock_per_sm]
bf17_tensor = 1024
fp32 = 0
[gpu.y.datasheet]
fp32 = { value = 12.5, unit = "XFLOPS", clock_mhz = 1000 }
"""
    )
    with pytest.raises(ConfigError) as e:
        load_spec_table(bad)
    keys = [k for k, _ in e.value.problems]
    assert "gpu.x.gpm" in keys
    assert "gpu.y.flop_per_clock_per_sm.bf17_tensor" in keys
    assert "gpu.y.flop_per_clock_per_sm.fp32" in keys
    assert str(bad) in str(e.value)
    assert set(PRECISIONS) >= {"bf16_tensor", "fp8_tensor"}
