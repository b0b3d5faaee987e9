"""Tree hash vectors from ../shared/reference.md, each with the place it was published."""

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from glacierfs import treehash as th

MIB = th.MIB

VECTORS = [
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),  # boto, botocore
    (b"a" * 1024, "2edc986847e209b4016e141a6dc8716d3207350f416969382d431539bf292e4a"),  # botocore test_utils.py
    (b"a" * MIB, "9bc1b2a288b26af7257a36277ae3816a7d4f16e89c1e7e77d0a5c48bad62b360"),  # boto, botocore
    (b"a" * 2 * MIB, "560c2c9333c719cb00cfdffee3ba293db17f58743cdd1f7e4055373ae6300afa"),  # boto glacier/test_utils.py
    (b"a" * 4 * MIB, "9491cb2ed1d4e7cd53215f4017c23ec4ad21d7050a1e6bb636c4f67e8cddb844"),  # boto, botocore
    (b"a" * (4 * MIB + 20), "12f3cbd6101b981cde074039f6f728071da8879d6f632de8afc7cdf00661b08f"),  # boto, botocore
    (b"abc" * 1234567, "5a245eddef1227623912286af0a6dd6f1a3cd67ad3d768c1490c2f8a0fafeca9"),  # AWS data-transfer-from-glacier-vaults, computed by Glacier
    (bytes(7_680_000), "7a43777ddc7a0326d36b15bc482e6c7736e1c2e9d80a647e8c301646f6a4785c"),  # aws-tree-hash (Rust) README
    (b"Hello, world! " + b"x" * 100, "15aad04dbdebee9ad90ba889d8eb3b9045be355fed57c62894bc2b1ae259c8c8"),  # mt-aws-glacier u_treehash.t
]


@pytest.mark.parametrize("data,expected", VECTORS, ids=[f"len{len(d)}" for d, _ in VECTORS])
def test_published_vectors(data, expected):
    assert th.tree_hash_hex(data) == expected


@pytest.mark.parametrize("data,expected", VECTORS, ids=[f"len{len(d)}" for d, _ in VECTORS])
def test_streaming_matches_vectors_in_odd_pieces(data, expected):
    hasher = th.TreeHasher()
    step = 333_333
    for i in range(0, len(data), step):
        hasher.update(data[i:i + step])
    assert hasher.hexdigest() == expected
    assert hasher.length == len(data)


def test_file_hash_matches_vector(tmp_path):
    data, expected = VECTORS[6]
    p = tmp_path / "f"
    p.write_bytes(data)
    assert th.tree_hash_file(p, block=3 * MIB + 7).hex() == expected
    assert th.tree_hash_file(p, start=MIB, length=2 * MIB) == th.tree_hash(data[MIB:3 * MIB])


def test_sequential_and_parallel_leaves_agree():
    data = bytes(range(256)) * (9 * 4096 + 3)
    assert th.leaf_hashes(data, parallel=True) == th.leaf_hashes(data, parallel=False)


def test_single_leaf_is_plain_sha256():
    assert th.tree_hash(b"x" * 1000) == hashlib.sha256(b"x" * 1000).digest()


@settings(max_examples=40, deadline=None)
@given(size=st.integers(min_value=0, max_value=13 * MIB + 5),
       k=st.integers(min_value=0, max_value=3), seed=st.integers(0, 255))
def test_folding_aligned_chunk_roots_equals_whole(size, k, seed):
    data = bytes([seed]) * size if size < 3 * MIB else (bytes(range(256)) * (size // 256 + 1))[:size]
    chunk = (2 ** k) * MIB
    roots = [th.tree_hash(data[s:e + 1]) for s, e in th.chunk_ranges(size, chunk)]
    assert th.fold(roots) == th.tree_hash(data)
    for s, e in th.chunk_ranges(size, chunk):
        if size:
            assert th.is_tree_hash_aligned(s, e, size)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 40 * MIB), a=st.integers(0, 40 * MIB), b=st.integers(0, 40 * MIB))
def test_aligned_ranges_are_tree_nodes(size, a, b):
    """A range called aligned must be exactly one node of the tree over leaves (checked on leaf
    indices, with no hashing): its leaves are a block that a binary tree level partitions."""
    start, end = min(a, b), max(a, b)
    if end >= size:
        assert not th.is_tree_hash_aligned(start, end, size)
        return
    aligned = th.is_tree_hash_aligned(start, end, size)
    leaves = -(-size // MIB)
    # enumerate tree nodes: at each level, blocks of 2^i leaves starting at multiples of 2^i
    nodes = set()
    width = 1
    while True:
        for first in range(0, leaves, width):
            last = min(first + width, leaves) - 1
            nodes.add((first * MIB, min((last + 1) * MIB, size) - 1))
        if width >= leaves:
            break
        width *= 2
    assert aligned == ((start, end) in nodes)


def test_mib_aligned_retrieval_ranges():
    size = 5 * MIB + 10
    assert th.is_mib_aligned_range(0, MIB - 1, size)
    assert th.is_mib_aligned_range(MIB, 3 * MIB - 1, size)
    assert th.is_mib_aligned_range(4 * MIB, size - 1, size)
    assert not th.is_mib_aligned_range(1, MIB - 1, size)
    assert not th.is_mib_aligned_range(0, MIB, size)
    assert not th.is_mib_aligned_range(0, size, size)


def test_aligned_chunk_size_is_power_of_two_mib():
    assert th.aligned_chunk_size(10 * MIB, 6 * MIB) == 4 * MIB
    assert th.aligned_chunk_size(10 * MIB, 100) == MIB
    with pytest.raises(ValueError):
        th.chunk_ranges(10, 3 * MIB)
