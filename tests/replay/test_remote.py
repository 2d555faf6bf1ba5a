"""``flopledger replay --prometheus`` against a real Prometheus.

The server's storage is backfilled (``promtool tsdb create-blocks-from openmetrics``)
with a month of dcgm-exporter series of 64 H100s (:mod:`tests.replay.promdata`: eight
Slurm jobs, idle time, a node whose exporter was down for three hours). Then:

- the month replayed from the server gives, run by run, exactly the totals of the same
  series exported as ``query_range`` JSON files (fetched from the same server with plain
  urllib) and replayed from those files;
- a replay killed with SIGKILL mid-way and run again ends with the totals of an
  uninterrupted one, and never holds more than its checkpoint covers;
- a server failing mid-way: one line, the sealed slices kept, the rerun completes;
- a step so small that the range needs many queries (and a server refusing one as too
  large) gives the same totals at any parallelism;
- basic auth and TLS (Prometheus' own web config), a bearer token (a proxy in front),
  and what fails: connection refused, no answer, a wrong path, no credentials, an
  untrusted certificate, a selector matching nothing: one line, exit 1, nothing written.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.ledger.checkpoints import read_checkpoint
from agent.ledger.integrity import check_ledger
from agent.replay.engine import ReplayEngine, ReplayOptions
from agent.replay.remote import RemoteOptions, ServerReplay
from tests.pki import Pki, bcrypt_hash
from tests.replay import promdata as pd

pytestmark = [
    pytest.mark.e2e,
    # The first test builds the month's TSDB blocks (promtool, a few minutes on two cores
    # beside other test workers) when no earlier run cached them: a fresh clone.
    pytest.mark.timeout(1500),
    pytest.mark.skipif(pd.PROMETHEUS is None or pd.PROMTOOL is None,
                       reason="needs Debian's prometheus (`make system-deps`)"),
]
MONTH = pd.Dataset(30)
DAY_S = 86_400
# Days 9 to 13: the outage (day 10) and the end of job 41003 (day 12) inside.
STRETCH = (pd.START_S + 9 * DAY_S, pd.START_S + 13 * DAY_S - 60)
Totals = dict[str, tuple[int, ...]]


@pytest.fixture(scope="session")
def month_blocks(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The month's TSDB blocks, built once and kept in pytest's cache."""
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    root = cache.mkdir("flopledger-promdata") if cache is not None else \
        tmp_path_factory.mktemp("promdata")
    return pd.cached_blocks(MONTH, root)


@pytest.fixture(scope="module")
def server(month_blocks: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[pd.Server]:
    with pd.prometheus(month_blocks, tmp_path_factory.mktemp("prometheus")) as s:
        yield s


def run_totals(ledger: Path) -> Totals:
    """Per run: FLOP low, central, high, energy (mJ), samples, covered and gap ns."""
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key, flop_low, flop_central, flop_high, energy_mj, samples, "
                          "covered_ns, gap_ns FROM totals WHERE scope = 'run'").fetchall()
    finally:
        db.close()
    return {str(r[0]): tuple(int(x) for x in r[1:]) for r in rows}


def replay(url: str, ledger: Path, start_s: int, end_s: int, **kw: Any) -> ServerReplay:
    r = ServerReplay(RemoteOptions(url, start_s * 1000, end_s * 1000, **kw), ledger,
                     ReplayOptions())
    r.run()
    return r


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def failed(result: tuple[int, str, str], *words: str) -> None:
    """Exit 1 and one line on stderr holding ``words``."""
    code, _, err = result
    assert code == 1, err
    assert err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)


def table(server_totals: Totals, file_totals: Totals) -> str:
    lines = [f"{'run':<14} {'FLOP central (server)':>24} {'FLOP central (files)':>24} "
             f"{'energy kWh':>11} {'samples':>10}"]
    for run, t in sorted(server_totals.items()):
        lines.append(f"{run:<14} {t[1]:>24,} {file_totals[run][1]:>24,} "
                     f"{t[3] / 3.6e9:>11,.1f} {t[4]:>10,}")
    return "\n".join(lines)


# -- the month, server against files ----------------------------------------------------


@pytest.mark.slow
def test_a_month_from_the_server_equals_its_export_replayed_from_files(
        server: pd.Server, tmp_path: Path) -> None:
    started = time.perf_counter()
    r = replay(server.url, tmp_path / "server.sqlite", pd.START_S, MONTH.end_s)
    server_s = time.perf_counter() - started
    summary = r.stats
    assert r.step_ms == 60_000  # measured on the server
    assert summary.points > 0
    export = tmp_path / "export.json"
    pd.export_query_range(server.url, pd.START_S, MONTH.end_s, 60, export)
    files = ReplayEngine(tmp_path / "files.sqlite", ReplayOptions()).run([export])
    assert files.failure is None, files.failure
    assert files.bad_count == 0
    assert files.samples == MONTH.samples()
    from_server, from_files = run_totals(tmp_path / "server.sqlite"), \
        run_totals(tmp_path / "files.sqlite")
    assert set(from_server) == pd.runs(MONTH) | {"unattributed"}
    print(f"\n{MONTH.samples():,} samples, {summary.points:,} points, {summary.requests} "
          f"queries; server replay {server_s:.1f} s "
          f"({MONTH.samples() / server_s:,.0f} samples/s)\n{table(from_server, from_files)}")
    assert from_server == from_files
    for ledger in ("server.sqlite", "files.sqlite"):
        assert check_ledger(tmp_path / ledger).ok


# -- stopped and continued --------------------------------------------------------------


def test_killed_and_run_again_ends_with_the_uninterrupted_totals(
        server: pd.Server, tmp_path: Path) -> None:
    start, end = STRETCH
    whole = tmp_path / "whole.sqlite"
    replay(server.url, whole, start, end, step_ms=60_000)
    ledger = tmp_path / "killed.sqlite"
    argv = [sys.executable, "-m", "agent.cli", "replay", "--prometheus", server.url,
            "--start", str(start), "--end", str(end), "--step", "60",
            "--ledger", str(ledger), "--quiet", "--max-points", "20000", "--parallel", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=pd.ensure_env())
    source = f"prometheus {server.url} {{}} step=60000ms"
    checkpoint = None
    deadline = time.monotonic() + 300
    while checkpoint is None and proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error):
            checkpoint = read_checkpoint(ledger, source)
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the replay ended before it was killed"
    checkpoint = read_checkpoint(ledger, source)
    assert checkpoint is not None
    assert checkpoint < end * 10**9
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    latest = db.execute("SELECT MAX(end_ns) FROM records").fetchone()[0]
    db.close()
    assert latest <= checkpoint  # nothing beyond the checkpoint
    again = subprocess.run(argv, capture_output=True, text=True, env=pd.ensure_env(),
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert run_totals(ledger) == run_totals(whole)
    assert read_checkpoint(ledger, source) == end * 10**9
    assert check_ledger(ledger).ok
    # Once more: nothing left to do, nothing changes.
    before = run_totals(ledger)
    done = subprocess.run(argv, capture_output=True, text=True, env=pd.ensure_env(),
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "nothing to replay" in done.stdout
    assert run_totals(ledger) == before


class Proxy:
    """An authenticating proxy in front of Prometheus (as oauth2-proxy or a gateway
    is): a bearer token, or none; ``fail_after`` answers: then 503 to everything."""

    def __init__(self, upstream: str, token: str | None = None) -> None:
        self.upstream = upstream
        self.token = token
        self.fail_after: int | None = None
        self.answered = 0
        self.seen_auth: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                outer.seen_auth.append(auth)
                if outer.token is not None and auth != f"Bearer {outer.token}":
                    self._answer(401, b'{"status":"error","errorType":"unauthorized",'
                                      b'"error":"bad token"}', {})
                    return
                if outer.fail_after is not None and outer.answered >= outer.fail_after:
                    self._answer(503, b"upstream busy", {})
                    return
                outer.answered += 1
                request = urllib.request.Request(outer.upstream + self.path, headers={
                    "Accept-Encoding": self.headers.get("Accept-Encoding", "")})
                try:
                    with urllib.request.urlopen(request, timeout=120) as r:
                        self._answer(r.status, r.read(), dict(r.headers))
                except urllib.error.HTTPError as e:
                    self._answer(e.code, e.read(), dict(e.headers))

            def _answer(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                for name in ("Content-Type", "Content-Encoding"):
                    if name in headers:
                        self.send_header(name, headers[name])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(server: pd.Server) -> Iterator[Proxy]:
    p = Proxy(server.url)
    yield p
    p.close()


def test_a_server_failing_mid_way_keeps_what_was_sealed_and_the_rerun_completes(
        server: pd.Server, proxy: Proxy, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    start, end = STRETCH
    whole = tmp_path / "whole.sqlite"
    replay(server.url, whole, start, end, step_ms=60_000)
    ledger = tmp_path / "ledger.sqlite"
    args = ("--prometheus", proxy.url, "--start", str(start), "--end", str(end),
            "--step", "60", "--ledger", str(ledger), "--quiet", "--max-points", "20000",
            "--parallel", "1")
    proxy.fail_after = 40  # the first query of the series' count, then ten slices
    failed(cli(capsys, *args), "HTTP 503", "the same command continues from there")
    source = f"prometheus {proxy.url} {{}} step=60000ms"
    checkpoint = read_checkpoint(ledger, source)
    assert checkpoint is not None
    assert checkpoint < end * 10**9
    proxy.fail_after = None
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    assert "continuing after" not in err  # --quiet
    assert run_totals(ledger) == run_totals(whole)


# -- many queries: the points limit ------------------------------------------------------


def test_a_small_step_splits_into_many_queries_with_the_same_totals_at_any_parallelism(
        server: pd.Server, tmp_path: Path) -> None:
    # Step 10 s over 31 hours: 11,160 steps, more than one query may hold; each sample of
    # the 60 s series is seen 6 times (Prometheus' lookback), as a live replay would.
    start = pd.START_S + 2 * DAY_S
    end = start + 11_159 * 10
    node = {"selector": 'Hostname="gpu-node-02"', "step_ms": 10_000}
    plan = replay(server.url, tmp_path / "p4.sqlite", start, end, parallel=4,
                  max_points=40_000, **node)
    assert plan.stats.slices >= 3
    assert plan.stats.requests == 4 * plan.stats.slices
    one = replay(server.url, tmp_path / "p1.sqlite", start, end, parallel=1,
                 max_points=1_000_000, **node)
    assert one.stats.slices == 2  # 11,000 steps, then 160
    # A server refusing what it is asked (Prometheus: more than 11,000 steps) has each
    # query split in two until it passes.
    refused = replay(server.url, tmp_path / "refused.sqlite", start, end, parallel=3,
                     max_points=10**9, max_steps=20_000, **node)
    assert refused.stats.slices == 1
    assert refused.stats.requests == 4 * 3
    totals = run_totals(tmp_path / "p4.sqlite")
    assert totals == run_totals(tmp_path / "p1.sqlite") == run_totals(
        tmp_path / "refused.sqlite")
    assert sum(t[4] for t in totals.values()) == 8 * 11_160


# -- who may ask ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(month_blocks: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[pd.Server]:
    """Prometheus with TLS and basic auth (its --web.config.file)."""
    d = tmp_path_factory.mktemp("secured")
    web = d / "web.yml"
    web.write_text(json.dumps({
        "tls_server_config": {"cert_file": str(pki.server_cert),
                              "key_file": str(pki.server_key)},
        "basic_auth_users": {"auditor": bcrypt_hash("s3cret pass")}}))
    with pd.prometheus(month_blocks, d, web_config=web) as s:
        yield s


def test_basic_auth_and_tls(secured: pd.Server, pki: Pki, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert secured.url.startswith("https://")
    start = pd.START_S + 3 * DAY_S
    base = ("--prometheus", secured.url, "--start", str(start), "--end", str(start + 3600),
            "--quiet")
    password = tmp_path / "password"
    password.write_text("s3cret pass\n")
    ledger = tmp_path / "l.sqlite"
    auth = ("--basic-auth-user", "auditor", "--basic-auth-password-file", str(password))
    failed(cli(capsys, *base, "--ledger", str(ledger), *auth), "certificate is not trusted",
           "--ca-file")
    failed(cli(capsys, *base, "--ledger", str(ledger), "--ca-file", str(pki.ca_cert)),
           "HTTP 401")
    wrong = tmp_path / "wrong"
    wrong.write_text("guess")
    failed(cli(capsys, *base, "--ledger", str(ledger), "--ca-file", str(pki.ca_cert),
               "--basic-auth-user", "auditor", "--basic-auth-password-file", str(wrong)),
           "HTTP 401")
    assert not list(tmp_path.glob("l.sqlite*"))
    code, out, err = cli(capsys, *base, "--ledger", str(ledger), "--ca-file",
                         str(pki.ca_cert), *auth)
    assert code == 0, err
    assert "slurm-41001" in out
    insecure = tmp_path / "insecure.sqlite"
    code, _, err = cli(capsys, *base, "--ledger", str(insecure), "--insecure-skip-verify",
                       *auth)
    assert code == 0, err
    assert "WARNING: --insecure-skip-verify" in err
    assert run_totals(insecure) == run_totals(ledger)
    # Credentials in the URL are basic auth, and never shown.
    userinfo = secured.url.replace("https://", "https://auditor:s3cret%20pass@")
    code, out, err = cli(capsys, "--prometheus", userinfo, *base[2:], "--ledger",
                         str(tmp_path / "u.sqlite"), "--ca-file", str(pki.ca_cert))
    assert code == 0, err
    assert "s3cret" not in out + err


def test_a_bearer_token(server: pd.Server, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    gateway = Proxy(server.url, token="tok-123")
    try:
        start = pd.START_S + 3 * DAY_S
        token = tmp_path / "token"
        token.write_text("tok-123\n")
        base = ("--prometheus", gateway.url, "--start", str(start), "--end",
                str(start + 3600), "--quiet", "--ledger", str(tmp_path / "l.sqlite"))
        failed(cli(capsys, *base), "HTTP 401")
        code, _, err = cli(capsys, *base, "--bearer-token-file", str(token))
        assert code == 0, err
        assert gateway.seen_auth[-1] == "Bearer tok-123"
        code, _, err = cli(capsys, *base, "--bearer-token-file", str(token),
                           "--header", "X-Scope-OrgID: team-a")
        assert code == 0, err
    finally:
        gateway.close()


# -- what fails ----------------------------------------------------------------------------


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def test_failures_are_one_line_exit_1_and_write_nothing(
        server: pd.Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = pd.START_S + 3 * DAY_S
    ledger = tmp_path / "out" / "l.sqlite"
    times = ("--start", str(start), "--end", str(start + 3600), "--ledger", str(ledger),
             "--quiet")
    with silent_listener() as port:
        silent = f"http://127.0.0.1:{port}"
    cases = {
        "connection refused": (silent, ()),
        "not an http:// or https:// URL": ("ftp://127.0.0.1:9090", ()),
        "no host": ("http://", ()),
        "HTTP 404": (server.url + "/no/such/prefix", ()),
        "no series of dcgm-exporter's or flopledger's names": (
            server.url, ("--selector", '{job="nobody"}')),
    }
    for expected, (url, extra) in cases.items():
        failed(cli(capsys, "--prometheus", url, *times, *extra), expected)
        assert not (tmp_path / "out").exists(), expected
    with silent_listener() as port:
        failed(cli(capsys, "--prometheus", f"http://127.0.0.1:{port}", *times, "--timeout",
                   "1"), "no answer within 1 s")
    assert not (tmp_path / "out").exists()


def test_a_replay_from_a_server_is_verified_like_any_ledger(
        server: pd.Server, tmp_path: Path) -> None:
    start = pd.START_S + 5 * DAY_S
    replay(server.url, tmp_path / "l.sqlite", start, start + 7200)
    result = subprocess.run([sys.executable, "-m", "agent.cli", "verify",
                             str(tmp_path / "l.sqlite")], capture_output=True, text=True,
                            env=pd.ensure_env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout

