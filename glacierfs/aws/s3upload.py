"""Writing archives into S3 for ``glacierfs copy … s3://``: one object per archive, its bytes
checked by S3 part by part and as a whole, never over an object that is already there.

Owns the S3 side of a migration and nothing else (which archive goes to which key, and whether
an object found there is ours, is ``commands/s3dest.py``'s business):

- Credentials and endpoint as AWS users expect: the standard chain (``AWS_PROFILE``, the
  environment, the config files, an instance or task role), the region, and a custom endpoint
  from ``--s3-endpoint-url`` or botocore's own ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``.
  Dummy credentials only for a loopback endpoint (a local S3), as glacier.py does.
- Checksums: every part carries its CRC64NVME (S3 refuses a part whose bytes differ), and the
  object is created with a FULL_OBJECT CRC64NVME given at completion (S3 refuses the completion
  if the parts' bytes do not add up to it). After completion the object's checksum is read back
  (``HeadObject`` with ``ChecksumMode=ENABLED``) and compared with ours: a local S3 that does
  not check what it is sent is caught here too.
- Never over another object: ``PutObject`` and ``CompleteMultipartUpload`` are conditional
  (``If-None-Match: *``). A refusal (412) whose object turns out to be ours (same tree-hash
  metadata and checksum: a retried request whose first answer was lost) counts as done.
- Resume: an unfinished multipart upload at the key (a killed run) is taken up again; each of
  its parts is kept only if its size and checksum (or, where S3 lists none, its ETag = MD5)
  equal those of the bytes being copied now, otherwise uploaded again. Other unfinished uploads
  at the key are aborted. Throttling (SlowDown) and 5xx answers are retried by botocore's
  standard retry mode, with backoff.

Threading: one client, used from the copy's single thread.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
from awscrt import checksums as crt_checksums

from glacierfs.options import is_loopback_url

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_PART = 8 * MIB             # parts are at least this big (S3's minimum is 5 MiB) …
MAX_PARTS = 10_000             # … and at most this many (S3's limit)
MAX_PART = 5 * 1024 * MIB      # S3's largest part
MAX_OBJECT = MAX_PARTS * MAX_PART   # 48.8 TiB
MAX_KEY_BYTES = 1024
MAX_METADATA_BYTES = 2048      # user metadata: names and values, UTF-8
RETRY_ATTEMPTS = 10            # SlowDown and 5xx, with botocore's exponential backoff
STORAGE_CLASSES = ("STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA",
                   "INTELLIGENT_TIERING", "GLACIER", "DEEP_ARCHIVE", "OUTPOSTS", "GLACIER_IR",
                   "SNOW", "EXPRESS_ONEZONE")
DEFAULT_STORAGE_CLASS = "DEEP_ARCHIVE"


class S3Error(Exception):
    """S3 refused or could not be reached: one line for the user."""


class Occupied(S3Error):
    """Another object appeared at the key while we wrote ours: it is left alone."""


def crc64nvme(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC64NVME of ``data``, continuing ``crc`` (the checksum S3 keeps for whole objects)."""
    return crt_checksums.crc64nvme(data, crc)


def b64(crc: int) -> str:
    """A CRC64NVME as S3 writes it: 8 bytes big-endian, base64."""
    return base64.b64encode(crc.to_bytes(8, "big")).decode()


def part_size(size: int) -> int:
    """Size of each part (the last may be shorter) for an object of ``size`` bytes: whole
    MiB, at least MIN_PART, few enough for MAX_PARTS."""
    need = -(-size // MAX_PARTS)
    return max(MIN_PART, -(-need // MIB) * MIB)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or \
        str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


@dataclass
class ObjectInfo:
    """What ``HeadObject`` says of an object."""
    size: int
    etag: str
    version_id: str | None
    checksum: str | None          # full-object CRC64NVME (base64), when S3 keeps one
    checksum_type: str | None
    storage_class: str
    metadata: dict[str, str]


class S3Writer:
    """One bucket's client for the copy."""

    def __init__(self, bucket: str, region: str | None = None, endpoint_url: str | None = None,
                 profile: str | None = None) -> None:
        self.bucket = bucket
        try:
            session = boto3.session.Session(profile_name=profile, region_name=region)
            creds = session.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise S3Error(f"AWS credentials: {exc}") from None
        extra: dict[str, Any] = {}
        config = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": RETRY_ATTEMPTS},
            connect_timeout=10, read_timeout=120, user_agent_extra="glacierfs",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required")
        self._s3 = session.client("s3", endpoint_url=endpoint_url, config=config)
        url = self._s3.meta.endpoint_url
        if creds is None and is_loopback_url(url):
            extra = {"aws_access_key_id": "glacierfs-local", "aws_secret_access_key": "unused"}
            self._s3 = session.client("s3", endpoint_url=endpoint_url, config=config, **extra)
        self.endpoint_url = url

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise Occupied(f"s3://{self.bucket}/{kwargs.get('Key', '')}: another object "
                               "is there now") from None
            raise S3Error(f"S3 refused {what} of s3://{self.bucket}/{kwargs.get('Key', '')}: "
                          f"{code} {exc.response.get('Error', {}).get('Message', '')}".rstrip()
                          ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise S3Error(f"cannot reach S3 for {what}: {exc}") from None

    # -- the bucket and its objects
    def check_bucket(self) -> None:
        """Raise S3Error unless the bucket exists and answers us."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            what = {"404": "does not exist", "NoSuchBucket": "does not exist",
                    "403": "refuses these credentials"}.get(code, code)
            raise S3Error(f"bucket {self.bucket} {what}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise S3Error(f"cannot reach S3: {exc}") from None

    def head(self, key: str) -> ObjectInfo | None:
        """The object at ``key``, or None if there is none."""
        try:
            r = self._s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise S3Error(f"S3 refused HeadObject of s3://{self.bucket}/{key}: "
                          f"{_code(exc)}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise S3Error(f"cannot reach S3: {exc}") from None
        return ObjectInfo(size=int(r.get("ContentLength", 0)), etag=r.get("ETag", ""),
                          version_id=r.get("VersionId"), checksum=r.get("ChecksumCRC64NVME"),
                          checksum_type=r.get("ChecksumType"),
                          storage_class=r.get("StorageClass") or "STANDARD",
                          metadata={k.lower(): v for k, v in r.get("Metadata", {}).items()})

    def listing(self, prefix: str) -> dict[str, int]:
        """{key: size} of the objects whose key starts with ``prefix``."""
        found: dict[str, int] = {}
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            r = self._call("ListObjectsV2", self._s3.list_objects_v2, **kwargs)
            for o in r.get("Contents", []):
                found[o["Key"]] = int(o.get("Size", 0))
            if not r.get("IsTruncated"):
                return found
            kwargs["ContinuationToken"] = r.get("NextContinuationToken")

    # -- unfinished multipart uploads
    def all_uploads(self, prefix: str) -> list[dict[str, Any]]:
        """Unfinished multipart uploads under ``prefix``."""
        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            r = self._call("ListMultipartUploads", self._s3.list_multipart_uploads, **kwargs)
            found += r.get("Uploads", [])
            if not r.get("IsTruncated"):
                return found
            kwargs["KeyMarker"] = r.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = r.get("NextUploadIdMarker")

    def uploads(self, key: str) -> list[dict[str, Any]]:
        """Unfinished multipart uploads at exactly ``key``, oldest first."""
        found = [u for u in self.all_uploads(key) if u.get("Key") == key]
        return sorted(found, key=lambda u: str(u.get("Initiated") or ""))

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) not in ("NoSuchUpload", "404"):
                raise S3Error(f"S3 refused to abort an upload of s3://{self.bucket}/{key}: "
                              f"{_code(exc)}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise S3Error(f"cannot reach S3: {exc}") from None

    def abort_all(self, key: str) -> int:
        """Abort every unfinished upload at ``key``; how many there were."""
        ups = self.uploads(key)
        for u in ups:
            self.abort(key, u["UploadId"])
        return len(ups)

    def _parts(self, key: str, upload_id: str) -> dict[int, dict[str, Any]]:
        parts: dict[int, dict[str, Any]] = {}
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        while True:
            r = self._call("ListParts", self._s3.list_parts, **kwargs)
            for p in r.get("Parts", []):
                parts[int(p["PartNumber"])] = p
            if not r.get("IsTruncated"):
                return parts
            kwargs["PartNumberMarker"] = r.get("NextPartNumberMarker")

    def begin(self, key: str, size: int, metadata: dict[str, str],
              storage_class: str) -> ObjectUpload:
        return ObjectUpload(self, key, size, metadata, storage_class)


class ObjectUpload:
    """One object being written: ``write`` the archive's bytes in order, then ``finish`` once
    they are verified (or ``abort``). Small objects go in one conditional PutObject at
    ``finish``; larger ones as parts of a multipart upload, resumed when one is there."""

    def __init__(self, writer: S3Writer, key: str, size: int, metadata: dict[str, str],
                 storage_class: str) -> None:
        if size > MAX_OBJECT:
            raise S3Error(f"{size} bytes: larger than S3's largest object")
        self.w = writer
        self.key = key
        self.size = size
        self.metadata = metadata
        self.storage_class = storage_class
        self.part = part_size(size)
        self.multipart = size > self.part
        self.buf = bytearray()
        self.crc = 0
        self.written = 0
        self.upload_id: str | None = None
        self.existing: dict[int, dict[str, Any]] = {}
        self.done_parts: list[dict[str, Any]] = []
        self.reused = 0            # parts of an earlier upload kept
        self.uploaded = 0          # parts sent now

    # -- the multipart upload to use
    def _start(self) -> None:
        ups = self.w.uploads(self.key)
        keep = None
        for u in reversed(ups):   # the newest one of ours that fits
            if keep is None and u.get("StorageClass", "STANDARD") == self.storage_class \
                    and u.get("ChecksumAlgorithm") == "CRC64NVME":
                keep = u
        for u in ups:
            if u is not keep:
                log.info("aborting an unfinished upload of %s", self.key)
                self.w.abort(self.key, u["UploadId"])
        if keep is not None:
            self.upload_id = keep["UploadId"]
            self.existing = self.w._parts(self.key, self.upload_id)
            log.info("resuming the upload of %s (%d parts there)", self.key, len(self.existing))
            return
        r = self.w._call("CreateMultipartUpload", self.w._s3.create_multipart_upload,
                         Bucket=self.w.bucket, Key=self.key, Metadata=self.metadata,
                         StorageClass=self.storage_class, ChecksumAlgorithm="CRC64NVME",
                         ChecksumType="FULL_OBJECT")
        self.upload_id = r["UploadId"]

    def _send_part(self, data: bytes) -> None:
        number = len(self.done_parts) + 1
        crc = b64(crc64nvme(data))
        old = self.existing.get(number)
        if old is not None and int(old.get("Size", -1)) == len(data):
            same = old.get("ChecksumCRC64NVME") == crc if old.get("ChecksumCRC64NVME") \
                else old.get("ETag", "").strip('"') == hashlib.md5(data).hexdigest()
            if same:
                self.done_parts.append({"PartNumber": number, "ETag": old["ETag"],
                                        "ChecksumCRC64NVME": crc})
                self.reused += 1
                return
        r = self.w._call("UploadPart", self.w._s3.upload_part, Bucket=self.w.bucket,
                         Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data,
                         ChecksumAlgorithm="CRC64NVME", ChecksumCRC64NVME=crc)
        self.done_parts.append({"PartNumber": number, "ETag": r["ETag"],
                                "ChecksumCRC64NVME": crc})
        self.uploaded += 1

    # -- the caller's side
    def write(self, data: bytes | memoryview) -> None:
        """The next bytes of the archive (already counted into its tree hash by the caller)."""
        self.crc = crc64nvme(data, self.crc)
        self.written += len(data)
        self.buf += data
        if self.multipart:
            if self.upload_id is None:
                self._start()
            while len(self.buf) > self.part:   # the last part is sent by finish()
                chunk = bytes(self.buf[:self.part])
                del self.buf[:self.part]
                self._send_part(chunk)

    def abort(self) -> None:
        """Drop the upload (its bytes were wrong): nothing stays in S3."""
        if self.upload_id is not None:
            self.w.abort(self.key, self.upload_id)
            self.upload_id = None

    def finish(self) -> ObjectInfo:
        """Create the object from the verified bytes; its info as S3 reports it afterwards.
        Raises Occupied if another object got there first (ours is then dropped)."""
        if self.written != self.size:
            raise S3Error(f"{self.written} of {self.size} bytes written")
        crc = b64(self.crc)
        try:
            if not self.multipart:
                self.w._call("PutObject", self.w._s3.put_object, Bucket=self.w.bucket,
                             Key=self.key, Body=bytes(self.buf), Metadata=self.metadata,
                             StorageClass=self.storage_class, ChecksumAlgorithm="CRC64NVME",
                             ChecksumCRC64NVME=crc, IfNoneMatch="*")
            else:
                if self.buf:
                    self._send_part(bytes(self.buf))
                self.buf = bytearray()
                try:
                    self.w._call("CompleteMultipartUpload",
                                 self.w._s3.complete_multipart_upload, Bucket=self.w.bucket,
                                 Key=self.key, UploadId=self.upload_id,
                                 MultipartUpload={"Parts": self.done_parts},
                                 ChecksumCRC64NVME=crc, ChecksumType="FULL_OBJECT",
                                 MpuObjectSize=self.size, IfNoneMatch="*")
                except S3Error as exc:
                    if isinstance(exc, Occupied) or "NoSuchUpload" in str(exc):
                        raise Occupied(str(exc)) from None
                    raise
        except Occupied:
            info = self.w.head(self.key)
            if info is None or not self._is_ours(info, crc):
                self.abort()
                raise
            log.info("%s: a retried request found its own object done", self.key)
        self.upload_id = None
        info = self.w.head(self.key)
        if info is None:
            raise S3Error(f"s3://{self.w.bucket}/{self.key} is not there after the upload")
        if info.size != self.size or (info.checksum is not None and info.checksum != crc):
            raise S3Error(f"s3://{self.w.bucket}/{self.key}: S3 holds {info.size} bytes with "
                          f"CRC64NVME {info.checksum}, we sent {self.size} with {crc}")
        if info.checksum is None:
            log.warning("%s: S3 reports no CRC64NVME for the object", self.key)
        return info

    def _is_ours(self, info: ObjectInfo, crc: str) -> bool:
        return info.size == self.size and info.checksum in (crc, None) and all(
            info.metadata.get(k) == v for k, v in self.metadata.items())
