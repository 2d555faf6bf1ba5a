"""The head file ``<ledger>.head``: the latest signed head and the totals, beside the ledger.

The ledger can lose its tail behind the agent's back: a deleted WAL, an older copy put
back. The head file, rewritten atomically after every checkpoint, remembers what the
node last committed so that a shorter ledger is refused instead of silently continued.
It holds the latest signed tree head (the fields of :meth:`TreeHead.to_json`, as it
always did) and a signed ``state``: the sums per (GPU, run) of the sealed records and
of the still-open ones, i.e. what ``/metrics`` showed. ``flopledger recover`` starts a
new ledger from that state, so counters never go backwards.

The state's signature covers the head's signed body and the state's canonical JSON:
neither can be swapped for another's.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.ledger.signing import TreeHead
from agent.ledger.sums import PairKey, Pairs, PairSum, from_values, values, with_pairs

STATE_FORMAT = "flopledger-head-state-1"


class MirrorError(ValueError):
    """The head file is unreadable, malformed, or its signatures do not verify."""


def head_file(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".head")


def write_atomically(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: the file is either old or new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True, slots=True)
class Mirror:
    """A head file read back (signatures not yet checked: see :meth:`problem`).

    ``sealed`` and ``open`` are None for a head file written before it held totals.
    """

    path: Path
    head: TreeHead
    written_ns: int | None = None
    sealed: Pairs | None = None
    open: Pairs | None = None
    signed_state: bytes = b""
    state_signature: bytes = b""

    @property
    def has_state(self) -> bool:
        return self.sealed is not None

    def problem(self, public_key: Ed25519PublicKey) -> str | None:
        """What is wrong with its signatures under ``public_key``, or None."""
        if not self.head.verify(public_key):
            return f"{self.path}: the head's signature does not verify"
        if self.has_state:
            try:
                public_key.verify(self.state_signature, self.head.body() + self.signed_state)
            except InvalidSignature:
                return f"{self.path}: the signature over its totals does not verify"
        return None

    def combined(self) -> Pairs:
        """Sealed and open sums together: what ``/metrics`` showed when it was written."""
        return with_pairs(self.sealed or {}, self.open or {})


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _pair_rows(pairs: Pairs) -> list[list[object]]:
    return [[p.gpu_uuid, p.run, p.gpu_index, p.model, p.category, p.node, p.spec, p.precision,
             *values(p.totals)] for _key, p in sorted(pairs.items())]


def _pairs_from_rows(rows: object) -> Pairs:
    if not isinstance(rows, list):
        raise MirrorError("pairs are not a list")
    out: Pairs = {}
    for row in rows:
        if (not isinstance(row, list) or len(row) != 17
                or not all(isinstance(x, str) for x in (row[0], row[1], *row[3:8]))
                or not all(type(x) is int for x in (row[2], *row[8:]))):
            raise MirrorError(f"malformed pair {str(row)[:80]}")
        key: PairKey = (row[0], row[1])
        out[key] = PairSum(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
                           from_values(row[8:]))
    return out


def write_mirror(db_path: Path, head: TreeHead, sealed: Pairs, open_: Pairs,
                 key: Ed25519PrivateKey, written_ns: int) -> None:
    """Replace the head file atomically.

    Raises:
        OSError: if it cannot be written.
    """
    state = {"format": STATE_FORMAT, "written_ns": written_ns,
             "sealed": _pair_rows(sealed), "open": _pair_rows(open_)}
    signature = key.sign(head.body() + _canonical(state))
    doc: dict[str, Any] = {**head.to_json(), "state": state,
                           "state_signature": base64.b64encode(signature).decode()}
    write_atomically(head_file(db_path), json.dumps(doc, separators=(",", ":")).encode())


def read_mirror(db_path: Path) -> Mirror | None:
    """The head file beside ``db_path``; None if there is none. Check its signatures
    with :meth:`Mirror.problem`.

    Raises:
        MirrorError: for an unreadable or malformed file.
    """
    path = head_file(db_path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise MirrorError(f"{path}: unreadable ({e})") from e
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise MirrorError("not a JSON object")
        head = TreeHead.from_json(doc)
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise MirrorError(f"{path}: malformed ({e})") from e
    state = doc.get("state")
    if state is None:
        return Mirror(path, head)
    try:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise MirrorError(f"state is not {STATE_FORMAT}")
        signature = base64.b64decode(str(doc.get("state_signature")), validate=True)
        written = state.get("written_ns")
        if type(written) is not int:
            raise MirrorError("written_ns is not an integer")
        sealed, open_ = _pairs_from_rows(state.get("sealed")), _pairs_from_rows(state.get("open"))
    except (ValueError, TypeError) as e:
        raise MirrorError(f"{path}: malformed state ({e})") from e
    return Mirror(path, head, written, sealed, open_, _canonical(state), signature)
