"""The Alertmanager channel: the notification as an alert on Alertmanager's API v2.

Alertmanager forgets an alert at its ``endsAt``, so this is an "active" channel, as
Prometheus is a client: while a notification is unresolved the dispatcher re-sends it
every ``resend_s`` with ``endsAt = now + 4 x resend_s`` (Prometheus' ValidUntil; a few
lost re-sends do not resolve it), and once it is resolved sends it one last time with
``endsAt = now``. Labels are identical on every send (Alertmanager identifies an alert
by its label set), so a re-send after a crash updates the same alert.

A condition that clears arrives as a "resolved" notification naming the one it ends:
the outbox resolves that one, whose alert is then sent ended, and Alertmanager tells its
receivers it is resolved. The "resolved" notification itself is not posted: an alert of
its own, ended as it starts, would say nothing more.

The description states the fraction of the threshold the subject was at when the
event was evaluated, from the payload: a "will be met" at 3 % says 3 %, not the 100 %
it is projected to reach.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.notify.httppost import post, tls_context
from agent.notify.message import HOLD_RESENDS, Notification, rfc3339

__all__ = ["ALERTNAME", "AlertmanagerChannel", "alert", "alert_annotations", "alert_labels",
           "describe", "fraction_of", "percent"]

ALERTNAME = "FlopledgerThreshold"
USER_AGENT = "flopledger-notify/1"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _first(payload: dict[str, Any], *names: str) -> str:
    for name in names:
        text = _text(payload.get(name))
        if text:
            return text
    return ""


def fraction_of(payload: dict[str, Any]) -> float | None:
    """The fraction of the threshold reached, of the estimate the payload says it used
    (``fraction`` as a number, or per estimate with ``estimate_used``); None if absent
    or not a finite number."""
    value = payload.get("fraction")
    if isinstance(value, dict):
        value = value.get(_text(payload.get("estimate_used")) or "central")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return float(value) if math.isfinite(value) else None


def percent(fraction: float) -> str:
    """``0.034`` -> ``3.4%``, ``0.83`` -> ``83%``: two significant figures below 10 %,
    whole percents above (the payload's fractions have two significant figures)."""
    pct = fraction * 100
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.2g}%"


def describe(n: Notification) -> str:
    """The alert's description: where the subject stands and what the event says."""
    p = n.payload
    regime = _first(p, "regime_title") or n.regime
    fraction = fraction_of(p)
    who = f"{n.subject_type} {n.subject}"
    if n.kind == "will-be-met":
        basis = _first(p, "projection_basis")
        event = "projected to meet the threshold" + (
            f" at its planned end ({basis})" if basis and basis != "none" else "")
    elif n.kind == "resolved":
        event = ("no longer projected to meet the threshold" if n.level >= 1.0
                 else f"no longer at the {n.level:.0%} level")
    elif n.level >= 1.0:
        event = "threshold met"
    else:
        event = f"{n.level:.0%} level reached"
    if fraction is None:
        parts = [f"{who}: {regime}: {event}"]
    else:
        used = _first(p, "estimate_used")
        at = f"at {percent(fraction)} of {regime}" + (f" ({used} estimate)" if used else "")
        parts = [f"{who} {at}: {event}"]
    threshold = _first(p, "threshold", "threshold_flop")
    if threshold:
        parts.append(f"threshold {threshold}")
    estimate = _first(p, "estimate", "flop_2sf", "flop")
    if estimate:
        parts.append(f"estimate {estimate}")
    evaluated = _first(p, "evaluated_at")
    if evaluated:
        parts.append(f"evaluated {evaluated}")
    description = "; ".join(parts) + "."
    obligation = _first(p, "obligation")
    if obligation and n.kind != "resolved":
        description += " " + obligation
    return description


def alert_annotations(n: Notification) -> dict[str, str]:
    """summary, description, deadline, estimate, tree_head, from the payload where it
    has them (the payload is the caller's; missing fields are left out)."""
    p = n.payload
    deadline = _first(p, "deadline")
    if deadline and p.get("deadline_passed") is True:
        deadline = f"passed on {deadline}"
    out = {
        "summary": n.title,
        "description": _first(p, "description") or describe(n),
        "deadline": deadline,
        "estimate": _first(p, "estimate", "flop_2sf", "flop"),
        "tree_head": _first(p, "tree_head", "ledger"),
    }
    return {k: v for k, v in out.items() if v}


def alert_labels(n: Notification) -> dict[str, str]:
    """The alert's identity: the same for every send of one notification."""
    return {
        "alertname": ALERTNAME, "regime": n.regime, "subject_type": n.subject_type,
        "subject": n.subject, "level": f"{n.level:g}", "kind": n.kind,
        "severity": n.severity, "key": n.key,
    }


def alert(n: Notification, now_ns: int, resend_ns: int,
          generator_url: str | None = None) -> dict[str, Any]:
    """One API v2 alert for ``n`` sent at ``now_ns`` (ns since the Unix epoch).

    Ends at ``now_ns`` once resolved (or for a "resolved" notification), else
    ``HOLD_RESENDS`` re-send periods (``resend_ns``) later.
    """
    ended = n.resolved_ns is not None or n.kind == "resolved"
    # Alertmanager rejects an alert that ends before it starts.
    ends_ns = max(now_ns if ended else now_ns + HOLD_RESENDS * resend_ns, n.created_ns)
    out: dict[str, Any] = {
        "labels": alert_labels(n),
        "annotations": alert_annotations(n),
        "startsAt": rfc3339(n.created_ns),
        "endsAt": rfc3339(ends_ns),
    }
    if generator_url:
        out["generatorURL"] = generator_url
    return out


class AlertmanagerChannel:
    """POSTs ``[alert]`` to ``{url}/api/v2/alerts``; any 2xx is a delivery.

    Args:
        name: the channel's name (for logs).
        url: Alertmanager's base URL, e.g. ``http://alertmanager:9093``.
        resend_s: re-send period while unresolved (s); alerts are announced as lasting
            four of these.
        timeout_s: connect and read timeout (s).
        ca_file: verify the server against this CA bundle instead of the system's.
        generator_url: optional link shown by Alertmanager (a dashboard, say).
        clock_ns: wall clock (ns since the Unix epoch) for ``endsAt``.

    Raises:
        ValueError: if ``resend_s`` is not positive.
        OSError, ssl.SSLError: if ``ca_file`` cannot be loaded.
    """

    def __init__(self, name: str, url: str, *, resend_s: float = 60.0, timeout_s: float = 10.0,
                 ca_file: Path | None = None, generator_url: str | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        if resend_s <= 0:
            raise ValueError("resend_s: expected a number of seconds > 0")
        self.name = name
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self._resend_ns = round(resend_s * 1e9)
        self.timeout_s = timeout_s
        self.generator_url = generator_url
        self._context = tls_context(ca_file)
        self._clock_ns = clock_ns

    def __repr__(self) -> str:
        return f"AlertmanagerChannel({self.name!r}, {self.url!r})"

    @property
    def resend_ns(self) -> int:
        return self._resend_ns

    def deliver(self, n: Notification) -> None:
        """POST the alert (firing, or ended if resolved); nothing for a "resolved"
        notification that names the one it ends (that one's alert is sent ended).

        Raises:
            DeliveryError: if Alertmanager did not answer 2xx in time.
        """
        if n.resolves is not None:
            return
        doc = [alert(n, self._clock_ns(), self._resend_ns, self.generator_url)]
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        post(self.url, body, headers, self.timeout_s, self._context)
