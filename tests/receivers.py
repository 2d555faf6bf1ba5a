"""Notification test doubles that run for real: a local HTTP receiver, a recording channel, a
settable clock, and a sample notification."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.notify.message import DeliveryError, Notification
from agent.notify.webhook import KEY_HEADER, key_from_header, verify
from tests.agentproc import free_port

SECOND = 1_000_000_000
T0 = 1_750_000_000 * SECOND


SECRET = b"test-shared-secret"


def note(i: int = 0, *, subject: str = "llama-70b", level: float = 0.8,
         kind: str = "level", regime: str = "eu-systemic-risk") -> Notification:
    key = f"model:{subject}|{regime}|level:{level:g}" + (f"|{i}" if i else "")
    return Notification(
        key=key, kind=kind, subject_type="model", subject=subject, regime=regime,
        level=level, severity="warning" if level >= 0.9 else "info", created_ns=T0 + i,
        payload={"threshold": "1e25 FLOP", "flop": {"low": 7e24, "central": 8e24,
                                                    "high": 9e24},
                 "flop_2sf": "8.0e24 (7.0e24-9.0e24)", "deadline": "2025-07-01",
                 "ledger": {"size": 12, "root": "ab" * 32}})


class Clock:
    """A settable wall clock in ns."""

    def __init__(self, start_ns: int = T0) -> None:
        self.ns = start_ns

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += round(seconds * SECOND)


class Recorder:
    """A channel that records what it is given; fails while ``failing`` is set."""

    def __init__(self, resend_ns: int | None = None) -> None:
        self.resend_ns = resend_ns
        self.sent: list[Notification] = []
        self.failing = False
        self.lock = threading.Lock()

    def deliver(self, n: Notification) -> None:
        if self.failing:
            raise DeliveryError("receiver down")
        with self.lock:
            self.sent.append(n)

    @property
    def keys(self) -> list[str]:
        with self.lock:
            return [n.key for n in self.sent]


@dataclass
class Received:
    key: str | None
    body: bytes
    headers: dict[str, str]
    signature_ok: bool
    status: int = 0
    arrival: float = field(default_factory=time.time)


class Receiver:
    """A webhook receiver on loopback that checks signatures.

    ``decide`` picks each answer's status; the default fails the first ``fail_first``
    requests with 500. Subclasses may also hold a request (``before_reply``).
    """

    def __init__(self, secret: bytes = SECRET, fail_first: int = 0, port: int = 0) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def decide(self, r: Received, index: int) -> int:
        return 500 if index < self.fail_first else 200

    def before_reply(self, r: Received) -> None:
        pass

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                raw_key = self.headers.get(KEY_HEADER)
                r = Received(None if raw_key is None else key_from_header(raw_key), body,
                             dict(self.headers.items()),
                             verify(outer.secret, body, self.headers.get(
                                 "X-Flopledger-Signature")))
                with outer.lock:
                    index = len(outer.requests)
                    outer.requests.append(r)
                    r.status = outer.decide(r, index) if r.signature_ok else 401
                outer.before_reply(r)
                with contextlib.suppress(OSError):  # the sender may be gone (killed)
                    self.send_response(r.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def delivered(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]


class Answering(Receiver):
    """A webhook receiver that answers each request with the next of ``statuses``
    (the last one from then on)."""

    def __init__(self, *statuses: int) -> None:
        super().__init__()
        self.statuses = statuses

    def decide(self, r: Received, index: int) -> int:
        return self.statuses[min(index, len(self.statuses) - 1)]
