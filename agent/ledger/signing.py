"""The node's Ed25519 key and signed tree heads.

A tree head commits to the ledger's first ``size`` records through their Merkle root,
at a time; the node signs it. Anyone holding the public key can check that a ledger or
an audit bundle is what the node committed to, and that later heads extend earlier
ones (consistency proofs), so a record cannot be edited, dropped or reordered after
the fact without the signatures failing.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# cryptography is loaded by what signs or verifies: the commands that only read a
# ledger's figures and its head (runs, status) do without it.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

HEAD_FORMAT = "flopledger tree head v1"

# RFC 8410, section 7: an Ed25519 private key in PKCS#8 (version 1, no attributes) is
# this DER prefix and the 32-byte seed, and cryptography writes it so, on one PEM line.
# The node key is read and written in that form directly: cryptography's serialization
# module loads bcrypt and the OpenSSH formats, which an agent has no use for. Any other
# form of a key file goes through that module.
_PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN = b"-----BEGIN PRIVATE KEY-----"
_PEM_END = b"-----END PRIVATE KEY-----"


def fingerprint(public_key_raw: bytes) -> str:
    """Short, stable name of a public key: the first 8 bytes of its SHA-256, in hex."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes_raw()


def load_public(raw: bytes) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The node key at ``path`` (PKCS#8 PEM, mode 0600), created on first use.

    Raises:
        OSError: if the key cannot be read or written.
        ValueError: if the file is not an Ed25519 private key.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists():
        pem = path.read_bytes()
        seed = _pkcs8_seed(pem)
        if seed is not None:
            return Ed25519PrivateKey.from_private_bytes(seed)
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = pkcs8_pem(key.private_bytes_raw())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    pub = path.with_suffix(".pub")
    pub.write_text(base64.b64encode(public_raw(key.public_key())).decode() + "\n")
    return key


def pkcs8_pem(seed: bytes) -> bytes:
    """An Ed25519 private key's 32-byte seed as an unencrypted PKCS#8 PEM file, byte for
    byte as cryptography writes it."""
    body = base64.b64encode(_PKCS8_ED25519 + seed)
    return b"\n".join((_PEM_BEGIN, body, _PEM_END, b""))


def _pkcs8_seed(pem: bytes) -> bytes | None:
    """The seed of a key file in the form :func:`pkcs8_pem` writes, else None."""
    lines = pem.strip().splitlines()
    if len(lines) != 3 or lines[0] != _PEM_BEGIN or lines[2] != _PEM_END:
        return None
    try:
        der = base64.b64decode(lines[1], validate=True)
    except ValueError:
        return None
    if len(der) != len(_PKCS8_ED25519) + 32 or not der.startswith(_PKCS8_ED25519):
        return None
    return der[len(_PKCS8_ED25519):]


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A signed commitment to the first ``size`` records of a ledger."""

    origin: str
    size: int
    root: bytes
    timestamp_ns: int
    signature: bytes = b""

    def body(self) -> bytes:
        """The exact bytes that are signed."""
        return (
            f"{HEAD_FORMAT}\norigin {self.origin}\nsize {self.size}\n"
            f"root {base64.b64encode(self.root).decode()}\ntime {self.timestamp_ns}\n"
        ).encode()

    def signed(self, key: Ed25519PrivateKey) -> TreeHead:
        return TreeHead(self.origin, self.size, self.root, self.timestamp_ns,
                        key.sign(self.body()))

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            public_key.verify(self.signature, self.body())
        except InvalidSignature:
            return False
        return True

    def to_json(self) -> dict[str, object]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": base64.b64encode(self.root).decode(),
            "timestamp_ns": self.timestamp_ns,
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> TreeHead:
        """Raises: KeyError, ValueError or TypeError for a malformed document."""
        return cls(
            origin=str(doc["origin"]),
            size=int(str(doc["size"])),
            root=base64.b64decode(str(doc["root"]), validate=True),
            timestamp_ns=int(str(doc["timestamp_ns"])),
            signature=base64.b64decode(str(doc["signature"]), validate=True),
        )
