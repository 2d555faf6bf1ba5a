"""What is notified: one threshold event, identified by a caller-built idempotency key.

A notification is immutable once enqueued: its canonical JSON is the body every channel
sends and the bytes the webhook signature covers, so a re-send after a crash is
byte-for-byte the first send and receivers can dedupe on ``key``. Only the outbox's
"resolved" mark travels beside it (``resolved_ns``), for channels that keep an alert
active at the receiver (Alertmanager) and must end it explicitly.

A condition that clears is itself notified: a notification of kind ``"resolved"``
whose payload names the key of the notification it ends (``payload["resolves"]``).
One-shot channels deliver it like any other; the outbox also marks the notification it
names resolved, so active channels end that alert.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

__all__ = [
    "HOLD_RESENDS",
    "KINDS",
    "SEVERITIES",
    "SUBJECT_TYPES",
    "Channel",
    "DeliveryError",
    "Notification",
    "rfc3339",
]

KINDS = ("level", "will-be-met", "resolved")
SUBJECT_TYPES = ("run", "model")
SEVERITIES = ("info", "warning", "critical")

# An active alert is announced as lasting four re-send intervals, as Prometheus does
# (ValidUntil = now + 4 x resend delay): two or three lost re-sends do not resolve it.
HOLD_RESENDS = 4


class DeliveryError(Exception):
    """A channel could not deliver a notification.

    Attributes:
        retryable: True (the default) when it may succeed later (receiver down, HTTP
            5xx, 408, 429, a timeout): the outbox retries it with backoff. False when no
            number of tries can succeed as things stand (any other HTTP 4xx, a request
            that cannot be encoded, a program that cannot be executed): the delivery
            becomes a dead letter, kept in the outbox with this message as its reason
            and counted, never retried in silence.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Notification:
    """One event to deliver on every configured channel, at least once.

    Attributes:
        key: idempotency key built by the caller, stable across restarts, e.g.
            ``"model:llama-70b|eu-systemic-risk|level:0.8"``.
        kind: ``"level"``, ``"will-be-met"`` or ``"resolved"``.
        subject_type: ``"run"`` or ``"model"``.
        subject: the run's or model's name.
        regime: the threshold regime's key.
        level: fraction of the threshold this event is about (0.8 = 80 %).
        severity: ``"info"``, ``"warning"`` or ``"critical"``.
        created_ns: when the event was created, ns since the Unix epoch.
        payload: JSON-serialisable details, opaque to delivery.
        resolved_ns: set by the outbox when the caller resolved the event (ns since the
            Unix epoch); not part of the stored notification.
    """

    key: str
    kind: str
    subject_type: str
    subject: str
    regime: str
    level: float
    severity: str
    created_ns: int
    payload: dict[str, Any] = field(default_factory=dict, hash=False)
    resolved_ns: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.key:
            problems.append("an empty key")
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} not in {KINDS}")
        if self.subject_type not in SUBJECT_TYPES:
            problems.append(f"subject_type {self.subject_type!r} not in {SUBJECT_TYPES}")
        if self.severity not in SEVERITIES:
            problems.append(f"severity {self.severity!r} not in {SEVERITIES}")
        if problems:
            raise ValueError(f"notification {self.key!r}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (``resolved_ns`` only once resolved)."""
        out: dict[str, Any] = {
            "key": self.key, "kind": self.kind, "subject_type": self.subject_type,
            "subject": self.subject, "regime": self.regime, "level": self.level,
            "severity": self.severity, "created_ns": self.created_ns,
            "payload": self.payload,
        }
        if self.resolved_ns is not None:
            out["resolved_ns"] = self.resolved_ns
        return out

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces, ASCII only, so equal notifications
        give equal bytes.

        Raises:
            ValueError: if the payload holds NaN or infinity (not JSON).
            TypeError: if the payload holds something that is not JSON-serialisable.
        """
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Notification:
        """Parse what :meth:`to_json` wrote.

        Raises:
            ValueError: for malformed JSON or fields (``json.JSONDecodeError`` is one).
            KeyError: for a missing field.
        """
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("payload", {}), dict):
            raise ValueError("a notification is a JSON object with an object payload")
        resolved = doc.get("resolved_ns")
        return cls(
            key=str(doc["key"]), kind=str(doc["kind"]), subject_type=str(doc["subject_type"]),
            subject=str(doc["subject"]), regime=str(doc["regime"]), level=float(doc["level"]),
            severity=str(doc["severity"]), created_ns=int(doc["created_ns"]),
            payload=dict(doc.get("payload", {})),
            resolved_ns=int(resolved) if resolved is not None else None,
        )

    def resolved(self, at_ns: int) -> Notification:
        """A copy marked resolved at ``at_ns`` (ns since the Unix epoch)."""
        return replace(self, resolved_ns=at_ns)

    @property
    def resolves(self) -> str | None:
        """For a "resolved" notification, the key of the notification it ends (from
        ``payload["resolves"]``); None otherwise."""
        key = self.payload.get("resolves") if self.kind == "resolved" else None
        return key if isinstance(key, str) and key else None

    @property
    def title(self) -> str:
        """One summary line, e.g. ``[warning] model llama-70b reached 80% of
        eu-systemic-risk``."""
        who = f"{self.subject_type} {self.subject}"
        if self.kind == "will-be-met":
            what = f"is projected to meet {self.regime}"
        elif self.kind == "resolved" and self.level >= 1.0:
            what = f"is no longer projected to meet {self.regime}"
        elif self.kind == "resolved":
            what = f"no longer at {self.level:.0%} of {self.regime}"
        else:
            what = f"reached {self.level:.0%} of {self.regime}"
        ended = " (resolved)" if self.resolved_ns is not None and self.kind != "resolved" else ""
        return f"[{self.severity}] {who} {what}{ended}"


class Channel(Protocol):
    """A way of delivering notifications (webhook, Alertmanager, command hook).

    ``resend_ns`` is None for a channel that delivers each notification once; for an
    "active" channel it is the re-send period (ns) while the notification is unresolved.
    """

    @property
    def resend_ns(self) -> int | None: ...

    def deliver(self, n: Notification) -> None:
        """Deliver one notification.

        Raises:
            DeliveryError: if it was not (or may not have been) delivered.
        """
        ...


def rfc3339(ns: int) -> str:
    """ns since the Unix epoch -> RFC 3339 in UTC with millisecond precision."""
    # Whole seconds and milliseconds apart: a float of ns/1e9 loses the last digits.
    t = dt.datetime.fromtimestamp(ns // 1_000_000_000, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ns // 1_000_000 % 1000:03d}Z"
