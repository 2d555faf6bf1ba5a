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

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HEAD_FORMAT = "flopledger tree head v1"


def fingerprint(public_key_raw: bytes) -> str:
    """Short, stable name of a public key: the first 8 bytes of its SHA-256, in hex."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The node key at ``path`` (PKCS#8 PEM, mode 0600), created on first use.

    Raises:
        OSError: if the key cannot be read or written.
        ValueError: if the file is not an Ed25519 private key.
    """
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
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
