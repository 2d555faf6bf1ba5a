"""``flopledger replay`` end to end: CLI, format detection, ledger, windows, mapping
files, resumption, progress and summary."""

from __future__ import annotations

import argparse
import io
import itertools
from pathlib import Path

import pytest

from agent.cli.replay import add_replay_parser
from agent.configfile import ConfigError
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from agent.ledger.verify import verify_ledger
from agent.replay.engine import ReplayEngine, ReplayOptions, detect_format
from agent.replay.summary import Progress
from agent.simrun import record_trace
from agent.sources.scenarios import SCENARIOS
from tests.replay.recordings import busy_smi_log, smi_uuid
from tests.replay.test_dcgm import recording as dcgm_recording

U0 = "GPU-5b4e07f6-3a86-4340-039d-25f2a83cdc43"
U1 = "GPU-c2f76b33-7953-256e-8f33-1343419b1a1c"
HEADER = ("timestamp, index, uuid, name, utilization.gpu [%], clocks.current.sm [MHz], "
          "power.draw [W], clocks_event_reasons.active\n")


def smi_log(seconds: int, start: int = 0, gpus: tuple[str, ...] = (U0, U1),
            header: bool = True) -> str:
    """nvidia-smi -l 1 output: an H100 and an A100 (format of the fixtures in
    tests/replay/test_nvidia_smi.py)."""
    names = {U0: "NVIDIA H100 80GB HBM3", U1: "NVIDIA A100-SXM4-80GB"}
    clock = {U0: 1700, U1: 1200}  # below each one's maximum (1980, 1410 MHz)
    out = [HEADER] if header else []
    for t in range(start, start + seconds):
        for i, u in enumerate(gpus):
            out.append(f"2026/11/28 {12 + t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}.{i:03d}, "
                       f"{i}, {u}, {names[u]}, {80 + t % 20} %, {clock[u] + t % 200} MHz, "
                       f"{400 + t % 100}.50 W, 0x0000000000000000\n")
    return "".join(out)


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="flopledger")
    add_replay_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["replay", *argv])
    status: int = args.func(args)
    return status


def totals(path: Path, node: str = "replay") -> dict[str, tuple[int, ...]]:
    ledger = Ledger(path, node, load_or_create_key(path.with_name(path.name + ".key")))
    try:
        return {k: (*t.flop, t.energy_mj, t.samples) for k, t in ledger.totals["gpu"].items()}
    finally:
        ledger.close()


def test_cli_replays_into_a_verifiable_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    log = tmp_path / "gpu.csv"
    log.write_text(smi_log(600) + "garbage\n")
    ledger = tmp_path / "out" / "ledger.sqlite"
    assert cli(str(log), "--ledger", str(ledger), "--node", "gpu-7", "--record-s", "120",
               "--quiet") == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "rows read      1,202" in out
    assert f"{log}:1202: not a data line" in out
    assert "total          FLOP" in out
    assert (tmp_path / "out" / "ledger.sqlite.key").exists()
    report = verify_ledger(ledger)
    assert report.problems == []
    t = totals(ledger, "gpu-7")
    assert set(t) == {U0, U1}
    assert t[U0][4] == t[U1][4] == 600
    # Sealed in windows of 120 s of recorded time, tiling each GPU's time.
    db = Ledger(ledger, "gpu-7", load_or_create_key(ledger.with_name("ledger.sqlite.key")))
    records = sorted(db.records(), key=lambda r: (r.gpu_uuid, r.start_ns))
    db.close()
    for _, group in itertools.groupby(records, key=lambda r: r.gpu_uuid):
        windows = list(group)
        assert len(windows) == 5
        assert all(a.end_ns == b.start_ns for a, b in itertools.pairwise(windows))


def test_cli_says_which_gpus_are_not_in_the_spec_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "gpu.csv"
    log.write_text(busy_smi_log([("NVIDIA H100 80GB HBM3", 1980), ("NVIDIA X999", 2000)], 60))
    assert cli(str(log), "--ledger", str(tmp_path / "l.sqlite"), "--quiet") == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("    GPU-")}
    known, unknown = rows[smi_uuid(0)], rows[smi_uuid(1)]
    assert " h100_sxm " in known
    assert " table " in known
    assert " ceiling " in unknown
    high = unknown.split("..")[-1].strip(" ]")
    assert float(high) > 0
    assert "WARNING: 1 of 2 GPU(s) have no row in the spec table (1 ceiling)" in out
    assert out.count("NOT IN THE SPEC TABLE: peak from a ceiling spec, band widened (") == 1


def test_replaying_again_or_a_continuation_never_double_counts(tmp_path: Path) -> None:
    first, rest = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text(smi_log(300))
    rest.write_text(smi_log(300, start=300))
    whole = tmp_path / "whole.csv"
    whole.write_text(smi_log(600))
    ledger = tmp_path / "l.sqlite"
    ReplayEngine(ledger, ReplayOptions()).run([first])
    again = ReplayEngine(ledger, ReplayOptions()).run([first])
    assert again.records == 0
    assert again.skipped_in_ledger == 600
    ReplayEngine(ledger, ReplayOptions()).run([rest])
    ReplayEngine(tmp_path / "w.sqlite", ReplayOptions()).run([whole])
    a, w = totals(ledger), totals(tmp_path / "w.sqlite")
    assert a.keys() == w.keys()
    for k in a:
        assert a[k][4] == w[k][4]  # every sample once
        assert a[k][2] >= w[k][2]  # the seam between the runs is a gap (high only)


def test_rotated_logs_equal_one_log(tmp_path: Path) -> None:
    (tmp_path / "gpu.csv.1").write_text(smi_log(200))
    (tmp_path / "gpu.csv").write_text(smi_log(200, start=200))
    (tmp_path / "all.csv").write_text(smi_log(400))
    ReplayEngine(tmp_path / "a.sqlite", ReplayOptions()).run(
        [tmp_path / "gpu.csv.1", tmp_path / "gpu.csv"])
    ReplayEngine(tmp_path / "b.sqlite", ReplayOptions()).run([tmp_path / "all.csv"])
    assert totals(tmp_path / "a.sqlite") == totals(tmp_path / "b.sqlite")


def test_a_gpu_appearing_mid_file_is_accounted_from_its_first_sample(tmp_path: Path) -> None:
    log = tmp_path / "late.csv"
    log.write_text(smi_log(100, gpus=(U0,)) + smi_log(100, start=100, header=False))
    alone = tmp_path / "alone.csv"
    alone.write_text(HEADER + "".join(line for line in smi_log(100, start=100).splitlines(True)
                                      if U1 in line))
    s = ReplayEngine(tmp_path / "a.sqlite", ReplayOptions(block_bytes=4096,
                                                          interval_hint_s=1.0)).run([log])
    assert s.gpus[U1].totals.samples == 100
    ReplayEngine(tmp_path / "b.sqlite", ReplayOptions(interval_hint_s=1.0)).run([alone])
    assert totals(tmp_path / "a.sqlite")[U1] == totals(tmp_path / "b.sqlite")[U1]


def test_formats_are_detected(tmp_path: Path) -> None:
    smi = tmp_path / "a"
    smi.write_text(smi_log(2))
    dcgm = tmp_path / "b"
    dcgm.write_text(dcgm_recording(2))
    prom = tmp_path / "c"
    prom.write_text('{"status":"success","data":{"resultType":"matrix","result":[]}}')
    trace = tmp_path / "d"
    record_trace(trace, SCENARIOS["pretrain-bf16"], 3, n_gpus=1)
    junk = tmp_path / "e"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert [detect_format(p) for p in (smi, dcgm, prom, trace)] == [
        "nvidia-smi", "dcgm", "prom-range", "trace"]
    assert cli(str(junk), "--ledger", str(tmp_path / "l.sqlite"), "--quiet") == 1


def test_a_file_that_cannot_be_replayed_fails_the_replay_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.csv"
    good.write_text(smi_log(30))
    assert cli(str(tmp_path / "missing.csv"), str(good), "--ledger",
               str(tmp_path / "l.sqlite"), "--quiet") == 1
    out, err = capsys.readouterr()
    assert "ERROR" in out
    assert "missing.csv" in out
    # The other files are still read (the summary shows them)...
    assert "30 samples" in out
    # ...but nothing is written: a later replay with the file found would otherwise
    # skip its samples as already in the ledger.
    assert "missing.csv: cannot open" in err
    assert "nothing written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv"]


MAPPING = f"""
[runs.llama]
model = "llama-70b"
category = "pre-training"
precision = "fp8"

[runs."k8s-ml/train-0"]
model = "from-labels"
category = "fine-tuning"

[[gpu]]
uuid = "{U0}"
run = "llama"
from = 2026-11-28T12:01:00Z

[[gpu]]
index = 1
run = "eval-1"
category = "evaluation"
until = 2026-11-28T12:02:00Z
"""


def test_mapping_file_assigns_runs_by_gpu_and_time(tmp_path: Path) -> None:
    log = tmp_path / "gpu.csv"
    log.write_text(smi_log(240))
    mapping = tmp_path / "runs.toml"
    mapping.write_text(MAPPING)
    s = ReplayEngine(tmp_path / "l.sqlite", ReplayOptions(mapping=mapping)).run([log])
    assert set(s.runs) == {"llama", "eval-1", "unattributed"}
    samples = {r: b.samples for r, b in s.runs.items()}
    assert samples == {"llama": 180, "eval-1": 120, "unattributed": 180}
    db = Ledger(tmp_path / "l.sqlite", "replay", load_or_create_key(tmp_path / "l.sqlite.key"))
    runs = db.runs()
    assert (runs["llama"].model, runs["llama"].category) == ("llama-70b", "pre-training")
    assert runs["eval-1"].category == "evaluation"
    llama = [r for r in db.records() if r.run == "llama"]
    assert {r.assumptions["precision"] for r in llama} == {"fp8"}
    db.close()


def test_mapping_metadata_applies_to_runs_named_by_labels(tmp_path: Path) -> None:
    path = tmp_path / "dcgm.prom"
    path.write_text(dcgm_recording(10))
    mapping = tmp_path / "runs.toml"
    mapping.write_text(MAPPING)
    ReplayEngine(tmp_path / "l.sqlite", ReplayOptions(mapping=mapping)).run([path])
    db = Ledger(tmp_path / "l.sqlite", "replay", load_or_create_key(tmp_path / "l.sqlite.key"))
    assert db.runs()["k8s-ml/train-0"].category == "fine-tuning"
    db.close()


def test_a_bad_mapping_file_reports_every_problem(tmp_path: Path) -> None:
    mapping = tmp_path / "bad.toml"
    mapping.write_text('[[gpu]]\nrun = ""\nfrom = "soon"\ncolour = 1\n'
                       '[[gpu]]\nall = true\nrun = "x"\ncategory = "party"\n')
    with pytest.raises(ConfigError) as e:
        ReplayEngine(tmp_path / "l.sqlite", ReplayOptions(mapping=mapping))
    keys = [k for k, _ in e.value.problems]
    assert {"gpu[0].run", "gpu[0].from", "gpu[0].colour", "gpu[0]"} <= set(keys)
    assert any(k.startswith("gpu[1]") for k in keys)


def test_gpu_model_for_unnamed_gpus_and_mig_instances(tmp_path: Path) -> None:
    log = tmp_path / "i.csv"
    log.write_text("timestamp, index, utilization.gpu [%]\n" + "".join(
        f"2026/11/28 12:00:{t:02d}.000, 0, 90 %\n" for t in range(30)))
    s = ReplayEngine(tmp_path / "a.sqlite", ReplayOptions(gpu_model="a100_80gb")).run([log])
    assert s.gpus["index:0"].spec == "a100_80gb"
    assert s.gpus["index:0"].totals.flop.central > 0
    with pytest.raises(Exception, match="no GPU model 'z9'"):
        ReplayEngine(tmp_path / "b.sqlite", ReplayOptions(gpu_model="z9"))
    mig = tmp_path / "mig.prom"
    mig.write_text("".join(
        f"# scrape {1_795_000_000 + 15 * k}\n"
        f'DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{gpu="0",UUID="{U1}",modelName="NVIDIA A100-SXM4-80GB",'
        f'GPU_I_PROFILE="3g.40gb",GPU_I_ID="2"}} 0.5\n' for k in range(10)))
    s = ReplayEngine(tmp_path / "c.sqlite", ReplayOptions()).run([mig])
    assert s.gpus[f"{U1}/mig:2"].spec == "a100_80gb/3g"


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_is_throttled_and_plain_text() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    progress = Progress(1000, stream, clock=clock)
    for step in range(100):
        clock.t = step * 0.01  # 100 updates in one second
        progress.update(step * 10, 2, step * 10)
    assert progress.updates == 4
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("replay ")
    assert "rows/s" in lines[-1]
    assert "ETA" in lines[-1]


def test_progress_on_stderr_unless_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    log = tmp_path / "gpu.csv"
    log.write_text(smi_log(50))
    assert cli(str(log), "--ledger", str(tmp_path / "l.sqlite")) == 0
    err = capsys.readouterr().err
    assert "replay 100.0%" in err
    assert "2 GPUs" in err
