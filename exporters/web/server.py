"""The HTTP(S) endpoint: ``/metrics`` and a landing page, with optional TLS, mTLS and basic auth.

One thread accepts connections; each request runs on its own daemon thread. TLS
handshakes happen on the request thread, under a timeout, so a client that connects
and never speaks cannot hold up the accept loop. Settings come from a
:class:`~exporters.web.config.WebConfig`; when that file (or a certificate, key or CA
file it names) changes, the next connection picks up the new settings, as
exporter-toolkit does, so rotated certificates need no restart.

Secrets stay out of logs and metrics: failed logins are logged at debug level with the
client address only, and neither passwords nor hashes are ever formatted into a
message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import logging
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import make_wsgi_app
from prometheus_client.registry import Collector

from agent import __version__
from agent.configfile import ConfigError
from exporters.web.config import WebConfig, load_web_config

log = logging.getLogger(__name__)

# bcrypt hashes at most 72 bytes of a password. bcrypt>=5 raises on longer input where
# Go's x/crypto/bcrypt (used by exporter-toolkit) truncates; truncating here keeps a
# hash made by htpasswd for a long password working the same way in both.
BCRYPT_MAX_PASSWORD_BYTES = 72
# Only successful (user, password) pairs are cached, so the cache holds at most one
# entry per user in practice; the bound guards against pathological reload churn.
MAX_CACHED_CREDENTIALS = 1024
# bcrypt checks that may run at once. A storm of wrong passwords then costs at most this
# many cores, and a scrape whose credential is cached answers without waiting for them.
MAX_CONCURRENT_HASH_CHECKS = 2
# How long a request waits for a free hash check before it is refused (401).
HASH_CHECK_WAIT_S = 5.0
# Methods the endpoint answers; OPTIONS and every 405's Allow header list exactly these.
ALLOWED_METHODS = ("GET", "HEAD", "OPTIONS")
RELOAD_CHECK_INTERVAL_S = 1.0
# Seconds a connection may take to finish its TLS handshake and send a request.
REQUEST_TIMEOUT_S = 30.0
REALM = "flopledger"


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    bcrypt is deliberately slow (about 70 ms at cost 10), too slow to pay on every
    scrape, so a credential that verified once is remembered by its HMAC-SHA-256
    under a key drawn at start: the cache holds no password, and its entries are
    useless outside this process. At most :data:`MAX_CONCURRENT_HASH_CHECKS` bcrypt
    checks run at once; the others wait (without using a core) up to
    :data:`HASH_CHECK_WAIT_S` and are then refused, so a flood of wrong passwords
    cannot starve an authorised scrape.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        if not users:
            raise ValueError("basic auth needs at least one user")
        # Loaded only by an agent that has basic auth configured.
        import bcrypt

        self._checkpw = bcrypt.checkpw
        self._users = dict(users)
        # Unknown users are checked against a real hash too, so the response time does
        # not tell which user names exist.
        self._decoy = next(iter(self._users.values()))
        self._cache_key = os.urandom(32)
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()
        self._hash_slots = threading.BoundedSemaphore(MAX_CONCURRENT_HASH_CHECKS)
        self.bcrypt_checks = 0  # how many times bcrypt ran (tests and debugging)
        self.hash_checks_in_flight = 0
        self.max_hash_checks_in_flight = 0  # the most that ever ran at once
        self.refused_busy = 0  # requests refused because no hash check came free

    def check(self, authorization: str | None) -> bool:
        """True if the header carries a known user and the right password."""
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            pair = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user_bytes, colon, password = pair.partition(b":")
        if not colon:
            return False
        # User names cannot contain ':', so "user:password" identifies the pair.
        digest = hmac.new(self._cache_key, pair, hashlib.sha256).digest()
        if digest in self._verified:
            return True
        try:
            user = user_bytes.decode("utf-8")
        except UnicodeDecodeError:
            return False
        hashed = self._users.get(user)
        candidate = password[:BCRYPT_MAX_PASSWORD_BYTES]
        if not self._hash_slots.acquire(timeout=HASH_CHECK_WAIT_S):
            with self._lock:
                self.refused_busy += 1
            return False
        try:
            with self._lock:
                self.bcrypt_checks += 1
                self.hash_checks_in_flight += 1
                self.max_hash_checks_in_flight = max(self.max_hash_checks_in_flight,
                                                     self.hash_checks_in_flight)
            ok = self._checkpw(candidate, hashed if hashed is not None else self._decoy)
        finally:
            with self._lock:
                self.hash_checks_in_flight -= 1
            self._hash_slots.release()
        if hashed is None or not ok:
            return False
        with self._lock:
            if len(self._verified) >= MAX_CACHED_CREDENTIALS:
                self._verified.clear()
            self._verified.add(digest)
        return True


@dataclass(frozen=True, slots=True)
class _State:
    """What one web-config version means for the server, built once per (re)load."""

    config: WebConfig | None
    ssl_context: ssl.SSLContext | None
    auth: BasicAuth | None

    @classmethod
    def build(cls, config: WebConfig | None) -> _State:
        """Raises ConfigError if the TLS files do not load."""
        if config is None:
            return cls(None, None, None)
        auth = BasicAuth(config.basic_auth_users) if config.basic_auth_users else None
        return cls(config, config.ssl_context(), auth)

    @property
    def headers(self) -> list[tuple[str, str]]:
        return list(self.config.headers) if self.config else []


def _stamp(files: Iterable[Path]) -> tuple[tuple[str, int, int] | None, ...]:
    out: list[tuple[str, int, int] | None] = []
    for f in files:
        try:
            st = f.stat()  # follows symlinks: Kubernetes swaps secret files that way
        except OSError:
            out.append(None)
        else:
            out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


class _LiveWebConfig:
    """The current :class:`_State`, reloaded when the web-config files change.

    Only the accept thread calls :meth:`refresh`; request threads read :attr:`state`,
    a reference that is swapped whole.
    """

    def __init__(self, config: WebConfig | None) -> None:
        self.state = _State.build(config)
        self._stamp = _stamp(config.watched_files()) if config else ()
        self._next_check = time.monotonic() + RELOAD_CHECK_INTERVAL_S
        self._failed_stamp: tuple[tuple[str, int, int] | None, ...] | None = None

    def refresh(self) -> None:
        config = self.state.config
        if config is None or config.path is None or time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + RELOAD_CHECK_INTERVAL_S
        stamp = _stamp(config.watched_files())
        if stamp == self._stamp or stamp == self._failed_stamp:
            return
        try:
            new = load_web_config(config.path)
            state = _State.build(new)
        except ConfigError as e:
            # Keep serving with the settings that worked; say so once per change.
            self._failed_stamp = stamp
            log.error("web config changed but is invalid; keeping the previous "
                      "settings:\n%s", e)
            return
        self.state = state
        self._stamp = _stamp(new.watched_files())
        self._failed_stamp = None
        log.info("web config %s reloaded (%s, basic auth %s)", new.path, new.scheme,
                 "on" if state.auth else "off")


class _Handler(WSGIRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S  # StreamRequestHandler applies it to the socket

    def setup(self) -> None:
        conn = self.request
        if isinstance(conn, ssl.SSLSocket):
            conn.settimeout(self.timeout)
            conn.do_handshake()
            config = self.server.live.state.config
            sans = config.tls.client_allowed_sans if config and config.tls else ()
            if sans and not _peer_has_san(conn, sans):
                raise ssl.SSLError("client certificate has none of the allowed SANs")
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        # The request line and status only; wsgiref never passes headers here.
        log.debug("%s %s", self.address_string(), format % args)


def _peer_has_san(conn: ssl.SSLSocket, allowed: tuple[str, ...]) -> bool:
    cert = conn.getpeercert()
    if not cert:
        return False
    # Entries are (kind, value) pairs: ("DNS", "x"), ("IP Address", "10.0.0.1"), ...
    names = {str(entry[1]) for entry in cert.get("subjectAltName", ()) if len(entry) == 2}
    return any(name in names for name in allowed)


class _Server(ThreadingMixIn, WSGIServer):
    # Request threads must not keep the process alive, nor pile up in a join list.
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily,
                 live: _LiveWebConfig) -> None:
        self.address_family = family
        self.live = live
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        self.live.refresh()
        sock, addr = self.socket.accept()
        ctx = self.live.state.ssl_context
        if ctx is not None:
            # The handshake runs later, on the request thread (see _Handler.setup).
            try:
                sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except OSError:
                sock.close()
                raise
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            # Refused TLS handshakes, resets and timeouts are the client's business;
            # a traceback per port scan would drown the log.
            log.debug("connection from %s ended: %s", client_address, exc)
        else:
            log.error("error serving %s", client_address, exc_info=exc)


LANDING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>flopledger</title></head>
<body><h1>flopledger {version}</h1>
<p>Training compute (FLOP) per GPU, run and model, for Prometheus.</p>
<p><a href="metrics">/metrics</a></p></body></html>
"""


def _app(metrics: WSGIApplication, live: _LiveWebConfig) -> WSGIApplication:
    landing = LANDING_PAGE.format(version=html.escape(__version__)).encode()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        state = live.state
        extra = state.headers
        if state.auth is not None and not state.auth.check(environ.get("HTTP_AUTHORIZATION")):
            log.debug("401 for %s %s from %s", environ.get("REQUEST_METHOD"),
                      environ.get("PATH_INFO"), environ.get("REMOTE_ADDR"))
            start_response("401 Unauthorized", [
                ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),
                ("Content-Type", "text/plain; charset=utf-8"), *extra])
            return [b"401 Unauthorized\n"]
        method = environ.get("REQUEST_METHOD", "GET")
        allow = ("Allow", ", ".join(ALLOWED_METHODS))
        if method == "OPTIONS":
            start_response("204 No Content", [allow, *extra])
            return []
        if method not in ALLOWED_METHODS:
            start_response("405 Method Not Allowed", [
                allow, ("Content-Type", "text/plain; charset=utf-8"), *extra])
            return [b"405 Method Not Allowed\n"]
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            if method == "HEAD":
                # prometheus-client answers HEAD with 405: build the GET answer and
                # send its headers alone, so HEAD agrees with the Allow header.
                answer: list[tuple[str, list[tuple[str, str]]]] = []

                def keep(status: str, headers: list[tuple[str, str]],
                         exc_info: Any = None) -> Callable[[bytes], object]:
                    answer.append((status, headers))
                    return lambda _data: None

                body = b"".join(metrics({**environ, "REQUEST_METHOD": "GET"}, keep))
                status, headers = answer[0]
                start_response(status, [*[h for h in headers if h[0].lower() != "content-length"],
                                        ("Content-Length", str(len(body))), *extra])
                return []

            def with_headers(status: str, headers: list[tuple[str, str]],
                             exc_info: Any = None) -> Callable[[bytes], object]:
                return start_response(status, [*headers, *extra], exc_info)

            return metrics(environ, with_headers)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), *extra])
            return [landing]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                         *extra])
        return [b"404 Not Found: try /metrics\n"]

    return app


class MetricsServer:
    """A running endpoint. ``port`` is the bound port (useful after asking for 0)."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def scheme(self) -> str:
        """``https`` or ``http``, as currently configured."""
        return "https" if self._server.live.state.ssl_context is not None else "http"

    @property
    def url(self) -> str:
        """The ``/metrics`` URL (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/metrics"

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close the socket and wait up to ``timeout_s`` seconds."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout_s)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()


def _family(host: str, port: int) -> socket.AddressFamily:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return socket.AF_INET6 if ":" in host else socket.AF_INET
    return infos[0][0]


def start_metrics_server(registry: Collector, host: str, port: int,
                         web_config: WebConfig | None = None) -> MetricsServer:
    """Serve ``/metrics`` from ``registry`` (and a landing page at ``/``) in the background.

    Args:
        registry: what to expose, usually a ``CollectorRegistry``.
        host: address to bind (``0.0.0.0``, ``::``, ``127.0.0.1``...).
        port: TCP port; 0 picks a free one (read it back from ``.port``).
        web_config: TLS, client-certificate and basic-auth settings; None serves plain
            HTTP without authentication.

    Raises:
        ConfigError: if the web config's TLS files do not load.
        OSError: if the address cannot be bound (in use, not local, no permission).
    """
    live = _LiveWebConfig(web_config)
    server = _Server((host, port), _family(host, port), live)
    server.set_app(_app(make_wsgi_app(registry), live))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="metrics-http", daemon=True)
    thread.start()
    handle = MetricsServer(server, thread)
    auth = live.state.auth is not None
    if auth and web_config is not None and web_config.tls is None:
        log.warning("basic auth without TLS: passwords cross the network in clear text; "
                    "set tls_server_config in %s", web_config.path or "the web config")
    tls = web_config.tls if web_config else None
    log.info("serving /metrics on %s (%s%s%s)", handle.url, handle.scheme,
             f", client certificates {tls.client_auth_type}" if tls else "",
             ", basic auth" if auth else "")
    return handle
