"""The Grafana dashboard: structure, variables, and queries that parse.

That every query returns data is checked against a real Prometheus scraping real
agents in tests/e2e/test_prometheus.py, which reuses the helpers here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.dashboard import (
    DATASOURCE,
    load,
    panels,
    queries,
    variable_queries,
    variables,
)
from tests.exposition import PROMETHEUS_SERIES, exported_names, metric_names


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
    assert rows == ["Fleet overview", "Runs and models", "Nodes and GPUs", "Data quality",
                    "Thresholds"]
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


def test_thresholds_row_shows_reach_eta_will_be_met_deadline_and_delivery() -> None:
    doc = load()
    row_y = next(p["gridPos"]["y"] for p in doc["panels"] if p["title"] == "Thresholds")
    below = [p for p in panels(doc) if p["gridPos"]["y"] > row_y]
    exprs = " ".join(t["expr"] for p in below for t in p["targets"])
    for name in ("flopledger_threshold_fraction_ratio",
                 "flopledger_threshold_fraction_band_ratio", "flopledger_threshold_eta_seconds",
                 "flopledger_threshold_will_be_met",
                 "flopledger_threshold_deadline_timestamp_seconds",
                 "flopledger_notifications_pending", "flopledger_notifications_dead",
                 "flopledger_notifications_delivered_total",
                 "flopledger_notifications_failed_attempts_total"):
        assert name in exprs, name
    [table] = [p for p in below if p["title"] == "Thresholds per model and regime"]
    band = [t["legendFormat"] for t in table["targets"] if "_band_ratio" in t["expr"]]
    assert band == ["low", "central", "high"]
    # One row per model, regime and node: every column's query drops the estimate label.
    for target in table["targets"]:
        assert target["expr"].startswith("max without (estimate) ("), target["refId"]
    # Grafana's dateTimeAsIso unit reads milliseconds.
    [deadline] = [t["expr"] for t in table["targets"] if "deadline" in t["expr"]]
    assert deadline.endswith("* 1000")
    for panel in below:
        for target in panel["targets"]:
            if "flopledger_threshold_" in target["expr"]:
                assert 'subject_type="model"' in target["expr"], panel["title"]
                assert "$model" in target["expr"], panel["title"]


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
