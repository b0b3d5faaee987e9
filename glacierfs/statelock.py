"""One mount per state directory: an exclusive ``flock`` on ``STATE_DIR/mount.lock``.

The state directory (one per account, region and endpoint under ``cache_dir``) holds the job
records that make "one job per archive" true. Two live mounts of it would each keep their own
view of those records and each pay for the same retrieval, and share one chunk store behind
each other's back; so the second mount is refused, naming the first. The lock is taken before
the daemon forks (the child inherits it, the parent's exit does not release it) and dies with
the process, so a crash (``kill -9``) never leaves it behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "mount.lock"
# A mount that was just unmounted may still be shutting down (saving the cache index) for a
# few seconds while a new mount of the same state starts: wait for it this long.
SHUTDOWN_GRACE = 20.0

_held: list[int] = []   # the lock's descriptor, kept open for the life of the process


class StateInUse(Exception):
    """Another live glacierfs process holds the state directory."""


def _mounted(path: str) -> bool:
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            return any(line.split()[1].replace("\\040", " ") == path
                       for line in f if len(line.split()) > 2)
    except OSError:
        return True


def acquire(state_dir: Path, mountpoint: Path) -> None:
    """Hold the state directory for this process, or raise StateInUse saying who has it."""
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + SHUTDOWN_GRACE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            if _mounted(holder) or time.monotonic() > deadline:
                os.close(fd)
                where = f"the glacierfs mount on {holder}" if holder else "another glacierfs"
                raise StateInUse(
                    f"cache dir {state_dir} is in use by {where}: two mounts of one account, "
                    "region and endpoint cannot share it (each would pay for the same jobs); "
                    "give this one another cache_dir, or umount that one first") from None
            time.sleep(0.2)   # its holder was unmounted and is still exiting
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(mountpoint).encode(), 0)
    _held.append(fd)
