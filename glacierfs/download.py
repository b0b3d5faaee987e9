"""Downloading completed retrievals into the cache, chunk by verified chunk.

Owns: the queue of chunks to fetch (readers' chunks first), the worker tasks, retries with
backoff and jitter, and the events readers wait on. Every chunk is a tree-hash-aligned range;
``ChunkCache.put_chunk`` checks it against Glacier's ``x-amz-sha256-tree-hash`` before it is
stored, and when the last chunk is in, the folded root is checked against the archive's tree
hash from the inventory. Nothing unverified is ever readable.

Runs on the trio thread; hashing and disk writes happen in worker threads.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from dataclasses import dataclass
from collections.abc import Awaitable, Callable

import trio

from glacierfs import diskfull, glacier, treehash
from glacierfs.cache import ArchiveLayout, CacheFullError, ChunkCache, ChunkVerificationError
from glacierfs.diskfull import LOCAL_ERRORS

log = logging.getLogger(__name__)

FOREGROUND = 0   # a reader is waiting for this chunk
BACKGROUND = 1   # the rest of the archive
TRANSIENT_ATTEMPTS = 8        # dropped connections, 5xx, throttling (after botocore's own retries)
CORRUPT_ATTEMPTS = 3          # a chunk whose bytes keep failing its tree hash is bad at the source
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
DISK_FULL_PAUSE = 15.0        # how long a chunk that found the disk full waits before retrying
ROUND_PAUSE = 60.0            # a chunk that used up its attempts tries again this much later


@dataclass(frozen=True)
class ChunkTask:
    vault: str
    job_id: str
    layout: ArchiveLayout
    index: int
    output_start: int = 0   # archive offset where the job's output begins (ranged jobs)


class DownloadOutcome:
    """Callbacks into the retrieval lifecycle (kept as an interface to avoid an import cycle)."""

    async def output_expired(self, archive_id: str, job_id: str | None = None) -> None: ...
    async def archive_failed(self, archive_id: str, reason: str) -> None: ...
    async def archive_complete(self, archive_id: str) -> None: ...


class Downloader:
    def __init__(self, client: glacier.AsyncGlacier, cache: ChunkCache, outcome: DownloadOutcome,
                 workers: int = 4, expected_root: Callable[[str], str | None] = lambda a: None,
                 sleep: Callable[[float], Awaitable[None]] = trio.sleep) -> None:
        self.client = client
        self.cache = cache
        self.outcome = outcome
        self.workers = workers
        self.expected_root = expected_root
        self._sleep = sleep
        self._heap: list[tuple[int, int, ChunkTask]] = []
        self._queued: dict[tuple[str, int], int] = {}    # (archive, index) -> priority queued at
        self._in_flight: set[tuple[str, int]] = set()
        self._waiters: dict[tuple[str, int], trio.Event] = {}
        self._errors: dict[tuple[str, int], BaseException] = {}
        self._seq = itertools.count()
        self._wake = trio.Event()
        self._cancelled: set[str] = set()
        self._nursery: trio.Nursery | None = None
        # Archives whose bytes failed verification: chunks of them still in flight are dropped
        # when they land, so nothing of a failed archive stays in the cache.
        self._poisoned: set[str] = set()
        self.stats = {"chunks": 0, "bytes_verified": 0, "retries": 0, "corrupt_chunks": 0}

    # --- queueing -----------------------------------------------------------------------
    def enqueue(self, vault: str, job_id: str, layout: ArchiveLayout, indexes: list[int],
                priority: int = BACKGROUND, output_start: int = 0) -> None:
        self._cancelled.discard(layout.archive_id)
        self._poisoned.discard(layout.archive_id)
        for index in indexes:
            key = (layout.archive_id, index)
            if key in self._in_flight:
                continue
            queued_at = self._queued.get(key)
            if queued_at is not None and queued_at <= priority:
                continue
            self._queued[key] = priority
            heapq.heappush(self._heap, (priority, next(self._seq),
                                        ChunkTask(vault, job_id, layout, index, output_start)))
        self._wake.set()

    def cancel_archive(self, archive_id: str) -> None:
        """Forget queued chunks of an archive (its job expired or failed)."""
        self._cancelled.add(archive_id)
        for key in [k for k in self._queued if k[0] == archive_id]:
            del self._queued[key]

    def is_downloading(self, archive_id: str) -> bool:
        return any(k[0] == archive_id for k in itertools.chain(self._queued, self._in_flight))

    def waiter(self, archive_id: str, index: int) -> trio.Event:
        key = (archive_id, index)
        event = self._waiters.get(key)
        if event is None:
            event = self._waiters[key] = trio.Event()
        return event

    def take_error(self, archive_id: str, index: int) -> BaseException | None:
        return self._errors.pop((archive_id, index), None)

    def _notify(self, archive_id: str, index: int, error: BaseException | None = None) -> None:
        key = (archive_id, index)
        if error is not None:
            self._errors[key] = error
        event = self._waiters.pop(key, None)
        if event is not None:
            event.set()

    # --- workers ------------------------------------------------------------------------
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(self.workers):
                nursery.start_soon(self._worker)

    async def _next_task(self) -> ChunkTask:
        while True:
            while self._heap:
                priority, _, task = heapq.heappop(self._heap)
                key = (task.layout.archive_id, task.index)
                if self._queued.get(key) != priority or task.layout.archive_id in self._cancelled:
                    continue  # superseded by a higher-priority copy, or cancelled
                del self._queued[key]
                if self.cache.has_chunk(task.layout, task.index):
                    self._notify(*key)
                    continue
                self._in_flight.add(key)
                return task
            self._wake = trio.Event()
            await self._wake.wait()

    async def _worker(self) -> None:
        while True:
            task = await self._next_task()
            key = (task.layout.archive_id, task.index)
            try:
                await self._fetch(task)
            except Exception as exc:  # the local disk, or a bug: a pause for this chunk only
                if isinstance(exc, LOCAL_ERRORS):
                    log.warning("archive %s chunk %d: %s; retrying later", key[0][:16], key[1],
                                diskfull.describe(exc, "the cache dir"))
                else:
                    log.exception("archive %s chunk %d: internal error; retrying later",
                                  key[0][:16], key[1])
                full = diskfull.is_disk_full(exc)
                self._notify(*key, CacheFullError(str(exc)) if full else exc)
                self._retry_later(task)
            finally:
                self._in_flight.discard(key)

    async def _fetch(self, task: ChunkTask) -> None:
        layout, index = task.layout, task.index
        start, end = layout.chunk_range(index)
        transient = corrupt = 0
        while task.layout.archive_id not in self._cancelled:
            try:
                data, checksum = await self.client.get_job_output_range(
                    task.vault, task.job_id, start - task.output_start, end - task.output_start)
                if checksum is None:
                    raise ChunkVerificationError(
                        f"no x-amz-sha256-tree-hash for bytes {start}-{end}: cannot verify")
                if not await self._store(task, data, bytes.fromhex(checksum)):
                    return
            except glacier.NotFound:
                self._notify(layout.archive_id, index, glacier.NotFound(
                    "ResourceNotFoundException", "job output expired"))
                await self.outcome.output_expired(layout.archive_id, task.job_id)
                return
            except (glacier.Unreachable, glacier.ServiceUnavailable, glacier.Throttled) as exc:
                transient += 1
                self.stats["retries"] += 1
                if transient >= TRANSIENT_ATTEMPTS:
                    log.warning("archive %s chunk %d: giving up for now after %d attempts: %s",
                                layout.archive_id[:16], index, transient, exc)
                    self._notify(layout.archive_id, index, exc)
                    self._retry_later(task)
                    return
                log.info("archive %s chunk %d: %s; retrying", layout.archive_id[:16], index, exc)
                await self._sleep(_backoff(transient))
                continue
            except (ChunkVerificationError, ValueError) as exc:
                corrupt += 1
                self.stats["corrupt_chunks"] += 1
                log.warning("archive %s chunk %d failed verification (%s), attempt %d",
                            layout.archive_id[:16], index, exc, corrupt)
                if corrupt >= CORRUPT_ATTEMPTS:
                    reason = (f"bytes {start}-{end} failed tree-hash verification "
                              f"{corrupt} times; no byte of the file is kept or served")
                    self._notify(layout.archive_id, index, ChunkVerificationError(reason))
                    await self._poison(layout.archive_id)
                    await self.outcome.archive_failed(layout.archive_id, reason)
                    return
                self.stats["retries"] += 1
                continue
            except glacier.GlacierError as exc:
                reason = f"downloading bytes {start}-{end} failed: {exc}"
                self._notify(layout.archive_id, index, exc)
                await self.outcome.archive_failed(layout.archive_id, reason)
                return
            if layout.archive_id in self._poisoned:
                await self._poison(layout.archive_id)
                return
            self.stats["chunks"] += 1
            self.stats["bytes_verified"] += len(data)
            self._notify(layout.archive_id, index)
            if not self.cache.missing_chunks(layout):
                await self._check_whole(layout)
            return

    async def _store(self, task: ChunkTask, data: bytes, checksum: bytes) -> bool:
        """Verify and store a fetched chunk. With the disk full, keep the bytes and try again
        every DISK_FULL_PAUSE rather than fetch them again: a chunk is paid-for bandwidth, and a
        worker holds it in memory during a fetch anyway. Readers waiting for it get ENOSPC
        meanwhile. False when the archive was cancelled before room was found."""
        while True:
            try:
                await trio.to_thread.run_sync(self.cache.put_chunk, task.layout, task.index,
                                              data, checksum)
                return True
            except CacheFullError as exc:
                self._notify(task.layout.archive_id, task.index, exc)
                log.warning("cache disk full while storing archive %s chunk %d; holding it "
                            "and retrying in %gs", task.layout.archive_id[:16], task.index,
                            DISK_FULL_PAUSE)
                await self._sleep(DISK_FULL_PAUSE)
                if task.layout.archive_id in self._cancelled:
                    return False

    async def _poison(self, archive_id: str) -> None:
        """The archive failed verification: drop every chunk of it, now and as they land."""
        self._poisoned.add(archive_id)
        self.cancel_archive(archive_id)
        await trio.to_thread.run_sync(self.cache.discard_archive, archive_id)

    def _retry_later(self, task: ChunkTask) -> None:
        """A new round of attempts for a chunk after ROUND_PAUSE, without holding a worker:
        an outage longer than one round must not leave an archive half downloaded for ever
        (a ``glacierfs restore`` has no reader to ask again)."""
        if self._nursery is not None:
            self._nursery.start_soon(self._requeue_after, task)

    async def _requeue_after(self, task: ChunkTask) -> None:
        await self._sleep(ROUND_PAUSE)
        if task.layout.archive_id not in self._cancelled:
            self.enqueue(task.vault, task.job_id, task.layout, [task.index],
                         output_start=task.output_start)

    async def _check_whole(self, layout: ArchiveLayout) -> None:
        """All chunks are in: their folded root must be the archive's tree hash."""
        expected = self.expected_root(layout.archive_id)
        hashes = [self.cache.chunk_tree_hash(layout, i) for i in range(layout.chunk_count)]
        if any(h is None for h in hashes):
            return  # a chunk was evicted meanwhile; it will be fetched again when read
        root = treehash.fold([h for h in hashes if h is not None]).hex()
        if expected and root != expected.lower():
            reason = (f"whole-archive tree hash {root} does not match the inventory's "
                      f"{expected}; the downloaded bytes were discarded")
            await self._poison(layout.archive_id)
            await self.outcome.archive_failed(layout.archive_id, reason)
            return
        await self.outcome.archive_complete(layout.archive_id)


def _backoff(attempt: int) -> float:
    """Full jitter exponential backoff: spreads retries of many chunks apart."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))
