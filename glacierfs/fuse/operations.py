"""The FUSE adapter: kernel requests in, namespace and retrieval calls out, errno back.

Holds no Glacier logic. One boundary (``_handler``) turns the core's exceptions into
``FUSEError``; anything unexpected is logged with its traceback and answered EIO, because an
exception escaping a pyfuse3 handler would stop the whole filesystem.

Semantics (the README's table is generated from the same decisions):
- the tree is read-only: every write-like request gets EROFS; ``user.glacier.restore`` is the
  one writable attribute (so the kernel mount is never ``ro``: it would refuse setxattr);
- a read of uncached bytes starts or joins a retrieval and fails with EREMOTE ("Object is
  remote", as s3fs answers archived objects) while it runs, ENODATA when it may not start one
  (``retrieve=manual``, crawlers), EACCES when the caller may not start one on this mount
  (``retrieve_users``, jobs/spenders.py: the reader's restore requests are refused the same
  way), EIO when the job failed or the bytes could not be verified, ENOSPC when the cache disk
  is full, or when its room is held by restored files nobody reads and nothing else will free
  it (the job's status message says which). While the mount stops, a waiting read is answered
  EREMOTE at once (the retrieval goes on). Never EAGAIN, EINTR or EINPROGRESS there: Python's io
  reads EAGAIN as "no data yet on a non-blocking descriptor" (``read()`` returns None,
  ``shutil.copy`` writes an empty file) and EINTR is retried forever. Only a handle opened
  with O_NONBLOCK gets EAGAIN, which there means exactly "try again";
- unknown attribute names get ENODATA (never ENOSYS, which the kernel makes permanent).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Any, TypeVar
from collections.abc import Awaitable, Callable

import pyfuse3

from glacierfs.fuse import status
from glacierfs.fuse.callers import Caller, Callers
from glacierfs.fuse import xattrs
from glacierfs.diskfull import describe, is_disk_full
from glacierfs.catalog.namespace import Entry, Namespace
from glacierfs.options import TIERS, MountOptions
from glacierfs.jobs.retrieval import (CacheFull, NoRoom, NotReady, NotRequested, Retrieval,
                                     RetrievalError, RetrievalFailed)
from glacierfs.jobs.selectjobs import SelectJobs
from glacierfs.jobs.spenders import Requester, Spenders, asking
from glacierfs.jobs.selectspec import SELECT_XATTR, SelectRequest, SpecError
from glacierfs.catalog import synology
from glacierfs.store import KIND_FILE, KIND_VAULT, ROOT_INODE

log = logging.getLogger(__name__)

ENTRY_TIMEOUT = 60.0   # names and sizes change only with a new inventory
ATTR_TIMEOUT = 60.0
BLOCK_SIZE = 128 * 1024
# getxattr's size probe and fetch (back to back, microseconds apart) must see the same value;
# longer only delays what a poller sees (a restore showed "cached" up to 1 s late at 1.0).
XATTR_STABLE_FOR = 0.25
RESTORE_XATTR = "user.glacier.restore"
# Per caller: may they start retrievals here (``yes``, ``restore only``, or ``no: why``).
MAY_RETRIEVE_XATTR = "user.glacier.may_retrieve"
# The kernel refuses attribute values larger than this (XATTR_SIZE_MAX): getxattr fails with
# E2BIG and ``glacierfs status`` sees no status at all.
XATTR_SIZE_MAX = 65536
# The kernel keeps a process name (/proc/PID/comm) to 15 bytes: "gnome-desktop-thumbnailer"
# runs as "gnome-desktop-t". Names in retrieve_ignore are compared at that length.
COMM_LEN = 15
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

class WouldBlock(NotReady):
    """NotReady on a handle opened with O_NONBLOCK."""


_ERRNO: dict[type[BaseException], int] = {
    NotReady: errno.EREMOTE,
    WouldBlock: errno.EAGAIN,
    NotRequested: errno.ENODATA,
    RetrievalFailed: errno.EIO,
    CacheFull: errno.ENOSPC,
    NoRoom: errno.ENOSPC,
}


def _handler(fn: F) -> F:
    """The error boundary around every request."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except RetrievalError as exc:
            raise pyfuse3.FUSEError(_ERRNO.get(type(exc), errno.EIO)) from None
        except Exception as exc:
            if is_disk_full(exc):
                log.warning("%s: %s", fn.__name__, describe(exc, "the cache dir"))
                raise pyfuse3.FUSEError(errno.ENOSPC) from None
            log.exception("internal error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


@dataclass
class OpenFile:
    entry: Entry
    may_start: bool   # reads through this handle may start a paid retrieval
    flags: int        # open(2) flags (O_NONBLOCK: "not ready" is EAGAIN; a later fcntl is unseen)
    asker: Requester | None = None   # who opened it: reads start jobs in their name
    denied: bool = False  # not in retrieve_users: what would need a new job is EACCES


class GlacierOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, namespace: Namespace, retrieval: Retrieval, options: MountOptions,
                 on_vault_opened: Callable[[str], None] = lambda v: None,
                 selects: SelectJobs | None = None) -> None:
        super().__init__()
        self.selects = selects
        self.ns = namespace
        self.retrieval = retrieval
        self.options = options
        self.on_vault_opened = on_vault_opened
        self.uid = options.uid if options.uid is not None else os.getuid()
        self.gid = options.gid if options.gid is not None else os.getgid()
        self._open_files: dict[int, OpenFile] = {}
        self._ignored_names = frozenset(n.encode()[:COMM_LEN].decode("utf-8", "ignore")
                                        for n in options.retrieve_ignore)
        self._next_fh = 1
        self.callers = Callers()
        self.spenders = Spenders.for_mount(options)
        self._refused: set[tuple[int | None, int]] = set()   # (uid, inode) logged
        self._xattr_memo: dict[tuple[int, bytes], tuple[float, bytes]] = {}
        self.mounted_at_ns = time.time_ns()  # the root's (and empty vaults') mtime

    # --- attributes -----------------------------------------------------------------------
    def _entry(self, inode: int) -> Entry:
        entry = self.ns.get(inode)
        if entry is None or (entry.parent < 0 and inode != ROOT_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return entry

    def _attrs(self, entry: Entry) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = entry.inode
        attr.generation = 0
        attr.entry_timeout = ENTRY_TIMEOUT
        attr.attr_timeout = ATTR_TIMEOUT
        umask = self.options.umask
        if entry.kind == KIND_FILE:
            attr.st_mode = stat.S_IFREG | (0o444 & ~umask)
            attr.st_nlink = 1
            attr.st_size = entry.size
        else:
            attr.st_mode = stat.S_IFDIR | (0o555 & ~umask)
            attr.st_nlink = 2
            attr.st_size = 0
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = -(-attr.st_size // 512)
        mtime = entry.mtime_ns or self.mounted_at_ns
        attr.st_mtime_ns = attr.st_ctime_ns = attr.st_atime_ns = mtime
        return attr

    @_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self._entry(inode))

    @_handler
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._entry(parent_inode)
        text = os.fsdecode(name)
        if text == ".":
            return self._attrs(parent)
        if text == "..":
            return self._attrs(self._entry(parent.parent if parent.parent > 0 else ROOT_INODE))
        if parent.kind == KIND_VAULT:
            self.on_vault_opened(parent.vault)
        entry = self.ns.lookup(parent, text)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(entry)

    async def forget(self, inode_list: Any) -> None:
        return None  # entries live in the database; nothing is held per lookup

    # --- directories -------------------------------------------------------------------
    @_handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        entry = self._entry(inode)
        if entry.kind == KIND_FILE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if entry.kind == KIND_VAULT:
            self.on_vault_opened(entry.vault)
        return inode

    @_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        parent = self._entry(fh)
        after = start_id
        while True:
            batch = self.ns.children(parent, after)
            if not batch:
                return
            for child in batch:
                if not pyfuse3.readdir_reply(token, os.fsencode(child.name), self._attrs(child),
                                             child.inode):
                    return
                after = child.inode

    async def releasedir(self, fh: int) -> None:
        return None

    # --- files -----------------------------------------------------------------------------
    @_handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        entry = self._entry(inode)
        if entry.kind != KIND_FILE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        caller = self.callers.of(ctx.uid, ctx.gid, ctx.pid, self._needs_groups(ctx.uid))
        may_start = self.options.retrieve == "auto" and \
            caller.command not in self._ignored_names
        denied = may_start and not self._may_spend(caller)
        fh = self._next_fh
        self._next_fh += 1
        self._open_files[fh] = OpenFile(entry, may_start and not denied, flags,
                                        caller.requester, denied)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._open_files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        entry = handle.entry
        if off >= entry.size or size <= 0:
            return b""
        size = min(size, entry.size - off)
        try:
            with asking(handle.asker or Requester(None)):
                return await self.retrieval.read(entry, off, size, handle.may_start)
        except NotReady as exc:
            if handle.flags & os.O_NONBLOCK:
                raise WouldBlock(str(exc)) from None
            raise
        except NotRequested:
            if handle.denied:
                self._log_refusal(handle)
                raise pyfuse3.FUSEError(errno.EACCES) from None
            raise

    async def release(self, fh: int) -> None:
        self._open_files.pop(fh, None)

    # --- who may spend (jobs/spenders.py) ---------------------------------------------------
    def _needs_groups(self, uid: int) -> bool:
        """Only callers the policy does not allow by uid need their groups looked up."""
        return not self.spenders.allows(uid)

    def _may_spend(self, caller: Caller) -> bool:
        uid = caller.requester.uid
        allowed = uid is not None and self.spenders.allows(uid, caller.gids)
        if not allowed:
            log.debug("uid %s (%s) may not start retrievals here", uid, caller.command)
        return allowed

    def _log_refusal(self, handle: OpenFile) -> None:
        """Once per user and file: the log says whose reads were refused (not every read)."""
        asker = handle.asker or Requester(None)
        key = (asker.uid, handle.entry.inode)
        if key in self._refused:
            return
        if len(self._refused) > 10000:
            self._refused.clear()
        self._refused.add(key)
        log.info("read of %s by %s refused (EACCES): not cached, and this user may not start "
                 "retrievals here (retrieve_users)", self.ns.path_of(handle.entry), asker.label())

    def _may_retrieve_value(self, ctx: pyfuse3.RequestContext) -> str:
        caller = self.callers.of(ctx.uid, ctx.gid, ctx.pid, self._needs_groups(ctx.uid))
        if not self.spenders.allows(ctx.uid, caller.gids):
            return self.spenders.refusal(caller.requester)
        if self.options.retrieve != "auto":
            return "restore only: retrieve=manual, reads start no retrieval on this mount"
        return "yes"

    # --- extended attributes -----------------------------------------------------------------
    def _xattr_values(self, entry: Entry) -> dict[str, str]:
        if entry.kind == KIND_FILE:
            values = xattrs.file_attributes(entry, self.retrieval)
            if self.selects is not None:
                values.update(self.selects.file_attributes(entry))
            return values
        if entry.kind == KIND_VAULT:
            info = self.ns.vault(entry.vault)
            return xattrs.vault_attributes(info, synology.vault_names(self.ns.db, entry.vault)) \
                if info else {}
        if entry.inode == ROOT_INODE:
            return self._root_attributes()
        return {}

    def _root_attributes(self) -> dict[str, str]:
        """The status document, its job list shortened until it fits one xattr value (the
        counts always cover every job): 1,000 queued requests must not hide the status."""
        values = xattrs.root_attributes(self.ns, self.retrieval, self.options, self.selects)
        limit = xattrs.MAX_STATUS_JOBS
        while len(values[xattrs.STATUS_XATTR].encode()) > XATTR_SIZE_MAX and limit > 0:
            limit //= 2
            doc = status.status_document(self.ns, self.retrieval, self.options, max_jobs=limit,
                                         selects=self.selects)
            doc["jobs_truncated"] = True
            values = {xattrs.STATUS_XATTR: json.dumps(doc, separators=(",", ":"))}
        return values

    @_handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        entry = self._entry(inode)
        names = [name.encode() for name in self._xattr_values(entry)]
        if entry.kind == KIND_FILE and self._may_retrieve_value(ctx) != "yes":
            names.append(MAY_RETRIEVE_XATTR.encode())  # listed when there is something to say
        return names

    @_handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name == MAY_RETRIEVE_XATTR.encode() and self._entry(inode).kind == KIND_FILE:
            return self._may_retrieve_value(ctx).encode()  # the caller's own: not memoized
        key = (inode, name)
        now = time.monotonic()
        memo = self._xattr_memo.get(key)
        if memo is not None and now - memo[0] < XATTR_STABLE_FOR:
            return memo[1]
        values = self._xattr_values(self._entry(inode))
        value = values.get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        data = value.encode("utf-8", "surrogateescape")
        if len(self._xattr_memo) > 10000:
            self._xattr_memo.clear()
        self._xattr_memo[key] = (now, data)
        return data

    @_handler
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        entry = self._entry(inode)
        paid = os.fsdecode(name) == RESTORE_XATTR or (
            os.fsdecode(name) == SELECT_XATTR and self.selects is not None)
        if not paid:
            raise pyfuse3.FUSEError(errno.EROFS if name.startswith(b"user.glacier.")
                                    else errno.ENOTSUP)
        caller = self.callers.of(ctx.uid, ctx.gid, ctx.pid, self._needs_groups(ctx.uid))
        if not self._may_spend(caller):
            raise pyfuse3.FUSEError(errno.EACCES)
        with asking(caller.requester):
            if os.fsdecode(name) == SELECT_XATTR:
                await self._select(inode, entry, value)
            else:
                await self._restore(inode, entry, value)

    async def _restore(self, inode: int, entry: Entry, value: bytes) -> None:
        """``setxattr user.glacier.restore`` (what ``glacierfs restore`` sends)."""
        if entry.kind != KIND_FILE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        tier = value.decode("utf-8", "replace").strip().capitalize()
        if tier not in TIERS:
            raise pyfuse3.FUSEError(errno.EINVAL)
        try:
            await self.retrieval.request_within(entry, 0, tier=tier, explicit=True)
        except NotReady:
            pass  # Glacier is slow to answer: the request goes on, and that is what was asked
        # The file's attributes and the root's status document both changed: a memoized
        # value (``glacierfs restore`` reads the root's to learn the tier) would hide the job.
        self._xattr_memo = {k: v for k, v in self._xattr_memo.items()
                            if k[0] not in (inode, ROOT_INODE)}

    async def _select(self, inode: int, entry: Entry, value: bytes) -> None:
        """``setxattr user.glacier.select`` (what ``glacierfs select`` sends): start or reuse a
        select job; the answer is read back from ``user.glacier.select.jobs``."""
        assert self.selects is not None
        if entry.kind != KIND_FILE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        try:
            spec = SelectRequest.from_json(value)
        except SpecError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        await self.selects.request_within(entry, spec)
        self._xattr_memo = {k: v for k, v in self._xattr_memo.items()
                            if k[0] not in (inode, ROOT_INODE)}

    @_handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._entry(inode)
        raise pyfuse3.FUSEError(errno.EROFS)

    # --- everything that would write -------------------------------------------------------
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(errno.EINVAL)

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """``df`` shows the local cache: its size limit and how much of it holds data."""
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = BLOCK_SIZE
        limit = self.retrieval.cache.size_limit
        used = min(self.retrieval.cache.volume(), limit)
        data.f_blocks = limit // BLOCK_SIZE
        data.f_bfree = data.f_bavail = (limit - used) // BLOCK_SIZE
        data.f_files = data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data
