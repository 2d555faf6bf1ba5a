"""Basic auth under abuse: bounded bcrypt work, cached credentials, method answers."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import bcrypt
import pytest

import exporters.web.server as server_module
from exporters.web.config import parse_web_config
from exporters.web.server import ALLOWED_METHODS, MAX_CONCURRENT_HASH_CHECKS, BasicAuth
from tests.pki import fetch, registry

HASH = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(rounds=4))


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_storm_of_wrong_passwords_runs_at_most_the_bounded_number_of_hash_checks() -> None:
    auth = BasicAuth({"prometheus": HASH})
    assert auth.check(header("prometheus", "correct horse"))
    checks_before = auth.bcrypt_checks
    start = threading.Barrier(40)

    def wrong(i: int) -> bool:
        start.wait()
        return auth.check(header("prometheus" if i % 2 else "nobody", f"guess {i}"))

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(wrong, range(40)))
        # The cached credential answers during the storm without a hash check.
        assert auth.check(header("prometheus", "correct horse"))
    assert not any(results)
    assert 1 <= auth.max_hash_checks_in_flight <= MAX_CONCURRENT_HASH_CHECKS
    assert auth.bcrypt_checks - checks_before + auth.refused_busy == 40
    assert auth.hash_checks_in_flight == 0


def test_a_request_that_finds_no_free_hash_check_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "HASH_CHECK_WAIT_S", 0.01)
    auth = BasicAuth({"prometheus": HASH})
    for _ in range(MAX_CONCURRENT_HASH_CHECKS):  # every slot taken
        auth._hash_slots.acquire()
    assert not auth.check(header("prometheus", "correct horse"))
    assert auth.refused_busy == 1
    assert auth.bcrypt_checks == 0
    for _ in range(MAX_CONCURRENT_HASH_CHECKS):
        auth._hash_slots.release()
    assert auth.check(header("prometheus", "correct horse"))


def test_options_and_the_allow_header_agree() -> None:
    s = server_module.start_metrics_server(registry(), "127.0.0.1", 0, None)
    try:
        status, headers, body = fetch(s.url, method="OPTIONS")
        assert status == 204
        assert body == b""
        allowed = {m.strip() for m in headers["Allow"].split(",")}
        assert allowed == set(ALLOWED_METHODS)
        status, headers, _ = fetch(s.url, method="POST")
        assert status == 405
        assert {m.strip() for m in headers["Allow"].split(",")} == allowed
        for method in allowed - {"OPTIONS"}:
            assert fetch(s.url, method=method)[0] == 200
    finally:
        s.shutdown()


def test_an_authorised_scrape_is_served_during_a_storm() -> None:
    config = parse_web_config({"basic_auth_users": {"prometheus": HASH.decode()}})
    s = server_module.start_metrics_server(registry(), "127.0.0.1", 0, config)
    try:
        assert fetch(s.url, user="prometheus", password="correct horse")[0] == 200
        with ThreadPoolExecutor(30) as pool:
            storm = [pool.submit(fetch, s.url, user="prometheus", password=f"guess {i}")
                     for i in range(30)]
            status, _, body = fetch(s.url, user="prometheus", password="correct horse")
            assert status == 200
            assert b"flopledger_gpu_flop_total{" in body
            assert all(f.result()[0] == 401 for f in storm)
    finally:
        s.shutdown()
