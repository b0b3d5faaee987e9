"""Helpers for the operations tests: the daemon as ``mount``, fstab and systemd run it, on a real FUSE mount.

Each test gets an emulator (``sim``, from tests/conftest.py) with one small vault, a cache dir
and a mount point under its tmp dir. ``Mounts`` runs ``glacierfs`` the ways users do and, in
teardown, unmounts whatever is left and ends the daemons it started (found by their unique
mount point). Everything here is skipped when FUSE is not usable (no /dev/fuse, no
fusermount3, not root).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from glacierfs.sim.testing import SimProcess, aws_env
from mount_support import daemon_pids

HELPER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REPO = Path(__file__).resolve().parents[2]
FILES = {                       # description → content of the archives in vault "docs"
    "a/hello.txt": b"hello, glacier\n",
    "a/b/data.bin": bytes(range(256)) * 10_000,     # 2.4 MiB: several chunks
    "top.txt": b"top\n",
}
VAULT = "docs"
# Emulated job delays: inventories at once, retrievals quick but observable.
FAST_SIM = ("--delay", "inventory=0", "--delay", "Expedited=0", "--delay", "Standard=1",
            "--delay", "Bulk=2")


def _fuse_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("fusermount3"):
        return "fusermount3 not installed"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        return f"/dev/fuse: {exc.strerror}"
    os.close(fd)
    return None


FUSE_UNAVAILABLE = _fuse_unavailable()


def helper_problem() -> str | None:
    """Why ``mount -t fuse.glacierfs`` would not run this checkout's glacierfs, or None.

    mount(8) runs the helper with its own standard PATH, so what matters is the ``glacierfs``
    found there (``scripts/setup install`` links it into /usr/local/bin)."""
    exe = shutil.which("glacierfs", path=HELPER_PATH)
    if exe is None:
        return "no glacierfs on the standard PATH (run scripts/setup install)"
    try:
        with open(os.path.realpath(exe), "rb") as f:
            shebang = f.readline().decode(errors="replace")
    except OSError as exc:
        return f"{exe}: {exc.strerror}"
    python = shebang[2:].strip() if shebang.startswith("#!") else ""
    probe = subprocess.run([python or sys.executable, "-c",
                            "import glacierfs, os; print(os.path.dirname(glacierfs.__file__))"],
                           capture_output=True, text=True, timeout=30)
    found = Path(probe.stdout.strip() or "/nonexistent").resolve()
    if found != REPO / "glacierfs":
        return (f"{exe} runs glacierfs from {found}, not this checkout "
                "(run scripts/setup install)")
    return None


def is_mounted(mountpoint: Path) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == str(mountpoint) for line in f)


def mount_fstype(mountpoint: Path) -> str | None:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[1] == str(mountpoint):
                return fields[2]
    return None


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Mounts:
    """Runs glacierfs mounts for one test and cleans every one of them up."""

    def __init__(self, sim: SimProcess, base: Path) -> None:
        self.sim = sim
        self.base = base
        self.cache_dir = base / "cache"
        self.mountpoint = base / "mnt"
        self.mountpoint.mkdir()
        self.used: set[Path] = {self.mountpoint}
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = aws_env()
        env.update(extra)
        return env

    def options(self, *extra: str) -> str:
        return ",".join((f"endpoint_url={self.sim.url}", f"cache_dir={self.cache_dir}",
                         "poll=0.5", *extra))

    def command(self, *extra_opts: str, mountpoint: Path | None = None,
                foreground: bool = False) -> list[str]:
        mnt = mountpoint or self.mountpoint
        self.used.add(mnt)
        cmd = [sys.executable, "-m", "glacierfs.cli", "us-east-1", str(mnt),
               "-o", self.options(*extra_opts)]
        return cmd + (["-f"] if foreground else [])

    def run(self, *extra_opts: str, mountpoint: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The background form (what mount.fuse3 runs); returns once the parent exits."""
        return subprocess.run(self.command(*extra_opts, mountpoint=mountpoint),
                              env=env or self.env(), capture_output=True, text=True, timeout=60)

    def mount(self, *extra_opts: str, env: dict[str, str] | None = None) -> int:
        """Mount in the background; returns the daemon's pid."""
        result = self.run(*extra_opts, env=env)
        assert result.returncode == 0, result.stderr
        pids = daemon_pids(self.mountpoint)
        assert len(pids) == 1, pids
        return pids[0]

    def foreground(self, *extra_opts: str, env: dict[str, str] | None = None,
                   wait_mounted: bool = True) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.command(*extra_opts, foreground=True), env=env or self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        if wait_mounted:
            assert wait_for(lambda: is_mounted(self.mountpoint) or proc.poll() is not None, 30)
            assert proc.poll() is None, proc.communicate()[1].decode()
        return proc

    def cleanup(self) -> None:
        for mnt in self.used:
            for _ in range(3):
                if not is_mounted(mnt):
                    break
                if subprocess.run(["fusermount3", "-u", str(mnt)],
                                  capture_output=True).returncode:
                    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            for pid in daemon_pids(mnt):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                if not wait_for(lambda pid=pid: not pid_alive(pid), 5):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def listed(path: Path, timeout: float = 15.0) -> list[str]:
    """The names in a vault directory once its inventory is in (waits for it)."""
    names: list[str] = []

    def ready() -> bool:
        nonlocal names
        names = sorted(os.listdir(path))
        return len(names) > 1   # .by-id is there from the start

    assert wait_for(ready, timeout, 0.1), f"{path} stayed empty"
    return names
