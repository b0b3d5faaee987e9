"""What ``glacierfs copy`` has to do: SRC and DEST resolved ``cp -r`` style into a list of
files (mount path → local path) with what the mount says about each, and which of them are
already complete and verified in DEST.

Only reads: ``stat``, ``os.walk`` and ``user.glacier.*`` xattrs of the mount (no read of file
data, so building a plan never starts a retrieval), and ``stat``/xattrs of DEST.

"Already verified in DEST" is decided cheaply and safely: the copier writes
``user.glacierfs.tree_hash`` on a file only after the tree hash computed while writing it
equalled the archive's, and sets it before the rename that gives the file its real name, so
its presence (with the size and the uploader's mtime unchanged) means a complete, verified
copy. Where the attribute is missing (a file copied by another tool, or a DEST filesystem
without user xattrs) but size and mtime match, the local file's tree hash is recomputed: a local
read costs far less than a paid download, and is never wrong.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from glacierfs import treehash
from glacierfs.commands.common import (BY_ID_DIR, STATUS_XATTR, glacierfs_mounts, mount_of,
                                       read_xattr)

DEST_XATTR = "user.glacierfs.tree_hash"   # on copied files: the verified archive tree hash
VAULT_XATTR = "user.glacier.vault_arn"    # marks a vault directory (its .by-id is skipped)
TEMP_SUFFIX = ".glacierfs-part"
NAME_MAX = 255
# Timestamps on some DEST filesystems are coarse (FAT: 2 s); within this an mtime is unchanged.
MTIME_SLACK_NS = 2_000_000_000

# Room left unrequested for the cache's own index: its ``used`` counts the SQLite index too
# (tens of KiB, a few hundred bytes per chunk), so a batch filling the limit exactly would still
# evict one of its own files.
RESERVE_MIN = 256 * 1024
RESERVE_FRACTION = 1 / 1024

# Item states.
PENDING, REQUESTED, DONE, SKIPPED, FAILED = "pending", "requested", "done", "skipped", "failed"


class PlanError(Exception):
    """SRC/DEST that cannot be copied; one line for the user, nothing started."""


class ReadFailed(Exception):
    """The mount did not give the archive's bytes (read error, short, or a wrong tree hash)."""


class WriteFailed(Exception):
    """DEST did not take this file (an S3 refusal, an object that appeared at its key);
    the rest goes on."""


def status_doc(mount: Path) -> dict:  # type: ignore[type-arg]
    raw = read_xattr(mount, STATUS_XATTR)
    if raw is None:
        raise OSError(errno.ENODATA, f"{mount} is no longer a live glacierfs mount")
    return json.loads(raw)


def reserve(limit: int) -> int:
    return max(RESERVE_MIN, int(limit * RESERVE_FRACTION))


def in_shard(archive_id: str, k: int, n: int) -> bool:
    """Is the archive in share ``k`` of ``n`` (1-based)? By a hash of its id alone, so the
    same on every machine and every run, and N shards cover every archive exactly once."""
    digest = hashlib.sha256(archive_id.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n == k - 1


@dataclass
class Item:
    """One file to copy, and where the copy of it stands. ``dest`` is a local path, or for
    an S3 DEST the object's key as a relative PurePosixPath (``key`` then holds its text)."""
    src: Path
    dest: PurePath
    mount: Path
    size: int
    mtime_ns: int
    tree_hash: str
    cache: str               # user.glacier.cache when last looked at
    job_status: str | None   # user.glacier.job.status when last looked at
    state: str = PENDING
    needs_job: bool = True   # requesting it starts a paid job (no usable one exists)
    error: str | None = None
    retries: int = 0         # failed reads or verifications so far
    refetches: int = 0       # times it was asked for again (evicted before it was copied…)
    requested_at: float = 0.0   # time.monotonic() of our last request
    quiet_since: float = 0.0    # … and of the last change seen in its cache or job state
    seen_bytes: bool = False   # some of it was seen in the cache since it was requested
    stale_job_id: str | None = None   # a Failed job replaced by our request: not ours to report
    archive_id: str = ""
    vault: str = ""
    description: str = ""
    key: str | None = None     # the S3 key, for an S3 DEST
    stream: bool = False       # larger than the cache: read window by window (copystream)
    record: dict[str, Any] = field(default_factory=dict)   # what DEST holds now (manifest)

    @property
    def temp(self) -> Path:
        return temp_path(Path(self.dest))

    @property
    def where(self) -> str:
        return str(self.dest) if self.key is None else self.key


def temp_path(dest: Path) -> Path:
    """The fixed temporary name a copy is written under, in DEST's directory: fixed, so a
    leftover from a killed run is overwritten (or removed) by the next one."""
    name = f".{dest.name}{TEMP_SUFFIX}"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        digest = hashlib.sha256(dest.name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        name = f".{digest}{TEMP_SUFFIX}"
    return dest.with_name(name)


def _item(src: Path, dest: Path, mount: Path) -> Item:
    size = read_xattr(src, "user.glacier.size")
    tree_hash = read_xattr(src, "user.glacier.tree_hash")
    if size is None or tree_hash is None:
        raise PlanError(f"{src}: not a file on a glacierfs mount")
    st = src.stat() if hasattr(src, "walk") else os.stat(src)
    cache = read_xattr(src, "user.glacier.cache") or "absent"
    job = read_xattr(src, "user.glacier.job.status")
    return Item(src=src, dest=dest, mount=mount, size=int(size), mtime_ns=st.st_mtime_ns,
                tree_hash=tree_hash, cache=cache, job_status=job,
                archive_id=read_xattr(src, "user.glacier.archive_id") or "",
                vault=read_xattr(src, "user.glacier.vault") or "",
                description=read_xattr(src, "user.glacier.description") or "")


def _walk(src: Path, dest: Any, mount: Path, items: list[Item], dirs: list[Any]) -> None:
    dirs.append(dest)
    in_process = hasattr(src, "walk")   # an in-process source (glaciersrc)
    for root, subdirs, files in (src.walk() if in_process else os.walk(src)):
        rootp = root if in_process else Path(root)
        if read_xattr(rootp, VAULT_XATTR) is not None:
            if read_xattr(rootp, "user.glacier.inventory.date") is None:
                # The vault lists as empty until its inventory is in: copying "nothing" and
                # exiting 0 would look like success.
                why = read_xattr(rootp, "user.glacier.inventory.message") or \
                    f"inventory {read_xattr(rootp, 'user.glacier.inventory.job.status') or 'None'}"
                raise PlanError(f"{rootp}: the vault's inventory is not in yet ({why}); "
                                "run again once it lists")
            if BY_ID_DIR in subdirs:
                subdirs.remove(BY_ID_DIR)   # every archive is already under its name
        subdirs.sort()
        rel = rootp.relative_to(src)
        for d in subdirs:
            dirs.append(dest / rel / d)
        for name in sorted(files):
            items.append(_item(rootp / name, dest / rel / name, mount))


def _name(src: Any) -> str:
    return str(src.name) if hasattr(src, "walk") else Path(os.path.abspath(src)).name


def resolve_sources(sources: list[str], recursive: bool, live: list[Path]
                    ) -> list[tuple[Path, os.stat_result, Path]]:
    """Each SRC with its stat and its live glacierfs mount; PlanError for any other."""
    mounts: dict[Path, bool] = {}
    out = []
    for text in sources:
        if hasattr(text, "walk"):   # an in-process source (glaciersrc.GlacierPath)
            try:
                st = text.stat()  # type: ignore[attr-defined]
            except FileNotFoundError:
                raise PlanError(f"{text}: no such file or directory") from None
            if stat.S_ISDIR(st.st_mode) and not recursive:
                raise PlanError(f"{text} is a directory (use -r)")
            out.append((text, st, text.engine.root()))  # type: ignore[attr-defined]
            continue
        if "://" in text:
            raise PlanError(f"{text}: a SRC must be a path on a glacierfs mount "
                            "or glacier://[ACCOUNT@]REGION/VAULT[/PATH]")
        src = Path(text)
        try:
            st = os.stat(src)
        except OSError as exc:
            raise PlanError(f"{src}: {exc.strerror}") from None
        mount = mount_of(src, live)
        if mount is not None and mount not in mounts:
            mounts[mount] = read_xattr(mount, STATUS_XATTR) is not None
        if mount is None or not mounts[mount]:
            raise PlanError(f"{src}: not on a live glacierfs mount")
        if stat.S_ISDIR(st.st_mode) and not recursive:
            raise PlanError(f"{src} is a directory (use -r)")
        out.append((src, st, mount))
    return out


def build_keys(sources: list[str], prefix: str, recursive: bool) -> list[Item]:
    """Files to copy to S3 under ``prefix``, with the same ``cp -r`` rules as ``build``: a
    directory SRC lands in PREFIX/NAME/…; a file in PREFIX/NAME when PREFIX is empty or ends
    in ``/`` or there are several SRCs, else at PREFIX itself."""
    base = PurePosixPath(prefix)
    folder = prefix == "" or prefix.endswith("/") or len(sources) > 1
    items: list[Item] = []
    dirs: list[Any] = []
    for src, st, mount in resolve_sources(sources, recursive, glacierfs_mounts()):
        name = _name(src)
        if stat.S_ISDIR(st.st_mode):
            _walk(src, base / name, mount, items, dirs)
        else:
            items.append(_item(src, base / name if folder else base, mount))
    seen: set[str] = set()
    for it in items:
        it.key = str(it.dest)
        if it.key in seen:
            raise PlanError(f"two sources would be copied to the key {it.key}")
        seen.add(it.key)
    return items


def build(sources: list[str], dest_text: str, recursive: bool) -> tuple[list[Item], list[Path]]:
    """(files, directories to create), in copy order. Raises PlanError on bad input.

    Like ``cp -r``, except that a directory SRC always lands in DEST/NAME, DEST being created
    when missing (``cp`` would make DEST itself the copy the first time and DEST/NAME the next):
    the same command run again must name the same files, or a resumed copy would start over.
    A single file SRC follows ``cp``: into DEST/NAME if DEST is a directory, else to DEST.
    """
    if "://" in dest_text:
        raise PlanError(f"{dest_text}: DEST must be a local path or s3://BUCKET[/PREFIX]")
    dest = Path(dest_text)
    if dest.exists() and not dest.is_dir() and len(sources) > 1:
        raise PlanError(f"target {dest} is not a directory")
    dest_is_dir = dest.is_dir() or len(sources) > 1
    live = glacierfs_mounts()
    items: list[Item] = []
    dirs: list[Path] = []
    for src, st, mount in resolve_sources(sources, recursive, live):
        name = _name(src)
        if stat.S_ISDIR(st.st_mode):
            if dest.exists() and not dest.is_dir():
                raise PlanError(f"target {dest} is not a directory")
            target = dest / name
            if target.exists() and not target.is_dir():
                raise PlanError(f"cannot overwrite non-directory {target} with directory {src}")
            _walk(src, target, mount, items, dirs)
        else:
            items.append(_item(src, dest / name if dest_is_dir else dest, mount))
    dest_mount = mount_of(dest if dest.exists() else dest.parent, live)
    if dest_mount is not None:
        raise PlanError(f"{dest} is on the glacierfs mount {dest_mount} (it is read-only)")
    seen: set[Path] = set()
    for it in items:
        if it.dest in seen:
            raise PlanError(f"two sources would be copied to {it.dest}")
        seen.add(it.dest)
    return items, dirs


def verified_in_dest(item: Item) -> bool:
    """Is DEST already a complete, verified copy of the archive? (See the module docstring.)"""
    try:
        st = os.stat(Path(item.dest))
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != item.size \
            or abs(st.st_mtime_ns - item.mtime_ns) >= MTIME_SLACK_NS:
        return False
    if read_xattr(Path(item.dest), DEST_XATTR) == item.tree_hash:
        return True
    try:
        if treehash.tree_hash_file(Path(item.dest)).hex() != item.tree_hash:
            return False
    except OSError:
        return False
    mark_verified(Path(item.dest), item.tree_hash)
    return True


def mark_verified(target: Path | int, tree_hash: str) -> None:
    """Record the verified tree hash on a DEST file (by path or descriptor); a filesystem
    without user xattrs is fine (the next run recomputes the hash instead)."""
    try:
        os.setxattr(target, DEST_XATTR, tree_hash.encode())
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.ENOSPC,
                             errno.E2BIG):
            raise
