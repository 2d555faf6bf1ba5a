"""The web configuration file Prometheus exporters share (TLS, mutual TLS, basic auth).

The format is the exporter-toolkit's ``--web.config.file``, so one file can serve
node_exporter, dcgm-exporter and flopledger on the same node::

    tls_server_config:
      cert_file: server.crt            # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt
    basic_auth_users:
      prometheus: $2y$10$...           # bcrypt hash, e.g. `htpasswd -nBC 10 "" | tr -d ':\\n'`

Everything is validated when the file is loaded and every problem is reported at once
as a :class:`agent.configfile.ConfigError`. Keys flopledger cannot honour (inline
PEM, cipher and curve lists, rate limits, the client-auth types that accept
unverified certificates) are reported as problems rather than ignored: a security
setting that silently does nothing is worse than a refusal to start.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from agent.configfile import ConfigError, Problems, path_problem

# exporter-toolkit's names (Go's tls.ClientAuthType) -> what Python's ssl can enforce.
CLIENT_AUTH_TYPES: Mapping[str, ssl.VerifyMode] = MappingProxyType({
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
})
# These two accept a client certificate without verifying it. OpenSSL (hence Python's
# ssl) cannot request a certificate and then skip verification, and the toolkit's own
# documentation calls them insecure, so they are refused with an explanation.
UNVERIFIED_CLIENT_AUTH_TYPES = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = MappingProxyType({
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
})
# Security headers the toolkit allows in http_server_config.headers, with the values
# it accepts where it restricts them (None: any string).
ALLOWED_HEADERS: Mapping[str, tuple[str, ...] | None] = MappingProxyType({
    "Content-Security-Policy": None,
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-Content-Type-Options": ("nosniff",),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
})
# $2a$/$2b$/$2y$ (htpasswd writes 2y), a two-digit cost, 22 characters of salt and 31
# of hash in bcrypt's base64 alphabet: 60 characters in all.
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_UNSUPPORTED_TOP = {
    "rate_limit": "not supported by flopledger (remove it; rate-limit in a reverse proxy)",
}
_UNSUPPORTED_TLS = {
    "cert": "cert_file instead (inline PEM is not supported)",
    "key": "key_file instead (inline PEM is not supported)",
    "client_ca": "client_ca_file instead (inline PEM is not supported)",
    "cipher_suites": "to be left out: Go cipher-suite names are not supported; "
                     "flopledger uses OpenSSL's defaults",
    "curve_preferences": "to be left out: curve preferences are not supported",
}


@dataclass(frozen=True, slots=True)
class TlsServerSettings:
    """``tls_server_config``: the server's certificate and its client-certificate policy.

    Paths are absolute (resolved against the web-config file's directory).
    """

    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    prefer_server_cipher_suites: bool = True

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        return CLIENT_AUTH_TYPES[self.client_auth_type]


@dataclass(frozen=True, slots=True)
class WebConfig:
    """A validated web-config file.

    Attributes:
        path: the file it was read from (None when built in code).
        tls: TLS settings; None serves plain HTTP.
        basic_auth_users: user name -> bcrypt hash (bytes); empty turns basic auth off.
        headers: extra response headers from ``http_server_config.headers``.
    """

    path: Path | None = None
    tls: TlsServerSettings | None = None
    basic_auth_users: Mapping[str, bytes] = field(
        default_factory=lambda: MappingProxyType({}))
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_tls_files(cls, cert_file: Path, key_file: Path,
                       client_ca_file: Path | None = None) -> WebConfig:
        """HTTPS without a web-config file (the agent's ``[tls]`` table): a client CA
        turns on mutual TLS with ``RequireAndVerifyClientCert``. Nothing is reloaded."""
        return cls(tls=TlsServerSettings(
            cert_file=cert_file, key_file=key_file, client_ca_file=client_ca_file,
            client_auth_type=("RequireAndVerifyClientCert" if client_ca_file is not None
                              else "NoClientCert")))

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def watched_files(self) -> tuple[Path, ...]:
        """The web-config file and every file it names: a change to any means reload."""
        files: list[Path] = [self.path] if self.path is not None else []
        if self.tls is not None:
            files += [self.tls.cert_file, self.tls.key_file]
            if self.tls.client_ca_file is not None:
                files.append(self.tls.client_ca_file)
        return tuple(files)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server-side SSL context for these settings; None for plain HTTP.

        Raises:
            ConfigError: if a certificate, key or CA file cannot be read or does not
                parse, or the key does not match the certificate.
        """
        if self.tls is None:
            return None
        tls = self.tls
        where = self.path or Path("<web config>")
        problems = Problems(where)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[tls.min_version]
        ctx.maximum_version = TLS_VERSIONS[tls.max_version]
        if tls.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        try:
            ctx.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file)
        except (OSError, ssl.SSLError) as e:
            # ssl's messages name the failing step, never key material.
            problems.add("tls_server_config.cert_file",
                         f"a PEM certificate (chain) matching key_file, readable by the "
                         f"agent ({type(e).__name__}: {e})")
        if tls.client_ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=tls.client_ca_file)
            except (OSError, ssl.SSLError) as e:
                problems.add("tls_server_config.client_ca_file",
                             f"a readable PEM CA bundle ({type(e).__name__}: {e})")
        problems.raise_if_any()
        ctx.verify_mode = tls.verify_mode
        return ctx


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _file(problems: Problems, table: Mapping[str, Any], key: str, where: str,
          base: Path) -> Path | None:
    if key not in table or table[key] in (None, ""):
        return None
    value = table[key]
    if path_problem(value) is not None:
        problems.add(f"{where}.{key}", "a file path (relative paths: to the web-config file)"
                     + (f" ({path_problem(value)})" if isinstance(value, str) else ""))
        return None
    p = _resolve(base, value)
    if not p.is_file():
        problems.add(f"{where}.{key}", f"an existing file (not found: {p})")
    return p


def _mapping(problems: Problems, raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.add(key, "a mapping")
        return {}
    return value


def _tls(problems: Problems, raw: Mapping[str, Any], base: Path) -> TlsServerSettings | None:
    where = "tls_server_config"
    table = _mapping(problems, raw, where)
    if not table:
        return None
    known = {"cert_file", "key_file", "client_auth_type", "client_ca_file",
             "client_allowed_sans", "min_version", "max_version",
             "prefer_server_cipher_suites"}
    for key in table:
        if key in _UNSUPPORTED_TLS:
            problems.add(f"{where}.{key}", _UNSUPPORTED_TLS[key])
        elif key not in known:
            problems.add(f"{where}.{key}", f"one of the known keys {sorted(known)}")
    cert = _file(problems, table, "cert_file", where, base)
    key_file = _file(problems, table, "key_file", where, base)
    if cert is None:
        problems.add(f"{where}.cert_file", "the server certificate file (required for TLS)")
    if key_file is None:
        problems.add(f"{where}.key_file", "the server key file (required for TLS)")
    ca = _file(problems, table, "client_ca_file", where, base)

    auth = table.get("client_auth_type") or "NoClientCert"
    if not isinstance(auth, str):  # YAML may give a list or a mapping: not hashable
        problems.add(f"{where}.client_auth_type", f"one of {list(CLIENT_AUTH_TYPES)}")
        auth = "NoClientCert"
    elif auth in UNVERIFIED_CLIENT_AUTH_TYPES:
        problems.add(f"{where}.client_auth_type",
                     f"one of {list(CLIENT_AUTH_TYPES)} ({auth} accepts unverified client "
                     f"certificates, which protects nothing and Python's ssl cannot do)")
        auth = "NoClientCert"
    elif auth not in CLIENT_AUTH_TYPES:
        problems.add(f"{where}.client_auth_type", f"one of {list(CLIENT_AUTH_TYPES)}")
        auth = "NoClientCert"
    if auth != "NoClientCert" and ca is None and "client_ca_file" not in table:
        problems.add(f"{where}.client_ca_file",
                     f"the CA that signs client certificates (client_auth_type {auth} "
                     f"verifies them)")
    if auth == "NoClientCert" and "client_ca_file" in table:
        # The toolkit refuses this too: a CA without a policy looks like mTLS but
        # lets every client in.
        problems.add(f"{where}.client_auth_type",
                     "RequireAndVerifyClientCert or VerifyClientCertIfGiven when "
                     "client_ca_file is set")

    sans_raw = table.get("client_allowed_sans") or []
    if not isinstance(sans_raw, list) or not all(isinstance(s, str) and s for s in sans_raw):
        problems.add(f"{where}.client_allowed_sans", "a list of non-empty strings")
        sans_raw = []
    if sans_raw and auth != "RequireAndVerifyClientCert":
        # With an optional certificate there may be no SAN to match at all.
        problems.add(f"{where}.client_allowed_sans",
                     "client_auth_type RequireAndVerifyClientCert as well")

    versions: dict[str, str] = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = table.get(key) or default
        if not isinstance(value, str) or value not in TLS_VERSIONS:
            problems.add(f"{where}.{key}", f"one of {list(TLS_VERSIONS)}")
            value = default
        versions[key] = value
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        problems.add(f"{where}.min_version", "a version not above max_version")
    prefer = table.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        problems.add(f"{where}.prefer_server_cipher_suites", "true or false")
        prefer = True
    if cert is None or key_file is None:
        return None
    return TlsServerSettings(
        cert_file=cert, key_file=key_file, client_auth_type=auth, client_ca_file=ca,
        client_allowed_sans=tuple(sans_raw), min_version=versions["min_version"],
        max_version=versions["max_version"], prefer_server_cipher_suites=prefer,
    )


def _http(problems: Problems, raw: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    where = "http_server_config"
    table = _mapping(problems, raw, where)
    for key in table:
        if key not in ("http2", "headers"):
            problems.add(f"{where}.{key}", "one of the known keys ['headers', 'http2']")
    # http2 is accepted for compatibility; this server answers HTTP/1.x, which every
    # Prometheus scrapes.
    if "http2" in table and not isinstance(table["http2"], bool):
        problems.add(f"{where}.http2", "true or false")
    headers_raw = table.get("headers") or {}
    if not isinstance(headers_raw, Mapping):
        problems.add(f"{where}.headers", "a mapping of header name to value")
        return ()
    headers: list[tuple[str, str]] = []
    for name, value in headers_raw.items():
        if name not in ALLOWED_HEADERS:
            problems.add(f"{where}.headers.{name}", f"one of {list(ALLOWED_HEADERS)}")
            continue
        allowed = ALLOWED_HEADERS[name]
        if not isinstance(value, str) or (allowed and value.lower() not in allowed):
            problems.add(f"{where}.headers.{name}",
                         f"one of {list(allowed)}" if allowed else "a string")
            continue
        if value:  # blank means "unset", as in the toolkit
            headers.append((name, value))
    return tuple(headers)


def _users(problems: Problems, raw: Mapping[str, Any]) -> dict[str, bytes]:
    where = "basic_auth_users"
    table = _mapping(problems, raw, where)
    users: dict[str, bytes] = {}
    for user, hashed in table.items():
        # Problems name the user but never echo a hash: error output ends up in logs.
        if not isinstance(user, str) or not user or ":" in user:
            problems.add(f"{where}.{user}",
                         "a non-empty user name without ':' (basic auth splits at the "
                         "first ':')")
            continue
        match = _BCRYPT_HASH.match(hashed) if isinstance(hashed, str) else None
        if match is None:
            problems.add(f"{where}.{user}",
                         "a bcrypt hash ($2y$/$2b$/$2a$, 60 characters), e.g. from "
                         "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`")
            continue
        if not 4 <= int(match.group(1)) <= 31:
            problems.add(f"{where}.{user}", "a bcrypt cost between 04 and 31")
            continue
        users[user] = hashed.encode("ascii")
    return users


def parse_web_config(raw: object, path: Path | None = None) -> WebConfig:
    """Validate a parsed web-config document (the result of ``yaml.safe_load``).

    Relative file paths are resolved against ``path``'s directory (the working
    directory when ``path`` is None) and must exist.

    Raises:
        ConfigError: naming the file and every bad key with what was expected.
    """
    where = path or Path("<web config>")
    problems = Problems(where)
    if raw is None:  # an empty file: plain HTTP, no authentication
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(where, [("-", "a YAML mapping at the top level")])
    known = {"tls_server_config", "http_server_config", "basic_auth_users"}
    for key in raw:
        if key in _UNSUPPORTED_TOP:
            problems.add(str(key), _UNSUPPORTED_TOP[key])
        elif key not in known:
            problems.add(str(key), f"one of the known keys {sorted(known)}")
    base = path.parent if path is not None else Path.cwd()
    tls = _tls(problems, raw, base)
    headers = _http(problems, raw)
    users = _users(problems, raw)
    problems.raise_if_any()
    return WebConfig(path=path, tls=tls, basic_auth_users=MappingProxyType(users),
                     headers=headers)


def load_web_config(path: Path | str) -> WebConfig:
    """Read, validate and test-load a web-config file.

    The TLS files are loaded once here, so a key that does not match its certificate
    is reported at start rather than at the first scrape.

    Raises:
        ConfigError: for a missing or unreadable file, bad YAML, bad values, or TLS
            files that do not load.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, [("-", f"a readable UTF-8 web-config file ({e})")]) from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        # str(e) quotes the offending line, which may hold a password hash: name
        # only the problem and where it is.
        detail = getattr(e, "problem", None) or type(e).__name__
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            detail += f" at line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError(path, [("-", f"valid YAML ({detail})")]) from e
    config = parse_web_config(raw, path)
    config.ssl_context()
    return config
