"""The Grafana dashboard: structure, variables, and queries that parse.

That every query returns data is checked against a real Prometheus scraping real
agents in tests/e2e/test_prometheus.py, which reuses the helpers here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.exporters.test_rules import PROMETHEUS_SERIES, exported_names, metric_names
from tests.paths import REPO

DASHBOARD = REPO / "exporters" / "grafana" / "flopledger.json"
DATASOURCE = "${datasource}"
# What Grafana puts in place of its built-in variables when it runs a query.
BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def variables(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in doc["templating"]["list"]}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables ($name, ${name}) and built-ins; longest names first."""
    table = {**BUILTINS, **{f"${name}": value for name, value in values.items()}}
    table.update({"${" + k[1:] + "}": v for k, v in list(table.items())})
    for key in sorted(table, key=len, reverse=True):
        expr = expr.replace(key, table[key])
    return expr


def queries(doc: Mapping[str, Any], values: Mapping[str, str]
            ) -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL with variables substituted) for every target."""
    out = []
    for panel in panels(doc):
        for target in panel.get("targets", []):
            out.append((panel["title"], target["refId"], substitute(target["expr"], values)))
    return out


def variable_queries(doc: Mapping[str, Any], values: Mapping[str, str]
                     ) -> dict[str, tuple[str | None, str]]:
    """name -> (series selector or None, label) of each ``label_values`` variable."""
    out = {}
    for name, var in variables(doc).items():
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = LABEL_VALUES.match(query.strip())
        assert match, (name, query)
        selector = match.group("selector")
        out[name] = (substitute(selector, values) if selector else None, match.group("label"))
    return out


def test_schema_uid_and_unique_panel_ids() -> None:
    doc = load()
    assert doc["schemaVersion"] >= 36
    assert doc["uid"] == "flopledger"
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), ids


def test_template_variables() -> None:
    vs = variables(load())
    ds = vs["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    for name in ("run", "model", "node"):
        assert vs[name]["type"] == "query", name
        assert vs[name]["datasource"]["uid"] == DATASOURCE, name
        # "All" must also match runs without a model label: a regex, not a value list.
        assert vs[name]["includeAll"], name
        assert vs[name]["allValue"] == ".*", name
    assert variable_queries(load(), {})["node"] == ("flopledger_gpu_info", "instance")


def test_every_panel_uses_the_datasource_variable_and_has_queries() -> None:
    for panel in panels(load()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_rows_and_layout() -> None:
    doc = load()
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert rows == ["Fleet overview", "Runs and models", "Nodes and GPUs", "Data quality"]
    cells: set[tuple[int, int]] = set()
    for panel in panels(doc):
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps at {(x, y)}"
                cells.add((x, y))


def test_cumulative_compute_has_a_band_on_a_log_axis_and_the_thresholds() -> None:
    compute = [p for p in panels(load()) if p["title"].startswith("Cumulative compute")]
    assert {p["repeat"] for p in compute} == {"run", "model"}
    for panel in compute:
        custom = panel["fieldConfig"]["defaults"]["custom"]
        assert custom["scaleDistribution"] == {"type": "log", "log": 10}
        legends = [t["legendFormat"] for t in panel["targets"]]
        assert legends[:3] == ["central", "low", "high"]
        exprs = " ".join(t["expr"] for t in panel["targets"])
        for threshold in ("vector(1e23)", "vector(1e25)", "vector(1e26)"):
            assert threshold in exprs, panel["title"]
        fills = [prop for o in panel["fieldConfig"]["overrides"]
                 if o["matcher"]["options"] == "high" for prop in o["properties"]
                 if prop["id"] == "custom.fillBelowTo"]
        assert fills == [{"id": "custom.fillBelowTo", "value": "low"}], panel["title"]


def test_queries_use_only_metrics_the_agent_exports() -> None:
    exported = exported_names()
    for title, ref, expr in queries(load(), {"run": "r", "model": "m", "node": "n"}):
        assert not metric_names(expr) - exported, (title, ref, metric_names(expr) - exported)
        for name in re.findall(r"\b(up|scrape_duration_seconds)\{", expr):
            assert name in PROMETHEUS_SERIES


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool missing: `make test` installs Debian's prometheus")
def test_every_query_parses(tmp_path: Path) -> None:
    # promtool has no "parse this expression" command; a rule file of one recording
    # rule per query gets every query through Prometheus' own parser.
    exprs = queries(load(), {"run": "r1", "model": "m1", "node": "n1:9947"})
    assert not [e for _, _, e in exprs if "$" in e], "unsubstituted variable"
    groups = [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}:check", "expr": expr}
        for i, (_, _, expr) in enumerate(exprs)]}]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    result = subprocess.run(["promtool", "check", "rules", str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
