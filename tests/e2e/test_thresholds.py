"""End to end: the agent crosses a (low) threshold and notifies, through crashes.

A simulated run with a 120-second plan works toward an internal budget of 6e16 FLOP.
The webhook receiver is down when the agent starts; the agent is killed with SIGKILL
after the first warning level was delivered and started again. At the end every
warning level and the "will be met" projection reached the webhook (signed) and a real
Alertmanager, each under one key, and no key was enqueued twice.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from agent.compliance.lineage import default_thresholds_path
from tests.agentproc import agent, wait_for
from tests.alertmanager import ALERTMANAGER, alertmanager, am_alerts, wait_until
from tests.receivers import SECRET, Receiver

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(ALERTMANAGER is None, reason=(
        "needs the prometheus-alertmanager binary (Debian's prometheus-alertmanager)")),
]

BUDGET = 6e16


def budget_registry(directory: Path, budget_flop: float) -> Path:
    """The bundled threshold registry plus an internal review budget, ``test-budget``,
    low enough for simulated GPUs to cross within a test."""
    thresholds = directory / "thresholds.toml"
    thresholds.write_text(default_thresholds_path().read_text() + f"""
[regimes.test-budget]
title = "Internal review budget"
threshold_flop = {budget_flop}
comparison = "gt"
scope = "cumulative"
subjects = ["model", "run"]
applies_to = "provider"
obligation = "Internal compute review"
deadline_days = 14
status = "internal"
sources = ["internal policy"]
""")
    return thresholds


def test_levels_and_will_be_met_are_delivered_once_each_across_a_crash(tmp_path: Path) -> None:
    thresholds = budget_registry(tmp_path, BUDGET)
    (tmp_path / "webhook.secret").write_bytes(SECRET)
    webhook = Receiver()
    am_sink = Receiver()
    am_sink.start()
    with alertmanager(tmp_path, am_sink.url) as am_url:
        config = tmp_path / "agent.toml"
        config.write_text(f"""
[agent]
state_dir = "{tmp_path}/state"
interval_s = 0.2
checkpoint_s = 1
record_s = 2
source = "simulated"
thresholds_file = "{thresholds}"
[sim]
gpus = 8
[[sim.jobs]]
gpus = [0, 1, 2, 3, 4, 5, 6, 7]
[sim.jobs.env]
FLOPLEDGER_RUN_ID = "budget-run"
FLOPLEDGER_MODEL = "budget-model"
FLOPLEDGER_CATEGORY = "pre-training"
FLOPLEDGER_PRECISION = "bf16"
FLOPLEDGER_PLAN_DURATION_S = "120"
[thresholds]
evaluate_every_s = 0.5
# The run lasts two minutes: "will be met" after 5 s of it instead of the default hour.
min_observation_s = 5
[notify]
poll_s = 0.2
[[notify.webhook]]
name = "compliance"
url = "{webhook.url}"
secret_file = "{tmp_path}/webhook.secret"
timeout_s = 5
[[notify.alertmanager]]
name = "am"
url = "{am_url}"
resend_s = 2
""")
        started = time.monotonic()
        with agent(config) as (proc, url):
            wait_for(url, proc)
            time.sleep(2.0)  # the webhook is down meanwhile: deliveries fail and wait
            webhook.start()

            def delivered_keys() -> set[str]:
                return {r.key for r in webhook.delivered() if r.key}

            wait_until(lambda: any(k.endswith("level:0.5") for k in delivered_keys()), 60,
                       "the first warning level at the webhook")
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        with agent(config) as (proc, url):
            # The model and the run cross at the same evaluation; both deliveries are
            # awaited, since the outbox is compared with what the webhook received.
            wait_until(lambda: {"model:budget-model|test-budget|level:1",
                                "run:budget-run|test-budget|level:1"} <= delivered_keys(), 90,
                       "the threshold crossing at the webhook, for the model and the run")
            wait_until(lambda: len(am_alerts(am_url)) >= 3, 30, "alerts in Alertmanager")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        elapsed = time.monotonic() - started
        alerts = am_alerts(am_url)
    webhook.stop()
    am_sink.stop()

    requests = webhook.delivered()
    assert all(r.signature_ok for r in requests)
    keys = [r.key for r in requests if r.key]
    mine = sorted({k for k in keys if "|test-budget|" in k})
    model_keys = [k for k in mine if k.startswith("model:budget-model|")]
    assert "model:budget-model|test-budget|will-be-met" in model_keys
    assert "model:budget-model|test-budget|level:0.5" in model_keys
    assert "model:budget-model|test-budget|level:1" in model_keys
    # Only met and will-be-met carry the legal deadline: 14 days from the stored day it
    # was met or first known, which the milestone table holds once.
    bodies = {r.key: json.loads(r.body) for r in requests if r.key in model_keys}
    will = bodies["model:budget-model|test-budget|will-be-met"]["payload"]
    assert will["deadline_ns"] == will["at_ns"] + 14 * 86400 * 10**9
    assert bodies["model:budget-model|test-budget|level:0.5"]["payload"]["deadline"] is None
    met = bodies["model:budget-model|test-budget|level:1"]["payload"]
    assert met["deadline_ns"] is not None
    # The outbox holds each key once: nothing was re-fired under a new key after the crash.
    db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    rows = [k for (k,) in db.execute("SELECT key FROM notifications")]
    db.close()
    assert len(rows) == len(set(rows))
    assert {k for k in rows if "|test-budget|" in k} == set(mine)
    duplicates = sum(n - 1 for n in Counter(keys).values())
    assert {a["labels"]["regime"] for a in alerts.values()} >= {"test-budget"}
    print(f"\nsent {len(rows)}, delivered {len(set(keys))}, duplicates by key {duplicates}, "
          f"webhook requests {len(webhook.requests)} ({len(webhook.requests) - len(requests)} "
          f"refused or failed); test-budget keys: {', '.join(k.split('|')[-1] for k in model_keys)}"
          f"; Alertmanager alerts {len(alerts)}; {elapsed:.0f} s")
