"""Archive and job-output bytes: where they live, how they are received, how aligned ranges are
hashed.

Bodies are never held whole in memory. An upload is streamed to a file in large blocks while its
SHA-256 and tree hash are computed; the tree's leaf digests (32 bytes per MiB) are kept in a
``.leaves`` file beside the body, so the tree hash of any aligned range of any archive is a fold of
a slice of that file instead of a re-read of the data. Synthesized archives have no file at all:
their bodies are zero bytes generated on the fly.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO
from collections.abc import Iterator

from glacierfs.treehash import EMPTY_TREE_HASH, MIB, TreeHasher, fold

DIGEST = 32
# Large blocks keep per-call overhead small on multi-GB bodies while staying a few MiB of memory.
IO_BLOCK = 8 * MIB
_ZEROS = bytes(IO_BLOCK)


@lru_cache(maxsize=64)
def _zero_leaf(length: int) -> bytes:
    return hashlib.sha256(bytes(length)).digest()


@dataclass(frozen=True)
class Body:
    """``size`` bytes starting at ``offset`` in ``path`` (None: zero bytes), with the leaf
    digests of the whole file in ``path + '.leaves'``. ``offset`` is a multiple of 1 MiB, so the
    leaves of the body are a slice of the file's leaves."""

    path: Path | None
    size: int
    offset: int = 0
    file_size: int | None = None  # size of the whole underlying object (zeros: needed for leaves)

    @property
    def leaves_path(self) -> Path | None:
        return None if self.path is None else leaves_path_for(self.path)

    def leaf_digests(self, first: int, count: int) -> list[bytes]:
        """Digests of leaves ``first .. first+count-1`` of this body."""
        if self.size == 0:
            return [EMPTY_TREE_HASH]
        base = self.offset // MIB + first
        if self.path is None:
            total = self.file_size if self.file_size is not None else self.offset + self.size
            out = []
            for i in range(base, base + count):
                out.append(_zero_leaf(min(MIB, total - i * MIB)))
            return out
        with open(leaves_path_for(self.path), "rb") as f:
            f.seek(base * DIGEST)
            raw = f.read(count * DIGEST)
        if len(raw) != count * DIGEST:
            raise OSError(f"leaf digests missing for {self.path}")
        return [raw[i:i + DIGEST] for i in range(0, len(raw), DIGEST)]

    def range_tree_hash(self, start: int, end: int) -> str:
        """Tree hash of bytes ``start..end`` (inclusive) of this body; the range must be
        tree-hash aligned (whole body, or a node of its tree)."""
        if self.size == 0:
            return EMPTY_TREE_HASH.hex()
        first = start // MIB
        count = -(-(end + 1 - start) // MIB)
        return fold(self.leaf_digests(first, count)).hex()

    def blocks(self, start: int, length: int, block: int = IO_BLOCK) -> Iterator[memoryview]:
        """Yield the bytes ``start .. start+length-1`` in blocks (for the non-sendfile paths)."""
        if self.path is None:
            while length > 0:
                n = min(block, length, len(_ZEROS))
                yield memoryview(_ZEROS)[:n]
                length -= n
            return
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset + start)
            while length > 0:
                data = f.read(min(block, length))
                if not data:
                    raise OSError(f"{self.path} is shorter than expected")
                length -= len(data)
                yield memoryview(data)


def leaves_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".leaves")


@dataclass
class Received:
    """What was learned while streaming a request body to disk."""

    size: int
    tree_hash: str
    sha256: str
    leaves: list[bytes]


def receive(rfile: BinaryIO, length: int, out: BinaryIO, out_offset: int | None = None) -> Received:
    """Copy ``length`` bytes from ``rfile`` to ``out`` (at ``out_offset`` when given, with pwrite),
    hashing as it goes. Raises EOFError when the client sends fewer bytes than announced."""
    tree = TreeHasher()
    sha = hashlib.sha256()
    remaining = length
    position = out_offset
    fd = out.fileno()
    while remaining > 0:
        data = rfile.read(min(IO_BLOCK, remaining))
        if not data:
            raise EOFError(f"request body ended {remaining} bytes early")
        tree.update(data)
        sha.update(data)
        if position is None:
            out.write(data)
        else:
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, position)
                position += written
                view = view[written:]
        remaining -= len(data)
    leaves = tree.leaf_digests()
    return Received(size=length, tree_hash=fold(leaves).hex(), sha256=sha.hexdigest(),
                    leaves=leaves)


def write_leaves(path: Path, leaves: list[bytes], first_leaf: int = 0) -> None:
    """Store leaf digests at their index in the ``.leaves`` file (created when missing)."""
    mode = "r+b" if path.exists() else "w+b"
    with open(path, mode) as f:
        f.seek(first_leaf * DIGEST)
        f.write(b"".join(leaves))


def link_or_copy(src: Path, dst: Path) -> None:
    """Give a job its own name for an archive's bytes: a hard link (free, and the bytes survive a
    DeleteArchive), falling back to a copy on filesystems without links."""
    try:
        os.link(src, dst)
    except OSError:
        import shutil
        shutil.copyfile(src, dst)
