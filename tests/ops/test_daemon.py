"""The daemon as a mount helper: exit 0 only once the mount is live, one line and a non-zero
exit otherwise; clean stops (SIGTERM, SIGINT, umount, repeated signals) with the state kept;
dead mounts left by a crash; logs, and no credentials in them."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from ops_support import (FAST_SIM, VAULT, Mounts, daemon_pids, is_mounted, listed,
                         mount_fstype, pid_alive, wait_for)

from glacierfs.sim.testing import SimProcess
from glacierfs.options import state_dir_for

pytestmark = pytest.mark.sim_args(*FAST_SIM)


def _one_line_failure(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert lines[0].startswith("glacierfs: ")
    return lines[0]


def test_exit_0_only_once_live(mounts: Mounts) -> None:
    result = mounts.run()
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    # no waiting: the mount is there and answers when the command returns
    assert mount_fstype(mounts.mountpoint) == "fuse.glacierfs"
    assert os.listdir(mounts.mountpoint) == [VAULT]


def test_missing_mountpoint(mounts: Mounts) -> None:
    missing = mounts.base / "nope"
    line = _one_line_failure(mounts.run(mountpoint=missing), str(missing), "does not exist")
    assert f"mkdir -p {missing}" in line


def test_mountpoint_already_mounted(mounts: Mounts) -> None:
    mounts.mount()
    _one_line_failure(mounts.run(), "already a mount point", f"umount {mounts.mountpoint}")
    assert len(daemon_pids(mounts.mountpoint)) == 1


@pytest.mark.parametrize("option, words", [
    ("bogus=1", ("unknown option 'bogus'",)),
    ("tier=Slow", ("tier=Slow", "Expedited")),
    ("cache_size=lots", ("cache_size=lots",)),
])
def test_bad_option(mounts: Mounts, option: str, words: tuple[str, ...]) -> None:
    result = mounts.run(option)
    _one_line_failure(result, *words)
    assert result.returncode == 2
    assert not is_mounted(mounts.mountpoint)


def test_bad_source(mounts: Mounts) -> None:
    result = subprocess.run(mounts.command()[:3] + ["nowhere", str(mounts.mountpoint)],
                            env=mounts.env(), capture_output=True, text=True, timeout=30)
    _one_line_failure(result, "region")


def test_unreachable_endpoint_without_state(mounts: Mounts) -> None:
    cmd = mounts.command()
    cmd[-1] = cmd[-1].replace(mounts.sim.url, "http://127.0.0.1:9")  # discard port: refused
    start = time.monotonic()
    result = subprocess.run(cmd, env=mounts.env(), capture_output=True, text=True, timeout=60)
    _one_line_failure(result, "cannot reach Glacier", "127.0.0.1:9")
    assert time.monotonic() - start < 30
    assert not is_mounted(mounts.mountpoint)
    assert daemon_pids(mounts.mountpoint) == []


def test_bad_credentials(tmp_path: Path) -> None:
    with SimProcess(tmp_path / "sim", args=["--access-key-id", "AKIDTHERIGHTONE"],
                    log_path=tmp_path / "sim.log") as sim:
        m = Mounts(sim, tmp_path)
        try:
            result = m.run(env=m.env(AWS_ACCESS_KEY_ID="AKIDTHEWRONGONE"))
            line = _one_line_failure(result, "refused the credentials")
            assert "AKIDTHEWRONGONE" not in line and "glacierfs-sim-secret" not in line
            assert not is_mounted(m.mountpoint)
            assert m.run(env=m.env(AWS_ACCESS_KEY_ID="AKIDTHERIGHTONE")).returncode == 0
        finally:
            m.cleanup()


def test_stale_mount_after_kill_9(mounts: Mounts) -> None:
    mnt = mounts.mountpoint
    pid = mounts.mount()
    assert listed(mnt / VAULT)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pid))
    for _ in range(2):   # the first access after the crash sees ECONNABORTED, later ENOTCONN
        line = _one_line_failure(mounts.run(), "Transport endpoint is not connected")
        assert f"fusermount3 -u {mnt}" in line
    with pytest.raises(OSError) as info:
        os.listdir(mnt)
    assert info.value.errno == errno.ENOTCONN
    # the fix in the message works, and the state survived the crash: listed at once
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    mounts.mount()
    assert sorted(os.listdir(mnt / VAULT)) == [".by-id", "a", "top.txt"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_state_is_kept(mounts: Mounts, signum: int) -> None:
    mnt = mounts.mountpoint
    proc = mounts.foreground()
    assert listed(mnt / VAULT) == [".by-id", "a", "top.txt"]
    proc.send_signal(signum)
    assert proc.wait(20) == 0, proc.communicate()[1].decode()
    assert not is_mounted(mnt)
    stderr = proc.communicate()[1].decode()
    assert f"signal {int(signum)}: unmounting" in stderr and "unmounted" in stderr
    # remount: the stored inventory is listed at once, no inventory job to wait for
    mounts.sim.set_faults([{"operation": "InitiateJob", "fault": "error500"}])
    mounts.mount()
    assert sorted(os.listdir(mnt / VAULT)) == [".by-id", "a", "top.txt"]


def test_repeated_sigterm_while_stopping(mounts: Mounts) -> None:
    mnt = mounts.mountpoint
    proc = mounts.foreground()
    assert listed(mnt / VAULT)
    for _ in range(3):
        proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    for _ in range(5):       # keep signalling through the whole shutdown
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.02)
    assert proc.wait(20) == 0, proc.communicate()[1].decode()
    assert not is_mounted(mnt)
    assert "Traceback" not in proc.communicate()[1].decode()
    mounts.mount()
    assert sorted(os.listdir(mnt / VAULT)) == [".by-id", "a", "top.txt"]


def test_umount_ends_the_daemon(mounts: Mounts) -> None:
    pid = mounts.mount()
    subprocess.run(["umount", str(mounts.mountpoint)], check=True, timeout=30)
    assert wait_for(lambda: not pid_alive(pid), 10), "daemon still running after umount"
    assert not is_mounted(mounts.mountpoint)


def test_sigterm_to_background_daemon(mounts: Mounts) -> None:
    pid = mounts.mount()
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not pid_alive(pid), 10)
    assert not is_mounted(mounts.mountpoint)


# --- logs ----------------------------------------------------------------------------------

def test_foreground_logs_to_stderr(mounts: Mounts) -> None:
    proc = mounts.foreground()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert out == b""
    assert b"INFO glacierfs.mount: mounted us-east-1 on" in err
    assert b"DEBUG" not in err


def test_background_log_file_and_debug(mounts: Mounts) -> None:
    log = mounts.base / "glacierfs.log"
    mounts.mount(f"log={log}")
    assert listed(mounts.mountpoint / VAULT)
    subprocess.run(["umount", str(mounts.mountpoint)], check=True)
    text = log.read_text()
    assert "mounted us-east-1 on" in text and "DEBUG" not in text
    log.unlink()
    mounts.mount(f"log={log}", "debug")
    os.listdir(mounts.mountpoint / VAULT)
    subprocess.run(["umount", str(mounts.mountpoint)], check=True)
    assert wait_for(lambda: "unmounted" in log.read_text())
    assert " DEBUG " in log.read_text()


def test_background_without_log_option(mounts: Mounts) -> None:
    """Without log=, the background daemon logs to syslog (/dev/log), or when there is none
    to glacierfs.log in its state dir."""
    if os.path.exists("/dev/log"):
        pytest.skip("a syslog socket exists: messages go to the system log")
    mounts.mount()
    state_log = state_dir_for(mounts.cache_dir, "us-east-1", mounts.sim.url) / "glacierfs.log"
    assert wait_for(lambda: state_log.exists() and "mounted" in state_log.read_text())


def test_credentials_never_logged(mounts: Mounts) -> None:
    key, secret = "AKIDSHOULDNOTLEAK123", "s3cr3t/ShouldNotLeak+xyz"
    env = mounts.env(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret,
                     AWS_SESSION_TOKEN="tokenShouldNotLeak")
    log = mounts.base / "debug.log"
    mnt = mounts.mountpoint
    mounts.mount(f"log={log}", "debug", env=env)
    assert listed(mnt / VAULT)
    target = mnt / VAULT / "a" / "hello.txt"
    try:
        (mnt / VAULT / "top.txt").read_bytes()     # starts a retrieval (EREMOTE, unless quick)
    except OSError:
        pass
    os.setxattr(target, "user.glacier.restore", b"Expedited")
    assert wait_for(lambda: os.getxattr(target, "user.glacier.cache") == b"cached", 15)
    assert target.read_bytes() == b"hello, glacier\n"
    subprocess.run(["umount", str(mnt)], check=True)
    assert wait_for(lambda: "unmounted" in log.read_text())
    text = log.read_text()
    assert " DEBUG " in text
    for leak in (key, secret, "tokenShouldNotLeak"):
        assert leak not in text
