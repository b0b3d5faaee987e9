"""``glacierfs copy … s3://BUCKET[/PREFIX]``: the S3 destination of a copy.

Owns what is particular to S3 (the mount side, the request loop and the progress are
``copycmd``'s): which key each archive goes to (``copyplan.build_keys``, ``cp -r`` rules), what
is already at those keys, the copy of one cached file into its object, the object's metadata,
the manifest, and the multipart uploads left when a run ends.

What is already there decides, before any retrieval is requested:
  - no object: the archive is copied;
  - an object whose ``glacier-tree-hash`` metadata equals the archive's tree hash (and whose size
    matches): done earlier (by this machine or another), skipped: no job, no upload;
  - any other object: not ours to overwrite; reported, left alone, the run exits 1.

Copying one file: it is read through the mount in order, each block counted into its tree hash
and written to an ``s3upload.ObjectUpload`` (parts with their CRC64NVME as they fill), and the
object is created (PutObject, or CompleteMultipartUpload with the full-object CRC64NVME) only
once the whole tree hash equals the archive's; a wrong hash aborts the upload. The chain: Glacier's
tree hash → our tree hash of the bytes read → the CRC64NVME of the same bytes, computed in the
same pass → S3's check of each part and of the whole object → the checksum S3 reports afterwards.

Object metadata: ``mtime`` (the uploader's mtime in Unix seconds, as rclone writes it),
``glacier-archive-id``, ``glacier-tree-hash`` (hex), and where they still fit S3's 2 KB
``glacier-vault`` and ``glacier-description`` (non-ASCII and ``%`` percent-encoded as UTF-8).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from collections.abc import Callable
from typing import IO, Any

from glacierfs import treehash
from glacierfs.aws import s3upload
from glacierfs.commands.copyplan import FAILED, SKIPPED, Item, PlanError, ReadFailed, WriteFailed
from glacierfs.commands.copystream import Reader

log = logging.getLogger(__name__)

SCHEME = "s3://"
BLOCK = 4 * treehash.MIB
META_MTIME = "mtime"
META_ARCHIVE_ID = "glacier-archive-id"
META_TREE_HASH = "glacier-tree-hash"
META_VAULT = "glacier-vault"
META_DESCRIPTION = "glacier-description"
# Printable ASCII kept as is in the description's metadata value; the rest percent-encoded.
_DESC_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def is_s3(text: str) -> bool:
    return text.startswith(SCHEME)


def parse_dest(text: str) -> tuple[str, str]:
    """``s3://BUCKET[/PREFIX]`` → (bucket, prefix as written, maybe empty or ending in /)."""
    bucket, _, prefix = text[len(SCHEME):].partition("/")
    if not bucket or any(c in bucket for c in " \\?#"):
        raise PlanError(f"{text}: expected s3://BUCKET[/PREFIX]")
    return bucket, prefix


def mtime_text(mtime_ns: int) -> str:
    """Unix seconds as rclone writes its ``mtime`` metadata: no trailing zeros."""
    sec, ns = divmod(mtime_ns, 1_000_000_000)
    return f"{sec}.{ns:09d}".rstrip("0").rstrip(".")


def metadata(item: Item) -> dict[str, str]:
    meta = {META_MTIME: mtime_text(item.mtime_ns), META_ARCHIVE_ID: item.archive_id,
            META_TREE_HASH: item.tree_hash}
    optional = {META_VAULT: item.vault,
                META_DESCRIPTION: urllib.parse.quote(item.description, safe=_DESC_SAFE)}

    def size(m: dict[str, str]) -> int:
        return sum(len(k.encode()) + len(v.encode()) for k, v in m.items())
    for k, v in optional.items():
        if v and size(meta) + len(k) + len(v) <= s3upload.MAX_METADATA_BYTES:
            meta[k] = v
    return meta


def key_problem(key: str) -> str | None:
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8, which an S3 key must be"
    if len(raw) > s3upload.MAX_KEY_BYTES:
        return f"its key is {len(raw)} bytes long, more than S3's {s3upload.MAX_KEY_BYTES}"
    return None


class Manifest:
    """``--manifest FILE``: JSON Lines, one line per archive copied or found done, written as
    each is known (a killed run keeps the lines of what it finished)."""

    def __init__(self, path: str | None) -> None:
        self.f: IO[str] | None = open(path, "w", encoding="utf-8") if path else None

    def add(self, item: Item, status: str, bucket: str | None = None) -> None:
        if self.f is None:
            return
        line: dict[str, Any] = {
            "vault": item.vault, "archive_id": item.archive_id, "size": item.size,
            "tree_hash": item.tree_hash, "mtime": mtime_text(item.mtime_ns),
            "description": item.description, "status": status}
        if bucket is None:
            line["path"] = os.path.abspath(item.dest)
        else:
            line.update({"bucket": bucket, "key": item.key})
        line.update(item.record)
        self.f.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


class S3Dest:
    """One copy's S3 destination; ``copy`` is the Copier's writer for its files."""

    def __init__(self, dest_text: str, storage_class: str, endpoint_url: str | None,
                 manifest: Manifest) -> None:
        self.bucket, self.prefix = parse_dest(dest_text)
        self.storage_class = storage_class
        self.manifest = manifest
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        try:
            self.s3 = s3upload.S3Writer(self.bucket, region, endpoint_url,
                                        os.environ.get("AWS_PROFILE") or None)
            self.s3.check_bucket()
        except s3upload.S3Error as exc:
            raise PlanError(str(exc)) from None

    def url(self, key: str) -> str:
        return f"{SCHEME}{self.bucket}/{key}"

    def check(self, items: list[Item]) -> None:
        """Mark items already in S3 (skipped) and keys held by other objects (failed)."""
        keys = [i.key or "" for i in items if key_problem(i.key or "") is None]
        try:
            present = self.s3.listing(os.path.commonprefix(keys)) if keys else {}
            for item in items:
                assert item.key is not None
                why = key_problem(item.key)
                if why is not None:
                    item.state, item.error = FAILED, why
                    continue
                if item.key not in present:
                    continue
                info = self.s3.head(item.key)
                if info is None:
                    continue
                if info.metadata.get(META_TREE_HASH) == item.tree_hash \
                        and info.size == item.size:
                    item.state = SKIPPED
                    item.record = self._record(info)
                    self.manifest.add(item, "found", self.bucket)
                    continue
                theirs = info.metadata.get(META_TREE_HASH)
                item.state = FAILED
                item.error = (f"{self.url(item.key)} already holds another object ("
                              + (f"tree hash {theirs[:16]}…" if theirs
                                 else "not written by glacierfs copy")
                              + "); left alone")
        except s3upload.S3Error as exc:
            raise PlanError(str(exc)) from None

    def _record(self, info: s3upload.ObjectInfo) -> dict[str, Any]:
        return {"etag": info.etag.strip('"'), "version_id": info.version_id,
                "checksum_crc64nvme": info.checksum, "storage_class": info.storage_class}

    def copy(self, item: Item, src: Reader, progress: Callable[[int], None]) -> None:
        """Copy one file, read from ``src``, into its object; see the module docstring. Raises
        ReadFailed (the source's fault) or WriteFailed (S3's, or another object got there
        first)."""
        assert item.key is not None
        hasher = treehash.TreeHasher()
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        try:
            up = self.s3.begin(item.key, item.size, metadata(item), self.storage_class)
            while True:
                n = src.readinto(buf)
                if n == 0:
                    break
                hasher.update(view[:n])
                up.write(view[:n])
                progress(n)
            if hasher.length != item.size:
                raise ReadFailed(f"read {hasher.length} of {item.size} bytes")
            got = hasher.hexdigest()
            if got != item.tree_hash:
                up.abort()
                raise ReadFailed(f"tree hash {got[:16]}… differs from the archive's "
                                 f"{item.tree_hash[:16]}…; nothing written to S3")
            info = up.finish()
        except s3upload.Occupied:
            raise WriteFailed(f"{self.url(item.key)}: another object appeared there during "
                              "the copy; left alone") from None
        except s3upload.S3Error as exc:
            raise WriteFailed(str(exc)) from None
        if info.metadata.get(META_TREE_HASH) != item.tree_hash:
            raise WriteFailed(f"{self.url(item.key)}: S3 reports tree hash "
                              f"{info.metadata.get(META_TREE_HASH)} after the upload")
        item.record = self._record(info)
        if up.reused:
            item.record["parts_resumed"] = up.reused
        self.manifest.add(item, "copied", self.bucket)

    def cleanup(self, items: list[Item]) -> int:
        """Abort the unfinished uploads at our keys (a run that ended, whatever its outcome,
        leaves none behind); how many there were."""
        keys = {i.key for i in items if i.key is not None and key_problem(i.key) is None}
        if not keys:
            return 0
        n = 0
        try:
            for u in self.s3.all_uploads(os.path.commonprefix(sorted(keys))):
                if u.get("Key") in keys:
                    self.s3.abort(u["Key"], u["UploadId"])
                    n += 1
        except s3upload.S3Error as exc:
            log.warning("cannot clean up unfinished uploads: %s", exc)
        return n


Writer = Callable[[Item, Reader, Callable[[int], None]], None]


def local_writer(copy_file: Writer, manifest: Manifest) -> Writer:
    """The local copy with its manifest line."""
    def write(item: Item, src: Reader, progress: Callable[[int], None]) -> None:
        copy_file(item, src, progress)
        manifest.add(item, "copied")
    return write
