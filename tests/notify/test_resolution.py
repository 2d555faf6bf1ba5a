"""A condition that clears: the "resolved" notification ends the alert it names, in the
outbox and at a real Alertmanager; alert descriptions state the fraction reached."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from agent.notify.alertmanager import (
    AlertmanagerChannel,
    alert,
    alert_annotations,
    alert_labels,
    describe,
    percent,
)
from agent.notify.dispatcher import Dispatcher
from agent.notify.message import Notification
from agent.notify.outbox import Outbox
from tests.agentproc import free_port
from tests.alertmanager import ALERTMANAGER, AlertmanagerSink, alertmanager, am_alerts, wait_until
from tests.alertmanager import when as parse_time
from tests.receivers import SECOND, T0, Clock, Recorder

PREFIX = "model:llama-70b|eu-art51-systemic-risk"
WILL_KEY = f"{PREFIX}|will-be-met"


def payload(fraction: dict[str, float] | float | None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "regime_title": "EU AI Act Art. 51 systemic risk", "threshold": "1.0e25 FLOP",
        "estimate_used": "central", "flop_2sf": "3.0e23 (2.0e23-4.0e23)",
        "projection_basis": "end time", "evaluated_at": "2026-11-30 12:00 UTC",
        "deadline": "2026-12-14", "obligation": "notify the Commission within two weeks",
        **extra}
    if fraction is not None:
        out["fraction"] = fraction
    return out


def will_be_met(fraction: dict[str, float] | float | None = None, created_ns: int = T0,
                **extra: Any) -> Notification:
    frac = {"low": 0.02, "central": 0.03, "high": 0.04} if fraction is None else fraction
    return Notification(key=WILL_KEY, kind="will-be-met", subject_type="model",
                        subject="llama-70b", regime="eu-art51-systemic-risk", level=1.0,
                        severity="critical", created_ns=created_ns,
                        payload=payload(frac, **extra))


def resolution(created_ns: int = T0, resolves: str = WILL_KEY) -> Notification:
    return Notification(key=f"{PREFIX}|will-be-met-resolved", kind="resolved",
                        subject_type="model", subject="llama-70b",
                        regime="eu-art51-systemic-risk", level=1.0, severity="info",
                        created_ns=created_ns,
                        payload=payload({"central": 0.031}, resolves=resolves, deadline=None))


def level(at: float, reached: float = 0.8) -> Notification:
    return Notification(key=f"{PREFIX}|level:{reached:g}", kind="level", subject_type="model",
                        subject="llama-70b", regime="eu-art51-systemic-risk", level=reached,
                        severity="info", created_ns=T0,
                        payload=payload({"low": at - 0.05, "central": at, "high": at + 0.05},
                                        deadline=None))


# ----------------------------------------------------------------------------- descriptions


def test_a_will_be_met_alert_states_the_fraction_reached_not_the_level() -> None:
    text = describe(will_be_met())
    assert text.startswith("model llama-70b at 3% of EU AI Act Art. 51 systemic risk "
                           "(central estimate): projected to meet the threshold at its "
                           "planned end (end time); threshold 1.0e25 FLOP;"), text
    assert "100%" not in text
    assert "evaluated 2026-11-30 12:00 UTC" in text
    # The estimate the evaluation used, not always the central one.
    high = describe(will_be_met(payload_fraction := {"central": 0.03, "high": 0.045},
                                estimate_used="high"))
    assert payload_fraction["high"] == 0.045
    assert "at 4.5% of" in high
    assert "(high estimate)" in high


def test_level_and_resolved_descriptions() -> None:
    text = describe(level(0.83))
    assert text.startswith("model llama-70b at 83% of EU AI Act Art. 51 systemic risk "
                           "(central estimate): 80% level reached;"), text
    assert describe(level(1.2, reached=1.0)).startswith(
        "model llama-70b at 120% of EU AI Act Art. 51 systemic risk (central estimate): "
        "threshold met;")
    resolved = describe(resolution())
    assert "at 3.1% of" in resolved
    assert "no longer projected to meet the threshold" in resolved
    assert "notify the Commission" not in resolved  # no obligation follows from it
    assert resolution().title == ("[info] model llama-70b is no longer projected to meet "
                                  "eu-art51-systemic-risk")
    # No fraction in the payload: the level is all that is said, never a made-up share.
    bare = Notification(key="k", kind="will-be-met", subject_type="run", subject="r",
                        regime="x", level=1.0, severity="critical", created_ns=T0,
                        payload={"threshold": "1e25 FLOP"})
    assert describe(bare) == ("run r: x: projected to meet the threshold; "
                              "threshold 1e25 FLOP.")
    for bad in (float("nan"), True, "3%", None):
        assert "%" not in describe(will_be_met({"central": bad}))  # type: ignore[dict-item]


def test_percent_keeps_two_significant_figures() -> None:
    assert [percent(f) for f in (0.0012, 0.03, 0.034, 0.099, 0.1, 0.83, 1.0, 2.5)] == [
        "0.12%", "3%", "3.4%", "9.9%", "10%", "83%", "100%", "250%"]


def test_a_passed_deadline_is_said_to_have_passed() -> None:
    assert alert_annotations(will_be_met())["deadline"] == "2026-12-14"
    passed = alert_annotations(will_be_met(deadline_passed=True))
    assert passed["deadline"] == "passed on 2026-12-14"
    assert "deadline" not in alert_annotations(resolution())


# ----------------------------------------------------------------------------- the outbox


def test_a_resolved_notification_ends_the_active_alert_it_names(tmp_path: Path) -> None:
    clock = Clock()
    am, hook = Recorder(resend_ns=60 * SECOND), Recorder()
    with Outbox(tmp_path / "ledger.sqlite", ["am", "hook"]) as outbox:
        dispatcher = Dispatcher(outbox, {"am": am, "hook": hook}, clock)
        assert outbox.enqueue(will_be_met(), now_ns=clock())
        assert dispatcher.run_once(clock()) == 2
        delivery = outbox.delivery(WILL_KEY, "am")
        assert delivery is not None
        assert delivery.state == "active"
        clock.advance(30)
        assert outbox.enqueue(resolution(clock()), now_ns=clock())
        stored = outbox.get(WILL_KEY)
        assert stored is not None
        assert stored.resolved_ns == clock()
        assert outbox.unresolved() == [resolution().key]
        clock.advance(1)
        dispatcher.run_once(clock())
        # The alert once more, ended; and the resolution itself on both channels.
        assert (am.sent[0].key, am.sent[0].resolved_ns) == (WILL_KEY, None)
        assert sorted((n.key, n.resolved_ns or 0) for n in am.sent[1:]) == [
            (WILL_KEY, clock() - SECOND), (resolution().key, 0)]
        assert hook.keys == [WILL_KEY, resolution().key]
        assert all(d.state == "done" for d in (outbox.delivery(WILL_KEY, "am"),
                                               outbox.delivery(resolution().key, "am")) if d)
        # Re-derived on every evaluation: enqueueing both again changes nothing.
        assert not outbox.enqueue(will_be_met())
        assert not outbox.enqueue(resolution())
        clock.advance(3600)
        assert dispatcher.run_once(clock()) == 0


def test_a_resolution_stored_first_resolves_what_it_names_when_it_comes(
        tmp_path: Path) -> None:
    with Outbox(tmp_path / "ledger.sqlite", ["am"]) as outbox:
        assert outbox.enqueue(resolution(), now_ns=T0)
        assert outbox.enqueue(will_be_met(), now_ns=T0 + SECOND)
        stored = outbox.get(WILL_KEY)
        assert stored is not None
        assert stored.resolved_ns == T0 + SECOND
        # Another key stays unresolved; a resolution naming nothing stored is harmless.
        assert outbox.enqueue(level(0.83))
        assert outbox.get(level(0.83).key) is not None
        assert level(0.83).key in outbox.unresolved()
        assert outbox.enqueue(Notification(
            key="other|resolved", kind="resolved", subject_type="run", subject="r",
            regime="x", level=1.0, severity="info", created_ns=T0,
            payload={"resolves": "never-enqueued"}))


def test_the_alertmanager_channel_posts_no_alert_for_a_resolution() -> None:
    # Nothing listens there: a POST would raise DeliveryError.
    channel = AlertmanagerChannel("am", f"http://127.0.0.1:{free_port()}", resend_s=1)
    channel.deliver(resolution())
    assert resolution().resolves == WILL_KEY
    assert will_be_met().resolves is None
    doc = alert(will_be_met().resolved(T0 + 5 * SECOND), T0 + 5 * SECOND, SECOND)
    assert doc["endsAt"] == "2025-06-15T15:06:45.000Z"


# ----------------------------------------------------------------------------- Alertmanager


@pytest.mark.skipif(ALERTMANAGER is None, reason=(
    "needs the prometheus-alertmanager binary on PATH (Debian's prometheus-alertmanager "
    "package, `make system-deps`)"))
def test_alertmanager_shows_the_alert_resolved_once_its_condition_clears(
        tmp_path: Path) -> None:
    sink = AlertmanagerSink()
    with contextlib.ExitStack() as stack:
        stack.callback(sink.close)
        am_url = stack.enter_context(alertmanager(tmp_path, sink.url))
        outbox = stack.enter_context(Outbox(tmp_path / "ledger.sqlite", ["am"]))
        channel = AlertmanagerChannel("am", am_url, resend_s=1)
        dispatcher = Dispatcher(outbox, {"am": channel}, poll_s=0.1)
        dispatcher.start()
        stack.callback(dispatcher.stop)
        firing = will_be_met(created_ns=time.time_ns())
        outbox.enqueue(firing)
        dispatcher.wake()
        alerts = wait_until(lambda: am_alerts(am_url).get(WILL_KEY), 15, "the alert")
        assert alerts["status"]["state"] == "active"
        assert alerts["labels"] == alert_labels(firing)
        assert "at 3% of EU AI Act" in alerts["annotations"]["description"]
        assert "100%" not in alerts["annotations"]["description"]
        wait_until(lambda: ("firing", alert_labels(firing)) in sink.alerts, 15,
                   "Alertmanager's firing notification")

        # The condition clears: the evaluation enqueues its resolution.
        cleared_ns = time.time_ns()
        outbox.enqueue(resolution(cleared_ns))
        dispatcher.wake()
        wait_until(lambda: WILL_KEY not in am_alerts(am_url), 15, "the alert to end")
        ended = wait_until(lambda: [a for a in sink.docs if a["status"] == "resolved"
                                    and a["labels"]["key"] == WILL_KEY], 15,
                           "Alertmanager's resolved notification")
        ends_at = parse_time(ended[0]["endsAt"]).timestamp()
        assert cleared_ns / 1e9 - 1 <= ends_at <= time.time()
        assert parse_time(ended[0]["startsAt"]).timestamp() == pytest.approx(
            firing.created_ns / 1e9, abs=1e-3)
        # No alert of its own for the resolution.
        assert all(a["labels"]["kind"] != "resolved" for a in sink.docs)
        assert set(am_alerts(am_url)) == set()
        wait_until(lambda: (d := outbox.delivery(resolution().key, "am")) is not None
                   and d.state == "done", 10, "the resolution marked delivered")
