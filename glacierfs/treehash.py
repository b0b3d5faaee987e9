"""SHA-256 tree hashes as Amazon S3 Glacier computes them, and the alignment rules around them.

Pure module: no I/O. Everything that verifies bytes (the emulator, the downloader, the cache)
goes through here, so there is exactly one implementation of the tree to trust.

The tree: data is cut into 1 MiB leaves, each leaf is SHA-256'd, then adjacent pairs of digests
are hashed together left to right, an odd last digest carried up unchanged, until one remains.
A byte range is a node of that tree ("tree-hash aligned") when it starts at a multiple of
2^i MiB and is 2^i MiB long, or runs to the end of the archive. Roots of such ranges fold with
the same pairing into the archive's root, which is what lets a download be verified chunk by
chunk and still be checked against the archive's published hash.

Hashing large buffers runs leaves on a small thread pool: hashlib releases the GIL for buffers
over 2 KiB, so leaves hash in parallel on all cores.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Sequence

MIB = 1024 * 1024
LEAF_SIZE = MIB  # fixed by the Glacier API
EMPTY_TREE_HASH = hashlib.sha256(b"").digest()

# Below this many leaves the thread hand-off costs more than it saves.
_PARALLEL_MIN_LEAVES = 4
_pool: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """The hashing pool (one thread per core): also runs the cache's leaf writes."""
    return _executor()


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2),
                                   thread_name_prefix="treehash")
    return _pool


def _sha256(data: memoryview | bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf_hashes(data: bytes | bytearray | memoryview, parallel: bool = True) -> list[bytes]:
    """SHA-256 of each 1 MiB leaf of ``data`` (one hash of b"" for empty input)."""
    view = memoryview(data).cast("B")
    if len(view) == 0:
        return [EMPTY_TREE_HASH]
    pieces = [view[i:i + LEAF_SIZE] for i in range(0, len(view), LEAF_SIZE)]
    if parallel and len(pieces) >= _PARALLEL_MIN_LEAVES:
        return list(_executor().map(_sha256, pieces))
    return [_sha256(p) for p in pieces]


def fold(digests: Sequence[bytes]) -> bytes:
    """Combine sibling digests, left to right, into their root (Glacier's pairing rule).

    Works for leaf hashes and equally for the roots of consecutive aligned sub-trees of equal
    size (the last one may be smaller), since those are the nodes of one level of the tree.
    """
    if not digests:
        raise ValueError("fold() needs at least one digest")
    level = list(digests)
    while len(level) > 1:
        nxt = [_sha256(level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def tree_hash(data: bytes | bytearray | memoryview) -> bytes:
    """Binary tree hash of a whole buffer."""
    return fold(leaf_hashes(data))


def tree_hash_hex(data: bytes | bytearray | memoryview) -> str:
    return tree_hash(data).hex()


class TreeHasher:
    """Streaming tree hash: feed pieces of any size, read the root at the end.

    Memory stays at one partial leaf plus one digest per leaf seen (32 bytes per MiB).
    """

    def __init__(self) -> None:
        self._leaves: list[bytes] = []
        self._partial = bytearray()
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._length += len(view)
        if self._partial:
            take = min(LEAF_SIZE - len(self._partial), len(view))
            self._partial += view[:take]
            view = view[take:]
            if len(self._partial) == LEAF_SIZE:
                self._leaves.append(_sha256(self._partial))
                self._partial.clear()
        whole = len(view) - len(view) % LEAF_SIZE
        if whole:
            self._leaves.extend(leaf_hashes(view[:whole]))
        if whole < len(view):
            self._partial += view[whole:]

    def leaf_digests(self) -> list[bytes]:
        leaves = list(self._leaves)
        if self._partial or not leaves:
            leaves.append(_sha256(self._partial))
        return leaves

    def digest(self) -> bytes:
        return fold(self.leaf_digests())

    def hexdigest(self) -> str:
        return self.digest().hex()


def tree_hash_file(path: str | os.PathLike[str], start: int = 0, length: int | None = None,
                   block: int = 16 * MIB) -> bytes:
    """Tree hash of ``length`` bytes of a file from ``start`` (to the end when None)."""
    hasher = TreeHasher()
    with open(path, "rb") as f:
        f.seek(start)
        remaining = length
        while remaining is None or remaining > 0:
            want = block if remaining is None else min(block, remaining)
            buf = f.read(want)
            if not buf:
                break
            hasher.update(buf)
            if remaining is not None:
                remaining -= len(buf)
    return hasher.digest()


def fold_hex(hex_digests: Iterable[str]) -> str:
    """fold() for hex digests, as they travel in headers and inventories."""
    return fold([bytes.fromhex(h) for h in hex_digests]).hex()


# --- alignment rules ----------------------------------------------------------------------

def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def is_mib_aligned_range(start: int, end: int, size: int) -> bool:
    """May ``start-end`` (inclusive) be asked for as an archive-retrieval RetrievalByteRange?

    Glacier wants the start on a MiB boundary and the end either one byte before a MiB
    boundary or the last byte of the archive.
    """
    if start < 0 or end < start or end >= size:
        return False
    return start % MIB == 0 and ((end + 1) % MIB == 0 or end == size - 1)


def is_tree_hash_aligned(start: int, end: int, size: int) -> bool:
    """Is ``start-end`` (inclusive) of a ``size``-byte object a node of its tree hash tree?

    True when the range starts at a multiple of 2^i MiB and spans 2^i MiB, or starts at such a
    multiple and runs to the end (being then the last, possibly short, node at that level).
    The whole object is always aligned. Glacier sends ``x-amz-sha256-tree-hash`` exactly then.
    """
    if start < 0 or end < start or end >= size:
        return False
    if start == 0 and end == size - 1:
        return True
    if start % MIB:
        return False
    length = end - start + 1
    # The node size is the smallest power-of-two MiB count >= the range's leaf count.
    leaves = -(-length // MIB)
    node_leaves = 1
    while node_leaves < leaves:
        node_leaves *= 2
    if (start // MIB) % node_leaves:
        return False
    if length == node_leaves * MIB:
        return True
    return end == size - 1


def aligned_chunk_size(size: int, preferred: int) -> int:
    """Largest power-of-two MiB chunk <= ``preferred`` (at least 1 MiB), for cutting a download
    of ``size`` bytes into tree-hash-aligned ranges."""
    chunk = MIB
    while chunk * 2 <= max(preferred, MIB):
        chunk *= 2
    return chunk


def chunk_ranges(size: int, chunk: int) -> list[tuple[int, int]]:
    """Inclusive (start, end) ranges of ``chunk`` bytes (a power-of-two number of MiB) covering
    ``size`` bytes: every one is tree-hash aligned, and their roots fold into the whole root."""
    if chunk % MIB or not is_power_of_two(chunk // MIB):
        raise ValueError(f"chunk size {chunk} is not a power-of-two number of MiB")
    if size == 0:
        return [(0, -1)]
    return [(s, min(s + chunk, size) - 1) for s in range(0, size, chunk)]
