"""Helpers for the end-to-end tests: running tools, reading xattrs, polling, and mounts of
glacierfs (daemon mode, cleaned up with escalation so no mount or process is left behind)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from glacierfs.sim.testing import SimProcess
from mount_support import daemon_pids, wait_for

MIB = 1024 * 1024
TOOLS = ("fusermount3", "getfattr", "setfattr", "rsync", "dd", "find", "stat", "cat", "cp",
         "ls")
MOUNT_TIMEOUT = 60.0         # seconds for the daemon to report the mount live
EXIT_TIMEOUT = 20.0          # seconds for the daemon to exit after unmount
# Log lines that mean the daemon hit a bug: an exception escaped into the error boundary.
BAD_LOG = re.compile(r"Traceback|internal error|glacierfs stopped")
# Tools print strerror texts; pin the language so tests can match them.
TOOL_ENV = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "QUOTING_STYLE": "literal",
            "TZ": "UTC"}
NOT_READY_TEXT = "Object is remote"  # EREMOTE: retrieval requested or running
EROFS_TEXT = "Read-only file system"


def fuse_unavailable() -> str | None:
    """Why end-to-end tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "end-to-end tests mount FUSE filesystems and need root"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"tools not on PATH: {', '.join(missing)}"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror}"
    os.close(fd)
    return None


# --- running tools ---------------------------------------------------------------------------

def run(*args: str | os.PathLike[str], timeout: float = 60.0,
        input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a tool; stdout stays bytes, stderr is decoded. Never raises on a non-zero exit."""
    proc = subprocess.run([os.fspath(a) for a in args], capture_output=True, timeout=timeout,
                          env=TOOL_ENV, input=input)
    proc.stderr = proc.stderr.decode("utf-8", "replace")  # type: ignore[assignment]
    return proc


def ok(*args: str | os.PathLike[str], timeout: float = 60.0) -> bytes:
    """Run a tool that must succeed; returns its stdout."""
    proc = run(*args, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} -> {proc.returncode}: {proc.stderr}"
    return proc.stdout


def text(*args: str | os.PathLike[str], timeout: float = 60.0) -> str:
    return ok(*args, timeout=timeout).decode("utf-8")


def _unescape_getfattr(value: str) -> str:
    """getfattr's text encoding: ``\\"``, ``\\\\`` and ``\\NNN`` (octal) escapes."""
    out = bytearray()
    i = 0
    raw = value.encode("utf-8")
    while i < len(raw):
        c = raw[i]
        if c == 0x5C and i + 1 < len(raw):
            nxt = raw[i + 1:i + 4]
            if re.fullmatch(rb"[0-7]{3}", nxt):
                out.append(int(nxt, 8))
                i += 4
                continue
            out.append(raw[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return out.decode("utf-8")


def getfattr_all(path: str | os.PathLike[str]) -> dict[str, str]:
    """``getfattr -d -m user.glacier PATH`` parsed into {name: value}."""
    out = text("getfattr", "-d", "-e", "text", "-m", "user.glacier", "--absolute-names", path)
    values = {}
    for line in out.splitlines():
        m = re.fullmatch(r'(user\.glacier\.[^=]+)="(.*)"', line)
        if m:
            values[m.group(1)] = _unescape_getfattr(m.group(2))
    return values


def getfattr_one(path: str | os.PathLike[str], name: str) -> str | None:
    """One attribute's value via ``getfattr --only-values``; None when it is absent."""
    proc = run("getfattr", "--only-values", "--absolute-names", "-n", name, path)
    if proc.returncode != 0:
        assert "No such attribute" in proc.stderr, proc.stderr
        return None
    return proc.stdout.decode("utf-8")


def listing(path: str | os.PathLike[str]) -> set[str]:
    """Names ``ls -A`` shows in a directory."""
    return set(text("ls", "-A", path).splitlines())


def wait_listed(path: Path, names: set[str], timeout: float = 30.0) -> set[str]:
    """Wait until a directory (typically a vault whose inventory is running) shows ``names``."""
    return wait_for(lambda: names <= listing(path) and listing(path), timeout,
                    f"{path} to list {sorted(names)}")  # type: ignore[return-value]


def read_when_ready(path: Path, timeout: float = 30.0) -> bytes:
    """``cat`` a file until it succeeds; every failure on the way must be EREMOTE ("not ready")."""
    deadline = time.monotonic() + timeout
    while True:
        proc = run("cat", path)
        if proc.returncode == 0:
            return proc.stdout
        assert NOT_READY_TEXT in proc.stderr, proc.stderr
        if time.monotonic() > deadline:
            pytest.fail(f"{path} still not readable after {timeout}s: {proc.stderr}")
        time.sleep(0.3)


def initiated(sim: SimProcess) -> int:
    """InitiateJob calls the emulator has answered so far (inventory and archive jobs)."""
    return int(sim.stats()["requests"].get("InitiateJob", 0))


def archive_jobs(sim: SimProcess, vault: str, archive_id: str) -> list[dict]:
    """Archive-retrieval jobs the emulator has for one archive (via boto3 ListJobs)."""
    client = sim.client(max_attempts=1)
    jobs = client.list_jobs(vaultName=vault)["JobList"]
    return [j for j in jobs if j["Action"] == "ArchiveRetrieval" and j["ArchiveId"] == archive_id]


# --- the emulator ----------------------------------------------------------------------------

def start_emulator(base: Path, *args: str) -> SimProcess:
    return SimProcess(base / "data", args=["--quiet", *args], log_path=base / "sim.log")


# --- mounts ----------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Mount:
    """One glacierfs mount: start (daemon mode), unmount, log."""

    def __init__(self, url: str, mountpoint: Path, cache_dir: Path, log: Path,
                 **options: object) -> None:
        self.url = url
        self.path = mountpoint
        self.cache_dir = cache_dir
        self.log = log
        self.options = options
        self.pid: int | None = None
        self.log_offset = 0

    def option_string(self) -> str:
        opts = {"endpoint_url": self.url, "cache_dir": self.cache_dir, "poll": 1,
                "log": self.log, **self.options}
        return ",".join(f"{k}={v}" for k, v in opts.items())

    def start(self) -> Mount:
        self.path.mkdir(parents=True, exist_ok=True)
        if self.log.exists():
            self.log_offset = self.log.stat().st_size
        cmd = [sys.executable, "-m", "glacierfs.cli", "us-east-1", str(self.path),
               "-o", self.option_string()]
        began = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MOUNT_TIMEOUT)
        assert proc.returncode == 0, f"mount failed ({proc.returncode}): {proc.stderr}"
        # The contract: the command returns only once the mount is live.
        assert os.path.ismount(self.path), "glacierfs returned 0 before the mount was live"
        pids = daemon_pids(self.path)
        assert len(pids) == 1, f"expected one daemon process, found {pids}"
        self.pid = pids[0]
        self.mount_seconds = time.monotonic() - began
        return self

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def unmount(self) -> None:
        """Unmount and wait for the daemon to exit; escalates so nothing is left behind (a dead
        mount too: ``os.path.ismount`` cannot stat it, so the mount table is asked)."""
        try:
            if listed_as_mount(self.path):
                for _ in range(20):
                    if subprocess.run(["fusermount3", "-u", str(self.path)],
                                      capture_output=True).returncode == 0:
                        break
                    time.sleep(0.25)  # a tool may still hold a file open
                else:
                    subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True)
                    if listed_as_mount(self.path):
                        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        finally:
            self._reap()

    def _reap(self) -> None:
        if self.pid is None:
            return
        deadline = time.monotonic() + EXIT_TIMEOUT
        while _pid_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            time.sleep(2)
            if _pid_alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def log_text(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                f.seek(self.log_offset)
                return f.read()
        except OSError:
            return ""

    def log_problems(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if BAD_LOG.search(line)]


class Mounts:
    """Creates mounts for a test or module and takes them all down afterwards."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.created: list[Mount] = []

    def __call__(self, url: str, name: str = "mnt", cache_dir: Path | None = None,
                 **options: object) -> Mount:
        mnt = Mount(url, self.base / name, cache_dir or self.base / f"{name}-cache",
                    self.base / f"{name}.log", **options)
        self.created.append(mnt)
        return mnt.start()

    def close(self) -> list[str]:
        problems: list[str] = []
        for mnt in reversed(self.created):
            try:
                mnt.unmount()
            finally:
                problems += mnt.log_problems()
        return problems




@contextlib.contextmanager
def running_emulator(base: Path, *args: str) -> Iterator[SimProcess]:
    """An emulator for a fixture's lifetime (``with … as sim: yield sim``)."""
    sim = start_emulator(base, *args)
    try:
        yield sim
    finally:
        sim.stop()


def glacierfs_cli(*args: object, timeout: float = 120.0) -> subprocess.CompletedProcess[bytes]:
    """A ``glacierfs`` sub-command as a user runs it (never raises on a non-zero exit)."""
    return run(sys.executable, "-m", "glacierfs.cli", *map(str, args), timeout=timeout)


def listed_as_mount(path: Path) -> bool:
    """Is ``path`` in the mount table (alive or dead)?"""
    target = str(path).replace(" ", "\\040")
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)
