"""Assembling a mount: state, client, cache, namespace, retrieval, FUSE; then running it.

``run_mount`` is the trio main of the daemon. It calls ``ready()`` only once the kernel mount
is live, and raises ``MountError`` (one line for the user) for anything that prevents it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pyfuse3
import trio

from glacierfs import diskfull, notify
from glacierfs.aws import glacier, sqs
from glacierfs.fuse import readahead
from glacierfs.diskfull import LOCAL_ERRORS
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.fuse.operations import GlacierOperations
from glacierfs.catalog.inventories import Inventories
from glacierfs.jobs.jobstore import JobStore
from glacierfs.jobs.notices import CompletionListener
from glacierfs.catalog.namespace import Namespace
from glacierfs.options import MountOptions
from glacierfs.jobs.retrieval import Retrieval
from glacierfs.jobs.room import CacheRoom
from glacierfs.jobs.selectjobs import SelectJobs
from glacierfs.jobs.synologyjob import SynologyNames
from glacierfs.store import Store
from glacierfs.jobs.clock import budget_clock

log = logging.getLogger(__name__)

MAX_FUSE_WORKERS = 64   # pyfuse3 allows 99; every blocked read holds one
API_THREADS = 12        # boto3 calls at once (downloads plus polling and listing)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A first mount needs the vault list; an endpoint that accepts connections but never answers
# would otherwise hold the mount command for botocore's timeouts times its retries (minutes).
FIRST_LIST_TIMEOUT = 30.0
UNMOUNT_CHECK = 2.0     # seconds between looks whether the mount was detached behind our back


class MountError(Exception):
    """A reason not to mount, shown to the user as one line."""


def fuse_options(opts: MountOptions, source: str) -> set[str]:
    """Kernel mount options. Never ``ro``: the kernel would refuse setxattr (restore)."""
    result = {"fsname=" + source, "subtype=glacierfs", "default_permissions"}
    if opts.allow_other:
        result.add("allow_other")
    return result


async def _vault_list(opts: MountOptions, ns: Namespace,
                      client: glacier.AsyncGlacier) -> list[tuple[str, str | None]] | None:
    try:
        listed = await client.list_vaults()
    except glacier.AccessDenied as exc:
        raise MountError(f"Glacier refused the credentials: {exc}") from None
    except glacier.GlacierError as exc:
        if ns.vaults():
            log.warning("cannot list vaults (%s); using the stored list", exc)
            return None
        raise MountError(f"cannot reach Glacier at {opts.endpoint_url or opts.region}: "
                         f"{exc}") from None
    vaults = [(str(v["VaultName"]), v.get("VaultARN")) for v in listed]
    if opts.vaults is not None:
        known = {name for name, _ in vaults}
        missing = [n for n in opts.vaults if n not in known]
        if missing:
            log.warning("vaults not found in the account: %s", ", ".join(missing))
        vaults = [(n, a) for n, a in vaults if n in opts.vaults]
    return vaults


async def run_mount(opts: MountOptions, mountpoint: Path, ready: Callable[[], None]) -> None:
    store = Store(opts.state_dir)
    ns = Namespace(store)
    try:
        client = glacier.GlacierClient(glacier.ClientSettings(
            region=opts.region, account_id=opts.account_id, endpoint_url=opts.endpoint_url,
            profile=opts.profile, max_connections=API_THREADS + 4, sns_topic=opts.sns_topic))
    except glacier.GlacierError as exc:
        raise MountError(f"AWS credentials: {exc}") from None
    aclient = glacier.AsyncGlacier(client, limit=API_THREADS)
    queue = None
    if opts.sqs_queue_url:
        try:
            queue = sqs.QueueClient(opts.sqs_queue_url, opts.region,
                                    endpoint_url=opts.sqs_endpoint_url, profile=opts.profile)
        except sqs.QueueError as exc:
            raise MountError(f"sqs_queue_url: {exc}") from None
    room = CacheRoom(store, opts.cache_size)
    cache = ChunkCache(opts.state_dir / "chunks", opts.cache_size, evictable=room.evictable)
    mounted = contextlib.ExitStack()
    try:
        stored = ns.vaults()
        if not stored:
            vaults = None
            with trio.move_on_after(FIRST_LIST_TIMEOUT) as waited:
                vaults = await _vault_list(opts, ns, aclient)
            if waited.cancelled_caught:
                raise MountError(f"no answer from Glacier at {opts.endpoint_url or opts.region} "
                                 f"within {FIRST_LIST_TIMEOUT:g} s (ListVaults); check the "
                                 "network, a proxy or endpoint_url")
            if vaults is not None:
                ns.set_vaults(vaults)
        elif opts.vaults is not None:
            ns.set_vaults([(v.name, v.arn) for v in stored if v.name in opts.vaults]
                          + [(n, None) for n in opts.vaults if n not in {v.name for v in stored}])
        retrieval = Retrieval(JobStore(store, clock=budget_clock(opts)), aclient, cache, opts, ns,
                              room=room)
        selects = SelectJobs(store, aclient, opts, retrieval)
        retrieval.extra_in_flight = selects.in_flight
        async with trio.open_nursery() as nursery:
            inventories = Inventories(ns, aclient, opts, nursery)
            listener = None
            if queue is not None:
                listener = CompletionListener(queue, aclient, [retrieval, inventories, selects],
                                              sns_topic=opts.sns_topic)
                retrieval.notices = listener
                inventories.poll_stretch = listener.poll_stretch
            names = SynologyNames(ns, retrieval, inventories, opts, nursery, mountpoint)

            def vault_opened(vault: str) -> None:
                inventories.ensure(vault)
                names.ensure(vault)
            ops = GlacierOperations(ns, retrieval, opts, on_vault_opened=vault_opened,
                                    selects=selects)
            source = opts.region if opts.account_id == "-" else f"{opts.account_id}@{opts.region}"
            signals = mounted.enter_context(_stop_signals())
            # Resolved now: once mounted, touching the mount point from this thread would wait
            # for the FUSE loop that this thread runs.
            target = os.fsencode(os.path.realpath(mountpoint))
            try:
                pyfuse3.init(ops, str(mountpoint), fuse_options(opts, source))
            except RuntimeError as exc:
                raise MountError(f"cannot mount on {mountpoint}: {exc}") from None
            try:
                log.info("mounted %s on %s (cache %s)", source, mountpoint, opts.state_dir)
                ready()
                notify.ready(f"mounted {source} on {mountpoint}")
                nursery.start_soon(retrieval.run)
                nursery.start_soon(selects.run)
                if listener is not None:
                    nursery.start_soon(listener.run)
                nursery.start_soon(_stop_on_signals, signals, retrieval.answer_waiting)
                nursery.start_soon(_stop_when_unmounted, mountpoint, target,
                                   retrieval.answer_waiting)
                nursery.start_soon(readahead.apply, mountpoint, opts.readahead)
                if stored:
                    nursery.start_soon(_refresh_vault_list, opts, ns, aclient)
                await pyfuse3.main(min_tasks=2, max_tasks=MAX_FUSE_WORKERS)
                retrieval.stop_waiting()
                notify.stopping(f"unmounting {mountpoint}")
                nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    pyfuse3.close(unmount=True)
                log.info("unmounted %s", mountpoint)
    finally:
        mounted.close()
        cache.close()
        store.close()


async def _refresh_vault_list(opts: MountOptions, ns: Namespace,
                              client: glacier.AsyncGlacier) -> None:
    """A remount lists from the stored state at once; the vault list is refreshed behind."""
    try:
        vaults = await _vault_list(opts, ns, client)
    except MountError as exc:
        log.warning("vault list not refreshed: %s", exc)
        return
    if vaults is not None:
        try:
            ns.set_vaults(vaults)
        except LOCAL_ERRORS as exc:
            log.warning("vault list not refreshed: %s",
                        diskfull.describe(exc, ns.store.path.parent))


@contextlib.contextmanager
def _stop_signals() -> Iterator[AsyncIterator[int]]:
    """From just before the kernel mount to the end: SIGTERM/SIGINT/SIGHUP are caught (a
    signal between ``init`` and ``main`` is held, not fatal). Signals still pending when
    this closes, or arriving later while the state is closed, are ignored: the daemon is
    stopping already. Before the mount the default action (exit) is harmless."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # what trio restores and redelivers to at exit
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        yield signals


async def _stop_on_signals(signals: AsyncIterator[int],
                           answer_readers: Callable[[], Awaitable[None]]) -> None:
    """pyfuse3 installs no signal handlers: SIGTERM/SIGINT end the FUSE loop cleanly; a
    second signal while stopping changes nothing (the state is already on disk).

    ``terminate()`` ends the session loop, but ``main()`` then waits for every handler still
    running (it cancels them, and a cancelled handler answers nothing: its caller sees the
    connection aborted). So readers sleeping in their ``wait`` are woken and answered first,
    and the daemon exits within seconds whatever ``wait`` says."""
    stopping = False
    async for signum in signals:
        if stopping:
            log.info("signal %d: already unmounting", signum)
            continue
        stopping = True
        log.info("signal %d: unmounting", signum)
        await answer_readers()
        pyfuse3.terminate()


async def _stop_when_unmounted(mountpoint: Path, target: bytes,
                               answer_readers: Callable[[], Awaitable[None]]) -> None:
    """A busy mount detached behind our back (``umount -l``, ``fusermount3 -u -z``) sends
    the daemon nothing while a reader waits in a handler: notice it (``target``: the mount
    point's real path, as /proc/self/mountinfo spells it), answer the readers and end the
    loop, as for SIGTERM.

    /proc/self/mountinfo read while other mounts come and go may skip a line, so a mount is
    taken as gone only when it is missing from two reads in a row and the path no longer
    leads to our file system (its device differs: a stat in a worker thread, which the FUSE
    loop answers)."""
    device: int | None = None   # ours, once seen (a path mountinfo spells otherwise: never)
    missed = 0
    while True:
        await trio.sleep(UNMOUNT_CHECK)
        found = await trio.to_thread.run_sync(_mounted_device, target)
        if found is not None:
            device = found if found >= 0 else device
            missed = 0
            continue
        if device is None:
            continue
        missed += 1
        if missed < 2 or await trio.to_thread.run_sync(_device_of, target,
                                                       abandon_on_cancel=True) == device:
            continue
        log.info("%s was unmounted: stopping", mountpoint)
        await answer_readers()
        pyfuse3.terminate()
        return


def _mounted_device(target: bytes) -> int | None:
    """The device of the mount on ``target`` (/proc/self/mountinfo, octal-escaped paths), or
    None if none is there; an unreadable mountinfo counts as still mounted (-1)."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split(b" ")
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    major, _, minor = fields[2].partition(b":")
                    return os.makedev(int(major), int(minor))
    except (OSError, ValueError):
        return -1
    return None


def _device_of(target: bytes) -> int | None:
    try:
        return os.stat(target).st_dev
    except OSError:
        return None


def _unescape(field: bytes) -> bytes:
    return field.replace(b"\\040", b" ").replace(b"\\011", b"\t").replace(
        b"\\012", b"\n").replace(b"\\134", b"\\")
