"""The only module that talks to Amazon S3 Glacier (through boto3).

It owns: the boto3 session and client, retries, the translation of botocore errors into this
project's exception classes, and a count of API calls by operation (shown by ``glacierfs
status`` and the benchmarks).

Threading model: ``GlacierClient`` is blocking and thread-safe (boto3 clients are). The trio
side uses ``AsyncGlacier``, which runs each call in a worker thread behind one
``trio.CapacityLimiter`` so a burst of reads can never open hundreds of connections.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import http.client
import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, TypeVar
from collections.abc import Callable

import boto3
import botocore.config
import botocore.exceptions
import trio

from glacierfs.options import is_loopback_url

log = logging.getLogger(__name__)

# Retries inside botocore cover throttling, 5xx and connection errors before a body arrives;
# body read errors (a connection dropped mid-chunk) are retried by the downloader, which knows
# which range to ask for again.
BOTO_MAX_ATTEMPTS = 6
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60
# InitiateJob costs money and is not idempotent: botocore must not resend it after a lost
# answer (that starts a second paid job). Only refusals (throttling, 5xx answers: nothing was
# started) are retried, here, with botocore's standard backoff.
INITIATE_ATTEMPTS = 6
INITIATE_BACKOFF_CAP = 20.0
LIST_JOBS_PAGE = 50  # ListJobs' maximum page size: fewest calls per polling round
OUR_JOB_PREFIX = "glacierfs"

T = TypeVar("T")


class GlacierError(Exception):
    """An error answer or failure of the Glacier service; ``code`` is Glacier's error code."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status


class NotFound(GlacierError):
    """ResourceNotFoundException: no such vault, archive or job, or job output expired."""


class Throttled(GlacierError):
    pass


class InsufficientCapacity(GlacierError):
    """Expedited retrievals are momentarily unavailable."""


class PolicyEnforced(GlacierError):
    """The account's data retrieval policy refuses the job: retrying cannot help."""


class ServiceUnavailable(GlacierError):
    pass


class Unreachable(GlacierError):
    """No answer from the endpoint (connection refused, DNS, timeouts)."""


class AccessDenied(GlacierError):
    """Credentials missing, unknown or not allowed."""


class InvalidRequest(GlacierError):
    """The service rejected a parameter: a bug or an unsupported archive state."""


_CODE_CLASSES: dict[str, type[GlacierError]] = {
    "ResourceNotFoundException": NotFound,
    "ThrottlingException": Throttled,
    "InsufficientCapacityException": InsufficientCapacity,
    "PolicyEnforcedException": PolicyEnforced,
    "ServiceUnavailableException": ServiceUnavailable,
    "RequestTimeoutException": ServiceUnavailable,
    "AccessDeniedException": AccessDenied,
    "UnrecognizedClientException": AccessDenied,
    "InvalidSignatureException": AccessDenied,
    "ExpiredTokenException": AccessDenied,
    "MissingAuthenticationTokenException": AccessDenied,
    "InvalidParameterValueException": InvalidRequest,
    "MissingParameterValueException": InvalidRequest,
    "LimitExceededException": Throttled,
}


def translate(exc: BaseException) -> GlacierError:
    """Map a botocore/urllib3 exception to a GlacierError subclass (never leaks credentials)."""
    if isinstance(exc, GlacierError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        cls = _CODE_CLASSES.get(code)
        if cls is None and code == str(status):
            # botocore could not parse the error body (a connection cut in the middle of
            # it): an answer we did not get, as transient as a dropped connection.
            return ServiceUnavailable("IncompleteErrorResponse",
                                      f"HTTP {status} with an unreadable error body", status)
        if cls is None:
            cls = ServiceUnavailable if (status or 0) >= 500 else GlacierError
        return cls(code, str(err.get("Message") or ""), status)
    if isinstance(exc, (botocore.exceptions.NoCredentialsError,
                        botocore.exceptions.PartialCredentialsError)):
        return AccessDenied("NoCredentials", "no AWS credentials found (environment, "
                            "~/.aws/credentials, profile= or an instance role)")
    if isinstance(exc, botocore.exceptions.ProfileNotFound):
        return AccessDenied("ProfileNotFound", str(exc))
    if isinstance(exc, (botocore.exceptions.EndpointConnectionError,
                        botocore.exceptions.ConnectTimeoutError,
                        botocore.exceptions.ReadTimeoutError,
                        botocore.exceptions.ConnectionClosedError)):
        return Unreachable("Unreachable", str(exc))
    if isinstance(exc, (botocore.exceptions.IncompleteReadError,
                        botocore.exceptions.ResponseStreamingError,
                        ConnectionError, TimeoutError)):
        return Unreachable("ConnectionDropped", str(exc) or type(exc).__name__)
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return GlacierError(type(exc).__name__, str(exc))
    if isinstance(exc, OSError):
        return Unreachable("ConnectionError", str(exc) or type(exc).__name__)
    raise exc


def parse_date(text: str | None) -> datetime | None:
    """A date from a Glacier answer (``2012-05-15T17:19:46.700Z``), or None if absent or bad."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class ClientSettings:
    region: str
    account_id: str = "-"
    endpoint_url: str | None = None
    profile: str | None = None
    max_connections: int = 16
    sns_topic: str | None = None  # named as SNSTopic on every job started (sns_topic=)


def _quiet_aws_loggers() -> None:
    """botocore's DEBUG output includes request headers; keep it out of our logs entirely."""
    for name in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.WARNING)


class GlacierClient:
    """Blocking Glacier calls used by glacierfs, with errors translated and calls counted."""

    def __init__(self, settings: ClientSettings) -> None:
        _quiet_aws_loggers()
        self.settings = settings
        self.account_id = settings.account_id
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        try:
            session = boto3.session.Session(profile_name=settings.profile,
                                            region_name=settings.region)
            credentials = session.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise translate(exc) from None
        extra: dict[str, Any] = {}
        if credentials is None and is_loopback_url(settings.endpoint_url):
            # A local emulator needs no real credentials; never done for a real endpoint.
            extra = {"aws_access_key_id": "glacierfs-local", "aws_secret_access_key": "unused"}
        config = botocore.config.Config(
            retries={"max_attempts": BOTO_MAX_ATTEMPTS, "mode": "standard"},
            connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
            max_pool_connections=settings.max_connections,
            user_agent_extra="glacierfs",
        )
        self._client = session.client("glacier", endpoint_url=settings.endpoint_url,
                                      config=config, **extra)
        self._initiate_client = session.client(
            "glacier", endpoint_url=settings.endpoint_url,
            config=config.merge(botocore.config.Config(retries={"total_max_attempts": 1,
                                                                "mode": "standard"})),
            **extra)

    def _call(self, operation: str, fn: Callable[..., T], **kwargs: Any) -> T:
        with self._lock:
            self.calls[operation] += 1
        try:
            return fn(accountId=self.account_id, **kwargs)
        except Exception as exc:  # translated; anything unknown is re-raised by translate
            raise translate(exc) from None

    # --- vaults -------------------------------------------------------------------------
    def list_vaults(self) -> list[dict[str, Any]]:
        vaults: list[dict[str, Any]] = []
        marker: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": "1000"}
            if marker:
                kwargs["marker"] = marker
            page = self._call("ListVaults", self._client.list_vaults, **kwargs)
            vaults.extend(page.get("VaultList", []))
            marker = page.get("Marker")
            if not marker:
                return vaults

    def describe_vault(self, vault: str) -> dict[str, Any]:
        return self._call("DescribeVault", self._client.describe_vault, vaultName=vault)

    # --- jobs ---------------------------------------------------------------------------
    def _initiate_job(self, vault: str, params: dict[str, Any]) -> str:
        return str(self._initiate_job_answer(vault, params)["jobId"])

    def _initiate_job_answer(self, vault: str, params: dict[str, Any]) -> dict[str, Any]:
        """InitiateJob, sent once per refusal at most: a lost answer (Unreachable) is raised,
        never resent, because the job may have started; the caller looks for it. Every job
        names the mount's SNS topic, if any, so its completion is announced there."""
        if self.settings.sns_topic:
            params = {**params, "SNSTopic": self.settings.sns_topic}
        for attempt in range(1, INITIATE_ATTEMPTS + 1):
            try:
                return self._call("InitiateJob", self._initiate_client.initiate_job,
                                  vaultName=vault, jobParameters=params)
            except (Throttled, ServiceUnavailable):
                if attempt == INITIATE_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0, min(INITIATE_BACKOFF_CAP, 2.0 ** attempt)))
        raise AssertionError("unreachable")

    def initiate_archive_retrieval(self, vault: str, archive_id: str, tier: str,
                                   description: str, byte_range: str | None = None) -> str:
        params = {"Type": "archive-retrieval", "ArchiveId": archive_id, "Tier": tier,
                  "Description": description[:1024]}
        if byte_range:
            params["RetrievalByteRange"] = byte_range
        return self._initiate_job(vault, params)

    def initiate_inventory_retrieval(self, vault: str, fmt: str = "JSON") -> str:
        params = {"Type": "inventory-retrieval", "Format": fmt,
                  "Description": f"{OUR_JOB_PREFIX} inventory"}
        return self._initiate_job(vault, params)

    def initiate_select(self, vault: str, archive_id: str, tier: str,
                        select_parameters: dict[str, Any], output_location: dict[str, Any],
                        description: str) -> tuple[str, str | None]:
        """A select job; returns (job id, x-amz-job-output-path)."""
        params = {"Type": "select", "ArchiveId": archive_id, "Tier": tier,
                  "Description": description[:1024], "SelectParameters": select_parameters,
                  "OutputLocation": output_location}
        out = self._initiate_job_answer(vault, params)
        return str(out["jobId"]), out.get("jobOutputPath")

    def describe_job(self, vault: str, job_id: str) -> dict[str, Any]:
        return self._call("DescribeJob", self._client.describe_job, vaultName=vault, jobId=job_id)

    def list_jobs(self, vault: str, completed: bool | None = None,
                  statuscode: str | None = None) -> list[dict[str, Any]]:
        """Every job of the vault (all pages), newest information from the service."""
        jobs: list[dict[str, Any]] = []
        marker: str | None = None
        while True:
            kwargs: dict[str, Any] = {"vaultName": vault, "limit": str(LIST_JOBS_PAGE)}
            if completed is not None:
                kwargs["completed"] = "true" if completed else "false"
            if statuscode:
                kwargs["statuscode"] = statuscode
            if marker:
                kwargs["marker"] = marker
            page = self._call("ListJobs", self._client.list_jobs, **kwargs)
            jobs.extend(page.get("JobList", []))
            marker = page.get("Marker")
            if not marker:
                return jobs

    def get_job_output_range(self, vault: str, job_id: str, start: int,
                             end: int) -> tuple[bytes, str | None]:
        """Bytes ``start..end`` (inclusive) of a job's output and Glacier's tree hash of them
        (present when the range is tree-hash aligned). A dropped body raises Unreachable."""
        out = self._call("GetJobOutput", self._client.get_job_output, vaultName=vault,
                         jobId=job_id, range=f"bytes={start}-{end}")
        body = out["body"]
        try:
            data = body.read()
        except Exception as exc:
            raise translate(exc) from None
        finally:
            body.close()
        expected = end - start + 1
        if len(data) != expected:
            raise Unreachable("ShortBody", f"got {len(data)} of {expected} bytes")
        return data, out.get("checksum")

    def open_job_output(self, vault: str, job_id: str, start: int, end: int) -> JobOutputStream:
        """Start GetJobOutput for bytes ``start..end`` (inclusive; relative to the job's output)
        and return its body as a stream to ``readinto`` preallocated buffers. An endpoint that
        ignores Range answers 200 with the whole output: the stream says so (``whole``)."""
        out = self._call("GetJobOutput", self._client.get_job_output, vaultName=vault,
                         jobId=job_id, range=f"bytes={start}-{end}")
        return JobOutputStream(out, end - start + 1)

    def download_job_output(self, vault: str, job_id: str, dest: BinaryIO,
                            block: int = 1024 * 1024) -> dict[str, Any]:
        """Stream a whole job output (an inventory) into ``dest``; returns the response
        metadata (contentType, checksum). Errors reading the body are the network's
        (GlacierError); errors writing ``dest`` are the local disk's and stay OSError."""
        out = self._call("GetJobOutput", self._client.get_job_output, vaultName=vault,
                         jobId=job_id)
        body = out["body"]
        try:
            while True:
                try:
                    piece = body.read(block)
                except Exception as exc:
                    raise translate(exc) from None
                if not piece:
                    break
                dest.write(piece)
        finally:
            body.close()
        return {"contentType": out.get("contentType"), "checksum": out.get("checksum")}


class JobOutputStream:
    """The body of one GetJobOutput answer, read with ``readinto`` straight off the socket.

    ``checksum`` is the ``x-amz-sha256-tree-hash`` header (None when the endpoint sent none),
    ``length`` the body's length, ``whole`` True when a ranged request got the whole output
    back (200 and another length than asked). Not thread-safe: one reader.
    """

    def __init__(self, out: dict[str, Any], wanted: int) -> None:
        self.checksum: str | None = out.get("checksum")
        self._body = out["body"]
        status = out.get("ResponseMetadata", {}).get("HTTPStatusCode") or out.get("status")
        headers = out.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        try:
            self.length = int(headers.get("content-length", wanted))
        except ValueError:
            self.length = wanted
        self.whole = status == 200 and self.length != wanted
        self.received = 0
        raw = getattr(self._body, "_raw_stream", None)
        # urllib3 2's readinto reads into a temporary and copies; the http.client response
        # under it reads into the caller's buffer directly (one copy fewer per byte).
        self._raw = raw
        fp = getattr(raw, "_fp", None)
        self._readinto = fp.readinto if hasattr(fp, "readinto") else self._body.readinto

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` completely (or to the end of the body); returns the bytes read.
        A body that ends early or a dropped connection raise Unreachable."""
        got = 0
        want = min(len(view), self.length - self.received)
        while got < want:
            try:
                n = self._readinto(view[got:want])
            except Exception as exc:
                raise _stream_error(exc) from None
            if not n:
                raise Unreachable("ShortBody", f"body ended after {self.received + got} of "
                                               f"{self.length} bytes")
            got += n
        self.received += got
        return got

    def close(self) -> None:
        """Give the connection back to the pool when the body was read whole, else drop it."""
        try:
            if self.received == self.length and self._raw is not None and \
                    getattr(self._raw, "_fp", None) is not None:
                with contextlib.suppress(Exception):
                    self._raw.release_conn()
            self._body.close()
        except Exception:  # closing a dead connection: nothing left to do
            log.debug("closing a job output body failed", exc_info=True)


def _stream_error(exc: BaseException) -> GlacierError:
    if isinstance(exc, http.client.HTTPException):  # IncompleteRead and friends: a cut body
        return Unreachable("ConnectionDropped", str(exc) or type(exc).__name__)
    try:
        return translate(exc)
    except Exception:
        return Unreachable("ConnectionDropped", str(exc) or type(exc).__name__)


class AsyncGlacier:
    """trio facade: each call runs in a thread, at most ``limit`` at once."""

    def __init__(self, client: GlacierClient, limit: int = 8) -> None:
        self.client = client
        self.limiter = trio.CapacityLimiter(limit)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                             limiter=self.limiter, abandon_on_cancel=True)

    async def list_vaults(self) -> list[dict[str, Any]]:
        return await self.run(self.client.list_vaults)

    async def describe_vault(self, vault: str) -> dict[str, Any]:
        return await self.run(self.client.describe_vault, vault)

    async def initiate_archive_retrieval(self, vault: str, archive_id: str, tier: str,
                                         description: str, byte_range: str | None = None) -> str:
        return await self.run(self.client.initiate_archive_retrieval, vault, archive_id, tier,
                              description, byte_range)

    async def initiate_inventory_retrieval(self, vault: str, fmt: str = "JSON") -> str:
        return await self.run(self.client.initiate_inventory_retrieval, vault, fmt)

    async def initiate_select(self, vault: str, archive_id: str, tier: str,
                              select_parameters: dict[str, Any],
                              output_location: dict[str, Any],
                              description: str) -> tuple[str, str | None]:
        return await self.run(self.client.initiate_select, vault, archive_id, tier,
                              select_parameters, output_location, description)

    async def describe_job(self, vault: str, job_id: str) -> dict[str, Any]:
        return await self.run(self.client.describe_job, vault, job_id)

    async def list_jobs(self, vault: str, completed: bool | None = None,
                        statuscode: str | None = None) -> list[dict[str, Any]]:
        return await self.run(self.client.list_jobs, vault, completed, statuscode)

    async def get_job_output_range(self, vault: str, job_id: str, start: int,
                                   end: int) -> tuple[bytes, str | None]:
        return await self.run(self.client.get_job_output_range, vault, job_id, start, end)
