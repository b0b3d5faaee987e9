"""What the downloader is asked and what it reports: a chunk to fetch, the priorities of the
queue, what one fetch did, and the callbacks into the retrieval lifecycle (an interface, so
``cache/`` never imports ``jobs/``)."""

from __future__ import annotations

from dataclasses import dataclass

from glacierfs.cache.errors import CacheFullError
from glacierfs.cache.layout import ArchiveLayout

FOREGROUND = 0   # a reader is waiting for this chunk
BACKGROUND = 1   # the rest of the archive


@dataclass(frozen=True)
class ChunkTask:
    vault: str
    job_id: str
    layout: ArchiveLayout
    index: int
    output_start: int = 0  # archive offset where the job's output begins (a ranged retrieval)


@dataclass(frozen=True)
class Received:
    """What one fetch did (from the worker thread)."""

    checksum: bytes | None = None
    stored: bool = False          # committed (readable, or held when ``held``)
    held: bool = False            # stored unverified: the endpoint sent no tree hash
    whole: bool = False           # the endpoint sent the whole output: every chunk was held
    elsewhere: bool = False       # the whole output is being read by another worker
    full: CacheFullError | None = None  # the bytes are in the buffer but the disk had no room


class DownloadOutcome:
    """Callbacks into the retrieval lifecycle (kept as an interface to avoid an import cycle)."""

    async def output_expired(self, archive_id: str, job_id: str | None = None) -> None: ...
    async def archive_failed(self, archive_id: str, reason: str) -> None: ...
    async def archive_complete(self, archive_id: str) -> None: ...
