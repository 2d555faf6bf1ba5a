"""``flopledger run`` and ``flopledger gpus``, and what every failure exits with."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.main import build_parser
from agent.sources.base import SourceError
from tests.cli.conftest import Flopledger


def test_every_command_is_registered() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands is not None
    assert list(commands) == ["run", "gpus", "verify", "export", "runs", "show", "models",
                              "recover", "thresholds", "status", "rules", "replay", "report",
                              "estimate", "notifications"]


def test_gpus_lists_the_simulated_gpus_with_their_estimator(flopledger: Flopledger) -> None:
    status, out, _ = flopledger("gpus", "--source", "simulated")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["idx", "uuid", "name", "spec", "max", "MHz", "estimator"]
    assert len(lines) == 1 + 8 + 1
    assert "h100_sxm       1980  gpm-tensor (NVML GPM tensor activity x clock); peak 1070.5 " \
           "TFLOP/s" in lines[1]
    assert lines[-1] == "source: simulated"


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

    monkeypatch.setattr("agent.daemon.open_source", unavailable)
    status, _, err = flopledger("gpus", "--source", "nvml")
    assert status == 3
    assert err == "flopledger: NVML source requested but unavailable: no driver\n"
