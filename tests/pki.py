"""Test PKI (a CA, server and client certificates), bcrypt hashes, and an HTTP(S) client
that returns errors as answers: shared by the endpoint and end-to-end tests."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry

from exporters.collector import FlopledgerCollector
from tests.exposition import sample_snapshot


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost, a client
    certificate from the same CA, and a client certificate from an unrelated CA."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path
    other_client_cert: Path
    other_client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    # EC keys: generating RSA keys would dominate the test's run time.
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(cn: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
          sans: list[x509.GeneralName], usage: x509.ObjectIdentifier,
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def make_pki(directory: Path) -> Pki:
    """Write a fresh PKI into ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("flopledger test CA")
    other = _ca("some other CA")
    server = _leaf("flopledger agent", ca,
                   [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1"))],
                   ExtendedKeyUsageOID.SERVER_AUTH)
    client = _leaf("prometheus", ca, [x509.DNSName("prometheus.monitoring.svc")],
                   ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _leaf("prometheus", other, [x509.DNSName("prometheus.monitoring.svc")],
                     ExtendedKeyUsageOID.CLIENT_AUTH)
    d = directory
    return Pki(
        ca_cert=_write_cert(d / "ca.crt", ca[0]),
        server_cert=_write_cert(d / "server.crt", server[0]),
        server_key=_write_key(d / "server.key", server[1]),
        client_cert=_write_cert(d / "client.crt", client[0]),
        client_key=_write_key(d / "client.key", client[1]),
        other_ca_cert=_write_cert(d / "other-ca.crt", other[0]),
        other_client_cert=_write_cert(d / "other-client.crt", stranger[0]),
        other_client_key=_write_key(d / "other-client.key", stranger[1]),
    )


def bcrypt_hash(password: str, rounds: int = 4) -> str:
    """A $2y$ hash like htpasswd writes (cost 4, the minimum, keeps tests fast)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    return "$2y$" + hashed[4:]


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None
                   ) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def fetch(url: str, *, user: str | None = None, password: str | None = None,
          context: ssl.SSLContext | None = None, method: str = "GET",
          timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body); HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, method=method)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def connection_refused(call: Callable[[], object], why: str) -> OSError:
    """Run ``call`` and return the connection error it must end with.

    Raises:
        AssertionError: if it succeeded or got an HTTP answer (even an error status).
    """
    try:
        call()
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{why}: got HTTP {e.code}, expected a refused connection") from e
    except OSError as e:  # TLS alerts, resets, URLError wrapping either
        return e
    raise AssertionError(f"{why}: the request succeeded")


def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FlopledgerCollector(sample_snapshot))
    return reg
