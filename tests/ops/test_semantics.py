"""The README's semantics table, errno by errno, on a real mount."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from ops_support import FAST_SIM, VAULT, Mounts, listed

pytestmark = pytest.mark.sim_args(*FAST_SIM)


def _errno_of(fn) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn()
    return info.value.errno


def _read(path: Path) -> bytes:
    """One read(2) of up to 1 MiB; raises OSError with the errno."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def test_errors_of_the_table(mounts: Mounts) -> None:
    mnt = mounts.mountpoint
    mounts.sim.set_delays(Standard=3600, Expedited=3600, Bulk=3600)
    mounts.mount()
    listed(mnt / VAULT)
    f = mnt / VAULT / "a" / "hello.txt"
    assert _errno_of(lambda: os.stat(mnt / VAULT / "missing")) == errno.ENOENT
    assert _errno_of(lambda: _read(f)) == errno.EREMOTE                      # retrieval running
    assert os.getxattr(f, "user.glacier.job.status") == b"InProgress"
    assert _errno_of(lambda: os.getxattr(f, "user.glacier.nope")) == errno.ENODATA
    assert _errno_of(lambda: os.setxattr(f, "user.glacier.restore", b"Fast")) == errno.EINVAL
    assert _errno_of(lambda: os.setxattr(mnt / VAULT / "a", "user.glacier.restore",
                                         b"Bulk")) == errno.EISDIR
    assert _errno_of(lambda: os.setxattr(f, "user.other", b"x")) == errno.ENOTSUP
    assert _errno_of(lambda: os.removexattr(f, "user.glacier.vault")) == errno.EROFS
    assert _errno_of(lambda: os.mkdir(mnt / VAULT / "new")) == errno.EROFS
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize == 10 * 1024 ** 3                  # the cache limit
    assert set(os.listxattr(mnt)) == {"user.glacier.status"}


def test_manual_mode_and_crawlers_never_start_jobs(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts.mountpoint
    mounts.mount("retrieve=manual")
    listed(mnt / VAULT)
    f = mnt / VAULT / "top.txt"
    assert _errno_of(lambda: _read(f)) == errno.ENODATA
    with pytest.raises(OSError):
        os.getxattr(f, "user.glacier.job.status")                        # still no job
    subprocess.run(["umount", str(mnt)], check=True)

    mounts.mount()                                                       # retrieve=auto
    updatedb = tmp_path / "updatedb"                                     # comm: "updatedb"
    updatedb.symlink_to("/bin/cat")
    result = subprocess.run([str(updatedb), str(f)], capture_output=True, text=True)
    assert result.returncode and "No data available" in result.stderr
    with pytest.raises(OSError):
        os.getxattr(f, "user.glacier.job.status")
    os.setxattr(f, "user.glacier.restore", b"Expedited")
    assert os.getxattr(f, "user.glacier.job.status") in (b"InProgress", b"Succeeded")
