"""A real Alertmanager on loopback, and waiting on what it holds."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from agent.notify.alertmanager import ALERTNAME
from tests.agentproc import free_port

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, ValueError, KeyError) as e:
            last = e
        else:
            if value:
                return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what} ({last})")


class AlertmanagerSink:
    """Alertmanager's webhook receiver: (status, alert labels) of every alert sent, and
    each alert as sent (``docs``: with startsAt, endsAt, annotations)."""

    def __init__(self) -> None:
        self.alerts: list[tuple[str, dict[str, str]]] = []
        self.docs: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.docs.extend(doc["alerts"])
                outer.alerts.extend((a["status"], a["labels"]) for a in doc["alerts"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/am"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def am_alerts(url: str) -> dict[str, dict[str, Any]]:
    query = urllib.parse.urlencode({"filter": f'alertname="{ALERTNAME}"'})
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=5) as r:
        return {a["labels"]["key"]: a for a in json.load(r)}


def when(rfc3339: str) -> dt.datetime:
    return dt.datetime.fromisoformat(rfc3339)


def tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def alertmanager(tmp: Path, webhook_url: str) -> Iterator[str]:
    assert ALERTMANAGER is not None
    port = free_port()
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump({
        "route": {"receiver": "sink", "group_by": ["alertname", "key"], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "sink",
                       "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }))
    log = tmp / "alertmanager.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={tmp / 'alertmanager.yml'}",
             f"--storage.path={tmp / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--cluster.listen-address=", "--log.level=warn"], stdout=out,
            stderr=subprocess.STDOUT)
        try:
            def ready() -> bool:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    return bool(r.status == 200)
            try:
                wait_until(ready, 30, "Alertmanager")
            except TimeoutError as e:
                raise AssertionError(f"{e}\n{tail(log)}") from e
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
