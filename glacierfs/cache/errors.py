"""The errors of the verified store: what a read or a write of the cache can raise.

Owns the exception hierarchy only, so every module of ``cache/`` (and its callers) can name
them without importing the store itself.
"""

from __future__ import annotations

class CacheError(Exception):
    """Base of the errors the chunk cache raises."""


class NotCached(CacheError):
    """A read touched chunks that are not (or no longer) in the cache."""

    def __init__(self, missing: list[int], archive_id: str = "") -> None:
        super().__init__(f"archive {archive_id}: chunks {missing} not cached")
        self.missing = list(missing)
        self.archive_id = archive_id


class ChunkVerificationError(CacheError):
    """Bytes offered to the cache do not match their expected tree hash (or length)."""


class CacheFullError(CacheError):
    """No room to store a chunk (disk full, quota, or a chunk larger than the whole cache).

    Nothing half-written remains and the cache stays usable.
    """


class NoRoomError(CacheFullError):
    """The size limit is reached and what fills it may not be evicted (restored, unread)."""


