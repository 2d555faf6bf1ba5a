"""The cluster service's config: every bad key named with the file and what was
expected, exit 2, nothing started."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest

from agent.cluster.config import load_cluster_config, parse_cluster_config
from agent.configfile import ConfigError
from tests.cli import conftest as cli_conftest
from tests.cli.conftest import Flopledger
from tests.paths import REPO

URL = "postgresql://flopledger@127.0.0.1:5432/flopledger"

flopledger = cli_conftest.flopledger


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        load_cluster_config(write(tmp_path, text))
    assert e.value.path == tmp_path / "cluster.toml"
    return dict(e.value.problems)


def test_the_example_config_reads_with_its_defaults() -> None:
    config = load_cluster_config(REPO / "configs" / "cluster.example.toml")
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 9948)
    assert config.evaluate_s == 30.0
    assert config.password_file is None
    assert config.password_env is None
    assert config.notify.channel_names == ()


def test_a_minimal_config_and_its_defaults(tmp_path: Path) -> None:
    secret = tmp_path / "pg.password"
    secret.write_text("s3cret\n")
    config = load_cluster_config(write(tmp_path, f"""
[cluster]
url = "{URL}"
password_file = "pg.password"
evaluate_s = 5
[models.chat]
base_models = ["base"]
role = "modifier"
"""))
    assert config.url == URL
    assert config.password_file == secret  # relative to the config's directory
    assert (config.listen_host, config.listen_port, config.evaluate_s) == ("0.0.0.0", 9948, 5)
    assert config.models["chat"].role == "modifier"


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, """
unknown = 1
[cluster]
url = "postgresql://flopledger:hunter2@db:5432/x"
password_file = "missing.password"
listen = "nowhere"
evaluate_s = 0
colour = "red"
[thresholds]
evaluate_every_s = 10
estimate = "optimistic"
[models.chat]
role = "owner"
[[notify.webhook]]
name = "hook"
url = "ftp://example"
secret_env = "HOOK_SECRET"
""")
    assert set(found) == {"unknown", "cluster.url", "cluster.password_file", "cluster.listen",
                          "cluster.evaluate_s", "cluster.colour", "thresholds.evaluate_every_s",
                          "thresholds.estimate", "models.chat.role", "notify.webhook[0].url"}
    assert "password" in found["cluster.url"]
    assert "hunter2" not in "".join(found.values())
    assert "not found" in found["cluster.password_file"]
    assert found["cluster.evaluate_s"] == "a number of seconds >= 0.5 and <= 3600"
    assert "cluster.evaluate_s" in found["thresholds.evaluate_every_s"]


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("", "cluster", "a [cluster] table with the store's url"),
    ("[cluster]\nevaluate_s = 3\n", "cluster.url", "the store's postgresql:// URL"),
    ('[cluster]\nurl = "mysql://db/x"\n', "cluster.url", "not a postgresql:// URL"),
    (f'[cluster]\nurl = "{URL}?password=x"\n', "cluster.url", "carries a password"),
    (f'[cluster]\nurl = "{URL}"\npassword_file = "a"\npassword_env = "B"\n',
     "cluster.password_env", "not to be set together with cluster.password_file"),
    (f'[cluster]\nurl = "{URL}"\npassword_env = "NOT A NAME"\n', "cluster.password_env",
     "the name of an environment variable"),
    (f'[cluster]\nurl = "{URL}"\nevaluate_s = nan\n', "cluster.evaluate_s", "a finite number"),
    (f'[cluster]\nurl = "{URL}"\n[models.m]\ndeclared_flop = 1e41\n',
     "models.m.declared_flop", "a number of FLOP >= 0 and <= 1e+40"),
])
def test_one_problem(tmp_path: Path, text: str, key: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert list(found) == [key]
    assert expected in found[key]


def test_the_parser_takes_a_parsed_document(tmp_path: Path) -> None:
    raw = tomllib.loads(f'[cluster]\nurl = "{URL}"\nlisten = "127.0.0.1:1"\n')
    config = parse_cluster_config(raw, tmp_path / "x.toml")
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 1)


def test_a_bad_config_exits_2_with_one_line_per_problem(
        tmp_path: Path, flopledger: Flopledger) -> None:
    path = write(tmp_path, '[cluster]\nurl = "mysql://x"\nevaluate_s = -1\n')
    status, out, err = flopledger("cluster", "--config", str(path))
    assert (status, out) == (2, "")
    assert f"configuration error in {path}: 2 problem(s)" in err
    assert "cluster.url: expected" in err
    assert "cluster.evaluate_s: expected" in err
    assert "Traceback" not in err


def test_bad_flags_and_start_checks_exit_2_before_anything_starts(
        tmp_path: Path, flopledger: Flopledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FL_TEST_PG_PASSWORD", raising=False)
    path = write(tmp_path, f'[cluster]\nurl = "{URL}"\npassword_env = "FL_TEST_PG_PASSWORD"\n')
    status, _, err = flopledger("cluster", "--config", str(path), "--listen", "nowhere",
                                "--exit-after", "0")
    assert status == 2
    assert "--listen: expected" in err
    assert "--exit-after: expected" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, _, err = flopledger("cluster", "--config", str(path), "--listen",
                                    f"127.0.0.1:{port}", "--exit-after", "1")
    assert status == 2
    assert "cluster.password_env: expected an environment variable that is set" in err
    assert f"--listen: expected an address that is free (127.0.0.1:{port} is in use" in err
    assert "Traceback" not in err


def test_a_missing_config_file_exits_2(tmp_path: Path, flopledger: Flopledger) -> None:
    status, _, err = flopledger("cluster", "--config", str(tmp_path / "nope.toml"))
    assert status == 2
    assert "nope.toml" in err
    assert "not found" in err
