"""The web-config file (exporter-toolkit format) and what the endpoint does with it.

Also home of :func:`make_pki`, the throwaway certificate authority the end-to-end
tests share.
"""

from __future__ import annotations

import base64
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest

import exporters.web.server as server_module
from agent.configfile import ConfigError
from exporters.web.config import WebConfig, load_web_config, parse_web_config
from exporters.web.server import BasicAuth, MetricsServer, start_metrics_server
from tests.pki import (
    Pki,
    bcrypt_hash,
    client_context,
    connection_refused,
    fetch,
    registry,
)

# ----------------------------------------------------------------------------- PKI


@pytest.fixture
def serve() -> Iterator[Callable[[WebConfig | None], MetricsServer]]:
    started: list[MetricsServer] = []

    def start(config: WebConfig | None) -> MetricsServer:
        s = start_metrics_server(registry(), "127.0.0.1", 0, config)
        started.append(s)
        return s

    yield start
    for s in started:
        s.shutdown()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- parsing


def test_empty_file_means_plain_http_without_auth(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path / "web.yml", ""))
    assert config.tls is None
    assert not config.basic_auth_users
    assert config.scheme == "http"
    assert config.ssl_context() is None


def test_full_file_resolves_paths_against_its_own_directory(tmp_path: Path, pki: Pki,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    for src in (pki.server_cert, pki.server_key, pki.ca_cert):
        (conf_dir / src.name).write_bytes(src.read_bytes())
    hashed = bcrypt_hash("s3cret")
    path = write(conf_dir / "web.yml", f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  client_allowed_sans: [prometheus.monitoring.svc]
  min_version: TLS13
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
basic_auth_users:
  prometheus: {hashed}
""")
    monkeypatch.chdir(tmp_path)  # relative to the file, not the working directory
    config = load_web_config(path)
    assert config.tls is not None
    assert config.tls.cert_file == conf_dir / "server.crt"
    assert config.tls.client_ca_file == conf_dir / "ca.crt"
    assert config.tls.verify_mode == ssl.CERT_REQUIRED
    assert config.tls.client_allowed_sans == ("prometheus.monitoring.svc",)
    assert dict(config.basic_auth_users) == {"prometheus": hashed.encode()}
    assert config.headers == (("X-Frame-Options", "deny"), ("X-Content-Type-Options", "nosniff"))
    ctx = config.ssl_context()
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_every_problem_is_reported_at_once_without_echoing_hashes(tmp_path: Path) -> None:
    secret_looking = "$2y$10$" + "x" * 20  # too short to be a hash
    path = write(tmp_path / "web.yml", f"""
tls_server_config:
  cert_file: missing.crt
  client_auth_type: RequireAnyClientCert
  min_version: TLS13
  max_version: TLS12
  cipher_suites: [TLS_AES_128_GCM_SHA256]
  sni: whatever
http_server_config:
  headers:
    X-Frame-Options: allow-all
    X-Powered-By: me
basic_auth_users:
  "alice:admin": {bcrypt_hash("x")}
  bob: "{secret_looking}"
rate_limit:
  interval: 1s
colour: blue
""")
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    keys = [key for key, _ in info.value.problems]
    assert keys == [
        "rate_limit", "colour",
        "tls_server_config.cipher_suites", "tls_server_config.sni",
        "tls_server_config.cert_file", "tls_server_config.key_file",
        "tls_server_config.client_auth_type", "tls_server_config.min_version",
        "http_server_config.headers.X-Frame-Options", "http_server_config.headers.X-Powered-By",
        "basic_auth_users.alice:admin", "basic_auth_users.bob",
    ]
    message = str(info.value)
    assert str(path) in message
    assert "not found" in message
    assert "missing.crt" in message
    assert "unverified" in message  # why RequireAnyClientCert is refused
    assert secret_looking not in message
    assert "$2y$04$" not in message


@pytest.mark.parametrize(("tls_yaml", "key", "expected"), [
    ("client_ca_file: ca.crt", "tls_server_config.client_auth_type",
     "RequireAndVerifyClientCert or VerifyClientCertIfGiven"),
    ("client_auth_type: RequireAndVerifyClientCert", "tls_server_config.client_ca_file",
     "the CA that signs client certificates"),
    ("client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n"
     "  client_allowed_sans: [x]", "tls_server_config.client_allowed_sans",
     "RequireAndVerifyClientCert"),
    ("client_auth_type: RequestClientCert", "tls_server_config.client_auth_type",
     "unverified"),
])
def test_client_certificate_policies_that_would_not_protect_are_refused(
        tmp_path: Path, pki: Pki, tls_yaml: str, key: str, expected: str) -> None:
    for src in (pki.server_cert, pki.server_key, pki.ca_cert):
        (tmp_path / src.name).write_bytes(src.read_bytes())
    path = write(tmp_path / "web.yml", f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  {tls_yaml}
""")
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    assert [(k, e) for k, e in info.value.problems if k == key and expected in e], \
        info.value.problems


def test_key_not_matching_the_certificate_is_reported_at_load(tmp_path: Path, pki: Pki) -> None:
    path = write(tmp_path / "web.yml", f"""
tls_server_config:
  cert_file: {pki.server_cert}
  key_file: {pki.client_key}
""")
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    assert [k for k, _ in info.value.problems] == ["tls_server_config.cert_file"]
    assert "BEGIN" not in str(info.value)  # no key material in the message


def test_bad_yaml_names_the_place_but_not_the_line(tmp_path: Path) -> None:
    hashed = bcrypt_hash("x")
    path = write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: {hashed}\n   bob: [\n")
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    message = str(info.value)
    assert "valid YAML" in message
    assert "line" in message
    assert hashed not in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_web_config(write(tmp_path / "web.yml", "- tls_server_config\n"))
    with pytest.raises(ConfigError, match="readable"):
        load_web_config(tmp_path / "absent.yml")


def test_parse_accepts_an_already_loaded_document() -> None:
    config = parse_web_config({"basic_auth_users": {"u": bcrypt_hash("p")}})
    assert config.tls is None
    assert list(config.basic_auth_users) == ["u"]


# ----------------------------------------------------------------------------- basic auth


def header(user: str, password: str | bytes) -> str:
    raw = password if isinstance(password, bytes) else password.encode()
    return "Basic " + base64.b64encode(user.encode() + b":" + raw).decode()


def test_basic_auth_accepts_only_the_right_pair() -> None:
    auth = BasicAuth({"alice": bcrypt_hash("wonderland").encode(),
                      "bob": bcrypt_hash("builder").encode()})
    assert auth.check(header("alice", "wonderland"))
    assert auth.check(header("bob", "builder"))
    for bad in (None, "", "Bearer abc", "Basic !!!notbase64", "Basic " + base64.b64encode(
            b"alice").decode(), header("alice", "builder"), header("mallory", "wonderland"),
            header("alice", "wonderland ")):
        assert not auth.check(bad), bad


def test_a_verified_credential_costs_bcrypt_once_a_wrong_one_every_time() -> None:
    auth = BasicAuth({"alice": bcrypt_hash("wonderland").encode()})
    for _ in range(5):
        assert auth.check(header("alice", "wonderland"))
    assert auth.bcrypt_checks == 1
    for _ in range(3):
        assert not auth.check(header("alice", "nope"))
    assert auth.bcrypt_checks == 4
    # An unknown user pays the same bcrypt cost (no user enumeration by timing).
    assert not auth.check(header("mallory", "x"))
    assert auth.bcrypt_checks == 5


def test_passwords_longer_than_72_bytes_behave_as_in_go() -> None:
    long_password = b"p" * 100
    # htpasswd and Go hash only the first 72 bytes.
    hashed = bcrypt.hashpw(long_password[:72], bcrypt.gensalt(rounds=4))
    auth = BasicAuth({"alice": hashed})
    assert auth.check(header("alice", long_password))


# ----------------------------------------------------------------------------- server


def test_plain_http_serves_metrics_landing_page_and_404(
        serve: Callable[[WebConfig | None], MetricsServer]) -> None:
    s = serve(None)
    assert s.port > 0
    assert s.scheme == "http"
    assert s.url == f"http://127.0.0.1:{s.port}/metrics"
    status, headers, body = fetch(s.url)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert b"flopledger_gpu_flop_total{" in body
    status, headers, body = fetch(f"http://127.0.0.1:{s.port}/")
    assert status == 200
    assert b'href="metrics"' in body
    assert fetch(f"http://127.0.0.1:{s.port}/other")[0] == 404
    assert fetch(s.url, method="POST")[0] == 405


def test_basic_auth_over_http_and_no_secret_in_logs(
        serve: Callable[[WebConfig | None], MetricsServer],
        caplog: pytest.LogCaptureFixture) -> None:
    hashed = bcrypt_hash("correct horse")
    caplog.set_level(logging.DEBUG)
    s = serve(parse_web_config({
        "basic_auth_users": {"prometheus": hashed},
        "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}}}))
    status, headers, _ = fetch(s.url)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith('Basic realm="flopledger"')
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert fetch(s.url, user="prometheus", password="battery staple")[0] == 401
    assert fetch(f"http://127.0.0.1:{s.port}/", user="prometheus", password="wrong")[0] == 401
    status, headers, body = fetch(s.url, user="prometheus", password="correct horse")
    assert status == 200
    assert b"flopledger_build_info" in body
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "battery staple" not in caplog.text
    assert "correct horse" not in caplog.text
    assert hashed not in caplog.text
    assert "clear text" in caplog.text  # basic auth without TLS is warned about


def test_tls_with_client_certificate_and_allowed_sans(
        serve: Callable[[WebConfig | None], MetricsServer], pki: Pki, tmp_path: Path) -> None:
    def config(sans: list[str]) -> WebConfig:
        return parse_web_config({"tls_server_config": {
            "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": str(pki.ca_cert), "client_allowed_sans": sans}}, tmp_path / "w.yml")

    good = serve(config(["prometheus.monitoring.svc"]))
    assert good.scheme == "https"
    ctx = client_context(pki, pki.client_cert, pki.client_key)
    assert fetch(good.url, context=ctx)[0] == 200
    wrong_san = serve(config(["someone-else"]))
    connection_refused(lambda: fetch(wrong_san.url, context=ctx), "SAN not allowed")


def test_tls_table_of_the_agent_config_maps_to_mutual_tls(
        serve: Callable[[WebConfig | None], MetricsServer], pki: Pki) -> None:
    s = serve(WebConfig.from_tls_files(pki.server_cert, pki.server_key, pki.ca_cert))
    assert fetch(s.url, context=client_context(pki, pki.client_cert, pki.client_key))[0] == 200
    connection_refused(lambda: fetch(s.url, context=client_context(pki)), "no client cert")
    plain_tls = WebConfig.from_tls_files(pki.server_cert, pki.server_key)
    assert plain_tls.tls is not None
    assert plain_tls.tls.verify_mode == ssl.CERT_NONE


def test_changed_web_config_is_picked_up_and_a_broken_one_ignored(
        serve: Callable[[WebConfig | None], MetricsServer], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "RELOAD_CHECK_INTERVAL_S", 0.0)
    path = write(tmp_path / "web.yml", "")
    s = serve(load_web_config(path))
    assert fetch(s.url)[0] == 200
    write(path, f"basic_auth_users:\n  prometheus: {bcrypt_hash('pw')}\n")
    assert _eventually(lambda: fetch(s.url)[0] == 401)
    assert fetch(s.url, user="prometheus", password="pw")[0] == 200
    write(path, "basic_auth_users: [not, a, mapping]\n")  # invalid: keep the last good one
    time.sleep(0.05)
    assert fetch(s.url)[0] == 401
    assert fetch(s.url, user="prometheus", password="pw")[0] == 200


def _eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
