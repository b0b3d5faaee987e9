"""Helpers for the reliability tests: archives in the emulator, the retrieval core built over
them in-process (as ``glacierfs.mount`` wires it, minus FUSE), real mounts in a subprocess, and
the tally of faults, retries and verified bytes that the summary prints.

Core-level tests drive ``Retrieval``/``Downloader`` with a real ``GlacierClient`` talking HTTP
to the emulator: every fault crosses boto3 and the wire exactly as in production. Mount-level
tests are kept for what only the kernel shows (errno, xattrs, kill -9, process names).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from glacierfs import treehash
from glacierfs.aws import glacier
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.jobs.jobstore import JobStore
from glacierfs.catalog.namespace import Entry, Namespace, ingest_inventory
from glacierfs.options import MountOptions
from glacierfs.jobs.retrieval import Retrieval
from glacierfs.sim.testing import SimProcess, aws_env
from mount_support import daemon_pids
from mount_support import wait_for as poll_until  # noqa: F401  (used by the suite)

MIB = 1024 * 1024
REGION = "us-east-1"
ACCOUNT = "123456789012"
MOUNT_TIMEOUT = 60.0

# --- the tally printed at the end of the run -------------------------------------------------

TALLY_FILE = Path(os.environ.get("GLACIERFS_RELIABILITY_TALLY", "/tmp/glacierfs-reliability-tally.json"))
TALLY: dict[str, int] = {"faults_injected": 0, "retries": 0, "bytes_verified": 0,
                         "bad_bytes_served": 0, "duplicate_jobs": 0, "bytes_compared": 0}


def count(**amounts: int) -> None:
    for key, value in amounts.items():
        TALLY[key] = TALLY.get(key, 0) + int(value)


def count_faults(sim: SimProcess) -> int:
    """Add the firings of the emulator's current fault rules to the tally (call before
    replacing or clearing the rules); returns how many fired."""
    fired = sum(int(rule.get("fired") or 0) for rule in sim.control("GET", "faults"))
    count(faults_injected=fired)
    return fired


def compare(got: bytes, expected: bytes, offset: int = 0) -> None:
    """Count bytes served and bytes that differ from the archive (must stay 0)."""
    want = expected[offset:offset + len(got)]
    bad = sum(1 for a, b in zip(got, want, strict=False) if a != b) + max(0, len(got) - len(want))
    count(bytes_compared=len(got), bad_bytes_served=bad)
    assert bad == 0, f"{bad} wrong bytes served at offset {offset}"


def count_duplicate_jobs(client: Any, vault: str) -> int:
    """Archives with more than one live (not Failed) retrieval job in the emulator's ListJobs."""
    per_archive: dict[str, int] = {}
    marker = None
    while True:
        kwargs = {"vaultName": vault, **({"marker": marker} if marker else {})}
        page = client.list_jobs(**kwargs)
        for job in page["JobList"]:
            if job["Action"] == "ArchiveRetrieval" and job["StatusCode"] != "Failed":
                per_archive[job["ArchiveId"]] = per_archive.get(job["ArchiveId"], 0) + 1
        marker = page.get("Marker")
        if not marker:
            break
    dups = sum(n - 1 for n in per_archive.values() if n > 1)
    count(duplicate_jobs=dups)
    return dups


def archive_jobs(client: Any, vault: str, archive_id: str) -> list[dict[str, Any]]:
    jobs = client.list_jobs(vaultName=vault)["JobList"]
    return [j for j in jobs if j.get("ArchiveId") == archive_id]


# --- archives ----------------------------------------------------------------------------------

@dataclass
class Archive:
    archive_id: str
    data: bytes
    description: str
    tree_hash: str = ""
    entry: Entry | None = None

    @property
    def size(self) -> int:
        return len(self.data)


def payload(size: int, seed: int) -> bytes:
    """Deterministic, incompressible-looking bytes (fast for tens of MiB)."""
    out = bytearray()
    block = hashlib.sha512(f"glacierfs-{seed}".encode()).digest()
    while len(out) < size:
        block = hashlib.sha512(block).digest()
        out += block * 64
    return bytes(out[:size])


def upload(sim_client: Any, vault: str, size: int, seed: int, description: str) -> Archive:
    data = payload(size, seed)
    out = sim_client.upload_archive(vaultName=vault, body=data, archiveDescription=description)
    return Archive(out["archiveId"], data, description, treehash.tree_hash(data).hex())


def inventory_document(vault: str, rows: list[dict[str, Any]]) -> bytes:
    return json.dumps({"VaultARN": f"arn:aws:glacier:{REGION}:{ACCOUNT}:vaults/{vault}",
                       "InventoryDate": "2024-01-02T03:04:05Z",
                       "ArchiveList": rows}).encode()


def archive_row(a: Archive) -> dict[str, Any]:
    return {"ArchiveId": a.archive_id, "ArchiveDescription": a.description,
            "CreationDate": "2024-01-01T00:00:00Z", "Size": a.size, "SHA256TreeHash": a.tree_hash}


def seed_state(state_dir: Path, vault: str, archives: list[Archive],
               document: bytes | None = None) -> None:
    """Write the vault list and an inventory into a state dir, as a finished inventory job
    would (a mount of it needs no inventory job)."""
    from glacierfs.store import Store, prepare_state_dir
    prepare_state_dir(state_dir)
    store = Store(state_dir)
    try:
        ns = Namespace(store)
        ns.set_vaults([(vault, f"arn:aws:glacier:{REGION}:{ACCOUNT}:vaults/{vault}")])
        doc = document if document is not None else \
            inventory_document(vault, [archive_row(a) for a in archives])
        ingest_inventory(store, vault, io.BytesIO(doc), "JSON", "seeded-inventory")
        for a in archives:
            a.entry = ns.file_by_archive(a.archive_id)
    finally:
        store.close()


# --- the core, in-process -----------------------------------------------------------------------

def options(sim: SimProcess, cache_dir: Path, **changes: Any) -> MountOptions:
    values: dict[str, Any] = {"region": REGION, "endpoint_url": sim.url, "cache_dir": cache_dir,
                              "chunk_size": MIB, "poll": 0.3, "tier": "Standard"}
    values.update(changes)
    return MountOptions(**values)


@dataclass
class Core:
    options: MountOptions
    retrieval: Retrieval
    namespace: Namespace
    client: glacier.GlacierClient
    cache: ChunkCache
    archives: list[Archive] = field(default_factory=list)

    @property
    def stats(self) -> dict[str, int]:
        return self.retrieval.downloader.stats

    def entry(self, a: Archive) -> Entry:
        entry = self.namespace.file_by_archive(a.archive_id)
        assert entry is not None
        return entry

    async def read_when_ready(self, a: Archive, offset: int = 0, size: int | None = None,
                              timeout: float = 60.0, may_start: bool = True) -> bytes:
        """Read like a patient user: retry "not ready" until the bytes come (or ``timeout``)."""
        from glacierfs.jobs.retrieval import NotReady
        size = a.size - offset if size is None else size
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.retrieval.read(self.entry(a), offset, size, may_start)
                except NotReady:
                    await trio.sleep(0.1)
                    continue
                compare(data, a.data, offset)
                return data

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0,
                       what: str = "condition") -> None:
        deadline = trio.current_time() + timeout
        while not predicate():
            if trio.current_time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await trio.sleep(0.05)


@contextlib.asynccontextmanager
async def core(opts: MountOptions, vault: str, archives: list[Archive],
               seed: bool = True) -> AsyncIterator[Core]:
    """Retrieval + Downloader + cache + namespace over a state dir, running in a nursery."""
    from glacierfs.store import Store
    state_dir = opts.state_dir
    if seed:
        seed_state(state_dir, vault, archives)
    store = Store(state_dir)
    ns = Namespace(store)
    client = glacier.GlacierClient(glacier.ClientSettings(region=REGION,
                                                          endpoint_url=opts.endpoint_url))
    aclient = glacier.AsyncGlacier(client, limit=8)
    cache = ChunkCache(state_dir / "chunks", opts.cache_size)
    retrieval = Retrieval(JobStore(store), aclient, cache, opts, ns)
    c = Core(opts, retrieval, ns, client, cache, archives)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(retrieval.run)
            try:
                yield c
            finally:
                count(retries=c.stats["retries"], bytes_verified=c.stats["bytes_verified"])
                nursery.cancel_scope.cancel()
    finally:
        cache.close()
        store.close()


def unverified_files(cache_dir: Path, archives: list[Archive], chunk_size: int = MIB) -> list[str]:
    """Chunks the cache's index lists as readable whose bytes in their archive file are not
    exactly some archive's bytes (found by content: every stored chunk must equal some chunk of
    some archive). Also any value file of the previous layout, checked the same way."""
    import sqlite3

    from glacierfs.cache.layout import archive_file, parse_key

    good: set[bytes] = set()
    for a in archives:
        for start in range(0, max(a.size, 1), chunk_size):
            good.add(hashlib.sha256(a.data[start:start + chunk_size]).digest())
    bad = []
    db = Path(cache_dir) / "cache.db"
    rows = []
    if db.exists():
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT key, size FROM Cache WHERE raw = 1 AND filename IS NULL")\
                .fetchall()
        finally:
            con.close()
    for key, size in rows:
        archive_id, grid, index, held = parse_key(key)
        if held:
            continue  # never readable until the whole archive checks out
        path = Path(cache_dir) / archive_file(archive_id, grid)
        try:
            with open(path, "rb") as f:
                f.seek(index * grid)
                data = f.read(size)
        except FileNotFoundError:
            data = b""
        if hashlib.sha256(data).digest() not in good:
            bad.append(f"{key} in {path}")
    for path in Path(cache_dir).rglob("*.val"):
        if hashlib.sha256(path.read_bytes()).digest() not in good:
            bad.append(str(path))
    return bad


# --- mounts in a subprocess ------------------------------------------------------------------

def mount_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = aws_env()
    env["LC_ALL"] = "C.UTF-8"
    env.update(extra or {})
    return env


def is_mounted(mountpoint: Path) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == str(mountpoint) for line in f if len(line.split()) > 1)


class Mount:
    """``python -m glacierfs.cli us-east-1 MNT -o ...`` (daemon mode), always torn down."""

    def __init__(self, mountpoint: Path, option_string: str,
                 env: dict[str, str] | None = None) -> None:
        self.mountpoint = mountpoint
        self.option_string = option_string
        self.env = env or mount_env()
        self.pids: list[int] = []

    def start(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "glacierfs.cli", REGION,
                               str(self.mountpoint), "-o", self.option_string],
                              capture_output=True, text=True, env=self.env,
                              timeout=MOUNT_TIMEOUT)
        if check:
            assert proc.returncode == 0, f"mount failed: {proc.stderr}"
            self.pids = daemon_pids(self.mountpoint)
        return proc

    def kill9(self) -> None:
        for pid in daemon_pids(self.mountpoint):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while daemon_pids(self.mountpoint) and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
        if is_mounted(self.mountpoint):
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)

    def stop(self) -> None:
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
        if is_mounted(self.mountpoint):
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        deadline = time.monotonic() + 15
        while daemon_pids(self.mountpoint) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in daemon_pids(self.mountpoint):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def mounted(mountpoint: Path, option_string: str,
            env: dict[str, str] | None = None) -> Iterator[Mount]:
    m = Mount(mountpoint, option_string, env)
    m.start()
    try:
        yield m
    finally:
        m.stop()


def mount_options(sim: SimProcess, cache_dir: Path, **extra: str) -> str:
    values = {"endpoint_url": sim.url, "cache_dir": str(cache_dir), "poll": "0.5",
              "chunk_size": "1M"}
    values.update(extra)
    return ",".join(k if v == "" else f"{k}={v}" for k, v in values.items())


def xattr(path: Path | str, name: str) -> str | None:
    try:
        return os.getxattr(path, name).decode("utf-8")
    except OSError:
        return None


def read_errno(path: Path | str) -> int | None:
    """The errno of reading a file (None when it reads whole), through plain read(2) calls."""
    try:
        read_all(path)
    except OSError as exc:
        return exc.errno
    return None


def read_all(path: Path | str, offset: int = 0, length: int | None = None) -> bytes:
    """The bytes of a file through plain read(2) calls; raises OSError with the errno."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = []
        left = length
        pos = offset
        while left is None or left > 0:
            piece = os.pread(fd, 1 << 20 if left is None else min(left, 1 << 20), pos)
            if not piece:
                break
            parts.append(piece)
            pos += len(piece)
            if left is not None:
                left -= len(piece)
        return b"".join(parts)
    finally:
        os.close(fd)


def fuse_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount FUSE"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not on PATH"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse: {exc.strerror}"
    return None

