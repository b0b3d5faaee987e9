"""``glacier://[ACCOUNT@]REGION/VAULT[/PATH]`` sources of ``glacierfs copy``: the mount's catalog,
retrieval lifecycle and cache run inside the copy process, with no kernel mount, so a worker
runs where ``/dev/fuse`` is not available (AWS Batch on Fargate, unprivileged pods).

Owns the in-process engine and the paths into it, nothing else: the copy itself (requests in
batches that fit the cache, verification, DEST) is the same code as for a mount. The seam is
small on purpose. A ``GlacierPath`` answers what the copier asks a mount path: its
``user.glacier.*`` attributes (the same values the mount shows, from ``fuse/xattrs.py``'s pure
functions, and the root's status document), ``user.glacier.restore``, a stat, a walk of its
tree, and reads at an offset, which fail with the errno the mount would give (EREMOTE while a
retrieval runs, EIO when it failed).

The engine is what ``mount.run_mount`` assembles (Store, Namespace, Glacier client, CacheRoom,
ChunkCache, Retrieval, Inventories), minus pyfuse3, on a trio loop in a thread of its own; the
copier's thread calls into it with ``trio.from_thread``. Every call into the catalog or the
retrieval runs on that loop (SQLite connections stay on their thread). The options are the
mount's (``-o``), with ``vaults=`` set to the source's vault; the state directory is the same a
mount with those options would use, and held the same way: one user at a time.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any

import trio

from glacierfs import options as mount_options
from glacierfs.aws import glacier
from glacierfs.catalog import synology
from glacierfs.catalog.inventories import Inventories
from glacierfs.catalog.namespace import Entry, Namespace
from glacierfs.commands.copyplan import PlanError
from glacierfs.fuse import xattrs
from glacierfs.fuse.status import status_document
from glacierfs.jobs.clock import budget_clock
from glacierfs.jobs.jobstore import JobStore
from glacierfs.jobs.retrieval import (CacheFull, NotReady, NotRequested, Retrieval,
                                      RetrievalFailed)
from glacierfs.jobs.room import CacheRoom
from glacierfs.jobs.synologyjob import SynologyNames
from glacierfs.store import KIND_BY_ID, KIND_FILE, ROOT_INODE, Store

log = logging.getLogger(__name__)

SCHEME = "glacier://"
API_THREADS = 12             # boto3 calls at once, as a mount
START_TIMEOUT = 120.0        # seconds for the engine to list the vault
# Bytes per read, at most: what the kernel asks of a mount (its readahead). A larger read would
# ask for every window it spans at once, more than a small cache holds.
READ_SIZE = 1024 * 1024
_ERRNO = {NotReady: errno.EREMOTE, NotRequested: errno.ENODATA, RetrievalFailed: errno.EIO,
          CacheFull: errno.ENOSPC}
_SOURCE = re.compile(r"^glacier://(?P<source>[^/]+)/(?P<vault>[^/]+)(?:/(?P<path>.*))?$")


def is_glacier(text: str) -> bool:
    return text.startswith(SCHEME)


def parse(text: str) -> tuple[str, str, str]:
    """``glacier://[ACCOUNT@]REGION/VAULT[/PATH]`` → (source, vault, path within the vault)."""
    m = _SOURCE.match(text)
    if not m:
        raise PlanError(f"{text}: expected glacier://[ACCOUNT@]REGION/VAULT[/PATH]")
    return m["source"], m["vault"], (m["path"] or "").strip("/")


class Engine:
    """The mount's parts for one vault, on a trio loop in a thread; ``close`` stops it."""

    def __init__(self, source: str, vault: str, option_text: str | None) -> None:
        self.vault = vault
        self.source = source
        try:
            texts = [option_text] if option_text else []
            self.opts = mount_options.parse_options(source, texts + [f"vaults={vault}"])
        except mount_options.OptionError as exc:
            raise PlanError(str(exc)) from None
        from glacierfs import statelock
        from glacierfs.store import StateDirError, prepare_state_dir
        try:
            prepare_state_dir(self.opts.state_dir)
            statelock.acquire(self.opts.state_dir, f"glacierfs copy {SCHEME}{source}/{vault}")
        except statelock.StateInUse as exc:
            raise PlanError(str(exc)) from None
        except (StateDirError, OSError) as exc:
            raise PlanError(f"cache dir {self.opts.state_dir}: {exc}") from None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._error: str | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._thread_main, name="glacierfs-engine",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise PlanError(f"no answer from Glacier at {self.opts.endpoint_url or source}")
        if self._error:
            raise PlanError(self._error)

    # -- the loop
    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # noqa: BLE001 - reported to the copier's thread
            log.exception("the engine stopped")
            self._error = self._error or f"the engine stopped: {exc}"
        finally:
            self._ready.set()

    async def _main(self) -> None:
        opts = self.opts
        self.store = Store(opts.state_dir)
        self.ns = Namespace(self.store)
        from glacierfs.cache.chunkcache import ChunkCache
        cache = None
        try:
            client = glacier.GlacierClient(glacier.ClientSettings(
                region=opts.region, account_id=opts.account_id,
                endpoint_url=opts.endpoint_url, profile=opts.profile,
                max_connections=API_THREADS + 4))
            aclient = glacier.AsyncGlacier(client, limit=API_THREADS)
            room = CacheRoom(self.store, opts.cache_size)
            cache = ChunkCache(opts.state_dir / "chunks", opts.cache_size,
                               evictable=room.evictable)
            if self.ns.vault(self.vault) is None:
                try:
                    listed = await aclient.list_vaults()
                except glacier.GlacierError as exc:
                    self._error = f"cannot list the vaults: {exc}"
                    return
                # a Synology task's mapping vault too: its names come from there
                wanted = {self.vault, synology.mapping_vault_of(self.vault)}
                found = [(str(v["VaultName"]), v.get("VaultARN")) for v in listed
                         if v["VaultName"] in wanted]
                if self.vault not in {name for name, _ in found}:
                    self._error = f"no vault {self.vault} in {self.source}"
                    return
                self.ns.set_vaults(found)
            self.retrieval = Retrieval(JobStore(self.store, clock=budget_clock(opts)), aclient,
                                       cache, opts, self.ns, room=room)
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self.inventories = Inventories(self.ns, aclient, opts, nursery)
                self.inventories.ensure(self.vault)
                SynologyNames(self.ns, self.retrieval, self.inventories, opts,
                              nursery).ensure(self.vault)
                nursery.start_soon(self.retrieval.run)
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            if cache is not None:
                cache.close()
            self.store.close()

    def close(self) -> None:
        if self._token is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)  # type: ignore
        self._thread.join(60)

    def sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise self._stopped() from None

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return trio.from_thread.run(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise self._stopped() from None

    def _stopped(self) -> OSError:
        """The loop ended under the copy (an internal error, logged): the copy stops."""
        return OSError(errno.EIO, f"the in-process engine stopped ({self._error or 'see the log'})")

    # -- the tree
    def entry(self, rel: str) -> Entry | None:
        def find() -> Entry | None:
            cur = self.ns.get(ROOT_INODE)
            for part in [self.vault] + [p for p in rel.split("/") if p]:
                if cur is None:
                    return None
                cur = self.ns.lookup(cur, part)
            return cur
        return self.sync(find)

    def children(self, entry: Entry) -> list[Entry]:
        def listing() -> list[Entry]:
            out: list[Entry] = []
            after = 0
            while batch := self.ns.children(entry, after):
                after = batch[-1].inode
                out += [e for e in batch if e.kind != KIND_BY_ID]
            return out
        return self.sync(listing)

    def root(self) -> GlacierPath:
        return GlacierPath(self, "")


class GlacierPath:
    """A path in the engine's vault, answering what the copier asks of a mount path."""

    def __init__(self, engine: Engine, rel: str) -> None:
        self.engine = engine
        self.rel = rel.strip("/")
        self._entry: Entry | None = None

    def __str__(self) -> str:
        e = self.engine
        return f"{SCHEME}{e.source}/{e.vault}" + (f"/{self.rel}" if self.rel else "")

    __repr__ = __str__

    def __truediv__(self, other: object) -> GlacierPath:
        part = str(other)
        return GlacierPath(self.engine, f"{self.rel}/{part}" if part not in ("", ".") else self.rel)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GlacierPath) and other.engine is self.engine \
            and other.rel == self.rel

    def __hash__(self) -> int:
        return hash((id(self.engine), self.rel))

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1] if self.rel else self.engine.vault

    def relative_to(self, other: GlacierPath) -> PurePosixPath:
        if not other.rel:
            return PurePosixPath(self.rel)
        return PurePosixPath(self.rel).relative_to(other.rel)

    def entry(self) -> Entry:
        if self._entry is None:
            self._entry = self.engine.entry(self.rel)
        if self._entry is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self))
        return self._entry

    def stat(self) -> os.stat_result:
        e = self.entry()
        mode = (stat.S_IFREG | 0o444) if e.kind == KIND_FILE else (stat.S_IFDIR | 0o555)
        sec = e.mtime_ns // 10**9
        return os.stat_result((mode, e.inode, 0, 1, 0, 0, e.size, sec, sec, sec,
                               e.mtime_ns / 1e9, e.mtime_ns / 1e9, e.mtime_ns / 1e9,
                               e.mtime_ns, e.mtime_ns, e.mtime_ns))

    def walk(self) -> Iterator[tuple[GlacierPath, list[str], list[str]]]:
        """Like os.walk: (directory, subdirectory names, file names), top down."""
        stack = [self]
        while stack:
            d = stack.pop()
            kids = d.engine.children(d.entry())
            dirs = sorted(k.name for k in kids if k.kind != KIND_FILE)
            files = sorted(k.name for k in kids if k.kind == KIND_FILE)
            yield d, dirs, files
            stack += [d / name for name in reversed(dirs)]

    # -- what the mount answers
    def xattr(self, name: str) -> str | None:
        eng = self.engine
        if not self.rel:   # the vault: its attributes, and the status document
            if name == xattrs.STATUS_XATTR:
                import json
                doc = eng.sync(lambda: status_document(eng.ns, eng.retrieval, eng.opts))
                return json.dumps(doc)
            info = eng.sync(eng.ns.vault, eng.vault)
            names = eng.sync(synology.vault_names, eng.ns.db, eng.vault)
            return None if info is None else xattrs.vault_attributes(info, names).get(name)
        try:
            entry = self.entry()
        except FileNotFoundError:
            return None
        if entry.kind != KIND_FILE:
            return None
        return eng.sync(xattrs.file_attributes, entry, eng.retrieval).get(name)

    def restore(self, tier: str) -> None:
        """``setxattr user.glacier.restore TIER``."""
        entry = self.entry()

        async def request() -> None:
            try:
                await self.engine.retrieval.request_within(entry, 0, tier=tier, explicit=True)
            except NotReady:
                pass
        self.engine.run(request)

    def pread(self, size: int, offset: int) -> bytes:
        """Verified bytes, or OSError with the errno the mount would answer."""
        entry = self.entry()
        size = max(0, min(size, READ_SIZE, entry.size - offset))
        if size == 0:
            return b""

        async def read() -> bytes:
            return await self.engine.retrieval.read(entry, offset, size, True)
        try:
            return self.engine.run(read)
        except tuple(_ERRNO) as exc:
            code = next(v for k, v in _ERRNO.items() if isinstance(exc, k))
            raise OSError(code, os.strerror(code)) from None


INVENTORY_POLL = 2.0   # seconds between looks at a vault whose inventory is not in yet


def open_sources(texts: list[str], option_text: str | None) -> tuple[Engine | None, list[Any]]:
    """The SRC arguments as the copy uses them: mount paths as given, ``glacier://`` ones as
    GlacierPaths of one engine, started here and waited on until the vault's inventory is in
    (hours for a vault never listed in this state directory: a worker waits, Ctrl-C stops)."""
    wanted = [t for t in texts if is_glacier(t)]
    if not wanted:
        if option_text:
            raise PlanError("-o is for a glacier:// SRC (a mount has its own options)")
        return None, list(texts)
    if len(wanted) != len(texts):
        raise PlanError("glacier:// and mount paths cannot be mixed in one copy")
    parsed = [parse(t) for t in texts]
    if len({(s, v) for s, v, _ in parsed}) > 1:
        raise PlanError("every glacier:// SRC of one copy must name the same vault")
    source, vault, _ = parsed[0]
    engine = Engine(source, vault, option_text)
    try:
        root = engine.root()
        told = False
        while root.xattr("user.glacier.inventory.date") is None:
            if not told:
                print(f"waiting for the inventory of {root} "
                      f"({root.xattr('user.glacier.inventory.job.status') or 'requested'})",
                      file=sys.stderr, flush=True)
                told = True
            time.sleep(INVENTORY_POLL)
        told = False
        while root.xattr("user.glacier.names.status") == synology.PENDING:
            if not told:   # a Synology vault: copied under its real names, not archive ids
                print(f"waiting for the names of {root} "
                      f"({root.xattr('user.glacier.names.message') or 'mapping requested'})",
                      file=sys.stderr, flush=True)
                told = True
            time.sleep(INVENTORY_POLL)
        return engine, [GlacierPath(engine, path) for _, _, path in parsed]
    except BaseException:
        engine.close()
        raise
