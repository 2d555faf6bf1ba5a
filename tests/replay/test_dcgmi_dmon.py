"""The ``dcgmi dmon`` reader, and the replayed band against a published H100 run.

Fixtures follow dmon's output as ``dcgmi/DeviceMonitor.cpp`` of NVIDIA/DCGM prints it:
since DCGM 3 a left-aligned ``#Entity`` header of field tags padded to each field's
width (16 for the entity, 13 for SMACT/TENSO/SMCLK, 18 for POWER/GPUTL, 24 for TOTEC),
an ``ID`` units line (`` W`` over POWER, `` mJ`` over TOTEC), both again after every
14 rounds, ``N/A`` for unread values and a blank column for a field an entity lacks;
DCGM 2 right-aligned the same under ``# Entity`` / ``Id`` with a blank line before
each repeated header. ``tests/replay/data/dcgmi_dmon`` holds two real logs of that
format (see its README) and the run's published figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from agent.replay.formats import detect_format
from agent.replay.readers.base import ColumnChunk, ReplayError
from agent.replay.readers.dcgmi_dmon import DcgmiDmonReader, parse_header, split_values
from agent.sources.base import ActivityKind
from benchmarks import h100_dmon

DATA = Path(__file__).parent / "data" / "dcgmi_dmon"
LOGS = sorted(DATA.glob("dcgm_*.log"))
WIDTHS = {"#Entity": 16, "ID": 16, "SMACT": 13, "TENSO": 13, "SMCLK": 13, "THMMA": 13,
          "FP16A": 13, "POWER": 18, "GPUTL": 18, "TOTEC": 24}


def line(tags: tuple[str, ...], values: tuple[str, ...]) -> str:
    """A left-aligned dmon line: each value padded to its column's width plus two."""
    return "".join(v.ljust(WIDTHS[t]) for t, v in zip(tags, values, strict=True)) + "\n"


TAGS = ("#Entity", "SMACT", "TENSO", "SMCLK", "POWER", "GPUTL")
HEAD = line(TAGS, TAGS) + line(TAGS, ("ID", "", "", "", " W", ""))


def row(entity: str, *values: str) -> str:
    return line(TAGS, (entity, *values))


def read(path: Path, hint_s: float | None = 0.1) -> tuple[DcgmiDmonReader, list[ColumnChunk]]:
    reader = DcgmiDmonReader(path, hint_s)
    return reader, list(reader.chunks())


def write(tmp_path: Path, text: str, name: str = "dmon.log") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_real_log_every_row_read_as_published() -> None:
    """The stored H100 logs: every data row a sample, no bad row, and the means of what
    was read equal the means the run published for the same rows (N/A rows aside)."""
    published = {}
    for text in (DATA / "results.jsonl").read_text().splitlines():
        r = json.loads(text)
        c = r["config"]
        published[f"s{c['seq']}_b{c['batch']}_{'ckpt' if c['ckpt'] else 'nockpt'}"] = r
    assert LOGS
    for log in LOGS:
        reader, chunks = read(log)
        stats = published[log.stem.removeprefix("dcgm_")]
        n = stats["dcgm_tensor_active"]["n"]
        fields = {k: np.concatenate([c.fields[k] for c in chunks if c.rows])
                  for k in ("tensor_any_pct", "sm_util_pct", "sm_clock_mhz", "power_mw")}
        assert not [b for c in chunks for b in c.bad]
        assert sum(c.rows for c in chunks) == n + 1  # and the first round, N/A
        assert reader.header_lines == 1 + -(-(n + 1 - 15) // 14)
        assert [(g.key, g.activity_kind) for g in chunks[-1].gpus] == [
            ("index:0", ActivityKind.DCGM)]
        tensor = fields["tensor_any_pct"]
        assert math.isnan(tensor[0])
        assert np.nanmean(tensor) / 100 == pytest.approx(
            stats["dcgm_tensor_active"]["mean"], rel=1e-12)
        assert np.nanmean(fields["sm_util_pct"]) / 100 == pytest.approx(
            stats["dcgm_sm_active"]["mean"], rel=1e-12)
        assert np.mean(fields["sm_clock_mhz"][1:]) == pytest.approx(
            stats["dcgm_sm_clock_mhz"]["mean"], rel=1e-12)
        assert np.mean(fields["power_mw"][1:]) / 1000 == pytest.approx(
            stats["dcgm_power_w"]["mean"], rel=1e-12)


def test_header_again_units_line_and_na(tmp_path: Path) -> None:
    text = (HEAD + row("GPU 0", "N/A", "N/A", "1215", "346.932", "100")
            + row("GPU 0", "0.948", "0.643", "1170", "344.661", "100")
            + HEAD + row("GPU 0", "0.945", "0.590", "1260", "345.647", "94"))
    reader, chunks = read(write(tmp_path, text), 0.1)
    c = chunks[0]
    assert reader.header_lines == 2
    assert not c.bad
    assert not c.wall_clock
    assert c.timestamp_ns.tolist() == [0, 100_000_000, 200_000_000]
    assert c.line is not None
    assert c.line.tolist() == [3, 4, 7]
    assert math.isnan(c.fields["tensor_any_pct"][0])
    assert c.fields["tensor_any_pct"][1:].tolist() == pytest.approx([64.3, 59.0])
    assert c.fields["sm_util_pct"][1] == pytest.approx(94.8)
    assert c.fields["power_mw"].tolist() == pytest.approx([346932, 344661, 345647])
    assert c.fields["gpu_util_pct"].tolist() == [100, 100, 94]


def test_several_gpus_each_timed_by_its_own_rounds(tmp_path: Path) -> None:
    text = HEAD + "".join(row(f"GPU {g}", "0.5", "0.25", f"{1400 + g}", "300.0", "100")
                          for _ in range(3) for g in (0, 1, 3))
    _, chunks = read(write(tmp_path, text), 0.5)
    c = chunks[0]
    assert [g.key for g in c.gpus] == ["index:0", "index:1", "index:3"]
    assert [g.index for g in c.gpus] == [0, 1, 3]
    assert c.gpu.tolist() == [0, 1, 2] * 3
    assert c.timestamp_ns.tolist() == [t * 500_000_000 for t in (0, 0, 0, 1, 1, 1, 2, 2, 2)]


def test_mig_instances_after_their_gpu_are_part_of_it(tmp_path: Path) -> None:
    """dmon prints a GPU's instances right after it: they are what its row counts.
    Instance rows have no SM clock, power or utilization (blank columns)."""
    inst = "".join(row(e, "0.400", "0.200", "", "", "") for e in ("GPU-I 3", "GPU-CI 9"))
    text = HEAD + (row("GPU 0", "0.800", "0.500", "1755", "500.0", "100") + inst) * 2
    reader, chunks = read(write(tmp_path, text), 1.0)
    c = chunks[0]
    assert [g.key for g in c.gpus] == ["index:0"]
    assert c.rows == 2
    assert not c.bad
    assert reader.parts_skipped == 4


def test_mig_instances_without_their_gpu_are_accounted(tmp_path: Path) -> None:
    """With only instances in the log, each GPU instance is a device of its own and a
    compute instance after it is its part; the blank columns are unknown, not zero."""
    one = "".join(row(e, "0.400", "0.200", "", "", "")
                  for e in ("GPU-I 1", "GPU-CI 4", "GPU-I 2"))
    reader, chunks = read(write(tmp_path, HEAD + one * 3), 1.0)
    c = chunks[0]
    assert [g.key for g in c.gpus] == ["gpu-i:1", "gpu-i:2"]
    assert c.gpu.tolist() == [0, 1] * 3
    assert reader.parts_skipped == 3
    assert c.timestamp_ns.tolist() == [0, 0, 10**9, 10**9, 2 * 10**9, 2 * 10**9]
    assert np.isnan(c.fields["sm_clock_mhz"]).all()
    assert c.fields["tensor_any_pct"].tolist() == [20.0] * 6


def test_numeric_field_ids_in_the_header(tmp_path: Path) -> None:
    text = ("#Entity   1002   1004   100    155     203   156\n"
            "GPU 0     0.900  0.600  1410   400.5   99    123456789\n")
    _, chunks = read(write(tmp_path, text), 1.0)
    f = chunks[0].fields
    assert f["sm_util_pct"][0] == pytest.approx(90.0)
    assert f["tensor_any_pct"][0] == 60.0
    assert f["sm_clock_mhz"][0] == 1410
    assert f["power_mw"][0] == 400500.0
    assert f["gpu_util_pct"][0] == 99
    assert f["energy_mj"][0] == 123456789


def test_pipe_tags_energy_and_the_short_spellings(tmp_path: Path) -> None:
    tags = ("#Entity", "THMMA", "FP16A", "TOTEC")
    text = (line(tags, tags) + line(tags, ("ID", "", "", " mJ"))
            + line(tags, ("GPU 0", "0.700", "0.010", "31035686671")))
    f = read(write(tmp_path, text), 1.0)[1][0].fields
    assert f["tensor_hmma_pct"][0] == pytest.approx(70.0)
    assert f["fp16_pct"][0] == pytest.approx(1.0)
    assert f["energy_mj"][0] == 31035686671
    header = parse_header("#Entity  HMMA  DFMA  FP16  GRACT  GPUTL  POWINST  POWER")
    assert header is not None
    assert sorted(d.sample_field for d in header.used.values()) == [
        "fp16_pct", "gpu_util_pct", "power_mw", "tensor_dfma_pct", "tensor_hmma_pct"]
    # GPUTL over GRACT, POWER over POWINST, whatever their order
    assert {header.columns[c].tag for c in header.used} == {"HMMA", "DFMA", "FP16", "GPUTL",
                                                            "POWER"}


def test_dcgm2_right_aligned_with_blank_lines(tmp_path: Path) -> None:
    head = "# Entity  SMACT  TENSO  SMCLK\n      Id\n"
    rows = "    GPU 0  0.912  0.521   1980\n    GPU 0  0.900    N/A   1965\n"
    text = head + rows + "\n" + head + rows + "\ndmon was stopped due to receiving a signal.\n"
    reader, chunks = read(write(tmp_path, text), 1.0)
    c = chunks[0]
    assert reader.header_lines == 2
    assert not c.bad
    assert c.rows == 4
    assert c.fields["sm_clock_mhz"].tolist() == [1980, 1965, 1980, 1965]
    assert math.isnan(c.fields["tensor_any_pct"][1])


def test_blank_column_told_apart_from_a_shifted_value() -> None:
    header = parse_header(HEAD.splitlines()[0])
    assert header is not None
    blank_clock = row("GPU-I 1", "0.400", "0.200", "", "", "").rstrip("\n")
    assert split_values(header, blank_clock, 7) == ["0.400", "0.200", "", "", ""]
    shifted = "GPU 0   0.4   0.2            1410"
    assert "under no single header column" in str(split_values(header, shifted, 5))


def test_switches_links_and_cpus_are_not_gpus(tmp_path: Path) -> None:
    text = HEAD + row("GPU 0", "0.5", "0.5", "1400", "300.0", "100") + (
        "Switch 0        N/A\nGPU 0 LINK 3    N/A\nCPU 1           N/A\n")
    reader, chunks = read(write(tmp_path, text), 1.0)
    assert chunks[0].rows == 1
    assert not chunks[0].bad
    assert reader.other_entities == 3


def test_bad_rows_are_reported_with_their_line_numbers(tmp_path: Path) -> None:
    text = ("GPU 0   0.5  0.5  1400  300.0  100\n"  # 1: before any header
            + HEAD  # 2-3
            + row("GPU 0", "0.5", "0.5", "1400", "300.0", "100")  # 4
            + row("GPU 0", "0.5", "x.5", "1400", "300.0", "100")  # 5
            + row("GPU 0", "0.5", "0.5", "1400", "inf", "100")  # 6
            + row("GPU 0", "0.5", "0.5", "1400", "300.0", "100").rstrip("\n") + "  7\n"  # 7
            + "Error getting values information. Return -37\n"  # 8
            + row("GPU 0", "0.5", "0.5", "1410", "300.0", "100")  # 9
            + "GPU 0           0.5          0.5          14")  # 10, cut off
    _, chunks = read(write(tmp_path, text), 1.0)
    bad = {b.line: b.reason for c in chunks for b in c.bad}
    assert bad == {
        1: "a row before any dcgmi dmon header line",
        5: "bad number 'x.5' in column TENSO",
        6: "bad number 'inf' in column POWER",
        7: "6 values for 5 columns",
        8: "not a dcgmi dmon row",
        10: "truncated last line (no newline at end of file)",
    }
    assert [n for c in chunks if c.line is not None for n in c.line.tolist()] == [4, 9]


@pytest.mark.parametrize(("text", "hint", "message"), [
    ("GPU 0   0.5  0.5\nGPU 0   0.5  0.5\n", 1.0, "no dcgmi dmon header line"),
    ("", 1.0, "no dcgmi dmon header line"),
    ("#Entity   DRAMA   PCITX\nGPU 0     0.1     100\n", 1.0,
     "line 1: the dmon header names no field the replay reads"),
    (HEAD + row("GPU 0", "0.5", "0.5", "1400", "300.0", "100"), None,
     "line 3: dcgmi dmon prints no time: pass --interval-hint"),
    (HEAD.replace("  W  ", "  mW ", 1) + row("GPU 0", "0.5", "0.5", "1400", "300", "100"), 1.0,
     "line 2: column POWER in 'mW', expected 'W'"),
])
def test_files_that_cannot_be_replayed(tmp_path: Path, text: str, hint: float | None,
                                       message: str) -> None:
    with pytest.raises(ReplayError, match=message.replace("(", r"\(")):
        read(write(tmp_path, text), hint)


def test_format_detected_from_the_header(tmp_path: Path) -> None:
    for log in LOGS:
        assert detect_format(log) == "dcgmi-dmon"
    assert detect_format(write(tmp_path, "\n# Entity  SMACT\n      Id\n", "old.log")) \
        == "dcgmi-dmon"
    assert detect_format(write(tmp_path, "# HELP DCGM_FI_DEV_SM_CLOCK SM clock\n",
                               "dcgm.prom")) == "dcgm"


def test_the_cli_replays_a_dmon_log(tmp_path: Path) -> None:
    from agent.cli.main import main

    code = main(["replay", str(LOGS[0]), "--ledger", str(tmp_path / "l.sqlite"), "--quiet",
                 "--gpu-model", "h100_pcie", "--interval-hint", "0.1"])
    assert code == 0
    assert (tmp_path / "l.sqlite").exists()


# -- the published H100 run ------------------------------------------------------------

CONFIGS = {c.tag: c for c in h100_dmon.published()}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], h100_dmon.Row]:
    work = tmp_path_factory.mktemp("h100")
    out = {}
    for log in LOGS:
        config = CONFIGS[log.stem.removeprefix("dcgm_")]
        for declared in (False, True):
            band = h100_dmon.replay(log, declared, config.ckpt, work)
            out[(config.tag, declared)] = h100_dmon.Row(config, declared, band)
    print("\n" + h100_dmon.table(list(out.values())))
    return out


def test_published_figures_are_what_the_run_says() -> None:
    """model FLOP per token = 6 x matmul parameters + 12 x layers x heads x head_dim x
    sequence (the probe's convention); executed over model = 1 + 1/3 of the forward
    share under full recomputation."""
    c = CONFIGS["s2048_b8_nockpt"]
    matmul = 22 * (2048 * 2048 * 2 + 2048 * 256 * 2 + 3 * 2048 * 5632) + 32000 * 2048
    assert c.model_flops_per_token == 6 * matmul + 12 * 22 * 32 * 64 * 2048
    assert c.model_flop == pytest.approx(3.7386e16, rel=1e-4)
    assert CONFIGS["s2048_b8_ckpt"].executed_flops_per_token / c.executed_flops_per_token \
        == pytest.approx(9297723392 / 7498366976)


@pytest.mark.parametrize("tag", [log.stem.removeprefix("dcgm_") for log in LOGS])
def test_nothing_declared_band_holds_executed_and_model_flop(
        replayed: dict[tuple[str, bool], h100_dmon.Row], tag: str) -> None:
    """As a plain dmon log replays: the band holds what the GPU executed, and the model
    FLOP of the Guidelines' basis (recomputation undeclared is within the low bound)."""
    r = replayed[(tag, False)]
    assert r.holds(r.config.executed_flop), h100_dmon.table([r])
    assert r.holds(r.config.model_flop), h100_dmon.table([r])


@pytest.mark.parametrize("tag", [log.stem.removeprefix("dcgm_") for log in LOGS])
def test_declared_run_central_near_model_flop(
        replayed: dict[tuple[str, bool], h100_dmon.Row], tag: str) -> None:
    """Declared as it ran (bf16, full recomputation where checkpointed): central is
    model FLOP within 10%, and the band holds both figures."""
    r = replayed[(tag, True)]
    assert abs(r.error(r.config.model_flop)) < 10.0, h100_dmon.table([r])
    assert r.holds(r.config.model_flop), h100_dmon.table([r])
    assert r.holds(r.config.executed_flop), h100_dmon.table([r])
