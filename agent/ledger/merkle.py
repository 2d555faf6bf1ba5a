"""Append-only Merkle tree of RFC 9162 section 2.1 (Certificate Transparency v2).

The hashing is that of RFC 6962 / RFC 9162 with SHA-256::

    MTH({})        = SHA-256()                                  (``EMPTY_ROOT``)
    MTH({d[0]})    = SHA-256(0x00 || d[0])                      (``leaf_hash``)
    MTH(D[n])      = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  (``node_hash``)

where, for ``n > 1``, ``k`` is the largest power of two strictly less than ``n``.

Everything below works on *leaf hashes* (32-byte ``leaf_hash`` outputs), never on
the raw entries:

* ``root`` computes the tree hash of a list of leaf hashes bottom-up, level by level
  (an odd node at the end of a level is carried up unchanged, which yields exactly the
  RFC's left-balanced tree); no recursion, O(n) hashing.
* ``Frontier`` keeps the O(log n) "compact range" of an append-only log (the roots of
  the perfect subtrees of the binary decomposition of its size) and gives the root of
  the log at its current size; its state round-trips through ``to_list``/``from_list``.
* ``inclusion_proof``/``consistency_proof`` build the RFC 9162 2.1.3.1 ``PATH`` and
  2.1.4.1 ``PROOF``/``SUBPROOF`` lists; ``Tree`` caches every subtree so that many proofs
  against the same leaves cost O(log n) each.
* ``verify_inclusion``/``verify_consistency`` are the RFC 9162 2.1.3.2 and 2.1.4.2
  algorithms. They never raise: a malformed or mismatching proof makes them return
  ``False``.

Consistency with an empty old tree (``old_size == 0``) is outside the RFC's definition
(``0 < m <= n``). Here an empty tree is a prefix of every tree, with an empty proof:
``consistency_proof(leaves, 0, n)`` returns ``[]`` and ``verify_consistency(0, n, ...)``
accepts exactly an empty proof whose old root is ``EMPTY_ROOT``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_HEIGHT",
    "Frontier",
    "ProofError",
    "Tree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

MAX_HEIGHT = 63
"""Largest subtree height a persisted ``Frontier`` may claim (a log of < 2**64 leaves)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256

EMPTY_ROOT: bytes = _sha256(b"").digest()
"""MTH of the empty list: SHA-256 of the empty string."""


class ProofError(ValueError):
    """Invalid arguments for building a proof or reading a tree (index >= size, ...)."""


# --------------------------------------------------------------------------- hashing


def leaf_hash(data: bytes) -> bytes:
    """Return the leaf hash ``SHA-256(0x00 || data)`` of one log entry.

    Raises ``TypeError`` if ``data`` is not bytes-like.
    """
    return _sha256(_LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the interior node hash ``SHA-256(0x01 || left || right)``.

    Raises ``ValueError`` if either child is not a 32-byte hash.
    """
    if len(left) != HASH_SIZE or len(right) != HASH_SIZE:
        raise ValueError(f"node children must be {HASH_SIZE}-byte hashes")
    return _sha256(_NODE_PREFIX + bytes(left) + bytes(right)).digest()


def _node(left: bytes, right: bytes) -> bytes:
    # Unchecked node_hash for internal use: callers have validated the lengths.
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly less than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray) and len(value) == HASH_SIZE


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _join(leaf_hashes: Iterable[bytes]) -> bytes:
    """Concatenate leaf hashes into one buffer, checking that each is 32 bytes long."""
    items = leaf_hashes if isinstance(leaf_hashes, list | tuple) else list(leaf_hashes)
    lengths = set(map(len, items))
    if lengths - {HASH_SIZE}:
        raise ValueError(f"leaf hashes must be {HASH_SIZE} bytes long")
    return b"".join(items)


def _next_level(level: bytes) -> bytes:
    """Hash adjacent pairs of a level (concatenated 32-byte hashes) into the next one.

    Left and right children are contiguous in ``level``, so each parent is one hash
    of ``0x01 || level[64i : 64i + 64]``. A last, unpaired node is carried up as is.
    """
    paired = (len(level) // (2 * HASH_SIZE)) * (2 * HASH_SIZE)
    sha, prefix, step = _sha256, _NODE_PREFIX, 2 * HASH_SIZE
    parts = [sha(prefix + level[i:i + step]).digest() for i in range(0, paired, step)]
    if paired != len(level):
        parts.append(level[paired:])
    return b"".join(parts)


def _fold(subtree_roots: Sequence[bytes]) -> bytes:
    """Root of a tree given the roots of its decomposition, largest (leftmost) first."""
    acc = subtree_roots[-1]
    for left in reversed(subtree_roots[:-1]):
        acc = _node(left, acc)
    return acc


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return MTH over already-hashed leaves (``EMPTY_ROOT`` for an empty sequence).

    Iterative and O(n): n - 1 node hashes, about 2 * 32 * n bytes of working memory.
    Raises ``ValueError`` if a leaf hash is not 32 bytes long and ``TypeError`` if one
    is not bytes-like.
    """
    level = _join(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > HASH_SIZE:
        level = _next_level(level)
    return level


# --------------------------------------------------------------------------- frontier


class Frontier:
    """Incremental Merkle root of an append-only log in O(log n) state.

    The state is the "compact range" ``[0, size)``: one ``(height, hash)`` pair per set
    bit of ``size``, heights strictly decreasing, each hash the root of the perfect
    subtree of ``2**height`` consecutive leaves in the binary decomposition of the log.
    ``append`` is amortised O(1) hashing (worst case O(log n)); ``root`` is O(log n).
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self) -> None:
        self._nodes: list[tuple[int, bytes]] = []
        self._size = 0

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash (a ``leaf_hash`` output).

        Raises ``ValueError`` if ``leaf_hash`` is not a 32-byte hash.
        """
        if not _is_hash(leaf_hash):
            raise ValueError(f"a leaf hash must be {HASH_SIZE} bytes")
        height, acc = 0, bytes(leaf_hash)
        nodes = self._nodes
        while nodes and nodes[-1][0] == height:
            acc = _node(nodes.pop()[1], acc)
            height += 1
        nodes.append((height, acc))
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append several leaf hashes in order; raises like ``append``."""
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        """Return MTH of the leaves appended so far (``EMPTY_ROOT`` when empty)."""
        if not self._nodes:
            return EMPTY_ROOT
        return _fold([h for _height, h in self._nodes])

    def copy(self) -> Frontier:
        """Return an independent copy of this frontier."""
        other = Frontier()
        other._nodes = list(self._nodes)
        other._size = self._size
        return other

    def to_list(self) -> list[tuple[int, bytes]]:
        """Return the state as ``(height, hash)`` pairs, largest subtree first.

        ``size`` is ``sum(2**height)``; ``Frontier.from_list`` restores it.
        """
        return list(self._nodes)

    @classmethod
    def from_list(cls, items: Iterable[tuple[int, bytes]]) -> Frontier:
        """Restore a frontier from ``to_list`` output.

        Raises ``ValueError`` if the state is malformed: an item that is not a pair, a
        height that is not an int in ``[0, MAX_HEIGHT]``, heights not strictly
        decreasing, or a hash that is not 32 bytes.
        """
        nodes: list[tuple[int, bytes]] = []
        size = 0
        for item in items:
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise ValueError(f"frontier item {item!r} is not a (height, hash) pair")
            height, h = item
            if not _is_int(height) or not 0 <= height <= MAX_HEIGHT:
                raise ValueError(f"frontier height {height!r} is not in [0, {MAX_HEIGHT}]")
            if nodes and height >= nodes[-1][0]:
                raise ValueError("frontier heights must be strictly decreasing")
            if not _is_hash(h):
                raise ValueError(f"frontier hash must be {HASH_SIZE} bytes")
            nodes.append((height, bytes(h)))
            size += 1 << height
        frontier = cls()
        frontier._nodes = nodes
        frontier._size = size
        return frontier

    def __repr__(self) -> str:
        return f"Frontier(size={self._size}, root={self.root().hex()})"


# --------------------------------------------------------------------------- proofs


class Tree:
    """All subtree hashes of a fixed list of leaf hashes, for building many proofs.

    Construction is O(N) hashing (N - 1 node hashes, about 1 s per million leaves in
    CPython) and keeps every level of the bottom-up tree as one contiguous ``bytes``
    buffer: about 2 * 32 * N bytes in all, independent of the caller's list.

    Afterwards, for any ``size <= N``, ``root(size)``, ``inclusion_proof(index, size)``
    and ``consistency_proof(old_size, new_size)`` cost O(log N): every perfect subtree is
    a slice of a level, and the only other subtrees a proof needs (the right edge of a
    tree whose size is not a power of two) are folded from O(log N) perfect ones and
    memoised. Ten thousand inclusion proofs into one tree head over a million leaves
    take well under a second.
    """

    __slots__ = ("_cache", "_levels", "_size")

    _CACHE_LIMIT = 1 << 16

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        """Hash all levels of the tree over ``leaf_hashes``.

        Raises ``ValueError`` if a leaf hash is not 32 bytes long and ``TypeError`` if
        one is not bytes-like.
        """
        level = _join(leaf_hashes)
        self._size = len(level) // HASH_SIZE
        levels = [level]
        while len(level) > HASH_SIZE:
            level = _next_level(level)
            levels.append(level)
        self._levels = levels
        self._cache: dict[tuple[int, int], bytes] = {}

    @property
    def size(self) -> int:
        """Number of leaves N."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def leaf(self, index: int) -> bytes:
        """Return the leaf hash at ``index``; raises ``ProofError`` if out of range."""
        _check_range("index", index, 0, self._size - 1)
        return self._node_at(0, index)

    def _node_at(self, height: int, index: int) -> bytes:
        start = index * HASH_SIZE
        return self._levels[height][start:start + HASH_SIZE]

    def _range(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a subtree of the RFC recursion of some D[0:size].

        Such a range is non-empty and ``lo`` is a multiple of a power of two no smaller
        than ``hi - lo``, so it decomposes into perfect, aligned subtrees of decreasing
        size, each a slice of one level.
        """
        n = hi - lo
        if n & (n - 1) == 0:
            height = n.bit_length() - 1
            return self._node_at(height, lo >> height)
        key = (lo, hi)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        parts: list[bytes] = []
        start = lo
        for height in range(n.bit_length() - 1, -1, -1):
            if n >> height & 1:
                parts.append(self._node_at(height, start >> height))
                start += 1 << height
        value = _fold(parts)
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = value
        return value

    def root(self, size: int | None = None) -> bytes:
        """Return MTH of the first ``size`` leaves (all of them by default).

        Raises ``ProofError`` unless ``0 <= size <= N``.
        """
        size = self._size if size is None else size
        _check_range("size", size, 0, self._size)
        return EMPTY_ROOT if size == 0 else self._range(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return PATH(index, D[0:size]) of RFC 9162 2.1.3.1 (``size`` defaults to N).

        The list runs from the leaf's sibling up to the root's other child. Raises
        ``ProofError`` unless ``0 <= index < size <= N``.
        """
        size = self._size if size is None else size
        _check_range("size", size, 1, self._size)
        _check_range("index", index, 0, size - 1)
        path: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                path.append(self._range(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._range(lo, lo + k))
                lo += k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return PROOF(old_size, D[0:new_size]) of RFC 9162 2.1.4.1 (``new_size``: N).

        Empty when ``old_size == new_size`` or ``old_size == 0``. Raises ``ProofError``
        unless ``0 <= old_size <= new_size <= N``.
        """
        new_size = self._size if new_size is None else new_size
        _check_range("new_size", new_size, 0, self._size)
        _check_range("old_size", old_size, 0, new_size)
        if old_size in (0, new_size):
            return []
        # SUBPROOF(m, D[lo:hi], b), unrolled: the recursion always continues in one
        # half and appends the other half's hash after the sub-result.
        proof: list[bytes] = []
        lo, hi, whole = 0, new_size, True
        while old_size != hi:
            k = _split(hi - lo)
            if old_size - lo <= k:
                proof.append(self._range(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range(lo, lo + k))
                lo += k
                whole = False
        if not whole:
            proof.append(self._range(lo, hi))
        proof.reverse()
        return proof


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not _is_int(value):
        raise ProofError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ProofError(f"{name} {value} is not in [{low}, {high}]")


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """Return the RFC 9162 2.1.3.1 inclusion proof PATH(index, D[0:size]).

    O(size) hashing; use ``Tree`` to build many proofs over the same leaves. Raises
    ``ProofError`` unless ``0 <= index < size <= len(leaf_hashes)``, ``ValueError`` if
    a leaf hash is not 32 bytes long.
    """
    _check_range("size", size, 1, len(leaf_hashes))
    _check_range("index", index, 0, size - 1)
    return Tree(leaf_hashes[:size]).inclusion_proof(index)


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """Return the RFC 9162 2.1.4.1 consistency proof PROOF(old_size, D[0:new_size]).

    Empty when ``old_size == new_size`` or ``old_size == 0``. O(new_size) hashing; use
    ``Tree`` for many proofs. Raises ``ProofError`` unless
    ``0 <= old_size <= new_size <= len(leaf_hashes)``, ``ValueError`` if a leaf hash is
    not 32 bytes long.
    """
    _check_range("new_size", new_size, 0, len(leaf_hashes))
    _check_range("old_size", old_size, 0, new_size)
    if old_size in (0, new_size):
        return []
    return Tree(leaf_hashes[:new_size]).consistency_proof(old_size)


# --------------------------------------------------------------------------- verifiers


def _proof_hashes(proof: Sequence[bytes]) -> list[bytes] | None:
    """The proof as a list of 32-byte ``bytes``, or None if it is malformed."""
    if isinstance(proof, bytes | bytearray | str):
        return None
    try:
        items = list(proof)
    except TypeError:
        return None
    if not all(_is_hash(p) for p in items):
        return None
    return [bytes(p) for p in items]


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """Check an inclusion proof with the RFC 9162 2.1.3.2 algorithm.

    True iff ``proof`` shows that ``leaf_hash`` is the leaf at ``index`` of a tree of
    ``size`` leaves whose root is ``expected_root``. Never raises: bad arguments
    (``index >= size``, a non-32-byte hash, a proof of the wrong length, ...) give False.
    """
    if not (_is_int(index) and _is_int(size) and _is_hash(leaf_hash)
            and _is_hash(expected_root)):
        return False
    if not 0 <= index < size:
        return False
    path = _proof_hashes(proof)
    if path is None:
        return False
    fn, sn = index, size - 1
    r = bytes(leaf_hash)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Check a consistency proof with the RFC 9162 2.1.4.2 algorithm.

    True iff ``proof`` shows that the tree of ``old_size`` leaves with root ``old_root``
    is a prefix of the tree of ``new_size`` leaves with root ``new_root``. Equal sizes
    need an empty proof and equal roots; ``old_size == 0`` needs an empty proof and
    ``old_root == EMPTY_ROOT``. Never raises: bad arguments give False.
    """
    if not (_is_int(old_size) and _is_int(new_size) and _is_hash(old_root)
            and _is_hash(new_root)):
        return False
    path = _proof_hashes(proof)
    if path is None or not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not path and old_root == new_root and (old_size > 0 or old_root == EMPTY_ROOT)
    if old_size == 0:
        return not path and old_root == EMPTY_ROOT
    if not path:
        return False
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
