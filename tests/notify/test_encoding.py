"""Names with any character (non-Latin-1 script, a newline, '%', spaces) reach every
channel intact: in the UTF-8 JSON body, and percent-encoded in the one header that
carries the key. Receivers are real servers on loopback and real processes."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.notify.alertmanager import AlertmanagerChannel
from agent.notify.command import CommandChannel
from agent.notify.dispatcher import Dispatcher
from agent.notify.httppost import post
from agent.notify.message import DeliveryError, Notification
from agent.notify.outbox import Outbox
from agent.notify.webhook import KEY_HEADER, WebhookChannel, header_key, key_from_header
from tests.receivers import SECRET, Clock, Receiver, note

# Cyrillic and Greek (not Latin-1), CJK, a newline, a tab, '%' and spaces.
HOSTILE_NAME = "Модель-β 七\nline two\t100% done "


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


class Capture:
    """Any HTTP POST on loopback, recorded raw: (path, headers, body)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((self.path, dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_header_key_is_ascii_reversible_and_leaves_plain_keys_alone() -> None:
    plain = note().key
    assert header_key(plain) == plain
    for key in (note(subject=HOSTILE_NAME).key, "a%20b", "%", " lead", "trail ", "\r\n",
                "x\x00y"):
        encoded = header_key(key)
        assert encoded.isascii()
        assert all(0x21 <= ord(c) < 0x7F for c in encoded), encoded
        assert key_from_header(encoded) == key
    with pytest.raises(UnicodeEncodeError):
        header_key("\udc80")


def test_a_hostile_name_reaches_the_webhook_intact(tmp_path: Path,
                                                   receiver: Receiver) -> None:
    n = note(subject=HOSTILE_NAME)
    clock = Clock()
    outbox = Outbox(tmp_path / "o.sqlite", ["hook"])
    dispatcher = Dispatcher(
        outbox, {"hook": WebhookChannel("hook", receiver.url, SECRET, clock_ns=clock)}, clock)
    assert outbox.enqueue(n)
    assert dispatcher.run_once(clock()) == 1
    [r] = receiver.requests
    assert r.status == 200
    assert r.signature_ok
    assert r.key == n.key                       # decoded from the header
    assert r.headers[KEY_HEADER].isascii()
    assert "\n" not in r.headers[KEY_HEADER]
    doc = json.loads(r.body.decode("utf-8"))
    assert doc["subject"] == HOSTILE_NAME
    assert doc["key"] == n.key
    assert Notification.from_json(r.body) == n
    state = outbox.delivery(n.key, "hook")
    assert state is not None
    assert (state.state, state.attempts, state.failures) == ("done", 1, 0)


def test_a_hostile_name_reaches_alertmanager_intact() -> None:
    n = note(subject=HOSTILE_NAME)
    capture = Capture()
    try:
        AlertmanagerChannel("am", capture.url, clock_ns=Clock()).deliver(n)
    finally:
        capture.close()
    [(path, _, body)] = capture.got
    assert path == "/api/v2/alerts"
    [alert] = json.loads(body.decode("utf-8"))
    assert alert["labels"]["subject"] == HOSTILE_NAME
    assert alert["labels"]["key"] == n.key
    assert HOSTILE_NAME in alert["annotations"]["summary"]


def test_a_hostile_name_reaches_the_command_hook_intact(tmp_path: Path) -> None:
    n = note(subject=HOSTILE_NAME)
    out = tmp_path / "got"
    script = ("import os, sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read());"
              " open(sys.argv[1] + '.key', 'wb').write(os.environb[b'FLOPLEDGER_KEY'])")
    CommandChannel("pager", [sys.executable, "-c", script, str(out)]).deliver(n)
    assert Notification.from_json(out.read_bytes()) == n
    assert Path(str(out) + ".key").read_bytes().decode() == n.key


def test_an_unencodable_request_is_not_retryable(receiver: Receiver) -> None:
    # What the webhook channel used to send for such a name: http.client refuses it
    # before anything reaches the wire, the same way every time.
    for value in ("Модель", "a\nb"):
        with pytest.raises(DeliveryError, match="cannot be encoded") as info:
            post(receiver.url, b"{}", {"X-Name": value}, 5.0, None)
        assert info.value.retryable is False
    bad = Notification("\udc80", "level", "model", "m", "r", 0.5, "info", 0)
    with pytest.raises(DeliveryError, match=KEY_HEADER) as info:
        WebhookChannel("hook", receiver.url, SECRET).deliver(bad)
    assert info.value.retryable is False
    assert receiver.requests == []
