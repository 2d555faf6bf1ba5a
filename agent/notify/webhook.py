"""The webhook channel: POST the notification's JSON, signed with a shared secret.

Headers:

- ``X-Flopledger-Key``: the idempotency key, percent-encoded (UTF-8): printable ASCII
  other than ``%`` and space passes unchanged, so a plain key reads as itself; decode
  with ``urllib.parse.unquote`` (:func:`key_from_header`). A receiver that already has
  the key answers 2xx and does nothing (delivery is at-least-once). The body carries
  the key too, as JSON, and is what the signature covers.
- ``X-Flopledger-Signature``: ``sha256=<hex HMAC-SHA256 of the exact body>``.
- ``X-Flopledger-Timestamp``: when this attempt was sent, whole seconds since the Unix
  epoch. Not covered by the signature; the signed body carries ``created_ns`` and the
  key, so a replayed request is the same notification again, which receivers dedupe.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote

from agent.notify.httppost import post, tls_context
from agent.notify.message import DeliveryError, Notification

__all__ = ["KEY_HEADER", "SIGNATURE_HEADER", "WebhookChannel", "header_key", "key_from_header",
           "sign", "verify"]

KEY_HEADER = "X-Flopledger-Key"
SIGNATURE_HEADER = "X-Flopledger-Signature"
TIMESTAMP_HEADER = "X-Flopledger-Timestamp"
USER_AGENT = "flopledger-notify/1"

# Keys are built from run and model names, which may hold any character: a header must
# be Latin-1 (http.client refuses anything else, forever) and a newline would end it.
# Space is escaped too, since header parsers strip it at either end.
_KEY_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def header_key(key: str) -> str:
    """``key`` as the ``X-Flopledger-Key`` value: percent-encoded UTF-8, pure ASCII.

    Raises:
        UnicodeEncodeError: for a key holding a lone surrogate (not UTF-8).
    """
    return quote(key, safe=_KEY_SAFE)


def key_from_header(value: str) -> str:
    """The key an ``X-Flopledger-Key`` value carries (inverse of :func:`header_key`)."""
    return unquote(value)


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the right signature of ``body`` (constant-time compare)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


class WebhookChannel:
    """POSTs each notification once to ``url``; any 2xx is a delivery.

    Args:
        name: the channel's name (for logs).
        url: an http or https URL.
        secret: the shared HMAC secret (bytes, never logged).
        timeout_s: connect and read timeout (s).
        ca_file: verify the server against this CA bundle instead of the system's.
        clock_ns: wall clock for the timestamp header (ns since the Unix epoch).

    Raises:
        OSError, ssl.SSLError: if ``ca_file`` cannot be loaded.
    """

    resend_ns: int | None = None

    def __init__(self, name: str, url: str, secret: bytes, *, timeout_s: float = 10.0,
                 ca_file: Path | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.name = name
        self.url = url
        self._secret = secret
        self.timeout_s = timeout_s
        self._context = tls_context(ca_file)
        self._clock_ns = clock_ns

    def __repr__(self) -> str:
        return f"WebhookChannel({self.name!r}, {self.url!r})"

    def deliver(self, n: Notification) -> None:
        """POST the notification.

        Raises:
            DeliveryError: if the receiver did not answer 2xx in time; not retryable
                for a 4xx other than 408/429 or a key that cannot be encoded.
        """
        body = n.to_json().encode()
        try:
            key = header_key(n.key)
        except UnicodeEncodeError as e:
            raise DeliveryError(f"cannot encode the key for the {KEY_HEADER} header: {e}",
                                retryable=False) from e
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            KEY_HEADER: key,
            SIGNATURE_HEADER: sign(self._secret, body),
            TIMESTAMP_HEADER: str(self._clock_ns() // 1_000_000_000),
        }
        post(self.url, body, headers, self.timeout_s, self._context)
