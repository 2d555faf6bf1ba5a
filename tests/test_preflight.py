"""What ``flopledger run`` checks before it creates anything: every file in one pass,
the state directory, the summary file, the listen address."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, WebSettings, load_config
from agent.configfile import ConfigError, ConfigFilesError
from agent.preflight import (
    check_start,
    listen_problem,
    state_dir_problem,
    summary_problem,
    with_other_files,
)
from tests.paths import REPO

GPU_ROW = ('[gpu.x]\nname = "X"\nmatch = ["X"]\narchitecture = "hopper"\nsm_count = 132\n'
           "max_sm_clock_mhz = 1980\ngpm = true\n[gpu.x.flop_per_clock_per_sm]\n"
           "bf16_tensor = 4096\n")


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port of 127.0.0.1 with a listening socket on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def config_in(tmp_path: Path, **agent: Any) -> Config:
    base = Config()
    fields = {"state_dir": tmp_path / "var", "listen_host": "127.0.0.1", "listen_port": 0,
              **agent}
    return dataclasses.replace(base, agent=dataclasses.replace(base.agent, **fields))


def test_a_sound_start_creates_nothing(tmp_path: Path) -> None:
    checked = check_start(config_in(tmp_path, state_dir=tmp_path / "a" / "b" / "var"))
    assert "h100_sxm" in checked.specs
    assert checked.registry.regimes
    assert (checked.web, checked.channels) == (None, {})
    assert list(tmp_path.iterdir()) == []


def test_state_dir_that_cannot_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    assert state_dir_problem(tmp_path / "plain") == (
        f"a directory ({tmp_path}/plain exists and is not a directory)")
    assert state_dir_problem(tmp_path / "plain" / "var") == (
        f"a directory that can be created ({tmp_path}/plain is not a directory)")
    why = state_dir_problem(Path("/proc/flopledger-test/var"))
    assert why is not None
    assert why.startswith("a directory that can be created (/proc/flopledger-test/var: /proc:")
    assert state_dir_problem(tmp_path) is None
    assert state_dir_problem(tmp_path / "new" / "var") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_state_dir_without_write_permission(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        assert state_dir_problem(ro) == f"a writable directory ({ro}: Permission denied)"
        assert (state_dir_problem(ro / "var")
                == f"a directory that can be created ({ro}/var: {ro}: Permission denied)")
    finally:
        ro.chmod(0o700)


def test_summary_file(tmp_path: Path) -> None:
    state = tmp_path / "var"
    assert summary_problem(tmp_path / "s.json", state) is None
    assert summary_problem(state / "s.json", state) is None  # created with the state dir
    assert summary_problem(tmp_path, state) == f"a file path ({tmp_path} is a directory)"
    assert summary_problem(tmp_path / "none" / "s.json", state) == (
        f"a file in an existing directory (not found: {tmp_path}/none)")


def test_listen_address_in_use_unresolvable_or_not_ours(held_port: int) -> None:
    assert listen_problem("127.0.0.1", held_port) == (
        f"an address that is free (127.0.0.1:{held_port} is in use by another process)")
    why = listen_problem("no-such-host.invalid", 9947)
    assert why is not None
    assert why.startswith("a host name or address that resolves ('no-such-host.invalid' does "
                          "not: ")
    assert listen_problem("192.0.2.1", 9947) == (
        "an address of this machine (192.0.2.1:9947 is not one)")
    assert listen_problem("x" * 300, 80) is not None  # a label longer than DNS allows
    assert listen_problem("127.0.0.1", 0) is None


def test_every_file_and_the_machine_in_one_pass(tmp_path: Path, held_port: int) -> None:
    (tmp_path / "gpus.toml").write_text(GPU_ROW)
    (tmp_path / "th.toml").write_text("[scopes]\n")
    (tmp_path / "web.yml").write_text("rate_limit: 3\n")
    (tmp_path / "plain").write_text("x")
    config = config_in(tmp_path, spec_file=tmp_path / "gpus.toml",
                       thresholds_file=tmp_path / "th.toml", state_dir=tmp_path / "plain",
                       listen_port=held_port)
    config = dataclasses.replace(config, web=WebSettings(tmp_path / "web.yml"))
    with pytest.raises(ConfigFilesError) as e:
        check_start(config, "--listen")
    assert [err.path.name for err in e.value.errors] == [
        "th.toml", "web.yml", "<defaults and command line>"]
    machine = dict(e.value.errors[-1].problems)
    assert set(machine) == {"agent.state_dir", "--listen", "sim.gpu_model"}
    assert machine["sim.gpu_model"] == (
        f"a key of the GPU spec table {tmp_path}/gpus.toml (one of ['x'])")


def test_a_web_config_and_a_ca_file_that_do_not_load(tmp_path: Path) -> None:
    (tmp_path / "web.yml").write_text("basic_auth_users:\n  p: not-a-hash\n")
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    (tmp_path / "agent.toml").write_text(
        '[web]\nconfig_file = "web.yml"\n[[notify.alertmanager]]\nname = "am"\n'
        'url = "https://am.example:9093"\nca_file = "ca.pem"\n')
    config = load_config(tmp_path / "agent.toml")
    config = dataclasses.replace(config, agent=config_in(tmp_path).agent)
    with pytest.raises(ConfigFilesError) as e:
        check_start(config)
    assert [err.path.name for err in e.value.errors] == ["web.yml", "agent.toml"]
    assert e.value.errors[1].problems[0][0] == "notify"


def test_a_bad_agent_config_brings_the_problems_of_the_files_it_names(tmp_path: Path) -> None:
    (tmp_path / "th.toml").write_text("[scopes]\n")
    (tmp_path / "agent.toml").write_text(
        f'[agent]\ninterval_s = -1\nthresholds_file = "{tmp_path}/th.toml"\n')
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "agent.toml")
    combined = with_other_files(e.value)
    assert isinstance(combined, ConfigFilesError)
    assert [err.path.name for err in combined.errors] == ["agent.toml", "th.toml"]
    # Nothing to add: the same error back.
    (tmp_path / "th.toml").write_text((REPO / "agent" / "data" / "thresholds.toml").read_text())
    with pytest.raises(ConfigError) as again:
        load_config(tmp_path / "agent.toml")
    assert with_other_files(again.value) is again.value
    plain = ConfigError("x.toml", [("k", "v")])
    assert with_other_files(plain) is plain
