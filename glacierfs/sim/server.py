"""HTTP plumbing: routes Glacier REST paths to operation handlers and writes their answers.

``ThreadingHTTPServer`` with HTTP/1.1 keep-alive, one thread per connection, so several clients
download at once. Job output goes out with ``sendfile`` (zero copy, the kernel moves the bytes)
unless a fault needs to touch them; with ``--bandwidth``/``--bandwidth-total`` it goes out in
blocks paced by a token bucket per connection (one handler instance is one connection) and one
for the whole server. Every failure becomes Glacier's JSON error; an unexpected
exception is logged and answered 500, never a traceback on the wire.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from urllib.parse import parse_qsl, unquote, urlsplit

from glacierfs.sim import (archives, control, ids, jobapi, notifications, policies, tags,
                           vaults)
from glacierfs.sim.bandwidth import TokenBucket
from glacierfs.sim.context import Sim
from glacierfs.sim.errors import GlacierError
from glacierfs.sim.faults import error_for
from glacierfs.sim.messages import Request, Response, json_response

log = logging.getLogger(__name__)

# Draining a body we will not use keeps the keep-alive connection in sync; beyond this much we
# close the connection instead of reading gigabytes for nothing.
MAX_DRAIN = 64 * 1024 * 1024
DRAIN_BLOCK = 1024 * 1024
AUTH_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
PRE_FAULTS = ("throttle", "error500", "error503")

_SEG = r"([^/]+)"
Route = tuple[str, "re.Pattern[str]", str, Callable[..., Response] | None]
_ROUTES_SPEC: list[tuple[str, str, str, Callable[..., Response] | None]] = [
    ("GET", r"/{a}/vaults", "ListVaults", vaults.list_vaults),
    ("PUT", r"/{a}/vaults/{v}", "CreateVault", vaults.create_vault),
    ("GET", r"/{a}/vaults/{v}", "DescribeVault", vaults.describe_vault),
    ("DELETE", r"/{a}/vaults/{v}", "DeleteVault", vaults.delete_vault),
    ("POST", r"/{a}/vaults/{v}/archives", "UploadArchive", archives.upload_archive),
    ("DELETE", r"/{a}/vaults/{v}/archives/{x}", "DeleteArchive", archives.delete_archive),
    ("POST", r"/{a}/vaults/{v}/multipart-uploads", "InitiateMultipartUpload",
     archives.initiate_multipart),
    ("GET", r"/{a}/vaults/{v}/multipart-uploads", "ListMultipartUploads",
     archives.list_multipart_uploads),
    ("PUT", r"/{a}/vaults/{v}/multipart-uploads/{x}", "UploadMultipartPart",
     archives.upload_part),
    ("POST", r"/{a}/vaults/{v}/multipart-uploads/{x}", "CompleteMultipartUpload",
     archives.complete_multipart),
    ("DELETE", r"/{a}/vaults/{v}/multipart-uploads/{x}", "AbortMultipartUpload",
     archives.abort_multipart),
    ("GET", r"/{a}/vaults/{v}/multipart-uploads/{x}", "ListParts", archives.list_parts),
    ("POST", r"/{a}/vaults/{v}/jobs", "InitiateJob", jobapi.initiate_job),
    ("GET", r"/{a}/vaults/{v}/jobs", "ListJobs", jobapi.list_jobs),
    ("GET", r"/{a}/vaults/{v}/jobs/{x}", "DescribeJob", jobapi.describe_job),
    ("GET", r"/{a}/vaults/{v}/jobs/{x}/output", "GetJobOutput", jobapi.get_job_output),
    ("GET", r"/{a}/vaults/{v}/tags", "ListTagsForVault", tags.list_tags),
    ("POST", r"/{a}/vaults/{v}/tags", "AddTagsToVault", tags.post_tags),  # or Remove… (query)
    ("PUT", r"/{a}/vaults/{v}/notification-configuration", "SetVaultNotifications",
     notifications.set_vault_notifications),
    ("GET", r"/{a}/vaults/{v}/notification-configuration", "GetVaultNotifications",
     notifications.get_vault_notifications),
    ("DELETE", r"/{a}/vaults/{v}/notification-configuration", "DeleteVaultNotifications",
     notifications.delete_vault_notifications),
    ("PUT", r"/{a}/vaults/{v}/access-policy", "SetVaultAccessPolicy",
     policies.set_access_policy),
    ("GET", r"/{a}/vaults/{v}/access-policy", "GetVaultAccessPolicy",
     policies.get_access_policy),
    ("DELETE", r"/{a}/vaults/{v}/access-policy", "DeleteVaultAccessPolicy",
     policies.delete_access_policy),
    # Documented operations the emulator does not model: named, counted, answered clearly.
    ("POST", r"/{a}/vaults/{v}/lock-policy", "InitiateVaultLock", None),
    ("GET", r"/{a}/vaults/{v}/lock-policy", "GetVaultLock", None),
    ("DELETE", r"/{a}/vaults/{v}/lock-policy", "AbortVaultLock", None),
    ("POST", r"/{a}/vaults/{v}/lock-policy/{x}", "CompleteVaultLock", None),
    ("GET", r"/{a}/policies/data-retrieval", "GetDataRetrievalPolicy", None),
    ("PUT", r"/{a}/policies/data-retrieval", "SetDataRetrievalPolicy", None),
    ("GET", r"/{a}/provisioned-capacity", "ListProvisionedCapacity", None),
    ("POST", r"/{a}/provisioned-capacity", "PurchaseProvisionedCapacity", None),
]
ROUTES: list[Route] = [
    (method, re.compile("^" + p.format(a=_SEG, v=_SEG, x=_SEG) + "$"), name, fn)
    for method, p, name, fn in _ROUTES_SPEC
]


def route(method: str, path: str) -> tuple[str, Callable[..., Response] | None, list[str]]:
    for m, pattern, name, fn in ROUTES:
        if m != method:
            continue
        match = pattern.match(path)
        if match:
            return name, fn, [unquote(g) for g in match.groups()]
    raise GlacierError(400, "UnknownOperationException",
                       f"No Glacier operation matches {method} {path}")


class SimServer(ThreadingHTTPServer):
    daemon_threads = True  # open keep-alive connections must not block shutdown
    allow_reuse_address = True  # a restart binds the same port at once

    def __init__(self, address: tuple[str, int], sim: Sim) -> None:
        super().__init__(address, SimHandler)
        self.sim = sim
        total = sim.config.bandwidth_total
        self.total_bucket = TokenBucket(total) if total else None


class SimHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "glacierfs-sim"
    disable_nagle_algorithm = True  # small answers must not wait for a delayed ACK
    server: SimServer
    _bucket: TokenBucket | None = None  # this connection's job-output cap, made on first use

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    # --- request ----------------------------------------------------------------------------
    def _handle(self) -> None:
        sim = self.server.sim
        started = time.monotonic()
        split = urlsplit(self.path)
        length = self.headers.get("Content-Length")
        try:
            content_length = int(length) if length is not None else None
        except ValueError:
            content_length = None
        req = Request(method=self.command, path=split.path,
                      query=dict(parse_qsl(split.query, keep_blank_values=True)),
                      headers=self.headers, rfile=self.rfile, content_length=content_length)
        operation = "Control"
        vault = None
        try:
            if split.path.startswith("/_sim/"):
                resp = control.handle(sim, req)
            else:
                operation = "Unknown"
                operation, fn, params = route(self.command, split.path)
                if operation == "AddTagsToVault":  # POST tags: the query names the operation
                    operation = tags.POST_OPERATIONS.get(req.query.get("operation") or "add",
                                                         operation)
                vault = params[1] if len(params) > 1 else None
                sim.stats.count(operation)
                resp = self._glacier(sim, req, operation, fn, params, vault)
        except GlacierError as exc:
            resp = json_response(exc.status, exc.body())
        except Exception:
            log.exception("internal error in %s %s", self.command, self.path)
            err = GlacierError(500, "ServiceUnavailableException", "Internal emulator error")
            resp = json_response(500, err.body())
        self._drain(req)
        if operation != "Control":
            resp.headers.setdefault("x-amzn-RequestId", ids.request_id())
        self._write(sim, req, operation, vault, resp)
        log.info("%s %s -> %d (%s, %.3fs)", self.command, split.path, resp.status, operation,
                 time.monotonic() - started)

    def _glacier(self, sim: Sim, req: Request, operation: str,
                 fn: Callable[..., Response] | None, params: list[str],
                 vault: str | None) -> Response:
        self._check_auth(sim)
        sim.check_account(params[0])
        slow = sim.faults.draw(operation, vault, {"slow"})
        if slow:
            time.sleep(slow.delay)
        rule = sim.faults.draw(operation, vault, PRE_FAULTS)
        if rule:
            raise error_for(rule)
        if fn is None:
            raise GlacierError(400, "InvalidParameterValueException",
                               f"{operation} is not supported by the glacierfs emulator")
        return fn(sim, req, *params)

    def _check_auth(self, sim: Sim) -> None:
        """Signatures are not verified; with --access-key-id the key id must match."""
        expected = sim.config.access_key_id
        if expected is None:
            return
        auth = self.headers.get("Authorization")
        if not auth:
            raise GlacierError(403, "MissingAuthenticationTokenException",
                               "Missing Authentication Token")
        match = AUTH_CREDENTIAL.search(auth)
        if not match or match.group(1) != expected:
            raise GlacierError(403, "UnrecognizedClientException",
                               "The security token included in the request is invalid.")

    def _drain(self, req: Request) -> None:
        """Consume what the handler left of the request body (errors skip it)."""
        left = req.remaining
        if left > MAX_DRAIN:
            self.close_connection = True
            return
        while left > 0:
            data = self.rfile.read(min(DRAIN_BLOCK, left))
            if not data:
                self.close_connection = True
                break
            left -= len(data)
        req.consumed = req.content_length or 0

    # --- response ---------------------------------------------------------------------------
    def _write(self, sim: Sim, req: Request, operation: str, vault: str | None,
               resp: Response) -> None:
        drop = corrupt = None
        if operation not in ("Control", "Unknown"):
            drop = sim.faults.draw(operation, vault, {"drop"})
            if resp.stream is not None and resp.length and resp.status < 300:
                corrupt = sim.faults.draw(operation, vault, {"corrupt"})
        length = resp.length
        try:
            if drop and length == 0:
                self.close_connection = True  # nothing to cut: vanish before answering
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.send_response(resp.status)
            for name, value in resp.headers.items():
                self.send_header(name, value)
            if resp.status != 204:
                self.send_header("Content-Length", str(length))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            limit = max(1, length // 2) if drop else length
            buckets = self._buckets(sim) if operation == "GetJobOutput" else []
            sent = self._send_body(sim, resp, limit, corrupt is not None, buckets)
            if operation != "Control":
                sim.stats.sent(sent)
            if drop:
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _buckets(self, sim: Sim) -> list[TokenBucket]:
        """The token buckets a job-output body on this connection must draw from."""
        out = []
        if sim.config.bandwidth:
            if self._bucket is None:
                self._bucket = TokenBucket(sim.config.bandwidth)
            out.append(self._bucket)
        if self.server.total_bucket is not None:
            out.append(self.server.total_bucket)
        return out

    def _send_body(self, sim: Sim, resp: Response, limit: int, corrupt: bool,
                   buckets: list[TokenBucket]) -> int:
        if resp.stream is None:
            body_bytes = resp.body[:limit]
            if buckets:
                return self._paced_write(memoryview(body_bytes), buckets)
            self.wfile.write(body_bytes)
            return len(body_bytes)
        body, start = resp.stream, resp.stream_start
        step = min(b.block_size() for b in buckets) if buckets else None
        if body.path is not None and not corrupt:
            with open(body.path, "rb") as f:
                sent = 0
                while sent < limit:
                    count = limit - sent if step is None else min(step, limit - sent)
                    for bucket in buckets:
                        bucket.take(count)
                    n = self.connection.sendfile(f, body.offset + start + sent, count)
                    if not n:
                        raise BrokenPipeError("sendfile sent nothing")
                    sent += n
            return sent
        flips = sim.faults.sample_positions(limit, 3) if corrupt else []
        position = 0
        for block in body.blocks(start, limit, **({"block": step} if step else {})):
            end = position + len(block)
            hits = [p - position for p in flips if position <= p < end]
            if hits:
                data = bytearray(block)
                for h in hits:
                    data[h] ^= 0xFF
                block = memoryview(data)
            for bucket in buckets:
                bucket.take(len(block))
            self.wfile.write(block)
            position = end
        return position

    def _paced_write(self, data: memoryview, buckets: list[TokenBucket]) -> int:
        step = min(b.block_size() for b in buckets)
        for i in range(0, len(data), step):
            piece = data[i:i + step]
            for bucket in buckets:
                bucket.take(len(piece))
            self.wfile.write(piece)
        return len(data)

