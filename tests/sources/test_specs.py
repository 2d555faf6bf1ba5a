"""The GPU spec table: every datasheet peak recomputed from the per-clock figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.configfile import ConfigError
from agent.sources.specs import PRECISIONS, load_spec_table, parse_compute_capability

TABLE = load_spec_table()
# Every NVIDIA data-center GPU since Volta, and the workstation and consumer GPUs used
# for training; each with printed figures to check the per-clock ones against.
REQUIRED = ("v100_sxm2", "v100_pcie", "v100s_pcie", "t4", "a100_40gb", "a100_80gb",
            "a800_40gb", "a800_80gb", "a30", "a40", "a10", "a10g", "a16", "a2", "l4", "l20",
            "l40", "l40s", "h100_sxm", "h100_pcie", "h100_nvl", "h800_sxm", "h800_pcie",
            "h20", "h200", "h200_nvl", "gh200", "b100", "b200", "gb200", "b300", "gb300",
            "rtx_6000_ada", "rtx_a6000", "rtx_3090", "rtx_4090", "rtx_5090",
            "rtx_pro_6000_blackwell")
# Rows without printed figures to check (see their comments in the table).
NO_DATASHEET = {"v100_sxm3", "rtx_4090_d"}
# PCI device IDs more than one row lists (the name decides among them).
SHARED_PCI_IDS = {0x25B6}  # A2 and A16


def test_table_has_the_required_gpus_with_sources() -> None:
    for key in REQUIRED:
        spec = TABLE[key]
        assert spec.sources, key
        assert spec.datasheet, key
        assert spec.sm_count > 0
        assert spec.max_sm_clock_mhz > 0
    assert {k for k, s in TABLE.specs.items() if not s.datasheet} == NO_DATASHEET


def test_every_row_says_how_to_recognise_it() -> None:
    owners: dict[int, list[str]] = {}
    for key, spec in TABLE.specs.items():
        assert spec.sources, key
        assert spec.match, key
        assert spec.pci_device_ids, key
        assert spec.architecture in TABLE.architectures, key
        arch = TABLE.architectures[spec.architecture]
        assert spec.compute_capability in arch.compute_capabilities, key
        assert parse_compute_capability(spec.compute_capability) is not None, key
        for device in spec.pci_device_ids:
            owners.setdefault(device, []).append(key)
    assert {d for d, keys in owners.items() if len(keys) > 1} == SHARED_PCI_IDS
    # Each architecture's FP32 lanes give the rows' fp32 figure (checked when loading).
    lanes = TABLE.architectures["ampere"].fp32_lanes_per_sm
    assert (lanes["8.0"], lanes["8.6"]) == (64, 128)


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


@pytest.mark.parametrize("device_name", ["NVIDIA GeForce GTX 1080", "NVIDIA A10M",
                                         "NVIDIA GeForce RTX 3090 Super"])
def test_unknown_device_matches_nothing(device_name: str) -> None:
    assert TABLE.match_name(device_name) is None


def test_a10g_does_not_borrow_the_a10s_row() -> None:
    # The AWS A10G has less tensor throughput than the A10.
    a10g, a10 = TABLE.match_name("NVIDIA A10G"), TABLE.match_name("NVIDIA A10")
    assert (a10g and a10g.key, a10 and a10.key) == ("a10g", "a10")
    assert TABLE["a10g"].flop_per_clock_per_sm["bf16_tensor"] < TABLE["a10"].flop_per_clock_per_sm[
        "bf16_tensor"]


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


ROW = """
[gpu.x]
name = "X"
match = ["X"]
architecture = "hopper"
sm_count = 132
max_sm_clock_mhz = 1980
gpm = true
{extra}
[gpu.x.flop_per_clock_per_sm]
fp32 = 256
bf16_tensor = 4096
"""
ARCH = """
[architecture.hopper]
compute_capabilities = ["9.0"]
fp32_lanes_per_sm = 128
typical = "x"
"""


def problems_of(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "gpus.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_spec_table(path)
    assert str(path) in str(e.value)
    return dict(e.value.problems)


def test_identity_fields_load(tmp_path: Path) -> None:
    path = tmp_path / "gpus.toml"
    path.write_text(ROW.format(extra='compute_capability = "9.0"\npci_device_ids = [0x2330, '
                               '9009]\nvgpu = ["XM"]\npeak_factors = { low = 0.5, high = 3 }')
                    + ARCH)
    table = load_spec_table(path)
    x = table["x"]
    assert (x.pci_device_ids, x.compute_capability, x.vgpu) == ((0x2330, 9009), "9.0", ("XM",))
    assert x.peak_factors == (0.5, 3.0)
    assert table.architectures["hopper"].fp32_lanes_per_sm == {"9.0": 128}


def test_a_table_without_architectures_still_loads(tmp_path: Path) -> None:
    # A table written by hand for one GPU names its architecture freely.
    path = tmp_path / "gpus.toml"
    path.write_text(ROW.format(extra='compute_capability = "9.0"'))
    assert load_spec_table(path)["x"].compute_capability == "9.0"


@pytest.mark.parametrize(("extra", "key", "expected"), [
    ('pci_device_ids = ["0x2330"]', "gpu.x.pci_device_ids[0]", "16-bit PCI device ID"),
    ("pci_device_ids = [-1]", "gpu.x.pci_device_ids[0]", "from 0 to 0xFFFF"),
    ("pci_device_ids = [0x10000]", "gpu.x.pci_device_ids[0]", "from 0 to 0xFFFF"),
    ("pci_device_ids = [true]", "gpu.x.pci_device_ids[0]", "16-bit PCI device ID"),
    ("pci_device_ids = [0x2330, 0x2330]", "gpu.x.pci_device_ids[1]", "0x2330 is listed twice"),
    ("pci_device_ids = 0x2330", "gpu.x.pci_device_ids", "a list of 16-bit PCI device IDs"),
    ('compute_capability = "9"', "gpu.x.compute_capability", '"major.minor"'),
    ("compute_capability = 9.0", "gpu.x.compute_capability", '"major.minor"'),
    ('compute_capability = "sm_90"', "gpu.x.compute_capability", '"major.minor"'),
    ('compute_capability = "8.6"', "gpu.x.compute_capability",
     "one of architecture.hopper.compute_capabilities"),
    ('vgpu = ["H100 XM"]', "gpu.x.vgpu", "board codes without spaces"),
    ("peak_factors = { low = 2.0, high = 1.0 }", "gpu.x.peak_factors.low", "<= 1"),
    ("peak_factors = { low = 1.0, high = 100 }", "gpu.x.peak_factors.high", "<= 16"),
    ("peak_factors = 2", "gpu.x.peak_factors", "how far the row's figures may be off"),
])
def test_bad_identity_field_is_named(tmp_path: Path, extra: str, key: str,
                                     expected: str) -> None:
    problems = problems_of(tmp_path, ROW.format(extra=extra) + ARCH)
    assert key in problems, problems
    assert expected in problems[key]


def test_unknown_architecture_is_named(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, ROW.format(extra="").replace('"hopper"', '"hoper"')
                           + ARCH.replace('typical = "x"\n', ""))
    assert "one of the [architecture.<name>] tables: ['hopper']" in problems[
        "gpu.x.architecture"]


@pytest.mark.parametrize(("arch", "key", "expected"), [
    (ARCH.replace('["9.0"]', '["9"]'), "architecture.hopper.compute_capabilities[0]",
     '"major.minor"'),
    (ARCH.replace('["9.0"]', "[]"), "architecture.hopper.compute_capabilities", "non-empty"),
    (ARCH.replace("= 128", "= 100"), "architecture.hopper.fp32_lanes_per_sm", "64 or 128"),
    (ARCH.replace("= 128", '= { "8.0" = 64 }'), "architecture.hopper.fp32_lanes_per_sm.8.0",
     "listed in compute_capabilities"),
    (ARCH.replace('"x"', '"y"'), "architecture.hopper.typical", "row with architecture"),
    (ARCH + "first_year = 20\n", "architecture.hopper.first_year", "a year"),
    (ARCH + 'model_prefixes = ["HX1"]\n', "architecture.hopper.model_prefixes[0]",
     "one or two letters"),
    (ARCH + "bogus = 1\n", "architecture.hopper.bogus", "one of the known keys"),
    (ARCH + '[architecture.other]\ncompute_capabilities = ["9.0"]\nfp32_lanes_per_sm = 128\n',
     "architecture.other.compute_capabilities", "9.0 is also in architecture.hopper"),
    (ARCH.replace("= 128", "= 64"), "gpu.x.flop_per_clock_per_sm.fp32",
     "2 x the 64 FP32 lanes per SM of architecture.hopper"),
])
def test_bad_architecture_table_is_named(tmp_path: Path, arch: str, key: str,
                                         expected: str) -> None:
    problems = problems_of(tmp_path, ROW.format(extra='compute_capability = "9.0"') + arch)
    assert key in problems, problems
    assert expected in problems[key]


def test_a_vgpu_code_selects_one_row_only(tmp_path: Path) -> None:
    second = ROW.replace("[gpu.x", "[gpu.y").replace('name = "X"', 'name = "Y"')
    problems = problems_of(tmp_path, ROW.format(extra='vgpu = ["XM"]')
                           + second.format(extra='vgpu = ["xm"]') + ARCH)
    assert "xm is also in gpu.x.vgpu" in problems["gpu.y.vgpu"]
