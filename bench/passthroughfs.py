"""A minimal read-only pyfuse3 passthrough filesystem: the baseline for glacierfs's read path.

Modelled on pyfuse3's ``examples/passthroughfs.py``, cut down to what reading needs and given the
same kernel-facing settings as glacierfs (60 s entry/attribute timeouts, ``keep_cache``, no
writeback cache), so a comparison measures glacierfs's own work and nothing else: same stack
(pyfuse3 + trio), same kernel path, one ``os.pread`` per read request.

    python bench/passthroughfs.py SOURCE_DIR MOUNTPOINT      # foreground; SIGTERM/SIGINT unmounts
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat

import pyfuse3
import trio

TIMEOUT = 60.0


class Passthrough(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, source: str) -> None:
        super().__init__()
        self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self._fds: dict[int, int] = {}  # fh -> fd
        self._next_fh = 1

    def _path(self, inode: int) -> str:
        try:
            return self._paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attrs(self, path: str, inode: int | None = None) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode if inode is not None else st.st_ino
        attr.generation = 0
        attr.entry_timeout = TIMEOUT
        attr.attr_timeout = TIMEOUT
        attr.st_mode = st.st_mode
        attr.st_nlink = st.st_nlink
        attr.st_uid = st.st_uid
        attr.st_gid = st.st_gid
        attr.st_size = st.st_size
        attr.st_blksize = 128 * 1024
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        return attr

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self._path(inode), inode)

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = os.path.join(self._path(parent_inode), os.fsdecode(name))
        attr = self._attrs(path)
        self._paths[attr.st_ino] = path
        return attr

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        return None

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not stat.S_ISDIR(os.lstat(self._path(inode)).st_mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        path = self._path(fh)
        entries = sorted((e.inode(), e.name) for e in os.scandir(path))
        for ino, name in entries:
            if ino <= start_id:
                continue
            child = os.path.join(path, name)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(child), ino):
                return
            self._paths[ino] = child

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            fd = os.open(self._path(inode), os.O_RDONLY)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        fh = self._next_fh
        self._next_fh += 1
        self._fds[fh] = fd
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self._fds[fh], size, off)

    async def release(self, fh: int) -> None:
        fd = self._fds.pop(fh, None)
        if fd is not None:
            os.close(fd)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self._paths[pyfuse3.ROOT_INODE])
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(data, name, getattr(st, name))
        return data


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        async def stop_on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
        nursery.start_soon(stop_on_signals)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Runs in the foreground; SIGTERM or SIGINT unmounts.")
    p.add_argument("source", help="directory whose files are served")
    p.add_argument("mountpoint")
    args = p.parse_args()
    source, mountpoint = os.path.abspath(args.source), args.mountpoint
    options = {"fsname=passthroughfs", "default_permissions"}
    pyfuse3.init(Passthrough(source), mountpoint, options)
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
