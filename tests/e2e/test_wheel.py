"""The wheel, installed as the deployment files expect: built from a copy of the source
tree, installed (not editable) into a fresh virtual environment laid out as the systemd
unit's install steps say, under a temporary root, and run from an empty directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.paths import REPO
from tests.test_deploy import UNIT, by_kind, k8s_docs, unit_entries

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# What the program reads at run time, and what an operator takes from the package
# (rules for Prometheus, the dashboard for Grafana): path in the wheel -> in the source.
DATA_FILES = {
    "agent/data/gpus.toml": REPO / "agent" / "data" / "gpus.toml",
    "agent/data/thresholds.toml": REPO / "agent" / "data" / "thresholds.toml",
    "agent/data/release.toml": REPO / "agent" / "data" / "release.toml",
    "exporters/prometheus/alert_rules.yml": REPO / "exporters/prometheus/alert_rules.yml",
    "exporters/prometheus/recording_rules.yml":
        REPO / "exporters/prometheus/recording_rules.yml",
    "exporters/prometheus/threshold_rules.yml":
        REPO / "exporters/prometheus/threshold_rules.yml",
    "exporters/grafana/flopledger.json": REPO / "exporters/grafana/flopledger.json",
}
# The source tree the wheel is built from (copied, so the build writes its build/ and
# egg-info there rather than into the working tree).
SOURCES = ("pyproject.toml", "README.md", "agent", "exporters")
BUILD_TIMEOUT_S = 300
INSTALL_TIMEOUT_S = 600


@dataclass(frozen=True)
class Layout:
    """Where the unit's install steps put things, as absolute paths on the host."""

    venv: str  # python3 -m venv <venv>
    command: str  # ln -s <venv>/bin/flopledger <command>; the unit's ExecStart binary
    state_dir: str  # /var/lib/<StateDirectory>
    config: str  # ExecStart's --config


def unit_layout() -> Layout:
    text = UNIT.read_text()
    service = unit_entries(text)["Service"]
    exec_start = service["ExecStart"][0].split()
    venv = re.search(r"^#\s+python3 -m venv (\S+)$", text, re.MULTILINE)
    link = re.search(r"^#\s+ln -s (\S+) (\S+)$", text, re.MULTILINE)
    assert venv, "the unit's install steps lost `python3 -m venv`"
    assert link, "the unit's install steps lost `ln -s`"
    assert link[1] == f"{venv[1]}/bin/flopledger"
    assert link[2] == exec_start[0], "ExecStart does not run the linked command"
    [state] = service["StateDirectory"]
    return Layout(venv=venv[1], command=exec_start[0], state_dir=f"/var/lib/{state}",
                  config=exec_start[exec_start.index("--config") + 1])


@dataclass(frozen=True)
class Installed:
    wheel: Path
    root: Path  # stands for / of the host
    layout: Layout

    def at(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    @property
    def python(self) -> Path:
        return self.at(self.layout.venv) / "bin" / "python"


def run(argv: list[str | Path], *, cwd: Path, timeout_s: float,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout_s, check=False)
    assert result.returncode == 0, (f"{argv} exited {result.returncode}\n"
                                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel and install it with its dependencies from the package index pip
    is configured with (the project's own environment pins their versions)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for name in SOURCES:
        if (REPO / name).is_dir():
            # symlinks=False copies what a link points to, as the build itself would.
            shutil.copytree(REPO / name, src / name, ignore=ignore, symlinks=False)
        else:
            shutil.copy2(REPO / name, src / name)
    dist = work / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", dist, src],
        cwd=work, timeout_s=BUILD_TIMEOUT_S)
    [wheel] = dist.glob("flopledger-*.whl")

    layout = unit_layout()
    root = work / "root"
    installed = Installed(wheel, root, layout)
    # The versions this suite runs against: the fresh environment gets the same ones,
    # found in pip's cache or its configured index.
    freeze = run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], cwd=work,
                 timeout_s=60).stdout
    constraints = work / "constraints.txt"
    constraints.write_text("".join(line + "\n" for line in freeze.splitlines()
                                   if "==" in line and not line.startswith("flopledger")))
    run([sys.executable, "-m", "venv", installed.at(layout.venv)], cwd=work, timeout_s=120)
    # --no-compile: the commands below write the bytecode they need on first import.
    run([installed.python, "-m", "pip", "install", "--no-compile", "--constraint",
         constraints, wheel], cwd=work, timeout_s=INSTALL_TIMEOUT_S)
    command = installed.at(layout.command)
    command.parent.mkdir(parents=True)
    command.symlink_to(installed.at(layout.venv) / "bin" / "flopledger")
    return installed


def flopledger(inst: Installed, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed command, as the unit runs it: through the link, from ``cwd``, with
    nothing of the source tree on the path and the numba cache where the unit puts it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["HOME"] = str(cwd)
    env["PATH"] = os.pathsep.join(["/usr/bin", "/bin"])
    env["NUMBA_CACHE_DIR"] = str(inst.at("/var/cache/flopledger/numba"))
    return run([inst.at(inst.layout.command), *args], cwd=cwd, env=env, timeout_s=300)


def test_the_wheel_carries_every_data_file_as_a_plain_copy(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        for inside, source in DATA_FILES.items():
            assert inside in names, f"{inside} missing from {installed.wheel.name}"
            assert wheel.read(inside) == source.read_bytes(), inside
        # A link in the wheel would unpack as a file holding the link's target path.
        links = [i.filename for i in wheel.infolist() if (i.external_attr >> 28) == 0o12]
    assert links == []
    assert not any(n.startswith(("tests/", "benchmarks/", "configs/")) for n in names)
    assert not any("/tests/" in n for n in names), "promtool unit tests are not for the wheel"


def test_installed_commands_work_from_an_empty_directory(installed: Installed,
                                                         tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    site = run([installed.python, "-c", "import agent, exporters; "
                "print(agent.__file__); print(exporters.__file__)"],
               cwd=empty, timeout_s=60).stdout.split()
    venv = installed.at(installed.layout.venv)
    assert all(Path(p).is_relative_to(venv) for p in site), site  # not the source tree
    assert not list(venv.glob("lib/python*/site-packages/__editable__*"))

    out = flopledger(installed, "thresholds", cwd=empty).stdout
    assert "eu-art51-systemic-risk" in out
    assert "> 1.0e+25" in out
    registry = Path(out.strip().splitlines()[-1].split(";")[0])
    assert registry.is_relative_to(venv)
    assert registry.parts[-3:] == ("agent", "data", "thresholds.toml")

    out = flopledger(installed, "gpus", cwd=empty).stdout
    rows = [line for line in out.splitlines() if "(simulated)" in line]
    assert len(rows) == 8, out  # the simulator's default: 8 H100 SXM
    assert all(" h100_sxm " in row and "peak 0.0 " not in row for row in rows), out
    assert out.rstrip().endswith("source: simulated")

    assert sorted(empty.iterdir()) == []


def test_installed_agent_runs_on_simulated_gpus_with_state_where_the_unit_keeps_it(
        installed: Installed, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    state = installed.at(installed.layout.state_dir)
    config = installed.at(installed.layout.config)
    config.parent.mkdir(parents=True, exist_ok=True)
    # The unit's config (absolute state_dir), on simulated GPUs in virtual time so that
    # ten simulated minutes take seconds.
    config.write_text(f"""
[agent]
state_dir = "{state}"
source = "simulated"
interval_s = 1.0
[sim]
scenario = "pretrain-bf16"
gpus = 2
virtual_time = true
time_scale = 0
""")
    summary = tmp_path / "summary.json"
    flopledger(installed, "run", "--config", str(config), "--listen", "127.0.0.1:0",
               "--exit-after", "600", "--summary", str(summary), cwd=empty)
    doc = json.loads(summary.read_text())
    assert doc["source"] == "simulated"
    assert len(doc["gpus"]) == 2
    for gpu in doc["gpus"]:
        assert gpu["spec"] == "h100_sxm"
        assert 0 < gpu["flop_low"] <= gpu["sim_true_flop"] <= gpu["flop_high"], gpu
    assert (state / "ledger.sqlite").is_file()
    assert sorted(empty.iterdir()) == []  # nothing written relative to the working dir


def test_the_daemonset_runs_the_command_the_unit_runs() -> None:
    exec_start = unit_entries(UNIT.read_text())["Service"]["ExecStart"][0].split()
    kinds = by_kind(k8s_docs("daemonset.yaml"))
    [container] = kinds["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] + container["args"] == exec_start
    config_mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["config"]
    assert exec_start[exec_start.index("--config") + 1] == f"{config_mount}/agent.toml"
    # The ConfigMap's state_dir is the hostPath the unit's StateDirectory= would be.
    agent_toml = kinds["ConfigMap"]["data"]["agent.toml"]
    state = unit_entries(UNIT.read_text())["Service"]["StateDirectory"][0]
    assert f'state_dir = "/var/lib/{state}"' in agent_toml
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["NUMBA_CACHE_DIR"] in mounts  # read-only root: the cache needs a volume
