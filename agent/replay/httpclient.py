"""GETs of a Prometheus-compatible HTTP API, and every way they fail as one line.

Only what Prometheus, Thanos, Mimir and VictoriaMetrics all answer alike is used:
``GET <base>/api/v1/<endpoint>``, the JSON envelope (``status``, ``data``, ``errorType``,
``error``, ``warnings``) and gzip. ``<base>`` is the server's URL with its path prefix
(``https://mimir.example/prometheus``). Credentials go in headers (bearer token or
basic auth, or any header such as Mimir's ``X-Scope-OrgID``), never in what is shown:
:attr:`PromClient.url` is the URL without them. Redirects are followed only within
the same scheme, host and port, so credentials never travel to another server.

Failures raise :class:`ServerError` with a line that says what to do; a query the
server refuses as too large (Prometheus' 11,000 points per series, ``--query.max-samples``,
VictoriaMetrics' ``-search.maxPointsPerTimeseries``, Mimir's and Thanos' limits) raises
:class:`TooLargeError`, which the caller answers by splitting it. Answers 502, 503 and 504
(a proxy or a query frontend under load) are retried a few times.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_RETRY_STATUS = frozenset({502, 503, 504})
_RETRY_WAIT_S = (0.5, 2.0)
# How servers word a refusal of the query's size (Prometheus, Thanos, Mimir, VM).
_TOO_LARGE = re.compile(r"resolution|too many|exceed|limit|maxPoints|max.?samples",
                        re.IGNORECASE)
_ERROR_BODY_BYTES = 64 * 1024


class ServerError(Exception):
    """The server could not be asked or refused the question; the message is one line
    naming the URL (without credentials)."""


class TooLargeError(ServerError):
    """The server refused a query as too large (points, samples, series, range)."""


@dataclass(frozen=True, slots=True)
class Auth:
    """How to reach the server.

    Attributes:
        bearer_token: sent as ``Authorization: Bearer``.
        basic: (user, password) sent as ``Authorization: Basic``.
        ca_file: PEM certificates to trust instead of the system's.
        insecure: do not check the server's certificate at all.
        headers: more request headers, (name, value).
    """

    bearer_token: str | None = None
    basic: tuple[str, str] | None = None
    ca_file: Path | None = None
    insecure: bool = False
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful answer: its ``data``, the server's warnings, its size (as sent) and
    the seconds from the request to its last byte (the server's and the network's)."""

    data: Any
    warnings: tuple[str, ...]
    bytes_read: int
    wait_s: float


def split_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """The API base (scheme, host, port, path prefix, no trailing slash) and the
    credentials the URL carried, if any.

    Raises:
        ValueError: for a URL that is not http(s)://host[:port][/prefix].
    """
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a URL: {url!r} ({e})") from e
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"not an http:// or https:// URL: {_safe(url)!r}")
    if not parts.hostname:
        raise ValueError(f"no host in the URL {_safe(url)!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"the URL {_safe(url)!r} has a query or fragment: give the server's "
                         "root (or its path prefix), the replay adds /api/v1/...")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path.rstrip("/")
    if path.endswith("/api/v1"):
        path = path[: -len("/api/v1")]
    creds = None
    if parts.username is not None:
        creds = (urllib.parse.unquote(parts.username),
                 urllib.parse.unquote(parts.password or ""))
    return f"{parts.scheme}://{netloc}{path}", creds


def _safe(url: str) -> str:
    """The URL with any credentials cut out, for messages."""
    return re.sub(r"//[^/@]*@", "//", url)


class _SameOrigin(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same scheme, host and port: the request's
    credentials must not reach another server."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                         msg: str, headers: http.client.HTTPMessage,
                         newurl: str) -> urllib.request.Request | None:
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if (old.scheme, old.netloc) != (new.scheme, new.netloc):
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class PromClient:
    """GETs of ``<base>/api/v1/...``; safe to share between threads.

    Args:
        url: the server's URL (``http(s)://host[:port][/prefix]``; credentials in it are
            basic auth unless ``auth`` has some).
        auth: credentials, TLS trust and extra headers.
        timeout_s: per request.

    Raises:
        ValueError: for a bad URL, or an unreadable ``ca_file``.
    """

    def __init__(self, url: str, auth: Auth, timeout_s: float = 120.0) -> None:
        self.url, creds = split_url(url)
        self.timeout_s = timeout_s
        self.requests = 0
        self.retries = 0
        headers = {"Accept": "application/json", "Accept-Encoding": "gzip",
                   "User-Agent": "flopledger-replay"}
        basic = auth.basic or (creds if auth.bearer_token is None else None)
        if auth.bearer_token is not None:
            headers["Authorization"] = f"Bearer {auth.bearer_token}"
        elif basic is not None:
            token = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        headers.update(dict(auth.headers))
        self._headers = headers
        handlers: list[urllib.request.BaseHandler] = [_SameOrigin()]
        if self.url.startswith("https:"):
            try:
                context = ssl.create_default_context(
                    cafile=str(auth.ca_file) if auth.ca_file else None)
            except (OSError, ssl.SSLError) as e:
                raise ValueError(f"--ca-file {auth.ca_file}: cannot load ({e})") from e
            if auth.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def get(self, endpoint: str, params: Sequence[tuple[str, str]]) -> Answer:
        """``GET <base>/api/v1/<endpoint>?<params>``: its answer.

        Raises:
            TooLargeError: if the server refused the query as too large.
            ServerError: for any other failure (connection, TLS, timeout, HTTP status,
                an answer that is not the API's JSON, ``status: error``).
        """
        full = f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        for attempt in range(len(_RETRY_WAIT_S) + 1):
            try:
                return self._get(full, endpoint)
            except _RetryError as e:
                if attempt == len(_RETRY_WAIT_S):
                    raise ServerError(str(e)) from None
                self.retries += 1
                time.sleep(_RETRY_WAIT_S[attempt])
        raise AssertionError("unreachable")

    def _get(self, full: str, endpoint: str) -> Answer:
        request = urllib.request.Request(full, headers=self._headers)
        where = f"{self.url}/api/v1/{endpoint}"
        self.requests += 1
        started = time.perf_counter()
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
                encoding = response.headers.get("Content-Encoding", "")
            wait_s = time.perf_counter() - started
        except urllib.error.HTTPError as e:
            raise self._http_error(e, where) from None
        except urllib.error.URLError as e:
            raise ServerError(self._connection_problem(e.reason, where)) from None
        except (OSError, http.client.HTTPException) as e:
            raise ServerError(self._connection_problem(e, where)) from None
        try:
            body = gzip.decompress(raw) if encoding == "gzip" else raw
            doc = json.loads(body)
        except (OSError, EOFError, zlib.error, ValueError, RecursionError) as e:
            raise ServerError(f"{where}: the answer is not the query API's JSON ({e}); is "
                              f"{self.url} a Prometheus-compatible server?") from None
        if not isinstance(doc, dict) or doc.get("status") != "success" or "data" not in doc:
            raise ServerError(f"{where}: {_error_of(doc)}")
        warnings = doc.get("warnings")
        return Answer(doc["data"], tuple(str(w) for w in warnings)
                      if isinstance(warnings, list) else (), len(raw), wait_s)

    def _http_error(self, e: urllib.error.HTTPError, where: str) -> ServerError:
        try:
            raw = e.read(_ERROR_BODY_BYTES)
            if e.headers.get("Content-Encoding", "") == "gzip":
                raw = gzip.decompress(raw)
            doc: Any = json.loads(raw)
            said = _error_of(doc)
        except (OSError, EOFError, zlib.error, ValueError, RecursionError,
                http.client.HTTPException):
            doc = None
            said = ""
        status = f"HTTP {e.code} {e.reason}".strip()
        line = f"{where}: {status}" + (f": {said}" if said else "")
        if e.code in (400, 422) and _TOO_LARGE.search(said):
            return TooLargeError(line)
        if e.code in (401, 403):
            return ServerError(f"{line} (credentials: --bearer-token-file, or "
                               "--basic-auth-user with --basic-auth-password-file)")
        if e.code == 404:
            return ServerError(f"{line} (no query API there: give the server's root URL, or "
                               "its path prefix such as /prometheus)")
        if e.code in _RETRY_STATUS:
            return _RetryError(line)
        return ServerError(line)

    def _connection_problem(self, reason: object, where: str) -> str:
        if isinstance(reason, ConnectionRefusedError):
            return f"{where}: connection refused (is the server running, and the port right?)"
        if isinstance(reason, socket.gaierror):
            return f"{where}: cannot resolve the host ({reason.strerror or reason})"
        if isinstance(reason, ssl.SSLCertVerificationError):
            return (f"{where}: the server's TLS certificate is not trusted "
                    f"({reason.verify_message}); --ca-file FILE names the CA to trust")
        if isinstance(reason, ssl.SSLError):
            return f"{where}: TLS failed ({reason.reason or reason})"
        if isinstance(reason, TimeoutError | socket.timeout):
            return f"{where}: no answer within {self.timeout_s:g} s"
        if isinstance(reason, ConnectionError):
            return f"{where}: connection lost ({reason})"
        return f"{where}: cannot connect ({reason})"


class _RetryError(ServerError):
    """An answer worth asking again (the server or a proxy in front of it is busy)."""


def _error_of(doc: Any) -> str:
    """The server's own words from an error answer."""
    if isinstance(doc, dict):
        kind, error = doc.get("errorType"), doc.get("error")
        if error:
            return f"{kind}: {error}" if kind else str(error)
    return "not a success answer of the query API"
