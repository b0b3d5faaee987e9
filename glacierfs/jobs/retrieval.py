"""The retrieval lifecycle: one job per unit, reused, polled, downloaded, never paid twice.

A unit is the whole archive or one byte range of it (ranges.py decides which: reads of archives
larger than ``range_size`` retrieve only the windows they touch); each has its own record and
goes through the same machine:

    absent ──read/restore──▶ Queued ──limits allow──▶ Initiating ──▶ InProgress
                                                        (record saved       │ ListJobs says done
                                                         before the call)   ▼
      Failed ◀── job failed / bytes unverifiable ──────────────────────── Succeeded
                                                      output expired (404) ──▶ Queued (new job)
                                                      chunks downloaded + verified ──▶ cached

Before starting a job it looks for a usable one in memory, then in the state store (both are
``self.records``), then in the vault's ListJobs (a job started by another machine, or before a
crash, is adopted). Completions are found by polling ListJobs once per vault per round, at an
interval chosen by tier. ``max_jobs`` and ``budget`` hold requests as ``Queued``; they start in
request order as room appears.

Runs on the trio thread. The design note in the README describes the same machine. The class is
assembled from parts in their own modules: the shared state and transitions (lifecycle.py), the
start queue and limits (startqueue.py), polling and adoption (polling.py); this module has the
requests, the reads and what the downloader reports.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import trio

from glacierfs.aws import glacier
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.cache.download import Downloader
from glacierfs.cache.tasks import FOREGROUND
from glacierfs.cache.errors import CacheFullError, NoRoomError, NotCached
from glacierfs.cache.layout import ArchiveLayout
from glacierfs.jobs.jobstore import (FAILED, IN_PROGRESS, INITIATING, QUEUED, SUCCEEDED, JobRecord,
                                JobStore)
from glacierfs.catalog.namespace import Entry
from glacierfs.options import MountOptions
from glacierfs.jobs.lifecycle import OUTPUT_LIFETIME, ArchiveLookup
from glacierfs.jobs.polling import Polling
from glacierfs.jobs import spenders
from glacierfs.jobs.ranges import RangeBook
from glacierfs.jobs.room import ROOM_REASON, CacheRoom
from glacierfs.jobs.startqueue import StartQueue

log = logging.getLogger(__name__)

CHUNK_WAIT = 30.0            # a reader waits this long for chunks of a finished job
# How long a read or a restore request waits for Glacier's answers (ListJobs, InitiateJob) before
# answering: past it the request goes on in the background and the reader gets "not ready". With a
# dead or silent endpoint botocore's timeouts and retries take minutes; a `cat` must not.
REQUEST_WAIT = 5.0
DOWNLOADED = "downloaded and verified"
EVICTED = ("downloaded and verified, since evicted from the cache; a read downloads it again "
           "(from the same job while Glacier keeps its output, else from a new job)")
# Chunks in flight are kept to 1/IN_FLIGHT_SHARE of the cache (see download_streams).
IN_FLIGHT_SHARE = 4
# A reader whose retrieval waits for cache room looks again this often whether that room is
# still changing hands (see room.py), so it is answered within seconds once it is not.
ROOM_RECHECK = 3.0
STOPPING = "the mount is stopping; the retrieval goes on and a remount serves it"
STOP_ANSWER_WAIT = 2.0   # at most this long for woken readers to answer before the session ends


class RetrievalError(Exception):
    """Base of what a read can fail with; the filesystem maps each to an errno."""


class NotReady(RetrievalError):
    """A retrieval is queued or running; try again later (EREMOTE; EAGAIN on O_NONBLOCK handles)."""


class NotRequested(RetrievalError):
    """Not cached, and this read may not start a retrieval (ENODATA)."""


class RetrievalFailed(RetrievalError):
    """The job failed or its bytes could not be verified (EIO)."""


class CacheFull(RetrievalError):
    """The cache disk is full (ENOSPC)."""


class NoRoom(CacheFull):
    """The cache is full of restored files nobody reads, and nothing else will free room for
    this read: answered at once (ENOSPC), the reason and the way out in the job's message."""


class _PendingRequest(NamedTuple):
    """A ``request()`` still waiting for Glacier's first answer."""
    done: trio.Event      # set when it ends
    window_end: float     # until when its callers wait for it (trio clock)
    vault: str
    tier: str


class Retrieval(Polling, StartQueue):
    """Requests and reads of archives, and the downloader's outcomes (see the module doc)."""

    def __init__(self, jobstore: JobStore, client: glacier.AsyncGlacier, cache: ChunkCache,
                 options: MountOptions, entries: ArchiveLookup,
                 room: CacheRoom | None = None) -> None:
        self.jobs = jobstore
        self.client = client
        self.cache = cache
        self.options = options
        self.entries = entries
        # Cache room is a limit like max_jobs and budget: restored, unread archives are kept.
        self.room = room or CacheRoom(jobstore.store, cache.size_limit)
        if cache.evictable is None:
            cache.evictable = self.room.evictable
        self.room.on_release = self._room_released
        self.records: dict[str, JobRecord] = jobstore.load_all()  # by JobRecord.key
        self.ranges = RangeBook(self.records, options, cache)
        self.downloader = Downloader(client, cache, self,
                                     workers=download_streams(options, cache.size_limit),
                                     expected_root=self._expected_root)
        self._archive_locks: dict[str, trio.Lock] = {}
        self._layouts: dict[tuple[str, int], ArchiveLayout] = {}
        self._vault_locks: dict[str, trio.Lock] = {}
        self._remote_jobs: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._poll_rounds: dict[str, int] = {}  # per vault: picks the rounds that list all jobs
        self._changed: dict[str, trio.Event] = {}
        self._queue_wake = trio.Event()
        self._starting: set[str] = set()  # archives whose InitiateJob call is in flight now
        self._requesting: dict[str, _PendingRequest] = {}  # still waiting for Glacier
        self._nursery: trio.Nursery | None = None     # for requests that outlive their caller
        self.unreachable_until = 0.0
        # Other paid jobs in flight that count against max_jobs (select jobs: selectjobs.py).
        self.extra_in_flight: Callable[[], int] = lambda: 0
        self.notices = None  # completion notices through SQS (notices.py), set by the mount
        # Readers waiting in ``read``/``request_within``: woken at once when the mount stops.
        self.stopping = False
        self._waits: set[trio.CancelScope] = set()

    def _room_released(self) -> None:
        self._queue_wake_set()
        self.downloader.room_freed()

    def stop_waiting(self) -> None:
        """The mount is stopping (SIGTERM, unmount): every reader waiting here gets an answer
        now, whatever ``wait`` says, so the FUSE loop can end within seconds."""
        self.stopping = True
        for scope in list(self._waits):
            scope.cancel()

    async def answer_waiting(self, timeout: float = STOP_ANSWER_WAIT) -> None:
        """``stop_waiting``, then let the woken readers send their answers (before the FUSE
        session ends: ``pyfuse3.terminate`` cancels handlers, which then answer nothing and
        their callers see the connection aborted)."""
        self.stop_waiting()
        with trio.move_on_after(timeout):
            while self._waits:
                await trio.sleep(0.01)

    @contextlib.contextmanager
    def _stoppable(self) -> Iterator[None]:
        """A reader's wait that ``stop_waiting`` ends with NotReady(STOPPING)."""
        if self.stopping:
            raise NotReady(STOPPING)
        with trio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                yield
            finally:
                self._waits.discard(scope)
        if scope.cancelled_caught:
            raise NotReady(STOPPING)

    def record(self, archive_id: str) -> JobRecord | None:
        """The archive's job record; while its request still waits for Glacier's first answer
        (a slow endpoint), a provisional Queued one, so getfattr shows that it was asked for."""
        rec = self.records.get(archive_id)
        if rec is None and self.ranges.ranged_of(archive_id):
            entry = self.entries.file_by_archive(archive_id)
            summary = self.ranges.summary(entry, self.layout(entry)) if entry else None
            return self.ranges.representative(archive_id, summary)
        pending = None if rec is not None else self._pending_for(archive_id)
        if pending is not None:
            return JobRecord(archive_id=archive_id, vault=pending.vault, state=QUEUED,
                             tier=pending.tier, size=0, tree_hash=None, requested_at=time.time(),
                             status_message="requested; waiting for Glacier to answer")
        return rec

    def _pending_for(self, archive_id: str) -> _PendingRequest | None:
        """A request for the archive, or for chunks of it (keyed ``ID#CHUNK``), still waiting."""
        pending = self._requesting.get(archive_id)
        if pending is None:
            prefix = archive_id + "#"
            pending = next((p for k, p in self._requesting.items() if k.startswith(prefix)),
                           None)
        return pending

    def cache_state(self, entry: Entry) -> tuple[str, int]:
        """(``absent``|``partial``|``cached``, verified bytes held). An empty archive has
        nothing to retrieve, so it counts as cached and never costs a job."""
        if entry.size == 0:
            return "cached", 0
        layout = self.layout(entry)
        return self.cache.state(layout), self.cache.cached_bytes(layout)

    def shown_message(self, rec: JobRecord, cache_state: str) -> str | None:
        """The status message users see: never "downloaded" for bytes no longer held."""
        if rec.status_message == DOWNLOADED and cache_state != "cached":
            return EVICTED
        return rec.status_message

    async def request(self, entry: Entry, tier: str | None = None, explicit: bool = False,
                      chunks: list[int] | None = None) -> JobRecord | None:
        """Make sure the archive (``chunks`` None), or the chunks a read needs, are (being)
        retrieved; returns the record serving them (the first), None if cached.

        ``explicit`` (setxattr restore, ``glacierfs restore``) may replace a failed job; a
        plain read reports the failure instead of paying again.
        """
        assert entry.archive_id
        archive_id = entry.archive_id
        layout = self.layout(entry)
        if self.cache_state(entry)[0] == "cached":
            return None
        tier = tier or self.options.tier
        async with self._lock_for(self._archive_locks, archive_id):
            rec = self.records.get(archive_id)
            if explicit:
                self.room.want(archive_id, entry.size)
            if rec is not None and (rec.state != FAILED or not explicit):
                if explicit and rec.state in (INITIATING, IN_PROGRESS, SUCCEEDED):
                    self.room.hold(archive_id)  # its job exists: keep what it brings
                if rec.state == SUCCEEDED and rec.job_id:
                    self._schedule_download(rec, layout)
                return rec
            # A job that failed is never adopted again (ListJobs answers are reused for a
            # minute and may still show it InProgress).
            adopted = await self._find_remote_job(entry, failed_job=rec.job_id if rec else None)
            if adopted is not None:
                self.room.hold(archive_id)
                return adopted
            if rec is None and (self.ranges.reads_ranged(entry, tier) if chunks is not None
                                else self.ranges.whole_as_ranges(entry, tier)):
                return await self._request_ranges(entry, layout, tier, explicit, chunks)
            rec = JobRecord(archive_id=archive_id, vault=entry.vault, state=QUEUED, tier=tier,
                            size=entry.size, tree_hash=entry.tree_hash,
                            requested_at=time.time(), **spenders.current().record_fields())
            await self._start_or_queue(rec)
            return rec

    async def _request_ranges(self, entry: Entry, layout: ArchiveLayout, tier: str,
                              explicit: bool, chunks: list[int] | None) -> JobRecord | None:
        """One record per unit the chunks need that no record covers (all chunks: a whole
        restore). Failed ranges are replaced only when asked explicitly."""
        for adopted in self.ranges.adopt(entry, layout, await self._remote_or_none(entry.vault),
                                         OUTPUT_LIFETIME - 3600):
            self._save(adopted)
            log.info("reusing job %s for bytes %s of archive %s", (adopted.job_id or "")[:16],
                     adopted.byte_range, adopted.archive_id[:16])
            if adopted.state == SUCCEEDED:
                self._schedule_download(adopted, layout)
        wanted = list(range(layout.chunk_count)) if chunks is None else chunks
        for old in self.ranges.ranged_of(layout.archive_id):
            if old.state == FAILED and explicit:
                old.state, old.job_id, old.tier = QUEUED, None, tier
                old.requested_at = time.time()
                for name, value in spenders.current().record_fields().items():
                    setattr(old, name, value)   # the new job is this asker's
                self.ranges.forget_verified(old)
                await self._start_or_queue(old)
            elif old.state == SUCCEEDED and old.job_id and chunks is None:
                self._schedule_download(old, layout)  # a restore: the whole of what is done
        queued = False
        for start, end in self.ranges.plan(layout, wanted, tier):
            rec = JobRecord(archive_id=layout.archive_id, vault=entry.vault, state=QUEUED,
                            tier=tier, size=end - start + 1, tree_hash=None,
                            requested_at=time.time(), range_start=start, range_end=end,
                            **spenders.current().record_fields())
            if queued:  # an earlier range waits: so do the later ones, in order
                rec.status_message = "waiting for earlier requests"
                self._save(rec)
                continue
            await self._start_or_queue(rec)
            queued = rec.state == QUEUED
        present = self.cache.chunk_tree_hashes(layout)
        missing = [i for i in wanted if i not in present] or wanted
        return self.ranges.covering(layout, missing[0])

    async def request_within(self, entry: Entry, wait: float, tier: str | None = None,
                             explicit: bool = False,
                             chunks: list[int] | None = None) -> JobRecord | None:
        """``request()``, holding the caller ``wait`` seconds at most, or REQUEST_WAIT from when
        the archive's request began if that is later: on a slow or dead endpoint the request
        carries on in the background (one per archive) and NotReady is raised. Without the
        background loops running (tests), it simply awaits."""
        if self._nursery is None:
            return await self.request(entry, tier=tier, explicit=explicit, chunks=chunks)
        archive_id = entry.archive_id or ""
        key = archive_id if not chunks else f"{archive_id}#{chunks[0]}"
        pending = self._requesting.get(key)
        result: list[JobRecord | None] = []
        if pending is None:
            done = trio.Event()
            # A request of the same vault still unanswered past its window means Glacier is
            # not answering: a thousand-file restore must not wait REQUEST_WAIT per file.
            window_end = min([trio.current_time() + REQUEST_WAIT]
                             + [p.window_end for p in self._requesting.values()
                                if p.vault == entry.vault])
            pending = self._requesting[key] = _PendingRequest(
                done, window_end, entry.vault, tier or self.options.tier)

            async def in_background() -> None:
                try:
                    result.append(await self.request(entry, tier=tier, explicit=explicit,
                                                     chunks=chunks))
                except Exception:  # noqa: BLE001 — logged; the next read asks again
                    log.exception("requesting archive %s: internal error", archive_id[:16])
                finally:
                    del self._requesting[key]
                    done.set()

            self._nursery.start_soon(in_background)
        with self._stoppable(), trio.move_on_at(max(pending.window_end,
                                                    trio.current_time() + wait)):
            await pending.done.wait()
        if not pending.done.is_set():
            raise NotReady("starting the retrieval: Glacier has not answered yet")
        if result:
            return result[0]
        if chunks:
            return self._unit(self.layout(entry), chunks[0])
        return self.records.get(archive_id)  # another caller's request, now finished

    async def read(self, entry: Entry, offset: int, size: int, may_start: bool) -> bytes:
        """Verified bytes of a file, from the cache; starts or joins a retrieval if needed.

        Waits are bounded: ``wait`` seconds for a job to finish, CHUNK_WAIT for chunks of a
        finished job, so a FUSE worker is never held for hours; ``stop_waiting`` ends them.
        """
        with self._stoppable():
            return await self._read(entry, offset, size, may_start)

    async def _read(self, entry: Entry, offset: int, size: int, may_start: bool) -> bytes:
        layout = self.layout(entry)
        archive_id = layout.archive_id
        deadline = trio.current_time() + self.options.wait
        while True:
            failed = self.records.get(archive_id) or self.ranges.failed(archive_id)
            if failed is not None and failed.state == FAILED and \
                    self.cache.state(layout) != "cached":
                # A failed file is failed as a whole: no byte of a partial download is served.
                raise RetrievalFailed(failed.status_message or "retrieval failed")
            try:
                data = self._read_cached(layout, offset, size)
            except NotCached as exc:
                missing = exc.missing
            else:
                if may_start and entry.size > self.options.chunk_size and \
                        self._nursery is not None and self.ranges.enabled():
                    self._read_ahead(entry, layout, offset, offset + len(data))
                return data
            rec = self._unit(layout, missing[0])
            if may_start and (rec is None or any(self._unit(layout, i) is None for i in missing)):
                got = await self.request_within(entry, deadline - trio.current_time(),
                                                chunks=missing)
                if got is None and self.cache.state(layout) == "cached":
                    continue
                rec = got or rec
                if rec is None:
                    raise NotReady("retrieval requested")
            if rec is None:
                raise NotRequested("not cached; no retrieval was requested")
            if rec.ranged:
                self.ranges.waiting[archive_id] = \
                    f"bytes {offset}-{offset + size - 1} (range {rec.byte_range}: " \
                    f"{rec.status_message or rec.public_status})"
            if rec.state == FAILED:
                raise RetrievalFailed(rec.status_message or "retrieval failed")
            if rec.state == SUCCEEDED and rec.job_id:
                mine = [i for i in missing if self.ranges.covers(rec, layout, i)]
                self.downloader.enqueue(rec.vault, rec.job_id, layout, mine, FOREGROUND,
                                        output_start=rec.range_start)
                if any(self.downloader.is_parked(archive_id, i) for i in mine):
                    self._answer_no_room(archive_id)  # waiting for room: no use waiting here
                await self._wait_chunks(archive_id, mine,
                                        max(deadline, trio.current_time() + CHUNK_WAIT))
                try:
                    data = self._read_cached(layout, offset, size)
                    self.ranges.waiting.pop(archive_id, None)
                    return data
                except NotCached as exc:
                    missing = exc.missing
                if not any(i in mine for i in missing):
                    continue  # this unit's chunks are in; the rest belong to another one
                for index in missing:
                    error = self.downloader.take_error(archive_id, index)
                    if isinstance(error, NoRoomError):
                        self._answer_no_room(archive_id)
                    if isinstance(error, CacheFullError):
                        raise CacheFull(str(error))
                rec = self._unit(layout, missing[0])
                if rec is not None and rec.state == FAILED:
                    raise RetrievalFailed(rec.status_message or "retrieval failed")
                raise NotReady("downloading")
            waits_for_room = rec.state == QUEUED and \
                (rec.status_message or "").startswith(ROOM_REASON)
            if waits_for_room and self.room.idle(self.downloader.is_downloading):
                raise NoRoom(rec.status_message or ROOM_REASON)
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise NotReady(f"retrieval {rec.public_status}")
            with trio.move_on_after(min(remaining, ROOM_RECHECK) if waits_for_room
                                    else remaining):
                await self._changed_event(archive_id).wait()

    def _read_ahead(self, entry: Entry, layout: ArchiveLayout, offset: int, end: int) -> None:
        """A sequential reader of a big archive: the next windows are requested ahead."""
        tier = self.options.tier
        if layout.archive_id in self.records or not self.ranges.reads_ranged(entry, tier):
            return
        chunks = self.ranges.ahead(layout, offset, end, tier)
        if chunks and self._nursery is not None:
            self._nursery.start_soon(self._request_ahead, entry, chunks)

    async def _request_ahead(self, entry: Entry, chunks: list[int]) -> None:
        with contextlib.suppress(NotReady):
            await self.request_within(entry, 0, chunks=chunks)

    def _read_cached(self, layout: ArchiveLayout, offset: int, size: int) -> bytes:
        """Bytes from the cache (NotCached if any are missing); a restored archive's pin ends
        once every chunk of it was read."""
        data = self.cache.read(layout, offset, size)
        if self.room.is_held(layout.archive_id):
            self.room.note_read(layout.archive_id, layout.chunks_for(offset, size),
                                layout.chunk_count)
        return data

    async def _wait_chunks(self, archive_id: str, indexes: list[int], deadline: float) -> None:
        """Until every chunk of ``indexes`` was reported (landed, or failed). Every waiter is
        taken before the first wait: one taken after its chunk landed (while an earlier one
        was waited for) would never be set, and the reader would sit out the whole wait."""
        events = [self.downloader.waiter(archive_id, index) for index in indexes]
        with trio.move_on_at(deadline):
            for event in events:
                await event.wait()

    async def run(self) -> None:
        """Background loops; returns only when cancelled."""
        self._recover()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.downloader.run)
            nursery.start_soon(self._poll_loop)
            nursery.start_soon(self._queue_loop)

    def _recover(self) -> None:
        """After a restart: resume downloads; jobs caught mid-initiation are looked up.
        An archive that was downloaded whole and evicted since stays evicted (a read brings it
        back), unless the cache room holds it for a restore not yet read."""
        incomplete: dict[str, Entry | None] = {}   # per archive: its entry if chunks are missing
        for rec in list(self.records.values()):
            if rec.state == INITIATING:
                rec.next_poll = time.time()
            if rec.state == SUCCEEDED and rec.job_id and (
                    rec.status_message != DOWNLOADED or self.room.is_pinned(rec.archive_id)):
                if rec.archive_id not in incomplete:
                    entry = self.entries.file_by_archive(rec.archive_id)
                    incomplete[rec.archive_id] = entry if entry is not None and \
                        self.cache.missing_chunks(self.layout(entry)) else None
                entry = incomplete[rec.archive_id]
                if entry is not None:
                    self._schedule_download(rec, self.layout(entry))

    async def output_expired(self, archive_id: str, job_id: str | None = None) -> None:
        recs = [r for r in self.ranges.of_archive(archive_id)
                if r.state == SUCCEEDED and (not job_id or r.job_id == job_id)]
        if not recs:
            return  # a stale chunk task of an earlier job: the current one is unaffected
        rec = recs[0]
        self.downloader.cancel_archive(archive_id)
        entry = self.entries.file_by_archive(archive_id)
        for other in self.ranges.of_archive(archive_id):  # the other ranges' downloads go on
            if other is not rec and other.state == SUCCEEDED and entry is not None:
                self._schedule_download(other, self.layout(entry))
        log.info("job output for archive %s%s expired; requesting a new job", archive_id[:16],
                 f" bytes {rec.byte_range}" if rec.ranged else "")
        rec.state = QUEUED
        rec.job_id = None
        rec.requested_at = time.time()
        rec.status_message = "the previous job's output expired; a new job was requested " \
                             "(verified chunks kept)"
        self._save(rec)
        self._queue_wake.set()
        self._signal(archive_id)

    async def archive_failed(self, archive_id: str, reason: str) -> None:
        """A failed file is failed as a whole (its chunks are gone): every unit of it."""
        self.downloader.cancel_archive(archive_id)
        for rec in self.ranges.of_archive(archive_id):
            if rec.state != FAILED:
                self._fail(rec, reason)

    async def archive_complete(self, archive_id: str) -> None:
        if self.room.is_held(archive_id):
            self.room.touch()   # its reader's clock starts now
        for rec in self.ranges.of_archive(archive_id):
            rec.status_message = DOWNLOADED
            self._save(rec)
        log.info("archive %s is cached and verified", archive_id[:16])
        self._signal(archive_id)

    def _answer_no_room(self, archive_id: str) -> None:
        """A chunk the reader needs waits for room: NotReady while held restores move,
        NoRoom (answered at once) once they sit unread."""
        message = self._no_room(archive_id)
        if self.room.idle(self.downloader.is_downloading):
            raise NoRoom(message)
        raise NotReady(message)

    def _no_room(self, archive_id: str) -> str:
        """A job that exists (adopted, or started before the room filled) waits to download
        until restored files are read: say so where the reader looks."""
        message = (f"{ROOM_REASON}: the cache is full of restored files not yet read "
                   f"({self.room.held_bytes} bytes); read or copy them, or raise cache_size")
        rec = self.records.get(archive_id)
        if rec is not None and rec.status_message != message:
            rec.status_message = message
            self._save(rec)
        return message

    def _expected_root(self, archive_id: str) -> str | None:
        rec = self.records.get(archive_id)
        if rec is not None:
            return rec.tree_hash
        entry = self.entries.file_by_archive(archive_id)  # ranges only: the inventory's root
        return entry.tree_hash if entry else None


def download_streams(options: MountOptions, cache_limit: int) -> int:
    """``downloads``, but never more chunks in flight than a quarter of the cache holds:
    in a cache of a few chunks, parallel downloads evict each other's chunks before their
    readers get to them, and every reader starves. One stream is enough to stay live: a
    chunk that finds no room gives its worker back (download.py)."""
    return max(1, min(options.downloads,
                      cache_limit // (IN_FLIGHT_SHARE * options.chunk_size)))
