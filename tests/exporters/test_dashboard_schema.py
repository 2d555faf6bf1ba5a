"""The Grafana dashboard against Grafana's own published schema.

Grafana publishes its dashboard schema in the npm package ``@grafana/schema`` as
TypeScript types; tests/dashboard_schema.mjs has the TypeScript compiler check the
dashboard (and each panel's plugin options) against them. Both packages are installed
once, at pinned versions, into .cache/grafana-schema (ignored by git) with the
machine's npm and its configured registry, and reused while their versions match.
Without Node.js, npm or a reachable registry the test fails, saying which.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard import DASHBOARD, load, panels
from tests.paths import REPO

PACKAGES = {"@grafana/schema": "13.2.3", "typescript": "5.9.3"}
CACHE = REPO / ".cache" / "grafana-schema"
SCRIPT = REPO / "tests" / "dashboard_schema.mjs"


def _installed(node_modules: Path) -> bool:
    for name, version in PACKAGES.items():
        manifest = node_modules / name / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text())["version"] != version:
            return False
    return True


def _npm_error(stderr: str) -> str:
    """The line of npm's error output that says what went wrong (npm prints the error
    code, syscall and a stack trace around it)."""
    lines = [re.sub(r"^npm (error|ERR!) ?", "", line) for line in stderr.splitlines()
             if line.startswith(("npm error", "npm ERR!"))]
    telling = [line for line in lines
               if line and not re.match(r"(code|syscall|errno|\s*at )\b", line)]
    return (telling or lines or stderr.splitlines() or ["no output"])[0].strip()


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if shutil.which("node") is None:
        pytest.fail("Node.js not found on PATH: the dashboard schema check runs on it",
                    pytrace=False)
    installed = CACHE / "node_modules"
    if _installed(installed):
        return installed
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm not found on PATH: it installs @grafana/schema for the dashboard "
                    "schema check", pytrace=False)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    # Installed beside the cache and moved into place, so that an interrupted install
    # is never taken for a complete one.
    staging = Path(tempfile.mkdtemp(prefix="grafana-schema-", dir=CACHE.parent))
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(staging),
         *(f"{name}@{version}" for name, version in PACKAGES.items())],
        capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0 or not _installed(staging / "node_modules"):
        shutil.rmtree(staging, ignore_errors=True)
        registry = subprocess.run([npm, "config", "get", "registry"], capture_output=True,
                                  text=True, check=False).stdout.strip()
        pytest.fail(f"npm could not install {', '.join(PACKAGES)} from {registry} for the "
                    f"dashboard schema check: {_npm_error(result.stderr)}", pytrace=False)
    shutil.rmtree(CACHE, ignore_errors=True)
    staging.rename(CACHE)
    return installed


def check(node_modules: Path, *dashboards: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", str(SCRIPT), str(node_modules), *map(str, dashboards)],
                          capture_output=True, text=True, check=False, timeout=300)


def test_dashboard_matches_grafanas_published_schema(node_modules: Path) -> None:
    result = check(node_modules, DASHBOARD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"{DASHBOARD}: OK"


def _panel(doc: dict[str, Any], panel_type: str) -> dict[str, Any]:
    return next(p for p in panels(doc) if p["type"] == panel_type)


def test_schema_check_refuses_broken_dashboards(node_modules: Path, tmp_path: Path) -> None:
    """Each copy breaks the dashboard in one way Grafana's schema forbids."""
    doc = load()
    broken: dict[str, dict[str, Any]] = {}

    misspelt = copy.deepcopy(doc)
    misspelt["schemaVersoin"] = misspelt.pop("schemaVersion")
    broken["misspelt"] = misspelt

    grid = copy.deepcopy(doc)
    _panel(grid, "table")["gridPos"]["w"] = "24"
    broken["grid"] = grid

    thresholds = copy.deepcopy(doc)
    _panel(thresholds, "timeseries")["fieldConfig"]["defaults"]["thresholds"]["mode"] = "abs"
    broken["thresholds"] = thresholds

    draw = copy.deepcopy(doc)
    _panel(draw, "timeseries")["fieldConfig"]["defaults"]["custom"]["drawStyle"] = "lines"
    broken["draw"] = draw

    legend = copy.deepcopy(doc)
    _panel(legend, "timeseries")["options"]["legend"]["displayMode"] = "grid"
    broken["legend"] = legend

    paths = {}
    for name, mutated in broken.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(mutated))
    result = check(node_modules, DASHBOARD, *paths.values())
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"{DASHBOARD}: OK" in lines
    for name, path in paths.items():
        reported = [line for line in lines if line.startswith(f"{path}: ")]
        assert reported, (name, result.stdout)
        assert f"{path}: OK" not in reported, name
    text = result.stdout
    assert "schemaVersoin" in text
    assert '"abs"' in text
    assert '"lines"' in text
    assert '"grid"' in text
