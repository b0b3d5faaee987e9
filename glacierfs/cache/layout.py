"""How an archive is cut into chunks, and how the index names them.

Owns ``ArchiveLayout`` (the tree-hash-aligned chunk grid of one archive) and the index keys:
``"<len(archive_id)>:<archive_id>/<chunk_size>/<index>"``. The length prefix makes every
archive's prefix unambiguous whatever its id contains, and the chunk size in the key keeps the
chunk grids of one archive apart if the chunk size ever changes. A chunk held unverified has the
key suffix ``HELD_MARK`` + index.

Every chunk grid (archive, chunk size) has one sparse file, ``archive_file``, holding chunk *i*
at byte *i* × ``chunk_size`` (so at its own offset in the archive).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from glacierfs.treehash import MIB, is_power_of_two

# Key suffix of a chunk held unverified (an endpoint that sends no tree hash per range): stored,
# never readable, until the whole archive's root checks out and the rows are renamed.
HELD_MARK = "h"
# Subdirectory of the cache directory holding the archive files.
ARCHIVE_DIR = "archives"


@dataclass(frozen=True)
class ArchiveLayout:
    """How one archive is cut into tree-hash-aligned chunks of ``chunk_size`` bytes."""

    archive_id: str
    size: int
    chunk_size: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"negative archive size {self.size}")
        if self.chunk_size % MIB or not is_power_of_two(self.chunk_size // MIB):
            raise ValueError(f"chunk size {self.chunk_size} is not a power-of-two number of MiB")

    @property
    def chunk_count(self) -> int:
        """Number of chunks; a 0-byte archive is one empty chunk, so it can be cached too."""
        return max(1, -(-self.size // self.chunk_size))

    def chunk_range(self, index: int) -> tuple[int, int]:
        """Inclusive (start, end) of chunk ``index``; (0, -1) for the empty archive's chunk."""
        if not 0 <= index < self.chunk_count:
            raise IndexError(f"chunk {index} out of range 0..{self.chunk_count - 1}")
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.size) - 1

    def chunk_length(self, index: int) -> int:
        start, end = self.chunk_range(index)
        return end - start + 1

    def chunks_for(self, offset: int, length: int) -> range:
        """Chunk indexes a read of ``length`` bytes at ``offset`` needs, after clamping to size."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        end = min(offset + length, self.size)
        if end <= offset:
            return range(0)
        return range(offset // self.chunk_size, (end - 1) // self.chunk_size + 1)


def key_prefix(archive_id: str) -> str:
    return f"{len(archive_id)}:{archive_id}/"


def grid_prefix(layout: ArchiveLayout) -> str:
    return f"{key_prefix(layout.archive_id)}{layout.chunk_size}/"


def chunk_key(layout: ArchiveLayout, index: int) -> str:
    return f"{grid_prefix(layout)}{index}"


def slot_of(key: str) -> tuple[str, int, int]:
    """The handle-table slot (archive id, chunk size, index) of an index key."""
    length, rest = key.split(":", 1)
    archive_id = rest[:int(length)]
    chunk_size, index = rest[int(length) + 1:].split("/")
    # A held chunk ("h<index>") is never open for reading: a slot no handle has.
    return archive_id, int(chunk_size), int(index) if index.isdigit() else -1


def parse_key(key: str) -> tuple[str, int, int, bool]:
    """(archive id, chunk size, index, held) of an index key."""
    length, rest = key.split(":", 1)
    archive_id = rest[:int(length)]
    chunk_size, index = rest[int(length) + 1:].split("/")
    held = index.startswith(HELD_MARK)
    return archive_id, int(chunk_size), int(index[len(HELD_MARK):] if held else index), held


def archive_file(archive_id: str, chunk_size: int) -> str:
    """The sparse file of one chunk grid, relative to the cache directory. Named by a hash of
    the grid's key prefix: archive ids are long and may hold any character."""
    prefix = f"{len(archive_id)}:{archive_id}/{chunk_size}/"
    return f"{ARCHIVE_DIR}/{hashlib.sha256(prefix.encode()).hexdigest()[:40]}.arc"


def held_key(layout: ArchiveLayout, index: int) -> str:
    return f"{grid_prefix(layout)}{HELD_MARK}{index}"


def prefix_bounds(prefix: str) -> tuple[str, str]:
    """[low, high) such that exactly the keys starting with ``prefix`` lie in it.

    Every prefix ends in "/", and "0" is the next code point, so ``high`` is the prefix with its
    last character bumped. SQLite compares TEXT bytewise, and UTF-8 byte order is code point order.
    """
    return prefix, prefix[:-1] + "0"

