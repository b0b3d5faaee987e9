"""``mount -t fuse.glacierfs`` and fstab lines, through the real mount(8) and mount.fuse3; and
``ro``: writes refused, ``user.glacier.restore`` still allowed."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from ops_support import (FAST_SIM, VAULT, Mounts, daemon_pids, helper_problem,
                                is_mounted, listed, mount_fstype, pid_alive, wait_for)

pytestmark = pytest.mark.sim_args(*FAST_SIM)


@pytest.fixture
def helper() -> None:
    problem = helper_problem()
    if problem:
        pytest.skip(problem)


def _daemon_args(mnt: Path) -> list[str]:
    pids = daemon_pids(mnt)
    assert len(pids) == 1, pids
    return Path(f"/proc/{pids[0]}/cmdline").read_bytes().decode().split("\0")


def _umount_and_wait(mnt: Path) -> None:
    pids = daemon_pids(mnt)
    subprocess.run(["umount", str(mnt)], check=True, timeout=30)
    assert not is_mounted(mnt)
    assert wait_for(lambda: not any(pid_alive(p) for p in pids), 10), "daemon still running"


def test_mount_t_fuse_glacierfs(mounts: Mounts, helper: None) -> None:
    mnt = mounts.mountpoint
    result = subprocess.run(["mount", "-t", "fuse.glacierfs", "us-east-1", str(mnt),
                             "-o", mounts.options()], env={"PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert mount_fstype(mnt) == "fuse.glacierfs"       # live when mount returns
    assert os.listdir(mnt) == [VAULT]
    assert listed(mnt / VAULT) == [".by-id", "a", "top.txt"]
    assert sorted(os.listdir(mnt / VAULT / "a")) == ["b", "hello.txt"]
    _umount_and_wait(mnt)


def test_fstab_line(mounts: Mounts, helper: None, tmp_path: Path) -> None:
    """A private fstab file (mount --fstab), so /etc/fstab is never touched."""
    mnt = mounts.mountpoint
    fstab = tmp_path / "fstab"
    opts = mounts.options("_netdev", "nofail", "noauto", "x-systemd.mount-timeout=30",
                          "nodev", "nosuid", "noatime", "ro")
    fstab.write_text(f"# test\nus-east-1 {mnt} fuse.glacierfs {opts} 0 0\n")
    result = subprocess.run(["mount", "--fstab", str(fstab), str(mnt)],
                            env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert mount_fstype(mnt) == "fuse.glacierfs"
    args = _daemon_args(mnt)
    given = args[args.index("-o") + 1].split(",")
    assert "_netdev" not in given and "nofail" not in given    # mount.fuse3 drops them
    assert {"nodev", "nosuid"} <= set(given)
    assert listed(mnt / VAULT) == [".by-id", "a", "top.txt"]
    os.setxattr(mnt / VAULT / "top.txt", "user.glacier.restore", b"Bulk")   # ro: still allowed
    _umount_and_wait(mnt)


def test_ro_refuses_writes_but_allows_restore(mounts: Mounts) -> None:
    mnt = mounts.mountpoint
    mounts.mount("ro")
    assert listed(mnt / VAULT)
    target = mnt / VAULT / "a" / "hello.txt"
    # the kernel mount is not ro (it would refuse setxattr); the filesystem refuses writes
    kernel_opts = Path("/proc/self/mounts").read_text().split(f" {mnt} ")[1].split()[1]
    assert "ro" not in kernel_opts.split(",")
    subprocess.run(["setfattr", "-n", "user.glacier.restore", "-v", "Standard", str(target)],
                   check=True, capture_output=True)
    assert os.getxattr(target, "user.glacier.job.status").decode() in (
        "Queued", "InProgress", "Succeeded")
    assert os.getxattr(target, "user.glacier.job.tier") == b"Standard"
    for attempt in (lambda: open(target, "w"), lambda: open(target, "r+b"),
                    lambda: open(mnt / VAULT / "new.txt", "w"),
                    lambda: os.mkdir(mnt / VAULT / "d"), lambda: os.unlink(target),
                    lambda: os.rename(target, mnt / VAULT / "x"),
                    lambda: os.utime(target), lambda: os.chmod(target, 0o644),
                    lambda: os.setxattr(target, "user.glacier.size", b"1")):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, attempt
    touch = subprocess.run(["touch", str(mnt / VAULT / "new")], capture_output=True, text=True)
    assert touch.returncode and "Read-only file system" in touch.stderr
