"""Configuration errors name the file, the key and what is expected, all at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.configfile import ConfigError
from tests.paths import REPO

BAD = """
[agent]
interval_s = 0.01
source = "cuda"
listen = "localhost"
colour = "blue"

[estimator]
tensor_activity_uncertainty = 3

[[attribution.rules]]
run = "r"
category = "pretraining"
gpus = [0]

[agent.extra]

[sim]
scenario = "nope"
gpus = 0

[sim.workload]
compute_tensor_activity = 1.5
warp_speed = 9

[web]
config_file = "missing.yml"

[textfile]
path = "metrics.txt"
"""


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    keys = {key for key, _ in e.value.problems}
    assert keys >= {
        "agent.interval_s", "agent.source", "agent.listen", "agent.colour",
        "estimator.tensor_activity_uncertainty", "attribution.rules[0].category",
        "sim.scenario", "sim.gpus", "sim.workload.compute_tensor_activity",
        "sim.workload.warp_speed", "web.config_file", "textfile.path",
    }
    message = str(e.value)
    assert str(path) in message
    assert "agent.interval_s: expected a number of seconds >= 0.1" in message


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config.agent.interval_s == 1.0
    assert config.agent.listen_port == 9947
    assert config.sim.scenario == "pretrain-bf16"


def test_example_config_is_valid() -> None:
    config = load_config(REPO / "configs" / "agent.example.toml")
    assert config.sim.gpus == 8


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[agent\ninterval_s = 1")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_config(path)


def test_cli_exits_2_with_the_problems_on_stderr(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(BAD)
    result = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--config", str(path)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 2
    assert "agent.source: expected one of" in result.stderr
    assert str(path) in result.stderr
