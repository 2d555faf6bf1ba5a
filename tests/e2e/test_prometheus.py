"""End to end with the real thing: three agents, Prometheus, Alertmanager, a webhook.

Three agents on simulated GPUs play three nodes of one cluster. A real Prometheus
scrapes them every second and evaluates the shipped recording and alerting rules plus
a test-only threshold alert; a real Alertmanager delivers that alert to a webhook in
this process. Then, through Prometheus' HTTP API:

- the recorded cluster total of the run equals the sum of the three nodes' totals at
  the same evaluation time;
- the threshold alert reaches the webhook (the delivery time is printed);
- every query of the Grafana dashboard returns data (the agents evaluate an extra
  regime with a threshold they cross within seconds, so that a deadline is fixed, and
  send their notifications to the same Alertmanager, so that every channel series
  exists);
- TLS, mutual TLS and basic auth refuse what they must, and Prometheus scrapes
  through all three.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import itertools
import json
import operator
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from agent.compliance.lineage import default_thresholds_path
from exporters.collector import FlopledgerCollector
from exporters.web.config import load_web_config
from exporters.web.server import MetricsServer, start_metrics_server
from tests import dashboard as dash
from tests.agentproc import free_port, stop, wait_for
from tests.exposition import sample_snapshot
from tests.paths import REPO
from tests.pki import (
    Pki,
    bcrypt_hash,
    client_context,
    connection_refused,
    fetch,
)

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
RULES_DIR = REPO / "exporters" / "prometheus"
NODES = 3
# The simulated nodes reach about 2e16 FLOP per real second each (2 H100s at 20x
# simulated time), so the cluster crosses this some seconds after the agents start,
# while Prometheus is already watching.
THRESHOLD_FLOP = 5e17
TEST_ALERT = "E2eRunCrossedTestThreshold"
# A regime each node's own ledger crosses within seconds: it fixes a legal deadline.
NODE_REGIME = "e2e-node-budget"
NODE_REGIME_FLOP = 1e16
SCRAPE_USER = "prometheus"
SCRAPE_PASSWORD = "e2e-scrape-password"

pytestmark = pytest.mark.e2e
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or ALERTMANAGER is None,
    reason="needs Debian's prometheus and prometheus-alertmanager (`make system-deps`)")


# ----------------------------------------------------------------------------- plumbing


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str,
               every_s: float = 0.1) -> Any:
    """Poll until ``predicate`` returns something truthy; return it."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, ValueError, KeyError) as e:  # not up yet
            last_error = e
        else:
            if value:
                return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what} ({last_error})")


@contextlib.contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, text=True)
        try:
            yield proc
        finally:
            stop(proc, 20)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Webhook:
    """Alertmanager's webhook receiver: records (arrival wall time, payload)."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrival = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.received.append((arrival, json.loads(body)))
                outer.arrived.set()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclasses.dataclass
class Prometheus:
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            doc = json.load(r)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = repr(at)
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result


@dataclasses.dataclass
class Stack:
    prometheus: Prometheus
    alertmanager_url: str
    webhook: Webhook
    nodes: list[str]              # host:port of the three agents
    tls_target: str
    agents_started_wall_s: float
    logs: dict[str, Path]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def secure_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[MetricsServer]:
    """The real endpoint with mTLS and basic auth, serving a fixed snapshot.

    The snapshot has no runs, so it adds nothing to the cluster's run totals.
    """
    d = tmp_path_factory.mktemp("web")
    for src in (pki.server_cert, pki.server_key, pki.ca_cert):
        (d / src.name).write_bytes(src.read_bytes())
    # Cost 10 as htpasswd -B makes by default: bcrypt's cost is paid once, then cached.
    hashed = bcrypt_hash(SCRAPE_PASSWORD, rounds=10)
    (d / "web.yml").write_text(f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
basic_auth_users:
  {SCRAPE_USER}: {hashed}
""")
    snapshot = dataclasses.replace(sample_snapshot(), runs=())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlopledgerCollector(lambda: snapshot))
    server = start_metrics_server(registry, "127.0.0.1", 0, load_web_config(d / "web.yml"))
    try:
        yield server
    finally:
        server.shutdown()


def thresholds_file(path: Path) -> Path:
    path.write_text(default_thresholds_path().read_text() + f"""
[regimes.{NODE_REGIME}]
title = "End-to-end node budget"
threshold_flop = {NODE_REGIME_FLOP!r}
comparison = "gt"
scope = "cumulative"
subjects = ["model", "run"]
applies_to = "provider"
obligation = "Internal compute review"
deadline_days = 14
status = "internal"
sources = ["internal policy"]
""")
    return path


def agent_config(path: Path, state_dir: Path, seed: int, thresholds: Path,
                 alertmanager_url: str) -> Path:
    # A seed per node: identical nodes would let a wrong sum pass by coincidence.
    # Records every 2 s: the threshold watcher evaluates the ledger, not /metrics.
    path.write_text(f"""
[agent]
interval_s = 1
checkpoint_s = 1
record_s = 2
source = "simulated"
state_dir = "{state_dir}"
thresholds_file = "{thresholds}"

[thresholds]
evaluate_every_s = 1

[notify]
poll_s = 0.5

[[notify.alertmanager]]
name = "am"
url = "{alertmanager_url}"

[sim]
gpus = 2
seed = {seed}
virtual_time = true
time_scale = 20
""")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pki: Pki,
          secure_server: MetricsServer) -> Iterator[Stack]:
    assert PROMETHEUS is not None
    assert ALERTMANAGER is not None
    tmp = tmp_path_factory.mktemp("stack")
    ports = {name: free_port() for name in ("prometheus", "alertmanager")}
    node_ports = [free_port() for _ in range(NODES)]
    nodes = [f"127.0.0.1:{p}" for p in node_ports]
    logs = {name: tmp / f"{name}.log" for name in ("prometheus", "alertmanager")}
    webhook = Webhook()

    (tmp / "alertmanager.yml").write_text(yaml.safe_dump({
        # Only the test alert reaches the webhook; the agents' own threshold
        # notifications stop at Alertmanager.
        "route": {"receiver": "nobody", "group_by": ["alertname"], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "1h",
                  "routes": [{"matchers": [f'alertname="{TEST_ALERT}"'],
                              "receiver": "webhook"}]},
        "receivers": [{"name": "nobody"},
                      {"name": "webhook",
                       "webhook_configs": [{"url": webhook.url, "send_resolved": False}]}],
    }))
    (tmp / "test_threshold_rules.yml").write_text(yaml.safe_dump({"groups": [{
        "name": "e2e-threshold", "rules": [{
            "alert": TEST_ALERT,
            "expr": f"run_model_category:flopledger_run_flop_total:sum > {THRESHOLD_FLOP!r}",
            "labels": {"severity": "info"},
            "annotations": {"summary": "Run {{ $labels.run }} crossed the e2e threshold"},
        }]}]}))
    (tmp / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(RULES_DIR / "recording_rules.yml"),
                       str(RULES_DIR / "alert_rules.yml"),
                       str(tmp / "test_threshold_rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{ports['alertmanager']}"]}]}]},
        "scrape_configs": [
            {"job_name": "flopledger", "static_configs": [{"targets": nodes}]},
            {"job_name": "flopledger-secure", "scheme": "https",
             "tls_config": {"ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert),
                            "key_file": str(pki.client_key)},
             "basic_auth": {"username": SCRAPE_USER, "password": SCRAPE_PASSWORD},
             "static_configs": [{"targets": [f"127.0.0.1:{secure_server.port}"]}]},
        ],
    }))
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    prometheus = Prometheus(f"http://127.0.0.1:{ports['prometheus']}", logs["prometheus"])
    am_url = f"http://127.0.0.1:{ports['alertmanager']}"

    def ready(url: str) -> bool:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
            return bool(r.status == 200)

    with contextlib.ExitStack() as es:
        es.callback(webhook.close)
        es.enter_context(process([
            ALERTMANAGER, f"--config.file={tmp / 'alertmanager.yml'}",
            f"--storage.path={tmp / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
            "--cluster.listen-address=", "--log.level=warn"], logs["alertmanager"]))
        es.enter_context(process([
            PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            "--log.level=warn"], logs["prometheus"]))
        try:
            wait_until(lambda: ready(am_url), 30, "Alertmanager")
            wait_until(lambda: ready(prometheus.url), 30, "Prometheus")
        except TimeoutError as e:
            raise AssertionError(f"{e}\n--- prometheus\n{tail(logs['prometheus'])}\n"
                                 f"--- alertmanager\n{tail(logs['alertmanager'])}") from e
        started = time.time()
        thresholds = thresholds_file(tmp / "thresholds.toml")
        procs = []
        for i, port in enumerate(node_ports):
            log = tmp / f"node{i}.log"
            logs[f"node{i}"] = log
            config = agent_config(tmp / f"node{i}.toml", tmp / f"node{i}-state", seed=i + 1,
                                  thresholds=thresholds, alertmanager_url=am_url)
            procs.append(es.enter_context(process(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(config),
                 "--listen", f"127.0.0.1:{port}"], log, env)))
        for i, (proc, node) in enumerate(zip(procs, nodes, strict=True)):
            try:
                wait_for(f"http://{node}/metrics", proc)
            except (RuntimeError, TimeoutError) as e:
                raise AssertionError(f"agent {i}: {e}\n{tail(logs[f'node{i}'])}") from e
        yield Stack(prometheus, am_url, webhook, nodes,
                    f"127.0.0.1:{secure_server.port}", started, logs)


def the_run(prom: Prometheus) -> dict[str, str]:
    """The simulated run's labels (run, model, category), as the agents report them."""
    series = wait_until(lambda: prom.query('flopledger_run_flop_total{job="flopledger"}'),
                        60, "the agents' run series in Prometheus")
    labels = {(s["metric"]["run"], s["metric"].get("model", ""), s["metric"]["category"])
              for s in series}
    assert len(labels) == 1, labels
    run, model, category = labels.pop()
    return {"run": run, "model": model, "category": category}


def selector(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


# ----------------------------------------------------------------------------- TLS


def test_secure_endpoint_refuses_what_it_must(secure_server: MetricsServer, pki: Pki) -> None:
    url = secure_server.url
    assert url.startswith("https://127.0.0.1:")
    good = client_context(pki, pki.client_cert, pki.client_key)

    status, headers, _ = fetch(url, context=good)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")
    assert fetch(url, context=good, user=SCRAPE_USER, password="wrong")[0] == 401
    assert fetch(url, context=good, user="someone", password=SCRAPE_PASSWORD)[0] == 401

    refused = {
        "no client certificate": client_context(pki),
        "client certificate from another CA": client_context(
            pki, pki.other_client_cert, pki.other_client_key),
    }
    for why, ctx in refused.items():
        connection_refused(functools.partial(fetch, url, context=ctx, user=SCRAPE_USER,
                                             password=SCRAPE_PASSWORD), why)
    connection_refused(functools.partial(fetch, url.replace("https://", "http://"),
                                         user=SCRAPE_USER, password=SCRAPE_PASSWORD),
                       "plain HTTP")

    status, _, body = fetch(url, context=good, user=SCRAPE_USER, password=SCRAPE_PASSWORD)
    assert status == 200
    assert b"flopledger_gpu_flop_total{" in body


@needs_prometheus
def test_prometheus_scrapes_through_mtls_and_basic_auth(stack: Stack) -> None:
    prom = stack.prometheus
    up = wait_until(lambda: prom.query('up{job="flopledger-secure"} == 1'), 30,
                    "up == 1 for the mTLS + basic auth target")
    assert up[0]["metric"]["instance"] == stack.tls_target
    assert prom.query('flopledger_build_info{job="flopledger-secure"}')
    wait_until(lambda: len(prom.query('up{job="flopledger"} == 1')) == NODES, 30,
               "the three agents up")


# ----------------------------------------------------------------------------- cluster sum


@needs_prometheus
def test_recorded_cluster_total_is_the_sum_of_the_nodes(stack: Stack) -> None:
    prom = stack.prometheus
    run = the_run(prom)
    recorded = f"run_model_category:flopledger_run_flop_total:sum{selector(run)}"
    raw = f"flopledger_run_flop_total{selector({**run, 'job': 'flopledger'})}"
    # Wait until every node has been in the sum for the whole window checked below.
    wait_until(lambda: len(prom.query(f"count_over_time({raw}[12s]) >= 11")) == NODES
               and len(prom.query(f"{recorded}[8s]")[0]["values"]) >= 8, 60,
               "8 evaluations with all nodes scraped")
    end = float(prom.query("time()")[0]["value"][0])
    evaluations = [(float(t), float(v))
                   for t, v in prom.query(f"{recorded}[8s]", at=end)[0]["values"]]
    per_node = {s["metric"]["instance"]: [(float(t), float(v)) for t, v in s["values"]]
                for s in prom.query(f"{raw}[20s]", at=end)}
    assert sorted(per_node) == sorted(stack.nodes)

    same_time = 0
    for t, value in evaluations:
        # Both at one timestamp: the sum Prometheus computes now for time t...
        [now_sum] = prom.query(f"sum by (run, model, category) ({raw})", at=t)
        node_values = {n: [v for ts, v in samples if ts <= t]
                       for n, samples in per_node.items()}
        assert all(node_values.values()), (t, "a node missing from the window")
        if float(now_sum["value"][1]) == value:
            same_time += 1
            # ...and the same figure from the three nodes' own values at t.
            latest = [vals[-1] for vals in node_values.values()]
            assert value in _sequential_sums(latest), (t, value, latest)
            continue
        # A scrape whose timestamp is <= t but which was committed after the rule ran
        # (scrapes are stamped when they start) is missing from that evaluation: then
        # the recorded value must be the sum with that node's previous sample.
        candidates = []
        for n, vals in node_values.items():
            latest_t = max(ts for ts, _ in per_node[n] if ts <= t)
            options = vals[-1:] + (vals[-2:-1] if t - latest_t < 0.25 else [])
            candidates.append(options)
        sums = {s for combo in itertools.product(*candidates) for s in _sequential_sums(combo)}
        assert value in sums, (t, value, candidates)
    last_t, last_value = evaluations[-1]
    node_now = prom.query(raw, at=last_t)
    print(f"\n[e2e] cluster total of run {run['run']!r} at {last_t:.3f}: recorded "
          f"{last_value:.10e} FLOP; the three nodes at the same time: "
          + " + ".join(f"{float(s['value'][1]):.6e}" for s in node_now)
          + f" = {sum(float(s['value'][1]) for s in node_now):.10e}; "
          f"{same_time}/{len(evaluations)} evaluations equal Prometheus' sum at the same "
          f"timestamp exactly, the rest the sum of the samples committed before them")
    assert same_time >= 1


def _sequential_sums(values: list[float] | tuple[float, ...]) -> set[float]:
    """Every result of adding the values left to right in some order (float addition
    is not associative, and the order Prometheus sums series in is not specified)."""
    return {functools.reduce(operator.add, perm) for perm in itertools.permutations(values)}


# ----------------------------------------------------------------------------- alerting


@needs_prometheus
def test_threshold_alert_reaches_alertmanager_and_the_webhook(stack: Stack) -> None:
    prom = stack.prometheus
    assert stack.webhook.arrived.wait(90), (
        f"no webhook delivery\n--- prometheus\n{tail(stack.prometheus.log)}\n"
        f"--- alertmanager\n{tail(stack.logs['alertmanager'])}")
    arrival, payload = stack.webhook.received[0]
    [alert] = [a for a in payload["alerts"] if a["labels"]["alertname"] == TEST_ALERT]
    assert alert["status"] == "firing"
    run = the_run(prom)
    assert alert["labels"]["run"] == run["run"]

    firing = [a for a in prom.api("alerts")["alerts"]
              if a["labels"]["alertname"] == TEST_ALERT]
    active_at = _rfc3339(firing[0]["activeAt"])
    # The condition really crossed while Prometheus watched (not true from the start):
    recorded = f"run_model_category:flopledger_run_flop_total:sum{selector(run)}"
    history = prom.query(f"{recorded}[2m]")[0]["values"]
    below = [float(t) for t, v in history if float(v) <= THRESHOLD_FLOP]
    above = [float(t) for t, v in history if float(v) > THRESHOLD_FLOP]
    assert below
    assert above
    assert max(below) < min(above) <= active_at + 1e-3
    am_alerts = json.load(urllib.request.urlopen(
        f"{stack.alertmanager_url}/api/v2/alerts?filter=alertname%3D%22{TEST_ALERT}%22",
        timeout=10))
    assert am_alerts
    assert am_alerts[0]["status"]["state"] == "active"
    print(f"\n[e2e] threshold {THRESHOLD_FLOP:.0e} FLOP: first recorded above at "
          f"{min(above):.3f}, alert active at {active_at:.3f}, webhook received at "
          f"{arrival:.3f}: delivery {arrival - active_at:.3f} s from the condition first "
          f"holding ({arrival - min(above):.3f} s from the first recorded sample above; "
          f"{active_at - stack.agents_started_wall_s:.1f} s after the agents started)")
    assert 0 <= arrival - active_at < 30


def _rfc3339(text: str) -> float:
    # Prometheus gives nanoseconds ("2026-11-28T12:00:00.123456789Z"); Python parses
    # microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    base = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.UTC).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


# ----------------------------------------------------------------------------- dashboard


@needs_prometheus
def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    prom = stack.prometheus
    run = the_run(prom)
    values = {"run": run["run"], "model": run["model"], "node": stack.nodes[0]}
    doc = dash.load()
    # $__rate_interval is 1m: wait until the agents have a few samples in it.
    wait_until(lambda: len(prom.query(
        f'flopledger_gpu_flop_total{{instance="{stack.nodes[0]}"}}[1m]')[0]["values"]) >= 5,
        60, "five samples in the rate window")
    # The threshold watcher and the notification dispatcher publish after their first
    # pass; the node regime's deadline once a ledger record crossed it.
    node = f'instance="{stack.nodes[0]}"'
    for published in (f'flopledger_threshold_deadline_timestamp_seconds{{regime="{NODE_REGIME}",'
                      f'subject_type="model",{node}}}',
                      f"flopledger_notifications_failed_attempts_total{{{node}}}"):
        wait_until(functools.partial(prom.query, published), 60, published)
    for name, (series, label) in dash.variable_queries(doc, values).items():
        found = prom.api("series", **{"match[]": series}) if series else []
        options = {s[label] for s in found if label in s}
        assert values[name] in options, (name, series, options)
    empty = []
    queries = dash.queries(doc, values)
    for title, ref, expr in queries:
        if not prom.query(expr):
            empty.append(f"{title} [{ref}]: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    print(f"\n[e2e] {len(queries)} dashboard queries in "
          f"{sum(1 for p in dash.panels(doc) if p['type'] != 'row')} panels all returned data")
