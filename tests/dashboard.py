"""The Grafana dashboard as data: its panels, variables and the PromQL of each query with
the variables substituted. Shared by the dashboard tests and the end-to-end test that
runs every query against a real Prometheus."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

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
