"""The RFC 9162 Merkle tree: roots, the incremental frontier, and both kinds of proof.

Everything is checked against a second, deliberately naive implementation written here
straight from the RFC's recursive definitions (``ref_*``), against trees written out by
hand, and against the worked example of RFC 6962 2.1.3 / RFC 9162 2.1.5 (seven leaves).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ledger.merkle import (
    EMPTY_ROOT,
    Frontier,
    ProofError,
    Tree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# --------------------------------------------------------------------------- reference


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def LEAF(data: bytes) -> bytes:
    return H(b"\x00" + data)


def NODE(left: bytes, right: bytes) -> bytes:
    return H(b"\x01" + left + right)


def ref_split(n: int) -> int:
    """Largest power of two strictly less than n (n > 1), by counting."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, recursively, exactly as RFC 9162 2.1.1 writes it."""
    n = len(leaves)
    if n == 0:
        return H(b"")
    if n == 1:
        return leaves[0]
    k = ref_split(n)
    return NODE(ref_mth(leaves[:k]), ref_mth(leaves[k:]))


def ref_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1."""
    n = len(leaves)
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 2.1.4.1."""
    n = len(leaves)
    if m == n:
        return [] if whole else [ref_mth(leaves)]
    k = ref_split(n)
    if m <= k:
        return [*ref_subproof(m, leaves[:k], whole), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def ref_directions(m: int, n: int) -> list[bool]:
    """For PATH(m, D[n]), leaf upwards: True where the proof hash is a left sibling.

    An inclusion proof computes the same root for two tree sizes exactly when these
    agree, so this says when a proof checked against a wrong size must still pass.
    """
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return [*ref_directions(m, k), False]
    return [*ref_directions(m - k, n - k), True]


def ref_shape(m: int, n: int, whole: bool = True) -> list[str]:
    """For SUBPROOF(m, D[n], b), leaf upwards: what each proof hash is to the verifier.

    "old" is a subtree root that is the old tree's own right edge; "L" a left sibling
    inside the old tree (it enters both roots); "R" a right sibling after it (new root
    only). RFC 9162 2.1.4.2 reproduces the roots for another (m, n) with the same shape.
    """
    if m == n:
        return [] if whole else ["old"]
    k = ref_split(n)
    if m <= k:
        return [*ref_shape(m, k, whole), "R"]
    return [*ref_shape(m - k, n - k, False), "L"]


def make_leaves(n: int, salt: bytes = b"") -> list[bytes]:
    """n distinct leaf hashes."""
    return [leaf_hash(salt + i.to_bytes(4, "big")) for i in range(n)]


def flip(h: bytes, bit: int = 0) -> bytes:
    b = bytearray(h)
    b[(bit // 8) % len(b)] ^= 1 << (bit % 8)
    return bytes(b)


# --------------------------------------------------------------------------- hashing & roots


def test_hash_primitives() -> None:
    assert leaf_hash(b"abc") == H(b"\x00abc")
    a, b = LEAF(b"a"), LEAF(b"b")
    assert node_hash(a, b) == H(b"\x01" + a + b)
    assert node_hash(a, b) != node_hash(b, a)
    assert H(b"") == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    # Domain separation: a leaf is never an interior node of the same bytes.
    assert leaf_hash(a + b) != node_hash(a, b)
    with pytest.raises(ValueError, match="32-byte"):
        node_hash(a[:31], b)


def test_roots_written_out_by_hand() -> None:
    d = [bytes([i]) * (i + 1) for i in range(8)]
    l0, l1, l2, l3, l4, l5, l6, l7 = (LEAF(x) for x in d)
    n01, n23, n45, n67 = NODE(l0, l1), NODE(l2, l3), NODE(l4, l5), NODE(l6, l7)
    n0123 = NODE(n01, n23)
    expected = {
        0: H(b""),
        1: l0,
        2: n01,
        3: NODE(n01, l2),
        4: n0123,
        5: NODE(n0123, l4),
        6: NODE(n0123, n45),
        7: NODE(n0123, NODE(n45, l6)),
        8: NODE(n0123, NODE(n45, n67)),
    }
    leaves = [LEAF(x) for x in d]
    for n, want in expected.items():
        assert root(leaves[:n]) == want, n
        assert ref_mth(leaves[:n]) == want, n
        assert Tree(leaves).root(n) == want, n


def test_published_rfc6962_vectors() -> None:
    # The eight-entry test log used by Certificate Transparency implementations; these
    # roots were derived with this module and match the published values.
    data = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
            bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]
    roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
    leaves = [leaf_hash(x) for x in data]
    for n, want in enumerate(roots, start=1):
        assert root(leaves[:n]).hex() == want
        assert ref_mth(leaves[:n]).hex() == want


@pytest.mark.parametrize("n", [*range(0, 70), 127, 128, 129, 255, 256, 257, 1000, 1025])
def test_root_matches_recursive_reference(n: int) -> None:
    leaves = make_leaves(n)
    assert root(leaves) == ref_mth(leaves)
    assert root(tuple(leaves)) == ref_mth(leaves)


def test_root_rejects_bad_leaf_hashes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        root([LEAF(b"a"), b"short"])
    with pytest.raises(ValueError, match="32 bytes"):
        Tree([LEAF(b"a")[:31] + b"xy"])


# --------------------------------------------------------------------------- frontier


def test_frontier_matches_root_for_every_size_and_round_trips() -> None:
    leaves = make_leaves(300, b"frontier")
    frontier = Frontier()
    assert frontier.size == 0
    assert frontier.root() == EMPTY_ROOT
    assert frontier.to_list() == []
    for n in range(301):
        if n:
            frontier.append(leaves[n - 1])
        want = root(leaves[:n])
        assert frontier.size == n
        assert frontier.root() == want, n
        state = frontier.to_list()
        # One perfect subtree per set bit of the size, largest first.
        assert [h for h, _ in state] == [b for b in range(n.bit_length() - 1, -1, -1)
                                         if n >> b & 1]
        restored = Frontier.from_list(state)
        assert restored.size == n
        assert restored.root() == want
        # Through JSON the way a store would persist it.
        as_json = json.dumps([(h, x.hex()) for h, x in state])
        reloaded = Frontier.from_list([(int(h), bytes.fromhex(x)) for h, x in json.loads(as_json)])
        assert reloaded.root() == want
        assert reloaded.to_list() == state
    assert frontier.root() == ref_mth(leaves)


def test_restored_frontier_keeps_growing() -> None:
    leaves = make_leaves(100, b"grow")
    for cut in (0, 1, 31, 32, 33, 63, 64, 99):
        first = Frontier()
        first.extend(leaves[:cut])
        second = Frontier.from_list(first.to_list())
        copy = second.copy()
        second.extend(leaves[cut:])
        assert second.size == 100
        assert second.root() == root(leaves)
        assert copy.size == cut  # the copy is independent
        assert copy.root() == root(leaves[:cut])


@pytest.mark.parametrize(
    "state",
    [
        [(0, LEAF(b"a")), (0, LEAF(b"b"))],  # heights not strictly decreasing
        [(0, LEAF(b"a")), (1, LEAF(b"b"))],
        [(-1, LEAF(b"a"))],
        [(64, LEAF(b"a"))],
        [(1, b"short")],
        [(1, "x" * 32)],
        [(True, LEAF(b"a"))],
        [(1.0, LEAF(b"a"))],
        [(1, LEAF(b"a"), 0)],
        [LEAF(b"a")],
    ],
)
def test_frontier_rejects_malformed_state(state: Any) -> None:
    with pytest.raises(ValueError, match="frontier"):
        Frontier.from_list(state)


def test_frontier_rejects_bad_leaf() -> None:
    frontier = Frontier()
    with pytest.raises(ValueError, match="32 bytes"):
        frontier.append(b"not a hash")
    assert frontier.size == 0


# --------------------------------------------------------------------------- RFC example

# RFC 6962 2.1.3 / RFC 9162 2.1.5: seven leaves d0..d6,
#
#             hash
#            /    \
#           k      l
#          / \    / \
#         g   h  i   j
#        / \ / \ / \  |
#        a b c d e f  d6
_D = [bytes([0xD0 + i]) for i in range(7)]
_a, _b, _c, _d, _e, _f, _j = (LEAF(x) for x in _D)
_g, _h, _i = NODE(_a, _b), NODE(_c, _d), NODE(_e, _f)
_k, _l = NODE(_g, _h), NODE(_i, _j)
_LEAVES7 = [LEAF(x) for x in _D]


def test_rfc_example_inclusion_paths() -> None:
    tree = Tree(_LEAVES7)
    assert tree.root() == NODE(_k, _l)
    assert tree.inclusion_proof(0) == [_b, _h, _l]
    assert tree.inclusion_proof(3) == [_c, _g, _l]
    assert tree.inclusion_proof(4) == [_f, _j, _k]
    assert tree.inclusion_proof(6) == [_i, _k]
    for m, proof in [(0, [_b, _h, _l]), (3, [_c, _g, _l]), (4, [_f, _j, _k]), (6, [_i, _k])]:
        assert inclusion_proof(_LEAVES7, m, 7) == proof
        assert verify_inclusion(_LEAVES7[m], m, 7, proof, NODE(_k, _l))


def test_rfc_example_consistency_proofs() -> None:
    tree = Tree(_LEAVES7)
    root7 = NODE(_k, _l)
    for m, proof, old in [(3, [_c, _d, _g, _l], NODE(_g, _c)),
                          (4, [_l], _k),
                          (6, [_i, _j, _k], NODE(_k, _i))]:
        assert tree.consistency_proof(m) == proof
        assert consistency_proof(_LEAVES7, m, 7) == proof
        assert tree.root(m) == old
        assert verify_consistency(m, 7, old, root7, proof)


# --------------------------------------------------------------------------- exhaustive, small


def test_all_proofs_of_small_trees_match_reference() -> None:
    leaves = make_leaves(40, b"small")
    tree = Tree(leaves)
    for n in range(1, 41):
        r = ref_mth(leaves[:n])
        assert tree.root(n) == r
        for m in range(n):
            path = tree.inclusion_proof(m, n)
            assert path == ref_path(m, leaves[:n]), (m, n)
            assert verify_inclusion(leaves[m], m, n, path, r)
        for m in range(1, n + 1):
            proof = tree.consistency_proof(m, n)
            assert proof == ref_subproof(m, leaves[:n], True), (m, n)
            assert verify_consistency(m, n, tree.root(m), r, proof), (m, n)


def test_tree_over_a_prefix_agrees_with_tree_over_more_leaves() -> None:
    leaves = make_leaves(150, b"prefix")
    big = Tree(leaves)
    for n in (1, 2, 3, 64, 65, 100, 127, 128, 129):
        small = Tree(leaves[:n])
        assert small.root() == big.root(n) == root(leaves[:n])
        for m in range(0, n, 7):
            assert small.inclusion_proof(m) == big.inclusion_proof(m, n)
            assert small.consistency_proof(m) == big.consistency_proof(m, n)
    # Cached right-edge subtrees give the same answer the second time.
    assert [big.inclusion_proof(m, 100) for m in range(100)] == [
        big.inclusion_proof(m, 100) for m in range(100)]


def test_tree_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Tree, "_CACHE_LIMIT", 3)
    leaves = make_leaves(77, b"cache")
    tree = Tree(leaves)
    for n in range(1, 78):
        for m in range(0, n, 5):
            assert tree.inclusion_proof(m, n) == ref_path(m, leaves[:n])
        assert tree.consistency_proof(n // 3 + 1, n) == ref_subproof(n // 3 + 1, leaves[:n], True)
        assert len(tree._cache) <= 3


# --------------------------------------------------------------------------- property tests

sizes = st.integers(min_value=1, max_value=200)
salts = st.binary(max_size=8)


@settings(max_examples=60, deadline=None)
@given(size=sizes, salt=salts, data=st.data())
def test_inclusion_proofs_verify_and_tampering_fails(size: int, salt: bytes,
                                                     data: st.DataObject) -> None:
    leaves = make_leaves(size, salt)
    tree = Tree(leaves)
    r = tree.root()
    assert r == root(leaves)
    proofs = [tree.inclusion_proof(m) for m in range(size)]
    for m, proof in enumerate(proofs):
        assert verify_inclusion(leaves[m], m, size, proof, r), m

    m = data.draw(st.integers(0, size - 1), label="index")
    proof = proofs[m]
    assert proof == inclusion_proof(leaves, m, size)
    assert not verify_inclusion(flip(leaves[m]), m, size, proof, r)
    assert not verify_inclusion(LEAF(b"other"), m, size, proof, r)
    assert not verify_inclusion(leaves[m], m, size, proof, flip(r, 255))
    for i in range(len(proof)):
        bit = data.draw(st.integers(0, 255), label="bit")
        tampered = [*proof[:i], flip(proof[i], bit), *proof[i + 1:]]
        assert not verify_inclusion(leaves[m], m, size, tampered, r)
    assert not verify_inclusion(leaves[m], m, size, [*proof, leaves[0]], r)
    # An extra hash folded over the real root is not a proof for the same size.
    extra = LEAF(b"extra")
    assert not verify_inclusion(leaves[m], m, size, [*proof, extra], NODE(extra, r))
    assert not verify_inclusion(leaves[m], m, size, [*proof, extra], NODE(r, extra))
    if proof:
        assert not verify_inclusion(leaves[m], m, size, proof[:-1], r)
        assert not verify_inclusion(leaves[m], m, size, proof[1:], r)
    # Another index: the proof fixes the leaf's position.
    for other in range(size):
        if other != m:
            assert not verify_inclusion(leaves[m], other, size, proof, r)
    # Another size: passes only where PATH(m, D[n]) has the same shape for both sizes
    # (e.g. leaf 0 of 3 leaves and of 4), since then it recomputes the same root.
    for other_size in range(size + 40):
        expected = other_size > m and ref_directions(m, other_size) == ref_directions(m, size)
        assert verify_inclusion(leaves[m], m, other_size, proof, r) == expected, other_size


@settings(max_examples=80, deadline=None)
@given(new_size=sizes, salt=salts, data=st.data())
def test_consistency_proofs_verify_and_tampering_fails(new_size: int, salt: bytes,
                                                       data: st.DataObject) -> None:
    old_size = data.draw(st.integers(1, new_size), label="old_size")
    leaves = make_leaves(new_size, salt)
    tree = Tree(leaves)
    old_root, new_root = root(leaves[:old_size]), root(leaves)
    assert tree.root(old_size) == old_root
    proof = tree.consistency_proof(old_size, new_size)
    assert proof == consistency_proof(leaves, old_size, new_size)
    assert proof == ref_subproof(old_size, leaves, True)
    assert verify_consistency(old_size, new_size, old_root, new_root, proof)

    assert not verify_consistency(old_size, new_size, flip(old_root), new_root, proof)
    assert not verify_consistency(old_size, new_size, old_root, flip(new_root), proof)
    assert not verify_consistency(old_size, new_size, new_root, old_root, proof) or (
        old_size == new_size)
    for i in range(len(proof)):
        bit = data.draw(st.integers(0, 255), label="bit")
        tampered = [*proof[:i], flip(proof[i], bit), *proof[i + 1:]]
        assert not verify_consistency(old_size, new_size, old_root, new_root, tampered)
    assert not verify_consistency(old_size, new_size, old_root, new_root, [*proof, old_root])
    extra = LEAF(b"extra")
    assert not verify_consistency(old_size, new_size, NODE(extra, old_root),
                                  NODE(extra, new_root), [*proof, extra])
    assert not verify_consistency(old_size, new_size, old_root, NODE(new_root, extra),
                                  [*proof, extra])
    # Other sizes: pass only where the proof has the same shape (e.g. 4 -> 7 and 4 -> 8).
    shape = ref_shape(old_size, new_size)
    for size2 in range(max(1, old_size - 20), new_size + 40):
        if size2 != new_size:
            expected = size2 >= old_size and ref_shape(old_size, size2) == shape
            assert verify_consistency(old_size, size2, old_root, new_root, proof) == expected
        if size2 != old_size:
            expected = size2 <= new_size and ref_shape(size2, new_size) == shape
            assert verify_consistency(size2, new_size, old_root, new_root, proof) == expected
    if proof:
        assert not verify_consistency(old_size, new_size, old_root, new_root, proof[:-1])

    # The old tree is not a prefix of the new one: a leaf inside it was changed.
    j = data.draw(st.integers(0, old_size - 1), label="changed leaf")
    forged = [*leaves[:j], LEAF(b"forged"), *leaves[j + 1:]]
    forged_root = root(forged)
    forged_proof = Tree(forged).consistency_proof(old_size, new_size)
    assert not verify_consistency(old_size, new_size, old_root, forged_root, forged_proof)
    assert not verify_consistency(old_size, new_size, old_root, forged_root, proof)
    # A change after the old tree is a legitimate extension.
    if old_size < new_size:
        j = data.draw(st.integers(old_size, new_size - 1), label="appended leaf")
        other = [*leaves[:j], LEAF(b"other"), *leaves[j + 1:]]
        other_proof = Tree(other).consistency_proof(old_size, new_size)
        assert verify_consistency(old_size, new_size, old_root, root(other), other_proof)


@settings(max_examples=200, deadline=None)
@given(
    leaf=st.binary(min_size=30, max_size=34),
    index=st.integers(-3, 300),
    size=st.integers(-3, 300),
    proof=st.lists(st.binary(min_size=31, max_size=33), max_size=12),
    old_root=st.binary(min_size=31, max_size=33),
)
def test_verifiers_never_raise(leaf: bytes, index: int, size: int, proof: list[bytes],
                               old_root: bytes) -> None:
    assert verify_inclusion(leaf, index, size, proof, old_root) in (True, False)
    assert verify_consistency(index, size, old_root, leaf, proof) in (True, False)


# --------------------------------------------------------------------------- edge cases


def test_single_leaf_tree() -> None:
    leaf = LEAF(b"only")
    tree = Tree([leaf])
    assert root([leaf]) == leaf == tree.root()
    assert tree.inclusion_proof(0) == [] == inclusion_proof([leaf], 0, 1)
    assert verify_inclusion(leaf, 0, 1, [], leaf)
    assert not verify_inclusion(leaf, 0, 1, [leaf], leaf)
    assert not verify_inclusion(leaf, 0, 1, [leaf], NODE(leaf, leaf))
    assert not verify_inclusion(LEAF(b"other"), 0, 1, [], leaf)
    assert not verify_inclusion(leaf, 1, 1, [], leaf)
    assert tree.consistency_proof(1, 1) == []
    assert verify_consistency(1, 1, leaf, leaf, [])
    # One leaf to two: the proof is the new right sibling.
    two = [leaf, LEAF(b"next")]
    proof = consistency_proof(two, 1, 2)
    assert proof == [two[1]]
    assert verify_consistency(1, 2, leaf, root(two), proof)


def test_equal_sizes_need_an_empty_proof_and_equal_roots() -> None:
    leaves = make_leaves(13)
    tree = Tree(leaves)
    for n in range(14):
        assert tree.consistency_proof(n, n) == [] == consistency_proof(leaves, n, n)
        r = tree.root(n)
        assert verify_consistency(n, n, r, r, [])
        assert not verify_consistency(n, n, r, flip(r), [])
        assert not verify_consistency(n, n, r, r, [r])


def test_empty_old_tree_is_consistent_only_with_an_empty_proof() -> None:
    # Outside the RFC (which has 0 < m): the empty tree, root EMPTY_ROOT, is a prefix of
    # every tree and the proof of that is empty. Anything else is rejected.
    leaves = make_leaves(9)
    tree = Tree(leaves)
    for n in range(10):
        assert tree.consistency_proof(0, n) == [] == consistency_proof(leaves, 0, n)
        assert verify_consistency(0, n, EMPTY_ROOT, tree.root(n), [])
        assert not verify_consistency(0, n, EMPTY_ROOT, tree.root(n), [EMPTY_ROOT])
        assert not verify_consistency(0, n, leaves[0], tree.root(n), [])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert not verify_consistency(0, 0, EMPTY_ROOT, leaves[0], [])
    assert not verify_consistency(0, 0, leaves[0], leaves[0], [])
    assert Tree([]).root() == EMPTY_ROOT
    assert Tree([]).size == 0


@pytest.mark.parametrize(
    ("index", "size"),
    [(5, 5), (6, 5), (-1, 5), (0, 0), (0, 11), (0, -1), (True, 5), (1.0, 5)],
)
def test_inclusion_proof_rejects_bad_arguments(index: Any, size: Any) -> None:
    leaves = make_leaves(10)
    with pytest.raises(ProofError):
        inclusion_proof(leaves, index, size)
    with pytest.raises(ProofError):
        Tree(leaves).inclusion_proof(index, size)


@pytest.mark.parametrize(
    ("old_size", "new_size"),
    [(6, 5), (0, 11), (11, 11), (-1, 5), (2, -1), (1, 5.0), (None, 5)],
)
def test_consistency_proof_rejects_bad_arguments(old_size: Any, new_size: Any) -> None:
    leaves = make_leaves(10)
    with pytest.raises(ProofError):
        consistency_proof(leaves, old_size, new_size)
    with pytest.raises(ProofError):
        Tree(leaves).consistency_proof(old_size, new_size)


def test_tree_rejects_bad_sizes() -> None:
    tree = Tree(make_leaves(4))
    assert issubclass(ProofError, ValueError)
    with pytest.raises(ProofError):
        tree.root(5)
    with pytest.raises(ProofError):
        tree.root(-1)
    with pytest.raises(ProofError):
        tree.leaf(4)
    assert tree.leaf(3) == make_leaves(4)[3]
    assert len(tree) == tree.size == 4
    with pytest.raises(ProofError):
        Tree([]).inclusion_proof(0)


@pytest.mark.parametrize(
    "bad",
    [
        {"proof": None},
        {"proof": b"\x00" * 64},
        {"proof": "ab" * 32},
        {"proof": [b"\x00" * 31]},
        {"proof": [1, 2, 3]},
        {"leaf": b"\x00" * 31},
        {"leaf": "x" * 32},
        {"root": None},
        {"index": -1},
        {"index": 1.0},
        {"index": True},
        {"size": 0},
        {"size": "7"},
    ],
)
def test_verifiers_reject_malformed_input(bad: dict[str, Any]) -> None:
    leaves = make_leaves(7)
    tree = Tree(leaves)
    args: dict[str, Any] = {"leaf": leaves[1], "index": 1, "size": 7,
                            "proof": tree.inclusion_proof(1), "root": tree.root()}
    assert verify_inclusion(args["leaf"], args["index"], args["size"], args["proof"],
                            args["root"])
    args.update(bad)
    assert not verify_inclusion(args["leaf"], args["index"], args["size"], args["proof"],
                                args["root"])
    cargs: dict[str, Any] = {"index": 3, "size": 7, "old": tree.root(3), "new": tree.root(),
                             "proof": tree.consistency_proof(3)}
    assert verify_consistency(cargs["index"], cargs["size"], cargs["old"], cargs["new"],
                              cargs["proof"])
    cargs.update({k: v for k, v in bad.items() if k in cargs})
    if "leaf" in bad:
        cargs["old"] = bad["leaf"]
    if "root" in bad:
        cargs["new"] = bad["root"]
    assert not verify_consistency(cargs["index"], cargs["size"], cargs["old"], cargs["new"],
                                  cargs["proof"])
