"""End to end: notifications through a real Alertmanager and a flaky webhook, with crashes.

A producer process enqueues notifications into the outbox; a dispatcher process
(``tests/notify_worker.py``) delivers them to a real Alertmanager (which routes them to
a receiver in this process) and to a webhook receiver in this process that is first
down (connection refused), then answers 500, then accepts. The dispatcher is killed
with SIGKILL twice while the webhook holds a request it has received but not answered,
and started again. At the end:

- every notification arrived at the webhook at least once, correctly signed;
- the only duplicates are repeats of the same key (counted and printed);
- no level arrived under two different keys;
- Alertmanager's ``GET /api/v2/alerts`` shows every alert with the right labels, kept
  alive by re-sends, and a resolved one disappears and is notified as resolved.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from agent.notify.alertmanager import alert_labels
from agent.notify.message import Notification
from agent.notify.outbox import Outbox
from tests.alertmanager import (
    ALERTMANAGER,
    AlertmanagerSink,
    alertmanager,
    am_alerts,
    tail,
    wait_until,
    when,
)
from tests.notify_worker import BATCHES, key_of
from tests.paths import REPO
from tests.receivers import SECRET, Answering, Received, Receiver

RESEND_S = 2

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(ALERTMANAGER is None, reason=(
        "needs the prometheus-alertmanager binary on PATH (Debian's "
        "prometheus-alertmanager package, `make system-deps`)")),
]




class FlakyWebhook(Receiver):
    """Answers 500 until ``accepting``; can hold the n-th accepted request unanswered
    (the sender is killed meanwhile)."""

    def __init__(self) -> None:
        super().__init__(SECRET)
        self.accepting = False
        self.accepted = 0
        self.hold_at: int | None = None
        self.holding = threading.Event()
        self.release = threading.Event()
        self.held: list[Received] = []

    def decide(self, r: Received, index: int) -> int:
        if not self.accepting:
            return 500
        self.accepted += 1
        if self.accepted == self.hold_at:
            self.held.append(r)
        return 200

    def before_reply(self, r: Received) -> None:
        if any(r is h for h in self.held):
            self.holding.set()
            self.release.wait(20)

    def hold_next(self, n: int) -> None:
        """Hold the n-th request accepted from now on."""
        with self.lock:
            self.holding.clear()
            self.release.clear()
            self.hold_at = self.accepted + n












class Dispatchers:
    """Starts, kills and stops dispatcher processes, one at a time."""

    def __init__(self, tmp: Path, db: Path, config: Path) -> None:
        self.tmp, self.db, self.config = tmp, db, config
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0
        self.killed = 0
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    @property
    def log(self) -> Path:
        return self.tmp / f"dispatcher{self.started}.log"

    def start(self) -> None:
        self.started += 1
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.notify_worker", "dispatch", "--db", str(self.db),
                 "--config", str(self.config), "--backoff-base-s", "0.5",
                 "--backoff-cap-s", "2"],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.killed += 1
        self.proc = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.proc = None

    def produce(self, number: int) -> dict[str, bool]:
        done = subprocess.run(
            [sys.executable, "-m", "tests.notify_worker", "produce", "--db", str(self.db),
             "--config", str(self.config), "--batch", str(number)],
            capture_output=True, env=self.env, cwd=REPO, timeout=30, check=False)
        assert done.returncode == 0, done.stderr.decode()
        result: dict[str, bool] = json.loads(done.stdout)
        return result


def test_every_notification_arrives_despite_a_down_webhook_and_crashes(
        tmp_path: Path) -> None:
    started = time.monotonic()
    db = tmp_path / "ledger.sqlite"
    (tmp_path / "webhook.secret").write_bytes(SECRET + b"\n")
    hook = FlakyWebhook()          # not listening yet: connection refused
    sink = AlertmanagerSink()
    expected = {key_of(*spec): spec for b in (1, 2) for spec in BATCHES[b]}
    with contextlib.ExitStack() as stack:
        stack.callback(sink.close)
        stack.callback(hook.stop)
        stack.callback(hook.release.set)
        am_url = stack.enter_context(alertmanager(tmp_path, sink.url))
        config = tmp_path / "agent.toml"
        config.write_text(f"""
[notify]
poll_s = 0.2

[[notify.webhook]]
name = "hook"
url = "{hook.url}"
secret_file = "webhook.secret"
timeout_s = 10

[[notify.alertmanager]]
name = "am"
url = "{am_url}"
resend_s = {RESEND_S}
""")
        workers = Dispatchers(tmp_path, db, config)
        stack.callback(workers.stop)

        def logs() -> str:
            return "\n".join(f"--- dispatcher{i}\n{tail(tmp_path / f'dispatcher{i}.log')}"
                             for i in range(1, workers.started + 1))

        # 1. The webhook is down; Alertmanager gets everything regardless.
        workers.start()
        first = workers.produce(1)
        assert all(first.values())
        assert len(first) == 6
        wait_until(lambda: set(first) <= set(am_alerts(am_url)), 15,
                   f"batch 1 in Alertmanager\n{logs()}")
        time.sleep(1.0)   # a few refused connections

        # 2. The webhook comes up answering 500, then accepts; the first accepted
        # request is held unanswered while the dispatcher is killed.
        hook.start()
        wait_until(lambda: len(hook.requests) >= 4, 15, f"500s\n{logs()}")
        hook.hold_next(1)
        hook.accepting = True
        assert hook.holding.wait(15), logs()
        workers.kill()
        hook.release.set()

        # 3. More notifications while nothing delivers; batch 1 again is a no-op.
        second = workers.produce(2)
        assert sum(second.values()) == 4
        assert not any(second[k] for k in first)

        # 4. Restart; kill again in the middle of the third delivery; restart.
        hook.hold_next(3)
        workers.start()
        assert hook.holding.wait(20), logs()
        workers.kill()
        hook.release.set()
        workers.start()

        def all_arrived() -> bool:
            return {r.key for r in hook.delivered()} >= set(expected)
        wait_until(all_arrived, 30, f"every key at the webhook\n{logs()}")
        with Outbox(db) as outbox:
            wait_until(lambda: outbox.status()["hook"].delivered == len(expected), 10,
                       "the outbox to record every webhook delivery")
            status = outbox.status()

            # 5. Alertmanager: every alert, right labels, kept alive by re-sends.
            alerts = wait_until(lambda: (a := am_alerts(am_url)).keys() >= expected.keys()
                                and a, 10, "every alert in Alertmanager")
            stored: dict[str, Notification] = {}
            for key in expected:
                n = outbox.get(key)
                assert n is not None
                stored[key] = n
                assert alerts[key]["labels"] == alert_labels(n), key
                assert alerts[key]["status"]["state"] == "active"
            updated = {k: when(a["updatedAt"]) for k, a in alerts.items()}
            time.sleep(RESEND_S + 1.0)
            alerts = am_alerts(am_url)
            assert all(when(alerts[k]["updatedAt"]) > updated[k] for k in expected), \
                "active alerts were not re-sent"

            # 6. Resolve one: it leaves Alertmanager's active list and is notified resolved.
            resolved_key = key_of(*BATCHES[1][0])
            assert outbox.resolve(resolved_key)
            wait_until(lambda: resolved_key not in am_alerts(am_url), 10,
                       f"the resolved alert to end\n{logs()}")
            ended = ("resolved", alert_labels(stored[resolved_key]))
            wait_until(lambda: ended in sink.alerts, 10, "Alertmanager's resolved notification")
            [doc] = [a for a in sink.docs if a["status"] == "resolved"
                     and a["labels"]["key"] == resolved_key]
            assert when(doc["endsAt"]).timestamp() <= time.time()
            assert set(am_alerts(am_url)) == set(expected) - {resolved_key}
        assert workers.stop() == 0, logs()

    # Tally at the webhook.
    arrivals = hook.delivered()
    assert all(r.signature_ok for r in hook.requests)
    by_key = Counter(r.key for r in arrivals)
    duplicates = sum(c - 1 for c in by_key.values())
    bodies = [Notification.from_json(r.body) for r in arrivals]
    keys_per_level: dict[tuple[str, str, str, str, float], set[str]] = defaultdict(set)
    for n in bodies:
        keys_per_level[(n.subject_type, n.subject, n.regime, n.kind, n.level)].add(n.key)
    assert all(len(keys) == 1 for keys in keys_per_level.values()), keys_per_level
    assert set(by_key) == set(expected)
    failed = sum(1 for r in hook.requests if r.status >= 500)
    elapsed = time.monotonic() - started
    print(f"\n[notify-e2e] sent {len(expected)}, delivered {len(by_key)}, "
          f"duplicates by key {duplicates} ({len(arrivals)} accepted requests, {failed} "
          f"answered 500, {status['hook'].failed_attempts} failed attempts recorded "
          f"incl. refused connections; dispatcher killed {workers.killed}x, started "
          f"{workers.started}x; {elapsed:.1f} s)")
    # Each kill left one received-but-unmarked request: sent again under the same key.
    assert duplicates >= workers.killed
    assert status["hook"].failed_attempts > failed   # the refused connections count too
    assert status["am"].delivered == len(expected)


def test_a_hostile_name_arrives_intact_and_a_gone_webhook_stays_dead_across_a_restart(
        tmp_path: Path) -> None:
    """A model name in Cyrillic and Greek with a newline reaches a real Alertmanager and
    a webhook intact; a webhook answering 410 gets it once, and after the dispatcher is
    killed and started again it is still a dead letter, never sent again."""
    db = tmp_path / "ledger.sqlite"
    (tmp_path / "webhook.secret").write_bytes(SECRET + b"\n")
    name = "Модель-β\nzweite Zeile"
    n = Notification(key=f"model:{name}|eu-systemic-risk|level:0.8", kind="level",
                     subject_type="model", subject=name, regime="eu-systemic-risk",
                     level=0.8, severity="warning", created_ns=time.time_ns(),
                     payload={"threshold": "1e25 FLOP", "flop_2sf": "8.0e24"})
    hook, gone, sink = Receiver(SECRET), Answering(410), AlertmanagerSink()
    with contextlib.ExitStack() as stack:
        stack.callback(sink.close)
        stack.callback(hook.stop)
        stack.callback(gone.stop)
        hook.start()
        gone.start()
        am_url = stack.enter_context(alertmanager(tmp_path, sink.url))
        config = tmp_path / "agent.toml"
        config.write_text(f"""
[notify]
poll_s = 0.2

[[notify.webhook]]
name = "hook"
url = "{hook.url}"
secret_file = "webhook.secret"

[[notify.webhook]]
name = "gone"
url = "{gone.url}"
secret_file = "webhook.secret"

[[notify.alertmanager]]
name = "am"
url = "{am_url}"
resend_s = {RESEND_S}
""")
        with Outbox(db, ["hook", "gone", "am"]) as outbox:
            assert outbox.enqueue(n)
        workers = Dispatchers(tmp_path, db, config)
        stack.callback(workers.stop)

        def logs() -> str:
            return "\n".join(f"--- dispatcher{i}\n{tail(tmp_path / f'dispatcher{i}.log')}"
                             for i in range(1, workers.started + 1))

        workers.start()
        wait_until(lambda: [r.key for r in hook.delivered()] == [n.key], 15,
                   f"the webhook delivery\n{logs()}")
        alert = wait_until(lambda: am_alerts(am_url).get(n.key), 15,
                           f"the alert in Alertmanager\n{logs()}")
        with Outbox(db) as outbox:
            wait_until(lambda: outbox.status()["gone"].dead == 1, 15,
                       f"the dead letter\n{logs()}")
        assert alert["labels"]["subject"] == name
        assert alert["labels"] == alert_labels(n)
        [arrived] = hook.delivered()
        assert arrived.signature_ok
        assert json.loads(arrived.body.decode("utf-8"))["subject"] == name
        assert Notification.from_json(arrived.body) == n
        assert [r.status for r in gone.requests] == [410]
        wait_until(lambda: "kept as a dead letter" in tail(workers.log), 15,
                   f"the dead letter's log line\n{logs()}")

        # Killed and started again: the dead letter is still there, reported once at
        # start, and not sent; the alert keeps being re-sent meanwhile.
        workers.kill()
        workers.start()
        wait_until(lambda: "1 dead letter(s) in the outbox" in tail(workers.log), 15,
                   f"the restarted dispatcher to report the dead letter\n{logs()}")
        updated = when(am_alerts(am_url)[n.key]["updatedAt"])
        wait_until(lambda: when(am_alerts(am_url)[n.key]["updatedAt"]) > updated, 15,
                   f"a re-send from the restarted dispatcher\n{logs()}")
        assert workers.stop() == 0, logs()
        with Outbox(db) as outbox:
            state = outbox.delivery(n.key, "gone")
            assert state is not None
            assert (state.state, state.attempts) == ("dead", 1)
            assert "HTTP 410" in (state.last_error or "")
            assert outbox.status()["hook"].delivered == 1
        assert [r.status for r in gone.requests] == [410]
        assert len(hook.requests) == 1
