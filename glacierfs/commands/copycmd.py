"""``glacierfs copy [-r] [--tier T] [--dry-run] [--storage-class CLASS] [--shard K/N]
[--manifest FILE] SRC... DEST``: bring files or whole trees out of a glacierfs mount into a
local directory or into S3 (``s3dest``), through a cache of any size, resumably, verified.

Runs in the user's process and talks to the mount only through the filesystem: the root's
``user.glacier.status`` (cache limit and use, ``max_jobs``, budget, jobs in flight), each file's
``user.glacier.*`` xattrs, ``user.glacier.restore`` to request a retrieval, and plain reads.

The loop (``Copier.run``), one round every ``POLL_MIN`` seconds while downloads run, else at a
tenth of the oldest request's wait, at most ``POLL_MAX``:
  1. every requested file whose ``user.glacier.cache`` says ``cached`` is copied at once: read
     through the mount sequentially to its end (which lets a daemon that pins restored, unread
     archives release it), written under a temporary name in the same directory while its tree
     hash is computed (``treehash.TreeHasher``), compared with ``user.glacier.tree_hash``,
     given the uploader's mtime and an ordinary mode (the umask's, not the mount's 0444),
     fsynced and renamed to its real name. A killed copy leaves at most a temporary file, which
     the next run overwrites or removes; never a truncated file under a real name.
  2. more files are requested, in order, while they fit the *room*: the cache limit, less a
     reserve for the cache's own index (``reserve``), less the bytes held for restored files not
     yet read. A daemon that pins those reports them as ``cache.pinned``; without it the bytes
     of our own requested-but-not-yet-copied files are what must not be evicted, so room is
     ``limit - reserve - max(pinned, ours)`` (``ours`` alone on a daemon without pinning): each
     is a lower bound of what will be held (``pinned`` also covers other users' restores,
     ``ours`` also files whose download has not begun), and their sum would count our files
     twice. Files also wait for ``max_jobs`` slots and the daily ``budget`` when they need a
     new job. Keeping requested-but-uncopied bytes within the room is what stops downloads
     from evicting each other: on a least-recently-used cache the victims are then files
     already copied, since each file is copied within a round of arriving (one evicted anyway
     is requested again, from the same job). A file larger than the room is requested alone,
     once nothing else of ours is outstanding; one larger than the cache fails, with no job.
A file larger than the whole cache is copied alone, window by window, through the mount's ranged
retrievals (``copystream``), once nothing else of ours is outstanding on its mount.
Files are never read before their cache state is ``cached`` (but for those); a read or verification error is
retried once after re-checking the cache (an evicted file is requested again: no new job while
its job's output lasts), then reported as failed; failures never stop the rest.

One job per archive: the copier asks only through ``user.glacier.restore``, which reuses any
usable job (the mount's records, then ListJobs), and requests each file once per run. Run it
again after an interrupt: files complete and verified in DEST are skipped (``copyplan``),
retrievals still under way are waited for, not requested again, and nothing already copied is
downloaded again. A file whose earlier job failed is requested again (a new job).

Exit status: 0 when every file is copied and verified (or already was), 1 when some failed,
2 for bad arguments or a vault whose inventory is not in yet (nothing started), 130 when
interrupted (Ctrl-C or SIGTERM, with a one-line summary).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from glacierfs import treehash
from glacierfs.aws import s3upload
from glacierfs.commands import copyplan, glaciersrc, pricing, s3dest
from glacierfs.commands.common import read_xattr
from glacierfs.commands.copyplan import (DONE, FAILED, PENDING, REQUESTED, SKIPPED, Item,
                                         PlanError, ReadFailed, WriteFailed, reserve, status_doc)
from glacierfs.commands.copyargs import TIERS, parser  # noqa: F401 (TIERS: tests)
from glacierfs.commands.copyreport import Progress, dry_run, summary, summary_doc
from glacierfs.commands.copystream import Reader, WindowedReader
from glacierfs.formatting import human

BLOCK = 4 * treehash.MIB          # read size: four tree-hash leaves, hashed in parallel
POLL_MIN = 0.2                    # seconds between rounds while something moves
POLL_MAX = 10.0                   # … and at most this long while jobs run (hours on AWS)
# While waiting, a round every this fraction of the time the oldest request has waited: a
# file is noticed within about 10% of its wait (a 3-s job: 0.3 s; a 4-h job: POLL_MAX).
POLL_FRACTION = 0.1
MAX_RETRIES = 1                   # a failed read or verification is retried once
MAX_REFETCH = 3                   # an uncopied file evicted this often: the cache is too busy
# A requested file whose state has not changed for this long while nothing of it is cached and
# no job runs for it (no job at all, or a finished one with no download) is requested again.
REREQUEST_AFTER = 60.0
# An earlier failed job still shown this long after we asked for a new one is our failure too.
STALE_FAILURE = 30.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEST_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class DestFull(Exception):
    """DEST refuses writes (full, quota, read-only): nothing more can be copied."""


# --- copying one file ---------------------------------------------------------------------

def copy_file(item: Item, src: Reader, progress: Callable[[int], None]) -> None:
    """Copy one file, read from ``src``, to its DEST through its temporary name; see the module
    docstring. Raises ReadFailed (the source's fault), DestFull, or OSError (DEST's fault)."""
    tmp = item.temp
    hasher = treehash.TreeHasher()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)   # a leftover of a killed run: start afresh, with today's umask
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            while True:
                n = src.readinto(buf)
                if n == 0:
                    break
                chunk = view[:n]
                hasher.update(chunk)
                done = 0
                while done < n:
                    done += os.write(out, chunk[done:])
                progress(n)
            if hasher.length != item.size:
                raise ReadFailed(f"read {hasher.length} of {item.size} bytes")
            got = hasher.hexdigest()
            if got != item.tree_hash:
                raise ReadFailed(f"tree hash {got[:16]}… differs from the archive's "
                                 f"{item.tree_hash[:16]}…")
            copyplan.mark_verified(out, item.tree_hash)
            os.utime(out, ns=(time.time_ns(), item.mtime_ns))
            os.fsync(out)
        finally:
            os.close(out)
        os.rename(tmp, item.dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in DEST_FULL:
            raise DestFull(f"{item.dest}: {exc.strerror}") from None
        raise
    dirfd = os.open(item.dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


# --- what may be requested now -----------------------------------------------------------------

class Tally:
    """Our requested-but-not-yet-copied files on one mount: their bytes, and those of them
    still waiting for a job to start (they will take a ``max_jobs`` slot and budget)."""

    def __init__(self) -> None:
        self.held = 0
        self.count = 0
        self.unstarted = 0
        self.unstarted_bytes = 0

    def add(self, item: Item) -> None:
        self.held += item.size
        self.count += 1
        if item.needs_job and item.job_status in (None, "Queued", "Failed"):
            self.unstarted += 1
            self.unstarted_bytes += item.size


def blocked(item: Item, doc: dict, ours: Tally) -> str | None:  # type: ignore[type-arg]
    """None if ``item`` may be requested now; why it waits; or ``!reason`` if it never can.
    ``doc`` is its mount's status document."""
    cache = doc.get("cache", {})
    limit = int(cache.get("limit") or 0) or sys.maxsize   # no limit reported: nothing to fit
    if item.size > limit:
        if doc.get("limits", {}).get("retrieve") == "manual":
            return (f"!larger ({human(item.size)}) than the mount's cache "
                    f"({human(limit)}); remount with a larger cache_size, or with "
                    "retrieve=auto to copy it window by window")
        if ours.count:
            return "waiting for our other files before copying a larger-than-cache archive"
        return STREAM
    held = ours.held
    if "pinned" in cache:
        held = max(held, int(cache["pinned"]))
    room = limit - reserve(limit) - held
    if item.size > room and ours.count:
        return f"waiting for cache room ({human(max(room, 0))} free for restores)"
    if not item.needs_job:
        return None
    limits = doc.get("limits", {})
    max_jobs = int(limits.get("max_jobs") or 0)
    if max_jobs:
        running = int(doc.get("job_counts", {}).get("InProgress", 0))
        if running + ours.unstarted >= max_jobs:
            return f"waiting for a job slot (max_jobs={max_jobs})"
    budget = limits.get("budget")
    if budget is not None:
        budget = int(budget)
        if item.size > budget:
            return (f"!larger ({human(item.size)}) than the mount's daily budget "
                    f"({human(budget)})")
        spent = int(limits.get("budget_used") or 0) + ours.unstarted_bytes
        if spent + item.size > budget and (ours.count or spent):
            return f"waiting for the daily budget ({human(spent)} of {human(budget)})"
    return None


# --- the loop ---------------------------------------------------------------------------------

Writer = Callable[[Item, Reader, Callable[[int], None]], None]
STREAM = "=stream"   # blocked(): copy it now, window by window


class Copier:
    def __init__(self, items: list[Item], tier: str | None, progress: Progress,
                 writer: Writer | None = None) -> None:
        self.items = items
        self.tier = tier
        self.progress = progress
        self.writer: Writer = writer or copy_file   # local DEST, or s3dest.S3Dest.copy
        self.docs: dict[Path, dict] = {}  # type: ignore[type-arg]
        self.mount_tier: dict[Path, str] = {}

    # -- state of one file on the mount
    def refresh(self, item: Item) -> None:
        before = (item.cache, item.job_status)
        item.cache = read_xattr(item.src, "user.glacier.cache") or "absent"
        if item.cache != "cached":
            item.job_status = read_xattr(item.src, "user.glacier.job.status")
            if item.cache == "partial":
                item.seen_bytes = True
        if (item.cache, item.job_status) != before:
            item.quiet_since = time.monotonic()

    def fail(self, item: Item, reason: str) -> None:
        item.state = FAILED
        item.error = reason
        self.progress.say(f"glacierfs copy: {item.src}: {reason}")

    def request(self, item: Item) -> None:
        mount = item.mount
        tier = self.tier or self.mount_tier.get(mount)
        if tier is None:
            if mount not in self.docs:
                self.docs[mount] = status_doc(mount)
            tier = self.mount_tier[mount] = str(
                self.docs[mount].get("limits", {}).get("tier") or "Standard")
        if item.job_status == "Failed":
            item.stale_job_id = read_xattr(item.src, "user.glacier.job.id")
        try:
            if hasattr(item.src, "restore"):   # an in-process source (glaciersrc)
                item.src.restore(tier)
            else:
                os.setxattr(item.src, "user.glacier.restore", tier.encode())
        except OSError as exc:
            self.fail(item, f"cannot request the retrieval: {exc.strerror}")
            return
        item.state = REQUESTED
        item.requested_at = item.quiet_since = time.monotonic()

    # -- one round
    def copy_ready(self) -> bool:
        """Copy every requested file that is cached; True if anything changed."""
        changed = False
        for item in self.items:
            if item.state != REQUESTED:
                continue
            before = (item.cache, item.job_status)
            self.refresh(item)
            changed |= before != (item.cache, item.job_status)
            if item.cache == "cached":
                self.copy_one(item)
                changed = True
            elif item.job_status == "Failed":
                if item.stale_job_id and time.monotonic() - item.requested_at < STALE_FAILURE \
                        and read_xattr(item.src, "user.glacier.job.id") == item.stale_job_id:
                    continue  # our request has not replaced the old failed job yet
                message = read_xattr(item.src, "user.glacier.job.status_message")
                self.fail(item, f"retrieval failed: {message or 'unknown reason'}")
                changed = True
            elif item.cache == "absent" and item.seen_bytes and item.job_status == "Succeeded":
                # Evicted before we could copy it (the cache is shared, or smaller than it
                # said): ask again, from the same job while its output lasts.
                item.refetches += 1
                item.seen_bytes = False
                if item.refetches > MAX_REFETCH:
                    self.fail(item, "evicted from the cache again and again before it could be "
                                    "copied (is the cache shared with other readers?)")
                else:
                    self.request(item)
                changed = True
            elif item.cache == "absent" and item.job_status in (None, "Succeeded") \
                    and time.monotonic() - item.quiet_since > REREQUEST_AFTER:
                # Nothing moves: a request the mount lost, or a finished job whose download
                # is not under way (evicted unseen). Asking again is harmless: it reuses the job.
                self.request(item)
                changed = True
        return changed

    def copy_one(self, item: Item) -> None:
        def progress(n: int) -> None:
            self.progress.in_file += n
            self.progress.draw()
        def waiting(text: str | None) -> None:
            self.progress.waiting = text
            self.progress.draw()
        while True:
            self.progress.in_file = 0
            try:
                if item.stream:
                    limit = int(self.docs[item.mount].get("cache", {}).get("limit") or 0)
                    src: Reader = WindowedReader(item, (limit - reserve(limit)) // 4, waiting)
                else:
                    src = Reader(item)
                try:
                    self.writer(item, src, progress)
                finally:
                    src.close()
            except ReadFailed as exc:
                self.progress.in_file = 0
                if item.retries >= MAX_RETRIES:
                    self.fail(item, f"could not be copied: {exc}")
                    return
                item.retries += 1
                if item.stream:
                    continue   # read again: windows already retrieved are not paid again
                self.refresh(item)
                if item.cache == "cached":
                    continue
                self.request(item)   # evicted meanwhile: asked for again, copied when cached
                return
            except DestFull:
                raise
            except WriteFailed as exc:
                self.progress.in_file = 0
                self.fail(item, str(exc))
                return
            except OSError as exc:
                self.progress.in_file = 0
                self.fail(item, f"cannot write {item.dest}: {exc.strerror or exc}")
                return
            break
        self.progress.in_file = 0
        self.progress.copied_bytes += item.size
        item.state = DONE
        self.progress.draw()

    def request_more(self) -> bool:
        """Request pending files, in order, while they fit; True if any was requested."""
        pending = [i for i in self.items if i.state == PENDING]
        self.progress.waiting = None
        if not pending:
            return False
        tallies: dict[Path, Tally] = {}
        for mount in {i.mount for i in pending}:
            self.docs[mount] = status_doc(mount)
            tallies[mount] = Tally()
        for i in self.items:
            if i.state == REQUESTED and i.mount in tallies:
                tallies[i.mount].add(i)
        asked = False
        for item in pending:
            tally = tallies[item.mount]
            why = blocked(item, self.docs[item.mount], tally)
            if why == STREAM:   # alone, window by window (copystream), now
                item.stream = True
                item.state = REQUESTED
                self.copy_one(item)
                asked = True
                break
            if why is None:
                self.request(item)
                if item.state == REQUESTED:
                    tally.add(item)
                asked = True
                continue
            if why.startswith("!"):
                self.fail(item, why[1:])
                continue
            self.progress.waiting = why
            break
        return asked

    def run(self) -> None:
        while any(i.state in (PENDING, REQUESTED) for i in self.items):
            changed = self.copy_ready()
            changed |= self.request_more()
            self.progress.draw()
            requested = [i for i in self.items if i.state == REQUESTED]
            if changed or any(i.cache == "partial" for i in requested):
                interval = POLL_MIN
            else:
                waited = time.monotonic() - min((i.requested_at for i in requested),
                                                default=time.monotonic())
                interval = min(max(waited * POLL_FRACTION, POLL_MIN), POLL_MAX)
            if any(i.state in (PENDING, REQUESTED) for i in self.items):
                time.sleep(interval)


# --- the command ------------------------------------------------------------------------------

def classify(items: list[Item]) -> None:
    """Initial states: verified in DEST → skipped; cached or already under way → requested
    (counted against the room at once); the rest pending, with whether it needs a new job."""
    limits: dict[Path, int] = {}
    for item in items:
        if item.state in (SKIPPED, FAILED):
            continue   # decided by the S3 DEST already
        if item.key is None and copyplan.verified_in_dest(item):
            item.state = SKIPPED
            with contextlib.suppress(OSError):
                os.unlink(item.temp)   # a leftover of a killed run
            continue
        if item.mount not in limits:
            limits[item.mount] = int(status_doc(item.mount).get("cache", {}).get("limit") or 0)
        if item.size > (limits[item.mount] or item.size):
            item.state = PENDING   # copied window by window (copystream), never restored whole
            item.needs_job = item.cache != "cached"
        elif item.size == 0 or item.cache in ("cached", "partial") \
                or item.job_status in ("InProgress", "Queued"):
            item.state = REQUESTED
            item.requested_at = item.quiet_since = time.monotonic()
            item.needs_job = item.job_status is None and item.cache == "absent"
        else:
            item.state = PENDING
            item.needs_job = item.job_status in (None, "Failed")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_copy(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if len(args.paths) < 2:
        p.error("give at least one SRC and a DEST")
    try:
        engine, sources = glaciersrc.open_sources(args.paths[:-1], args.options)
    except PlanError as exc:
        print(f"glacierfs copy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: nothing was started", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        return _copy(args, sources)
    finally:
        if engine is not None:
            engine.close()


def _copy(args: argparse.Namespace, sources: list) -> int:  # type: ignore[type-arg]
    dest_text = args.paths[-1]
    to_s3 = s3dest.is_s3(dest_text)
    if not to_s3 and (args.storage_class or args.s3_endpoint_url):
        print("glacierfs copy: --storage-class and --s3-endpoint-url need an s3:// DEST",
              file=sys.stderr)
        return EXIT_USAGE
    storage_class = args.storage_class or s3upload.DEFAULT_STORAGE_CLASS
    manifest: s3dest.Manifest | None = None
    dest: s3dest.S3Dest | None = None
    try:
        prices = pricing.load_prices(args.price_file) if args.dry_run or args.price_file \
            else None
        manifest = s3dest.Manifest(None if args.dry_run else args.manifest)
        if to_s3:
            items = copyplan.build_keys(sources, s3dest.parse_dest(dest_text)[1],
                                        args.recursive)
            dirs: list[Path] = []
        else:
            items, dirs = copyplan.build(sources, dest_text, args.recursive)
        if args.shard:
            k, n = args.shard
            items = [i for i in items if copyplan.in_shard(i.archive_id, k, n)]
        if to_s3:
            dest = s3dest.S3Dest(dest_text, storage_class, args.s3_endpoint_url, manifest)
            dest.check(items)
        classify(items)
        if not to_s3:
            for item in items:
                if item.state == SKIPPED:
                    manifest.add(item, "found")
    except (PlanError, pricing.PriceError) as exc:
        print(f"glacierfs copy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"glacierfs copy: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted while listing the files: nothing was started", file=sys.stderr)
        return EXIT_INTERRUPTED
    if to_s3:
        assert dest is not None
        print(f"to s3://{dest.bucket}/{dest.prefix} as {storage_class}"
              f"{f' (shard {args.shard[0]}/{args.shard[1]})' if args.shard else ''}: "
              f"{len(items)} archives", flush=True)
    try:
        if args.dry_run:
            assert prices is not None
            return dry_run(items, args.tier, prices, storage_class if to_s3 else None)
        return _run(items, dirs, args.tier, dest, manifest, args.json)
    finally:
        manifest.close()


def _run(items: list[Item], dirs: list[Path], tier: str | None, dest: s3dest.S3Dest | None,
         manifest: s3dest.Manifest, as_json: bool = False) -> int:
    progress = Progress(items, sys.stderr.isatty())
    writer = dest.copy if dest is not None else s3dest.local_writer(copy_file, manifest)

    def report(outcome: str, code: int) -> int:
        progress.clear()
        if as_json:
            print(json.dumps(summary_doc(items, progress, outcome), ensure_ascii=False))
        elif outcome == "interrupted":
            print(summary(items, progress, interrupted=True), file=sys.stderr)
        else:
            print(summary(items, progress, interrupted=False))
        return code
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        for item in items:
            if item.state == FAILED:
                progress.say(f"glacierfs copy: {item.src}: {item.error}")
        Copier(items, tier, progress, writer).run()
    except KeyboardInterrupt:
        return report("interrupted", EXIT_INTERRUPTED)
    except DestFull as exc:
        progress.clear()
        print(f"glacierfs copy: stopped: {exc}", file=sys.stderr)
        return report("stopped", EXIT_FAILED)
    except OSError as exc:
        progress.clear()
        print(f"glacierfs copy: stopped: {exc.strerror or exc}", file=sys.stderr)
        return report("stopped", EXIT_FAILED)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if dest is not None:
        dest.cleanup(items)
    failed = [i for i in items if i.state == FAILED]
    code = report("failed" if failed else "done", EXIT_FAILED if failed else EXIT_OK)
    for item in failed:
        print(f"glacierfs copy: failed: {item.src}: {item.error}", file=sys.stderr)
    return code
