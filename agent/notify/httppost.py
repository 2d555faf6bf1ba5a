"""One HTTP POST with the stdlib, every failure mapped to ``DeliveryError``.

Shared by the webhook and Alertmanager channels. Redirects are not followed: urllib
would turn a redirected POST into a body-less GET (301/302/303), and a 2xx from that
would count as a delivery that never happened.

Failures that no retry can cure are marked ``retryable=False`` (the outbox then keeps
the delivery as a dead letter): an HTTP 4xx other than 408 and 429, and a request that
cannot be put on the wire at all (a header value that is not Latin-1 or holds a
newline, a URL with characters HTTP cannot carry).
"""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from agent.notify.message import DeliveryError

__all__ = ["post", "tls_context"]

# Enough of an error response to say what went wrong, not enough to flood the outbox.
MAX_ERROR_BODY = 512
MAX_READ = 65536


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: object, code: int, msg: str,
                         headers: object, newurl: str) -> None:
        return None


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs, or only ``ca_file``'s.

    Raises:
        OSError, ssl.SSLError: if ``ca_file`` cannot be read or parsed.
    """
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float,
         context: ssl.SSLContext | None) -> int:
    """POST ``body`` to ``url``; return the 2xx status.

    Args:
        timeout_s: for connecting and for each read (s).
        context: the TLS context for https URLs (None: the default, verifying one).

    Raises:
        DeliveryError: for a refused or timed-out connection, a TLS failure, a non-2xx
            status, or a redirect; not retryable for a 4xx other than 408/429 and for a
            request that cannot be encoded.
    """
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if urlsplit(url).scheme == "https":
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            status = int(response.status)
            # Drain (a little of) the answer so the receiver sees a clean close.
            response.read(MAX_READ)
    except urllib.error.HTTPError as e:
        detail = _error_body(e)
        retryable = not (400 <= e.code < 500 and e.code not in (408, 429))
        raise DeliveryError(f"HTTP {e.code} {e.reason} from {url}{detail}",
                            retryable=retryable) from e
    except urllib.error.URLError as e:
        raise DeliveryError(f"cannot reach {url}: {e.reason}") from e
    except (ValueError, http.client.InvalidURL) as e:
        # http.client refuses a header or URL it cannot encode (UnicodeEncodeError is a
        # ValueError) before anything is sent: the same request fails the same way forever.
        raise DeliveryError(f"cannot send to {url}: the request cannot be encoded: {e}",
                            retryable=False) from e
    except (OSError, http.client.HTTPException) as e:
        # Timeouts while reading, resets, a server that closed without answering.
        raise DeliveryError(f"{url}: {type(e).__name__}: {e}") from e
    if not 200 <= status < 300:
        raise DeliveryError(f"HTTP {status} from {url}: expected a 2xx status")
    return status


def _error_body(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read(MAX_ERROR_BODY).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        return ""
    finally:
        e.close()
    return f": {text}" if text else ""
