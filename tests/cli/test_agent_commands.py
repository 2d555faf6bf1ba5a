"""``flopledger run`` and ``flopledger gpus``, and what every failure exits with."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from agent.cli.main import build_parser
from agent.sources.base import SourceError
from tests.cli.conftest import Flopledger
from tests.fake_nvml import Scenario
from tests.fake_nvml import fixtures as fake_fixtures
from tests.fake_nvml.fixtures import FakeNvml

fake_nvml = fake_fixtures.fake_nvml


def test_every_command_is_registered() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands is not None
    assert list(commands) == ["run", "gpus", "verify", "export", "runs", "show", "models",
                              "recover", "thresholds", "status", "rules", "replay", "report",
                              "estimate", "notifications", "attest", "gate", "cluster"]


def test_gpus_lists_the_simulated_gpus_with_their_estimator(flopledger: Flopledger) -> None:
    status, out, _ = flopledger("gpus", "--source", "simulated")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["idx", "uuid", "name", "spec", "basis", "max", "MHz",
                                "estimator"]
    assert len(lines) == 1 + 8 + 1
    assert "h100_sxm    table        1980  gpm-tensor (NVML GPM tensor activity x clock); " \
           "peak 1070.5 TFLOP/s" in lines[1]
    assert "WARNING" not in out
    assert lines[-1] == "source: simulated"


def test_gpus_says_which_gpus_are_not_in_the_spec_table(
        fake_nvml: FakeNvml, flopledger: Flopledger, caplog: pytest.LogCaptureFixture) -> None:
    fake_nvml.use(Scenario()
                  .gpu("GPU-0", name="NVIDIA H100 80GB HBM3", sm_clock=1980, max_sm_clock=1980)
                  .gpu("GPU-1", name="NVIDIA X999", sm_clock=2100, max_sm_clock=2100)
                  .gpu("GPU-2", name="NVIDIA X999", sm_clock=2100, max_sm_clock=2100))
    with caplog.at_level(logging.WARNING, logger="agent.daemon"):
        status, out, _ = flopledger("gpus", "--source", "nvml")
    assert status == 0
    rows = {line.split()[1]: line for line in out.splitlines()[1:4]}
    assert re.search(r"  h100_sxm +table +1980  ", rows["GPU-0"])
    assert "NOT IN THE SPEC TABLE" not in rows["GPU-0"]
    for uuid in ("GPU-1", "GPU-2"):
        assert re.search(r"  \S+ +(derived|ceiling) +2100  ", rows[uuid]), rows[uuid]
        assert re.search(r"NOT IN THE SPEC TABLE, (derived|ceiling) spec: \S", rows[uuid])
    assert "WARNING: 2 of 3 GPU(s) not in the spec table" in out
    # One log line per GPU without a row, naming its basis and reason.
    warned = [r.getMessage() for r in caplog.records if r.name == "agent.daemon"
              and "not in the spec table" in r.getMessage()]
    assert len(warned) == 2
    assert all("NVIDIA X999" in w and "band widened" in w for w in warned)


def test_gpus_resolve_shows_row_basis_factors_and_reason(flopledger: Flopledger) -> None:
    status, out, err = flopledger("gpus", "--resolve", "NVIDIA H100 80GB HBM3",
                                  "--resolve", "NVIDIA X999")
    assert (status, err) == (0, "")
    known, unknown = (dict(line.split(maxsplit=1) for line in block.splitlines())
                      for block in out.split("\n\n")[:2])
    assert known["name"] == "NVIDIA H100 80GB HBM3"
    assert known["row"].startswith("h100_sxm (")
    assert known["basis"] == "table"
    assert known["reason"] == "-"
    assert unknown["basis"].startswith("ceiling  (NOT IN THE SPEC TABLE")
    assert unknown["reason"] != "-"
    assert unknown["factors"].startswith("low x")
    # The high bound of the peak is never zero for a GPU the table lacks.
    high = float(unknown["peak"].split("..")[1].split("]")[0])
    assert high > 0
    assert out.splitlines()[-1].startswith("spec table: ")


def test_gpus_resolve_rejects_a_bad_pci_device_id(flopledger: Flopledger) -> None:
    with pytest.raises(SystemExit) as exit_info:
        flopledger("gpus", "--resolve", "NVIDIA X999", "--pci-device-id", "0x1ffff")
    assert exit_info.value.code == 2


def test_gpus_reads_the_sim_settings_of_the_config(tmp_path: Path,
                                                   flopledger: Flopledger) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nsource = "simulated"\n[sim]\ngpus = 2\ngpu_model = "a100_80gb"\n')
    status, out, _ = flopledger("gpus", "--config", str(config))
    assert status == 0
    assert len(out.splitlines()) == 1 + 2 + 1
    assert "a100_80gb" in out


@pytest.mark.parametrize(("args", "problem"), [
    (("--interval", "0.01"), "--interval: expected a number of seconds >= 0.1"),
    (("--listen", "nowhere"), '--listen: expected "host:port"'),
    (("--config", "/nonexistent/agent.toml"), "expected an existing, readable config file"),
])
def test_run_with_a_bad_setting_exits_2_before_starting(args: tuple[str, ...], problem: str,
                                                        flopledger: Flopledger) -> None:
    status, out, err = flopledger("run", "--source", "simulated", *args)
    assert (status, out) == (2, "")
    assert err.startswith("flopledger: configuration error in ")
    assert problem in err


def test_a_source_that_cannot_start_exits_3(monkeypatch: pytest.MonkeyPatch,
                                            flopledger: Flopledger) -> None:
    def unavailable(*_args: object) -> None:
        raise SourceError("NVML source requested but unavailable: no driver")

    monkeypatch.setattr("agent.devices.open_source", unavailable)
    status, _, err = flopledger("gpus", "--source", "nvml")
    assert status == 3
    assert err == "flopledger: NVML source requested but unavailable: no driver\n"
