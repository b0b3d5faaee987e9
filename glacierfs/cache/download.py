"""Downloading completed retrievals into the cache, chunk by verified chunk.

Owns: the queue of chunks to fetch (readers' chunks first), the worker tasks, retries with
backoff and jitter, and the events readers wait on. Every chunk is a tree-hash-aligned range;
its bytes go off the socket with ``readinto`` into a preallocated buffer, and each 1 MiB leaf is
hashed and written by the cache's ``ChunkWriter`` while the next one is still arriving, so each
byte is read once after it lands and network, hashing and disk overlap across cores. The
chunk's tree hash must equal Glacier's ``x-amz-sha256-tree-hash`` before its index row commits;
when the last chunk is in, the folded root is checked against the archive's tree hash from the
inventory. Nothing unverified is ever readable.

Endpoints that send no tree hash per range, or answer a ranged request with the whole output
(200), still get verified bytes: the chunks are stored *held* (on disk, never readable), and once
every chunk is held or verified their folded root must equal the inventory's tree hash before
the cache makes them readable (``ChunkCache.promote_held``); otherwise the archive fails with the
reason and nothing is kept. Readers of a held chunk wait for that decision. A whole-output
answer is read once, chunk after chunk, by one worker, into a buffer of a whole chunk whatever
chunk that worker was asked for (the archive's last chunk may be a few bytes).

A chunk that finds no room in the cache (``NoRoomError``: the size limit is reached and nothing
there may be evicted) never holds a worker: the worker gives its slot back and the chunk waits,
*parked*, until ``room_freed`` (the cache room released a restore) or NO_ROOM_PAUSE, then is
queued again. Its readers are told at once (``take_error``) so they can answer why.

Runs on the trio thread; each fetch (socket reads) runs in a worker thread behind the client's
limiter, the hashing and disk writes on the hashing pool.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
from collections.abc import Awaitable, Callable

import trio

from glacierfs import diskfull, treehash
from glacierfs.aws import glacier
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.cache.errors import CacheFullError, ChunkVerificationError, NoRoomError, NotCached
from glacierfs.cache.layout import ArchiveLayout
from glacierfs.cache.tasks import BACKGROUND, ChunkTask, DownloadOutcome, Received
from glacierfs.cache.writer import ChunkWriter
from glacierfs.diskfull import LOCAL_ERRORS
from glacierfs.treehash import MIB

log = logging.getLogger(__name__)

TRANSIENT_ATTEMPTS = 8        # dropped connections, 5xx, throttling (after botocore's own retries)
CORRUPT_ATTEMPTS = 3          # a chunk whose bytes keep failing its tree hash is bad at the source
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
DISK_FULL_PAUSE = 15.0        # how long a chunk that found the disk full waits before retrying
ROUND_PAUSE = 60.0            # a chunk that used up its attempts tries again this much later
# A chunk that found no room (the cache holds only data it may not evict: restored files not
# yet read, chunks in flight) gives its worker back and is queued again when room is freed, or
# after this long at most (chunks in flight land and become evictable without any event).
NO_ROOM_PAUSE = 2.0
# Socket reads go into the chunk's buffer this much at a time: one leaf, so each leaf is hashed
# and written while the next arrives.
READ_BLOCK = MIB
# Chunk buffers are reused while chunks keep coming (a fresh 16 MiB buffer costs 4096 page
# faults) and freed once the downloader is idle.


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
        self._priority: dict[tuple[str, int], int] = {}   # of the chunks in flight
        self._waiters: dict[tuple[str, int], trio.Event] = {}
        self._errors: dict[tuple[str, int], BaseException] = {}
        self._seq = itertools.count()
        self._wake = trio.Event()
        self._cancelled: set[str] = set()
        self._nursery: trio.Nursery | None = None
        # Archives whose bytes failed verification: chunks of them still in flight are dropped
        # when they land, so nothing of a failed archive stays in the cache.
        self._poisoned: set[str] = set()
        # Chunks stored held (no tree hash from the endpoint) that readers wait for: told when
        # their archive is verified as a whole, or fails.
        self._held_waiting: dict[str, set[int]] = {}
        self._whole_busy: set[str] = set()  # archives whose whole output a worker is reading
        self._whole_lock = threading.Lock()
        self._checking_held: set[str] = set()  # archives whose held chunks are being checked
        self._buffers: list[bytearray] = []
        self._parked: dict[tuple[str, int], tuple[int, ChunkTask]] = {}  # waiting for room
        self._no_room_before: set[tuple[str, int]] = set()  # parked once: reserve, then ask
        self._room_freed = trio.Event()
        self.stats = {"chunks": 0, "bytes_verified": 0, "retries": 0, "corrupt_chunks": 0,
                      "held_chunks": 0, "no_room": 0}

    # --- queueing -----------------------------------------------------------------------
    def enqueue(self, vault: str, job_id: str, layout: ArchiveLayout, indexes: list[int],
                priority: int = BACKGROUND, output_start: int = 0) -> None:
        self._cancelled.discard(layout.archive_id)
        self._poisoned.discard(layout.archive_id)
        for index in indexes:
            key = (layout.archive_id, index)
            if key in self._in_flight:
                continue
            parked = self._parked.get(key)
            if parked is not None:  # waits for room: queued again when room is freed
                if priority < parked[0]:
                    self._parked[key] = (priority, parked[1])
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
        for key in [k for k in self._parked if k[0] == archive_id]:
            del self._parked[key]
        self._no_room_before = {k for k in self._no_room_before if k[0] != archive_id}

    def is_downloading(self, archive_id: str) -> bool:
        """Queued or in flight (a chunk parked for want of room is not moving)."""
        return any(k[0] == archive_id for k in itertools.chain(self._queued, self._in_flight))

    def is_parked(self, archive_id: str, index: int) -> bool:
        """Is this chunk waiting for cache room (not queued, not in flight)?"""
        return (archive_id, index) in self._parked

    def room_freed(self) -> None:
        """Room appeared (a restore was read, or released): parked chunks try again now."""
        self._room_freed.set()

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
            nursery.start_soon(self._unpark_loop)
            for _ in range(self.workers):
                nursery.start_soon(self._worker)

    async def _unpark_loop(self) -> None:
        """Queue parked chunks again once room is freed, or every NO_ROOM_PAUSE."""
        while True:
            with trio.move_on_after(NO_ROOM_PAUSE):
                await self._room_freed.wait()
            self._room_freed = trio.Event()
            if not self._parked:
                continue
            parked, self._parked = self._parked, {}
            for (archive_id, index), (priority, task) in parked.items():
                if archive_id not in self._cancelled:
                    self.enqueue(task.vault, task.job_id, task.layout, [index], priority,
                                 output_start=task.output_start)

    def _park(self, task: ChunkTask, priority: int, error: NoRoomError) -> None:
        """No room for this chunk now: its worker goes on with other chunks; it waits."""
        key = (task.layout.archive_id, task.index)
        self.stats["no_room"] += 1
        self._parked[key] = (priority, task)
        self._no_room_before.add(key)
        self._notify(*key, error)
        log.debug("archive %s chunk %d: no room in the cache (%s); parked", key[0][:16],
                  key[1], error)

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
                if task.layout.archive_id in self._whole_busy:
                    self._held_waiting.setdefault(key[0], set()).add(key[1])
                    continue  # arriving unverified: told when the whole is checked
                if self.cache.has_held_chunk(task.layout, task.index):
                    self._held_waiting.setdefault(key[0], set()).add(key[1])
                    # Held by an earlier run, maybe the whole archive: check it now.
                    if key[0] not in self._checking_held and self._nursery is not None:
                        self._checking_held.add(key[0])
                        self._nursery.start_soon(self._check_held, task)
                    continue
                self._in_flight.add(key)
                self._priority[key] = priority
                return task
            # Idle workers share one event: replacing it per worker (as before) left all but
            # the last one asleep for ever, so downloads ran one chunk at a time.
            if self._wake.is_set():
                self._wake = trio.Event()
            if not self._in_flight:
                self._buffers.clear()  # idle: give the chunk buffers' memory back
            await self._wake.wait()

    async def _worker(self) -> None:
        while True:
            task = await self._next_task()
            key = (task.layout.archive_id, task.index)
            try:
                await self._fetch(task)
            except NoRoomError as exc:
                self._park(task, self._priority.get(key, BACKGROUND), exc)
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
                self._priority.pop(key, None)
                if key not in self._parked:
                    self._no_room_before.discard(key)

    async def _fetch(self, task: ChunkTask) -> None:
        buffer = self._take_buffer(task.layout.chunk_length(task.index))
        try:
            await self._fetch_into(task, buffer)
        finally:
            self._give_buffer(buffer)

    async def _fetch_into(self, task: ChunkTask, buffer: bytearray) -> None:
        layout, index = task.layout, task.index
        start, end = layout.chunk_range(index)
        view = memoryview(buffer)
        transient = corrupt = 0
        while task.layout.archive_id not in self._cancelled:
            try:
                got = await self.client.run(self._receive, task, view)
                if got.full is not None:
                    if got.checksum is None:
                        raise got.full  # held bytes cannot be checked alone: fetch them again
                    if not await self._store(task, view[:end - start + 1], got.checksum):
                        return
            except NoRoomError:
                raise  # the worker parks the chunk and goes on (see _worker)
            except CacheFullError as exc:
                self._notify(layout.archive_id, index, exc)
                log.warning("cache disk full while storing archive %s chunk %d; retrying in "
                            "%gs", layout.archive_id[:16], index, DISK_FULL_PAUSE)
                await self._sleep(DISK_FULL_PAUSE)
                continue
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
            if got.held or got.whole or got.elsewhere:
                if got.held:
                    self.stats["held_chunks"] += 1
                self._held_waiting.setdefault(layout.archive_id, set()).add(index)
                if not got.elsewhere:
                    await self._check_held(task)
                return
            self.stats["chunks"] += 1
            self.stats["bytes_verified"] += end - start + 1
            self._notify(layout.archive_id, index)
            if not self.cache.missing_chunks(layout):
                await self._check_whole(layout)
            return

    # --- in the worker thread -----------------------------------------------------------------
    def _receive(self, task: ChunkTask, view: memoryview) -> Received:
        """Fetch one chunk into ``view`` and store it as it arrives (blocking). A chunk that
        found no room before makes its room first, so waiting for room again costs no
        GetJobOutput; others ask first (their file exists only while bytes arrive)."""
        layout, index = task.layout, task.index
        start, end = layout.chunk_range(index)
        length = end - start + 1
        prepared: tuple[ChunkWriter | None, CacheFullError | None] | None = None
        if (layout.archive_id, index) in self._no_room_before:
            try:
                prepared = (self.cache.chunk_writer(layout, index, view), None)
            except NoRoomError:
                raise  # nothing asked for: it waits for room again, holding no worker
            except CacheFullError as exc:
                prepared = (None, exc)  # the disk: keep the bytes and store them later
        try:
            stream = self.client.client.open_job_output(
                task.vault, task.job_id, max(0, start - task.output_start),
                max(0, end - task.output_start))
            try:
                if stream.whole:
                    if prepared is not None and prepared[0] is not None:
                        prepared[0].abort()  # the whole pass stores each chunk itself
                    prepared = None
                    return self._receive_whole(task, stream, view)
                if stream.length != length:
                    raise glacier.Unreachable("ShortBody", f"{stream.length}-byte body for "
                                                           f"bytes {start}-{end}")
                checksum = bytes.fromhex(stream.checksum) if stream.checksum else None
                return self._receive_chunk(layout, index, stream, view, checksum, prepared)
            finally:
                stream.close()
        finally:
            if prepared is not None and prepared[0] is not None:
                prepared[0].abort()  # a no-op after a commit

    def _receive_chunk(self, layout: ArchiveLayout, index: int,
                       stream: glacier.JobOutputStream, view: memoryview,
                       checksum: bytes | None,
                       prepared: tuple[ChunkWriter | None, CacheFullError | None] | None = None,
                       ) -> Received:
        length = layout.chunk_length(index)
        if prepared is not None:
            writer, full = prepared
        else:
            full = None
            try:
                writer = self.cache.chunk_writer(layout, index, view)
            except NoRoomError:
                raise  # the whole pass stops here; the chunk waits for room
            except CacheFullError as exc:
                writer, full = None, exc  # keep the bytes in the buffer and store them later
        try:
            got = 0
            while got < length:
                got += stream.readinto(view[got:min(got + READ_BLOCK, length)])
                if writer is not None:
                    writer.filled(got)
            if writer is None:
                return Received(checksum, full=full)
            try:
                writer.commit(checksum, hold=checksum is None)
            except CacheFullError as exc:
                return Received(checksum, full=exc)
            return Received(checksum, stored=True, held=checksum is None)
        finally:
            if writer is not None:
                writer.abort()  # a no-op after a commit

    def _receive_whole(self, task: ChunkTask, stream: glacier.JobOutputStream,
                       view: memoryview) -> Received:
        """The endpoint ignored Range: read the whole output once, holding every chunk not yet
        stored (the other workers' chunks of this archive wait for it)."""
        layout = task.layout
        archive_id = layout.archive_id
        expected = layout.size - task.output_start
        if stream.length != expected:
            raise glacier.Unreachable("ShortBody", f"{stream.length}-byte whole output, "
                                                   f"expected {expected}")
        with self._whole_lock:
            if archive_id in self._whole_busy:
                return Received(elsewhere=True)
            self._whole_busy.add(archive_id)
        # The worker's buffer fits the chunk it was asked for, which may be the archive's
        # short last one; the pass stores every chunk, so it needs room for a whole one.
        if len(view) < layout.chunk_length(0):
            view = memoryview(bytearray(layout.chunk_length(0)))
        try:
            log.info("archive %s: the endpoint answered a ranged request with the whole "
                     "output; reading it once and verifying it as a whole", archive_id[:16])
            for index in range(layout.chunk_count):
                start, end = layout.chunk_range(index)
                if end < task.output_start:
                    continue
                if archive_id in self._cancelled:
                    break
                length = end - start + 1
                if self.cache.has_chunk(layout, index) or self.cache.has_held_chunk(layout, index):
                    got = 0
                    while got < length:  # already stored: read past it
                        got += stream.readinto(view[got:min(got + READ_BLOCK, length)])
                    continue
                got = self._receive_chunk(layout, index, stream, view, None)
                if got.full is not None:
                    raise got.full
                self.stats["held_chunks"] += 1
        finally:
            with self._whole_lock:
                self._whole_busy.discard(archive_id)
        return Received(whole=True)

    # --- held chunks ----------------------------------------------------------------------------
    async def _check_held(self, task: ChunkTask) -> None:
        """Once every chunk of the archive is held or verified, verify the held ones as a
        whole against the inventory's tree hash: then readable, or the archive fails."""
        self._checking_held.add(task.layout.archive_id)
        try:
            await self._check_held_now(task)
        finally:
            self._checking_held.discard(task.layout.archive_id)

    async def _check_held_now(self, task: ChunkTask) -> None:
        layout = task.layout
        archive_id = layout.archive_id
        held = await trio.to_thread.run_sync(self.cache.held_tree_hashes, layout)
        present = await trio.to_thread.run_sync(self.cache.chunk_tree_hashes, layout)
        missing = [i for i in range(layout.chunk_count) if i not in held and i not in present]
        if missing:
            if archive_id not in self._whole_busy:  # e.g. a whole pass cut short: the rest
                self.enqueue(task.vault, task.job_id, layout, missing, BACKGROUND)
            return
        expected = self.expected_root(archive_id)
        if not expected:
            await self._fail_held(archive_id, (
                "the endpoint sent no x-amz-sha256-tree-hash and the inventory has no tree "
                "hash for this archive: its bytes cannot be verified, so none are served"))
            return
        try:
            await trio.to_thread.run_sync(self.cache.promote_held, layout,
                                          bytes.fromhex(expected))
        except NotCached as exc:  # evicted meanwhile: fetch those again
            self.enqueue(task.vault, task.job_id, layout, exc.missing, BACKGROUND)
            return
        except (ChunkVerificationError, ValueError) as exc:
            await self._fail_held(archive_id, (
                f"the endpoint sent no tree hash per range (or ignored Range), so the whole "
                f"archive was checked against the inventory's tree hash, and failed: {exc}; "
                f"the downloaded bytes were discarded"))
            return
        waiting = self._held_waiting.pop(archive_id, set())
        self.stats["chunks"] += len(held)
        self.stats["bytes_verified"] += sum(layout.chunk_length(i) for i in held)
        for index in waiting | set(held):
            self._notify(archive_id, index)
        log.info("archive %s: %d chunk(s) without tree hashes from the endpoint verified "
                 "against the inventory's tree hash", archive_id[:16], len(held))
        await self._check_whole(layout)

    async def _fail_held(self, archive_id: str, reason: str) -> None:
        log.warning("archive %s: %s", archive_id[:16], reason)
        for index in self._held_waiting.pop(archive_id, set()):
            self._notify(archive_id, index, ChunkVerificationError(reason))
        await self._poison(archive_id)
        await self.outcome.archive_failed(archive_id, reason)

    def _take_buffer(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes: the smallest spare that fits, or a new one."""
        fits = [i for i, buf in enumerate(self._buffers) if len(buf) >= size]
        if fits:
            return self._buffers.pop(min(fits, key=lambda i: len(self._buffers[i])))
        return bytearray(max(size, 1))

    def _give_buffer(self, buffer: bytearray) -> None:
        if len(self._buffers) < self.workers:
            self._buffers.append(buffer)

    async def _store(self, task: ChunkTask, data: memoryview, checksum: bytes) -> bool:
        """Verify and store a fetched chunk. With the disk full, keep the bytes and try again
        every DISK_FULL_PAUSE rather than fetch them again: a chunk is paid-for bandwidth, and a
        worker holds it in memory during a fetch anyway. Readers waiting for it get ENOSPC
        meanwhile. False when the archive was cancelled before room was found."""
        while True:
            try:
                await trio.to_thread.run_sync(self.cache.put_chunk, task.layout, task.index,
                                              data, checksum)
                return True
            except NoRoomError:
                raise  # full of data that may not go: parked, fetched again when room is freed
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
