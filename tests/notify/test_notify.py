"""Notifications: the outbox, the channels, the dispatcher and the ``[notify]`` config.

Receivers are real servers on loopback (``http.server`` in a thread) and real
processes (``sys.executable``); time is an injected clock wherever backoff matters.
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.configfile import ConfigError, Problems
from agent.ledger.signing import load_or_create_key
from agent.ledger.store import Ledger
from agent.notify.alertmanager import ALERTNAME, AlertmanagerChannel, alert
from agent.notify.command import CommandChannel
from agent.notify.config import (
    NotifySettings,
    build_channels,
    parse_notify_config,
    read_secrets,
)
from agent.notify.dispatcher import Dispatcher
from agent.notify.message import DeliveryError, Notification, rfc3339
from agent.notify.outbox import Outbox
from agent.notify.webhook import WebhookChannel
from tests.agentproc import free_port
from tests.ledger_helpers import make_ledger, record
from tests.receivers import SECOND, SECRET, T0, Clock, Receiver, Recorder, note

# ----------------------------------------------------------------------------- receiver






@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=3).start()
    yield r
    r.stop()


# ----------------------------------------------------------------------------- message


def test_notification_json_is_canonical_and_round_trips() -> None:
    n = note(1)
    text = n.to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert text.startswith('{"created_ns":')
    assert ", " not in text
    assert Notification.from_json(text) == n
    assert "resolved_ns" not in text
    resolved = n.resolved(T0 + 5)
    assert Notification.from_json(resolved.to_json()) == resolved
    assert n.title == "[info] model llama-70b reached 80% of eu-systemic-risk"
    assert note(kind="will-be-met").title.endswith("is projected to meet eu-systemic-risk")
    assert resolved.title.endswith("(resolved)")


def test_notification_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="kind 'crossed'"):
        Notification("k", "crossed", "model", "m", "r", 0.5, "info", T0, {})
    with pytest.raises(ValueError, match="severity"):
        Notification("k", "level", "model", "m", "r", 0.5, "fatal", T0, {})
    with pytest.raises(ValueError, match=r"NaN|not JSON"):
        Notification("k", "level", "model", "m", "r", 0.5, "info", T0,
                     {"x": float("nan")}).to_json()


def test_rfc3339_keeps_milliseconds_exact() -> None:
    assert rfc3339(1_750_000_000_123_999_999) == "2025-06-15T15:06:40.123Z"


# ----------------------------------------------------------------------------- outbox


def test_enqueue_is_idempotent_and_survives_reopening(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    with Outbox(db, ["hook", "am"]) as outbox:
        assert outbox.enqueue(note()) is True
        assert outbox.enqueue(note()) is False
        # Same key, different content: still the first one (a level fires once).
        again = Notification(**{**note().to_dict(), "severity": "critical"})
        assert outbox.enqueue(again) is False
        stored = outbox.get(note().key)
        assert stored is not None
        assert stored.severity == "info"
    with Outbox(db, ["hook", "am"]) as outbox:
        assert outbox.enqueue(note()) is False
        assert [n.key for n, _ in outbox.pending("hook", T0)] == [note().key]
        assert [n.key for n, _ in outbox.pending("am", T0)] == [note().key]
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM notifications").fetchone()[0] == 1
        assert c.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 2
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_outbox_shares_the_ledger_file(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    ledger = make_ledger(db, checkpoints=2, close=False)
    with Outbox(db, ["hook"]) as outbox:
        assert outbox.enqueue(note())
        head = ledger.append([record(0, 100, 105)], T0 + 105 * SECOND)
        assert head is not None
        assert head.size == 5
        assert outbox.pending("hook", T0)
    ledger.close()
    # The ledger's own checks still pass on a file that also holds the outbox.
    reopened = Ledger(db, "node-1", load_or_create_key(tmp_path / "node.key"))
    assert reopened.size == 5
    reopened.close()


def test_backoff_doubles_to_the_cap_with_jitter_and_never_gives_up(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", ["hook"], rng=random.Random(7))
    outbox.enqueue(note())
    key = note().key
    now = T0
    delays = []
    for attempt in range(1, 31):
        assert [n.key for n, _ in outbox.pending("hook", now)] == [key], attempt
        due = outbox.mark_failed(key, "hook", now, f"HTTP 500 (attempt {attempt})")
        assert outbox.pending("hook", due - 1) == []
        delays.append((due - now) / SECOND)
        now = due
    for attempt, delay in enumerate(delays, start=1):
        full = min(2.0 * 2 ** (attempt - 1), 600.0)
        assert 0.75 * full <= delay <= full, (attempt, delay)
    assert delays[:4] == pytest.approx([2, 4, 8, 16], rel=0.25)
    assert max(delays) <= 600
    assert min(delays[9:]) >= 450
    state = outbox.delivery(key, "hook")
    assert state is not None
    assert (state.attempts, state.failures, state.streak, state.state) == (30, 30, 30, "pending")
    assert state.last_error == "HTTP 500 (attempt 30)"
    # A success resets the schedule.
    outbox.mark_delivered(key, "hook", now)
    assert outbox.pending("hook", now + 10**15) == []
    state = outbox.delivery(key, "hook")
    assert state is not None
    assert (state.streak, state.attempts, state.state) == (0, 31, "done")


def test_pending_is_per_channel_and_most_overdue_first(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", ["a", "b"])
    for i in (1, 2, 3):
        outbox.enqueue(note(i))
    first = note(1).key
    outbox.mark_failed(first, "a", T0, "down")
    outbox.mark_delivered(note(2).key, "a", T0)
    assert [n.key for n, _ in outbox.pending("a", T0)] == [note(3).key]
    assert [n.key for n, _ in outbox.pending("b", T0)] == [note(i).key for i in (1, 2, 3)]
    late = [(n.key, a) for n, a in outbox.pending("a", T0 + 3 * SECOND)]
    assert late == [(note(3).key, 0), (first, 1)]
    assert outbox.pending("b", T0, limit=2) != outbox.pending("b", T0, limit=3)
    assert outbox.pending("unconfigured", T0) == []


def test_active_channel_resends_until_resolved_then_ends_once(tmp_path: Path) -> None:
    clock = Clock()
    outbox = Outbox(tmp_path / "o.sqlite", ["am", "hook"])
    am, hook = Recorder(resend_ns=60 * SECOND), Recorder()
    dispatcher = Dispatcher(outbox, {"am": am, "hook": hook}, clock)
    outbox.enqueue(note())
    assert dispatcher.run_once(clock()) == 2
    state = outbox.delivery(note().key, "am")
    assert state is not None
    assert state.state == "active"
    assert state.active_until_ns == clock() + 4 * 60 * SECOND
    clock.advance(59)
    assert dispatcher.run_once(clock()) == 0
    clock.advance(1)
    assert dispatcher.run_once(clock()) == 1
    clock.advance(60)
    assert dispatcher.run_once(clock()) == 1
    assert len(am.sent) == 3
    assert len(hook.sent) == 1
    assert all(n.resolved_ns is None for n in am.sent)
    clock.advance(10)
    assert outbox.resolve(note().key, clock()) is True
    assert outbox.resolve(note().key, clock()) is False
    assert dispatcher.run_once(clock()) == 1
    assert am.sent[-1].resolved_ns == clock()
    assert len(hook.sent) == 1           # one-shot channels are not told twice
    clock.advance(3600)
    assert dispatcher.run_once(clock()) == 0
    state = outbox.delivery(note().key, "am")
    assert state is not None
    assert state.state == "done"
    assert outbox.unresolved() == []


def test_resolve_while_a_resend_is_in_flight_still_sends_the_resolve(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", ["am"])
    outbox.enqueue(note())
    key = note().key
    [(firing, _)] = outbox.pending("am", T0)
    outbox.resolve(key, T0 + 1)                       # meanwhile, on the sampler thread
    outbox.mark_delivered(key, "am", T0 + 2, resend_ns=60 * SECOND,
                          sent_resolved=firing.resolved_ns is not None)
    [(again, _)] = outbox.pending("am", T0 + 2)
    assert again.resolved_ns == T0 + 1
    outbox.mark_delivered(key, "am", T0 + 3, resend_ns=60 * SECOND, sent_resolved=True)
    assert outbox.pending("am", T0 + 10**15) == []


def test_resolved_kind_is_never_kept_active(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", ["am"])
    outbox.enqueue(note(kind="resolved"))
    outbox.mark_delivered(note().key, "am", T0, resend_ns=SECOND)
    assert outbox.pending("am", T0 + 10**12) == []


def test_active_state_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "o.sqlite"
    with Outbox(db, ["am"]) as outbox:
        outbox.enqueue(note())
        outbox.mark_delivered(note().key, "am", T0, resend_ns=60 * SECOND)
    with Outbox(db, ["am"]) as outbox:
        assert outbox.pending("am", T0 + 59 * SECOND) == []
        assert len(outbox.pending("am", T0 + 60 * SECOND)) == 1
        outbox.resolve(note().key, T0 + 61 * SECOND)
    with Outbox(db, ["am"]) as outbox:
        [(n, _)] = outbox.pending("am", T0 + 61 * SECOND)
        assert n.resolved_ns == T0 + 61 * SECOND


def test_status_and_history(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", ["hook", "am", "idle"])
    for i in (1, 2, 3):
        outbox.enqueue(note(i), now_ns=T0 + i)
    outbox.mark_delivered(note(1).key, "hook", T0 + 10)
    outbox.mark_failed(note(2).key, "hook", T0 + 11, "HTTP 503")
    outbox.mark_failed(note(2).key, "hook", T0 + 12, "connection refused")
    outbox.mark_delivered(note(1).key, "am", T0 + 10, resend_ns=SECOND)
    status = outbox.status()
    assert status["hook"].pending == 2
    assert status["hook"].delivered == 1
    assert status["hook"].failed_attempts == 2
    assert status["hook"].retrying == 1
    assert status["hook"].last_error == "connection refused"
    assert status["hook"].oldest_pending_ns == T0 + 2
    assert status["am"].active == 1
    assert status["am"].pending == 2
    assert status["idle"].pending == 3
    history = outbox.history(2)
    assert [h.notification.key for h in history] == [note(3).key, note(2).key]
    hook_state = {d.channel: d for d in history[1].deliveries}["hook"]
    assert (hook_state.attempts, hook_state.last_error) == (2, "connection refused")


# ----------------------------------------------------------------------------- dispatcher


def test_two_threads_enqueue_while_the_dispatcher_delivers(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", ["a", "b"])
    a, b = Recorder(), Recorder()
    dispatcher = Dispatcher(outbox, {"a": a, "b": b}, poll_s=0.05)
    dispatcher.start()
    results: list[list[bool]] = [[], []]

    def produce(slot: int) -> None:
        # Both threads enqueue the same keys: each key must be stored exactly once.
        for i in range(1, 151):
            results[slot].append(outbox.enqueue(note(i)))
            dispatcher.wake()

    threads = [threading.Thread(target=produce, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (len(a.keys) < 150 or len(b.keys) < 150):
        time.sleep(0.02)
    assert dispatcher.stop(5)
    assert sum(results[0]) + sum(results[1]) == 150
    expected = sorted(note(i).key for i in range(1, 151))
    # Nothing crashed, so at-least-once is exactly once here.
    assert sorted(a.keys) == expected
    assert sorted(b.keys) == expected
    assert outbox.status()["a"].delivered == 150
    assert outbox.status()["b"].pending == 0


def test_a_failing_channel_does_not_block_another(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", ["bad", "good", "buggy"])
    bad, good = Recorder(), Recorder()
    bad.failing = True

    class Buggy:
        resend_ns = None

        def deliver(self, n: Notification) -> None:
            raise RuntimeError("a bug in a channel")

    clock = Clock()
    dispatcher = Dispatcher(outbox, {"bad": bad, "buggy": Buggy(), "good": good}, clock)
    for i in (1, 2, 3):
        outbox.enqueue(note(i))
    assert dispatcher.run_once(clock()) == 3
    assert len(good.sent) == 3
    # One attempt per failing channel per pass, not one per notification.
    assert dispatcher.stats["bad"].failed == 1
    assert dispatcher.stats["buggy"].failed == 1
    assert "RuntimeError: a bug in a channel" in (outbox.status()["buggy"].last_error or "")


def test_a_hanging_channel_does_not_delay_another(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", ["slow", "fast"])
    release = threading.Event()

    class Hanging:
        resend_ns = None

        def deliver(self, n: Notification) -> None:
            release.wait(10)

    fast = Recorder()
    dispatcher = Dispatcher(outbox, {"slow": Hanging(), "fast": fast}, poll_s=0.05)
    dispatcher.start()
    try:
        for i in (1, 2):
            outbox.enqueue(note(i))
            dispatcher.wake()
        deadline = time.monotonic() + 5
        while len(fast.keys) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(fast.keys) == 2
    finally:
        release.set()
        assert dispatcher.stop(5)


# ----------------------------------------------------------------------------- webhook


def test_webhook_retries_until_the_receiver_succeeds(tmp_path: Path,
                                                     receiver: Receiver) -> None:
    clock = Clock()
    outbox = Outbox(tmp_path / "o.sqlite", ["hook"], rng=random.Random(1))
    hook = WebhookChannel("hook", receiver.url, SECRET, timeout_s=5, clock_ns=clock)
    dispatcher = Dispatcher(outbox, {"hook": hook}, clock)
    outbox.enqueue(note())
    delivered = 0
    for _ in range(10):
        delivered += dispatcher.run_once(clock())
        state = outbox.delivery(note().key, "hook")
        assert state is not None
        if state.state == "done":
            break
        clock.ns = state.next_attempt_ns
    assert delivered == 1
    assert [r.status for r in receiver.requests] == [500, 500, 500, 200]
    assert all(r.signature_ok and r.key == note().key for r in receiver.requests)
    assert {r.body for r in receiver.requests} == {note().to_json().encode()}
    last = receiver.requests[-1].headers
    assert last["Content-Type"] == "application/json"
    assert last["X-Flopledger-Timestamp"] == str(clock() // SECOND)
    assert state is not None
    assert state.attempts == 4
    assert state.failures == 3
    assert "HTTP 500" in (outbox.status()["hook"].last_error or "")
    assert outbox.status()["hook"].delivered == 1
    assert outbox.status()["hook"].pending == 0


def test_webhook_signature_uses_the_shared_secret(receiver: Receiver) -> None:
    receiver.fail_first = 0
    with pytest.raises(DeliveryError, match="HTTP 401"):
        WebhookChannel("hook", receiver.url, b"another secret").deliver(note())
    WebhookChannel("hook", receiver.url, SECRET).deliver(note())
    assert [r.signature_ok for r in receiver.requests] == [False, True]


def test_webhook_failures_are_delivery_errors() -> None:
    port = free_port()
    with pytest.raises(DeliveryError, match="cannot reach"):
        WebhookChannel("hook", f"http://127.0.0.1:{port}/", SECRET).deliver(note())

    class Silent(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            time.sleep(1.5)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # where urllib would go, dropping the body
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    for handler, match in ((Silent, "timed out"), (Redirect, "HTTP 302")):
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/"
            with pytest.raises(DeliveryError, match=match):
                WebhookChannel("hook", url, SECRET, timeout_s=0.3).deliver(note())
        finally:
            server.shutdown()
            server.server_close()


def test_webhook_over_https_verifies_the_server(tmp_path: Path) -> None:
    import ssl

    from tests.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/hook"
    try:
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            WebhookChannel("hook", url, SECRET, timeout_s=5).deliver(note())
        WebhookChannel("hook", url, SECRET, timeout_s=5, ca_file=pki.ca_cert).deliver(note())
    finally:
        server.shutdown()
        server.server_close()
    assert received == [note().to_json().encode()]


# ----------------------------------------------------------------------------- alertmanager


def test_alertmanager_alert_document() -> None:
    n = note()
    now = T0 + 30 * SECOND
    firing = alert(n, now, 60 * SECOND, "https://grafana.example/d/flop")
    assert firing["labels"] == {
        "alertname": ALERTNAME, "regime": "eu-systemic-risk", "subject_type": "model",
        "subject": "llama-70b", "level": "0.8", "kind": "level", "severity": "info",
        "key": n.key}
    assert firing["startsAt"] == rfc3339(T0)
    assert firing["endsAt"] == rfc3339(now + 240 * SECOND)
    assert firing["generatorURL"] == "https://grafana.example/d/flop"
    a = firing["annotations"]
    assert a["summary"] == n.title
    assert a["deadline"] == "2025-07-01"
    assert a["estimate"] == "8.0e24 (7.0e24-9.0e24)"
    assert json.loads(a["tree_head"]) == {"size": 12, "root": "ab" * 32}
    assert "1e25 FLOP" in a["description"]
    ended = alert(n.resolved(now), now, 60 * SECOND)
    assert ended["endsAt"] == rfc3339(now)
    assert ended["labels"] == firing["labels"]
    assert "generatorURL" not in ended


def test_alertmanager_channel_posts_one_alert_to_api_v2() -> None:
    got: list[tuple[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append((self.path, json.loads(self.rfile.read(
                int(self.headers["Content-Length"])))))
            self.send_response(200 if len(got) > 1 else 400)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    clock = Clock(T0 + 5 * SECOND)
    channel = AlertmanagerChannel("am", f"http://127.0.0.1:{server.server_address[1]}/",
                                  resend_s=15, clock_ns=clock)
    try:
        with pytest.raises(DeliveryError, match="HTTP 400") as info:
            channel.deliver(note())
        assert info.value.retryable is False
        channel.deliver(note())
    finally:
        server.shutdown()
        server.server_close()
    assert channel.resend_ns == 15 * SECOND
    path, body = got[-1]
    assert path == "/api/v2/alerts"
    assert isinstance(body, list)
    assert len(body) == 1
    assert body[0]["endsAt"] == rfc3339(T0 + 65 * SECOND)


# ----------------------------------------------------------------------------- command


def test_command_hook_gets_the_json_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "got.json"
    script = ("import os, sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read());"
              " open(sys.argv[1] + '.env', 'w').write(os.environ['FLOPLEDGER_KEY'])")
    CommandChannel("pager", [sys.executable, "-c", script, str(out)]).deliver(note())
    assert out.read_bytes() == note().to_json().encode()
    assert Path(str(out) + ".env").read_text() == note().key


def test_command_hook_failures(tmp_path: Path) -> None:
    failing = [sys.executable, "-c",
               "import sys; sys.stdin.read(); sys.stderr.write('no route to pager\\n');"
               " sys.exit(3)"]
    with pytest.raises(DeliveryError, match="exited with status 3: no route to pager"):
        CommandChannel("pager", failing).deliver(note())
    started = time.monotonic()
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(DeliveryError, match=r"timed out after 0\.5 s"):
        CommandChannel("pager", sleeper, timeout_s=0.5).deliver(note())
    assert time.monotonic() - started < 10
    with pytest.raises(DeliveryError, match="cannot run"):
        CommandChannel("pager", [str(tmp_path / "missing")]).deliver(note())


def test_command_hook_through_the_outbox(tmp_path: Path) -> None:
    flag = tmp_path / "up"
    log = tmp_path / "log.jsonl"
    script = ("import os, sys, pathlib; body = sys.stdin.read();"
              f" sys.exit(1) if not os.path.exists({str(flag)!r}) else None;"
              f" open({str(log)!r}, 'a').write(body + '\\n')")
    clock = Clock()
    outbox = Outbox(tmp_path / "o.sqlite", ["pager"])
    dispatcher = Dispatcher(
        outbox, {"pager": CommandChannel("pager", [sys.executable, "-c", script])}, clock)
    outbox.enqueue(note(1))
    outbox.enqueue(note(2))
    assert dispatcher.run_once(clock()) == 0
    flag.touch()
    clock.advance(2)
    assert dispatcher.run_once(clock()) == 2
    lines = log.read_text().splitlines()
    assert sorted(Notification.from_json(x).key for x in lines) == [note(1).key, note(2).key]


# ----------------------------------------------------------------------------- config


def parse(raw: dict[str, Any], base: Path) -> tuple[NotifySettings, list[tuple[str, str]]]:
    problems = Problems(base / "agent.toml")
    settings = parse_notify_config(raw, problems, base)
    return settings, problems.items


def test_config_full_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "webhook.secret").write_text("s3cret\n")
    monkeypatch.setenv("FLOPLEDGER_TEST_SECRET", "from-env")
    hook = tmp_path / "notify-compliance"
    hook.write_text("#!/bin/sh\ncat >/dev/null\n")
    hook.chmod(0o755)
    raw = {"notify": {
        "poll_s": 0.5,
        "webhook": [
            {"name": "compliance", "url": "https://hooks.example/flopledger",
             "secret_file": "webhook.secret", "timeout_s": 10},
            {"name": "backup", "url": "http://127.0.0.1:9/x",
             "secret_env": "FLOPLEDGER_TEST_SECRET"}],
        "alertmanager": [{"name": "am", "url": "http://alertmanager:9093", "resend_s": 30}],
        "command": [{"name": "pager", "argv": ["./notify-compliance", "--json"],
                     "timeout_s": 30}],
    }}
    settings, problems = parse(raw, tmp_path)
    assert problems == []
    assert settings.poll_s == 0.5
    assert settings.channel_names == ("compliance", "backup", "am", "pager")
    assert read_secrets(settings) == {"compliance": b"s3cret", "backup": b"from-env"}
    assert "s3cret" not in repr(settings)
    assert settings.alertmanagers[0].resend_s == 30
    assert settings.commands[0].argv == (str(hook), "--json")
    channels = build_channels(settings)
    assert list(channels) == list(settings.channel_names)
    assert channels["am"].resend_ns == 30 * SECOND
    assert channels["compliance"].resend_ns is None
    assert parse({}, tmp_path) == (NotifySettings(), [])


def test_config_reports_every_bad_key_at_once(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOPLEDGER_UNSET_SECRET", raising=False)
    (tmp_path / "empty.secret").write_text("\n")
    raw = {"notify": {
        "poll_s": 0,
        "retries": 3,
        "webhook": [
            {"name": "compliance", "url": "ftp://hooks.example", "timeout_s": -1},
            {"name": "compliance", "url": "https://ok.example", "secret_file": "nope.secret",
             "ca_file": "missing-ca.pem"},
            {"name": "w3", "url": "https://ok.example", "secret_env": "FLOPLEDGER_UNSET_SECRET"},
            {"name": "w4", "url": "https://ok.example", "secret_file": "empty.secret",
             "secret_env": "X"},
            "not a table",
        ],
        "alertmanager": [{"url": "http://am:9093/api/v2/alerts", "resend_s": 0.1,
                          "verify": False}],
        "command": [{"name": "pager", "argv": "notify-compliance --json"},
                    {"name": "bad name!", "argv": ["/nonexistent/notify"], "timeout_s": "30"}],
    }}
    _, problems = parse(raw, tmp_path)
    keys = [k for k, _ in problems]
    assert keys == [
        "notify.retries",
        "notify.poll_s",
        "notify.webhook[0].url",
        "notify.webhook[0].secret_file",
        "notify.webhook[0].timeout_s",
        "notify.webhook[1].name",
        "notify.webhook[1].ca_file",
        "notify.webhook[3].secret_env",
        "notify.webhook[4]",
        "notify.alertmanager[0].verify",
        "notify.alertmanager[0].name",
        "notify.alertmanager[0].url",
        "notify.alertmanager[0].resend_s",
        "notify.command[0].argv",
        "notify.command[1].name",
        "notify.command[1].argv",
        "notify.command[1].timeout_s",
    ], problems
    expected = dict(problems)
    assert "taken" in expected["notify.webhook[1].name"]
    assert "without /api/v2/alerts" in expected["notify.alertmanager[0].url"]
    _, problems = parse({"notify": {"webhook": {"name": "x"}}}, tmp_path)
    assert problems == [("notify.webhook", "an array of tables ([[notify.webhook]])")]
    _, problems = parse({"notify": []}, tmp_path)
    assert problems == [("notify", "a table")]


def test_secrets_are_read_when_the_channels_are_built_not_when_parsed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOPLEDGER_UNSET_SECRET", raising=False)
    (tmp_path / "empty.secret").write_text("\n")
    (tmp_path / "good.secret").write_text("s3cret\r\n")
    raw = {"notify": {"webhook": [
        {"name": "w1", "url": "https://ok.example", "secret_file": "nope.secret"},
        {"name": "w2", "url": "https://ok.example", "secret_env": "FLOPLEDGER_UNSET_SECRET"},
        {"name": "w3", "url": "https://ok.example", "secret_file": "empty.secret"},
        {"name": "w4", "url": "https://ok.example", "secret_file": "good.secret"},
    ]}}
    settings, problems = parse(raw, tmp_path)
    assert problems == []  # where the secrets are is all loading needs
    assert settings.channel_names == ("w1", "w2", "w3", "w4")
    config = tmp_path / "agent.toml"
    for build in (lambda: read_secrets(settings, config),
                  lambda: build_channels(settings, config)):
        with pytest.raises(ConfigError) as e:
            build()
        assert e.value.path == config
        found = dict(e.value.problems)
        assert list(found) == ["notify.webhook[0].secret_file",
                               "notify.webhook[1].secret_env",
                               "notify.webhook[2].secret_file"]
        assert f"{tmp_path / 'nope.secret'}: No such file" in found[
            "notify.webhook[0].secret_file"]
        assert "FLOPLEDGER_UNSET_SECRET" in found["notify.webhook[1].secret_env"]
        assert "is empty" in found["notify.webhook[2].secret_file"]
    monkeypatch.setenv("FLOPLEDGER_UNSET_SECRET", "from-env")
    (tmp_path / "nope.secret").write_text("a")
    (tmp_path / "empty.secret").write_text("b\n")
    assert read_secrets(settings) == {"w1": b"a", "w2": b"from-env", "w3": b"b",
                                      "w4": b"s3cret"}
    assert list(build_channels(settings)) == ["w1", "w2", "w3", "w4"]

