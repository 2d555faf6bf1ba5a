"""Configuration errors name the file, the key and what is expected, all at once."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfigError, load_config, parse_config, parse_listen
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
    assert "agent.interval_s: expected a number of seconds >= 0.1 and <= 3600" in message


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


def problems_of(raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, Path("agent.toml"))
    return dict(e.value.problems)


# Every number of the agent config, with a value outside its range; NaN and inf for
# each are refused before any range check sees them.
OUT_OF_RANGE = [
    ("agent", "interval_s", 7200, "a number of seconds >= 0.1 and <= 3600"),
    ("agent", "integrate_every", 10**9, "an integer number of ticks >= 1 and <= 100000"),
    ("agent", "checkpoint_s", 0.1, "a number of seconds >= 0.5 and <= 86400"),
    ("agent", "record_s", 1e7, "a number of seconds >= 0.5 and <= 86400"),
    ("agent", "export_runs_for_s", -1, "a number of seconds >= 0 and <= 31622400"),
    ("agent", "exit_after_s", 0, "a number of seconds > 0 and <= 3162240000"),
    ("estimator", "tensor_activity_uncertainty", 1.5, "a fraction >= 0 and <= 1"),
    ("estimator", "utilization_efficiency", -0.1, "a fraction >= 0 and <= 1"),
    ("estimator", "max_gap_s", 1e6, "a number of seconds > 0 and <= 86400"),
    ("sim", "gpus", 0, "an integer >= 1 and <= 64"),
    ("sim", "seed", -1, "an integer >= 0 and <= 9223372036854775807"),
    ("sim", "time_scale", 1e9, "a number (0: as fast as possible) >= 0 and <= 1000000"),
    ("sim", "epoch_unix_s", -5, "a wall-clock time in seconds since 1970 >= 0"),
    ("thresholds", "evaluate_every_s", 0.01, "a number of seconds >= 0.1 and <= 86400"),
    ("thresholds", "window_s", 1e12, "a number of seconds >= 1 and <= 31622400"),
    ("thresholds", "horizon_days", 0, "a number of days > 0 and <= 3660"),
    ("textfile", "every_s", -3, "a number of seconds > 0 and <= 86400"),
    ("attribution", "refresh_s", 1e300, "a number of seconds > 0 and <= 86400"),
    ("notify", "poll_s", 1e5, "a number of seconds >= 0.05 and <= 3600"),
]


@pytest.mark.parametrize(("table", "key", "value", "expected"), OUT_OF_RANGE,
                         ids=[f"{t}.{k}" for t, k, _, _ in OUT_OF_RANGE])
def test_every_number_has_a_range_stated_in_the_message(table: str, key: str, value: float,
                                                        expected: str) -> None:
    raw: dict[str, Any] = {table: {key: value}}
    if key == "time_scale":
        raw["sim"]["virtual_time"] = True
    assert problems_of(raw)[f"{table}.{key}"].startswith(expected)
    for bad in (math.nan, math.inf, -math.inf):
        assert problems_of({table: {key: bad}})[f"{table}.{key}"] == (
            "a finite number (nan and inf mean nothing here)")


def test_nan_anywhere_is_refused_with_its_key() -> None:
    problems = problems_of({"thresholds": {"levels": [0.5, math.nan]},
                            "sim": {"jobs": [{"gpus": [0], "start_s": math.nan}],
                                    "workload": {"compute_s": math.inf}},
                            "models": {"m": {"declared_flop": {"low": 1, "central": 2,
                                                               "high": math.inf}}}})
    assert set(problems) == {"thresholds.levels[1]", "sim.jobs[0].start_s",
                             "sim.workload.compute_s", "models.m.declared_flop.high"}


def test_absurd_values_whose_parsers_live_below_are_refused_too() -> None:
    problems = problems_of({"sim": {"gpus": 2, "workload": {"compute_s": 1e300,
                                                            "clock_mhz": 5e4},
                                    "jobs": [{"gpus": [0, 2], "start_s": 1e300}]},
                            "models": {"m": {"declared_flop": 1e300}}})
    assert problems == {
        "sim.workload.compute_s": "a number of seconds >= 0 and <= 86400",
        "sim.workload.clock_mhz": "a number of MHz >= 0 and <= 10000",
        "sim.jobs[0].start_s": "a number of seconds >= 0 and <= 316224000",
        "sim.jobs[0].gpus": "GPU indices below sim.gpus (2: 0..1)",
        "models.m.declared_flop": "a number of FLOP >= 0 and <= 1e+40",
    }


@pytest.mark.parametrize(("agent", "estimator", "key", "expected"), [
    ({"interval_s": 10, "checkpoint_s": 20}, {}, "agent.interval_s",
     "a number of seconds <= estimator.max_gap_s (5); a longer interval would count every "
     "interval as a gap"),
    ({"interval_s": 1}, {"max_gap_s": 0.5}, "agent.interval_s",
     "a number of seconds <= estimator.max_gap_s (0.5)"),
    ({"interval_s": 2, "checkpoint_s": 1}, {}, "agent.interval_s",
     "a number of seconds <= agent.checkpoint_s (1)"),
    ({"checkpoint_s": 30, "record_s": 10}, {}, "agent.record_s",
     "a number of seconds >= agent.checkpoint_s (30): a record closes at a checkpoint"),
])
def test_settings_that_contradict_each_other(agent: dict[str, float], estimator: dict[str, float],
                                             key: str, expected: str) -> None:
    assert problems_of({"agent": agent, "estimator": estimator})[key].startswith(expected)


def test_consistent_settings_at_the_edges_pass() -> None:
    config = parse_config({"agent": {"interval_s": 5, "checkpoint_s": 5, "record_s": 5,
                                     "integrate_every": 100000},
                           "estimator": {"max_gap_s": 5}})
    assert (config.agent.interval_s, config.agent.integrate_every) == (5.0, 100000)


@pytest.mark.parametrize(("text", "parsed"), [
    ("0.0.0.0:9947", ("0.0.0.0", 9947)), (":9947", ("0.0.0.0", 9947)),
    ("[::1]:80", ("::1", 80)), ("localhost:0", ("localhost", 0)),
    ("localhost", None), ("host:", None), ("host:65536", None), ("host:-1", None),
    ("host:\u0663", None), ("ho st:80", None), ("host:99999999999999999999", None),
])
def test_parse_listen(text: str, parsed: tuple[str, int] | None) -> None:
    assert parse_listen(text.encode().decode("unicode_escape")) == parsed


def test_a_bad_config_keeps_what_could_be_read(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\ninterval_s = nan\nspec_file = "gpus.toml"\n[sim]\ngpus = 3\n')
    with pytest.raises(AgentConfigError) as e:
        load_config(path)
    assert e.value.partial.agent.spec_file == Path("gpus.toml")
    assert e.value.partial.agent.interval_s == 1.0
    assert e.value.partial.sim.gpus == 3


def test_path_values_are_checked(tmp_path: Path) -> None:
    problems = problems_of({"agent": {"state_dir": "", "spec_file": 3, "summary_file": " "},
                            "web": {"config_file": ""}})
    assert problems["agent.state_dir"] == "a directory path (a non-empty path)"
    assert problems["agent.spec_file"] == "a path to a GPU spec table"
    assert problems["agent.summary_file"] == "a file path (a non-empty path)"
    assert problems["web.config_file"].startswith("the path of a web-config YAML file")


def test_cli_reports_every_file_in_one_pass(tmp_path: Path) -> None:
    (tmp_path / "gpus.toml").write_text('[gpu.x]\nname = "X"\n')
    (tmp_path / "th.toml").write_text("[scopes]\n")
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nrecord_s = nan\nspec_file = "{tmp_path}/gpus.toml"\n'
                    f'thresholds_file = "{tmp_path}/th.toml"\nstate_dir = "{tmp_path}/var"\n')
    result = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--config", str(path),
                             "--interval", "0.01", "--listen", "127.0.0.1:0"],
                            capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "configuration error in" in line]
    assert lines == [
        f"flopledger: configuration error in {path}: 1 problem(s)",
        "flopledger: configuration error in command line: 1 problem(s)",
        f"flopledger: configuration error in {tmp_path}/gpus.toml: 6 problem(s)",
        f"flopledger: configuration error in {tmp_path}/th.toml: 1 problem(s)",
    ]
    assert "agent.record_s: expected a finite number" in result.stderr
    assert "--interval: expected a number of seconds >= 0.1" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.toml", "gpus.toml", "th.toml"]


def test_the_band_allowances_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[estimator]\ncounter_error_low = 0.03\ncounter_error_high = 0.08\n"
                    "undeclared_recompute_max = 1.5\nnon_model_share_max = 0.2\n")
    e = load_config(path).estimator
    assert (e.counter_error_low, e.counter_error_high) == (0.03, 0.08)
    assert (e.undeclared_recompute_max, e.non_model_share_max) == (1.5, 0.2)
    path.write_text("[estimator]\ncounter_error_low = 0.9\ncounter_error_high = -1\n"
                    "undeclared_recompute_max = 0.5\nnon_model_share_max = 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert {key for key, _ in err.value.problems} == {
        "estimator.counter_error_low", "estimator.counter_error_high",
        "estimator.undeclared_recompute_max", "estimator.non_model_share_max"}
