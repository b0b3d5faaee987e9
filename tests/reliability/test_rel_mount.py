"""Faults seen through a real kernel mount: the errno a program gets, the xattrs that say
why, kill -9 of the daemon and a remount, the endpoint down at mount time, crawlers, and what
the cache dir and the logs contain.
"""

from __future__ import annotations

import errno
import json
import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rel_util import (MIB, Mount, compare, count, count_duplicate_jobs, count_faults,
                      daemon_pids, mount_env, mount_options, mounted, payload, poll_until,
                      read_all, read_errno, seed_state, unverified_files, upload, xattr)

from glacierfs.options import state_dir_for

pytestmark = [pytest.mark.usefixtures("needs_fuse"),
              pytest.mark.sim_args("--delay", "Standard=0.5", "--delay", "Expedited=0.2",
                                   "--seed", "3")]



def _setup(sim, tmp_path: Path, sizes: list[int], vault: str = "v"):
    client = sim.client()
    client.create_vault(vaultName=vault)
    archives = [upload(client, vault, size, seed=200 + i, description=f"dir/file{i}.bin")
                for i, size in enumerate(sizes)]
    cache = tmp_path / "cache"
    seed_state(state_dir_for(cache, "us-east-1", sim.url), vault, archives)
    return archives, cache, tmp_path / "mnt"


def _path(mnt: Path, i: int, vault: str = "v") -> Path:
    return mnt / vault / "dir" / f"file{i}.bin"


def _read_when_ready(path: Path, expected: bytes, timeout: float = 60.0) -> None:
    def attempt() -> bytes | None:
        try:
            return read_all(path)
        except OSError as exc:
            assert exc.errno == errno.EREMOTE, f"{path}: {exc}"
            return None
    data = poll_until(attempt, timeout=timeout, interval=0.2, what=f"{path} readable")
    compare(data, expected)


def _initiates(sim) -> int:
    return sim.stats()["requests"].get("InitiateJob", 0)


def test_failed_job_policy_and_corruption_give_eio_with_reason(sim, tmp_path):
    (a, b, c), cache, mnt = _setup(sim, tmp_path, [MIB, MIB, 2 * MIB])
    with mounted(mnt, mount_options(sim, cache)):
        # A job that ends Failed: EIO, Glacier's message in the xattr, restore starts anew.
        sim.set_faults([{"operation": "InitiateJob", "fault": "job_failed", "count": 1}])
        assert read_errno(_path(mnt, 0)) == errno.EREMOTE
        poll_until(lambda: xattr(_path(mnt, 0), "user.glacier.job.status") == "Failed",
                   what="job failed")
        assert read_errno(_path(mnt, 0)) == errno.EIO
        assert "could not be retrieved" in xattr(_path(mnt, 0),
                                                 "user.glacier.job.status_message")
        count_faults(sim)
        subprocess.run(["setfattr", "-n", "user.glacier.restore", "-v", "Standard",
                        str(_path(mnt, 0))], check=True)
        _read_when_ready(_path(mnt, 0), a.data)

        # PolicyEnforcedException: one InitiateJob, EIO on every read, the reason shown.
        sim.set_faults([{"operation": "InitiateJob", "fault": "policy"}])
        before = _initiates(sim)
        for _ in range(10):
            assert read_errno(_path(mnt, 1)) == errno.EIO
        assert _initiates(sim) == before + 1
        assert "policy" in xattr(_path(mnt, 1), "user.glacier.job.status_message")
        count_faults(sim)

        # Bytes that never match their tree hash: EIO, the reason, nothing cached.
        sim.set_faults([{"operation": "GetJobOutput", "fault": "corrupt"}])
        assert read_errno(_path(mnt, 2)) == errno.EREMOTE
        poll_until(lambda: read_errno(_path(mnt, 2)) == errno.EIO, what="EIO")
        assert "tree-hash" in xattr(_path(mnt, 2), "user.glacier.job.status_message")
        assert xattr(_path(mnt, 2), "user.glacier.cache.bytes") == "0"
        count_faults(sim)
        sim.clear_faults()
    assert unverified_files(state_dir_for(cache, "us-east-1", sim.url) / "chunks", [a, b, c]) == []
    assert count_duplicate_jobs(sim.client(), "v") == 0


def test_kill9_during_download_then_remount_resumes(sim, tmp_path):
    (a,), cache, mnt = _setup(sim, tmp_path, [8 * MIB])
    opts = mount_options(sim, cache, downloads="1")
    sim.set_faults([{"operation": "GetJobOutput", "fault": "slow", "delay": 0.4}])
    with mounted(mnt, opts) as m:
        assert read_errno(_path(mnt, 0)) == errno.EREMOTE
        poll_until(lambda: int(xattr(_path(mnt, 0), "user.glacier.cache.bytes") or 0) >= 3 * MIB,
                   what="three chunks")
        m.kill9()
        assert not daemon_pids(mnt)
    count_faults(sim)
    sim.clear_faults()
    sent_before = sim.stats()["bytes_sent"]
    assert unverified_files(state_dir_for(cache, "us-east-1", sim.url) / "chunks", [a]) == []
    with mounted(mnt, opts):
        _read_when_ready(_path(mnt, 0), a.data)
    stats = sim.stats()
    assert stats["requests"]["InitiateJob"] == 1  # the job survived the crash
    resumed = stats["bytes_sent"] - sent_before
    assert resumed <= a.size - 3 * MIB + MIB  # at most the chunk in flight is fetched again
    assert unverified_files(state_dir_for(cache, "us-east-1", sim.url) / "chunks", [a]) == []


def test_endpoint_down_at_mount_time(sim, tmp_path):
    (a, b), cache, mnt = _setup(sim, tmp_path, [MIB, MIB])
    opts = mount_options(sim, cache)
    with mounted(mnt, opts):
        _read_when_ready(_path(mnt, 0), a.data)
    sim.stop()
    with mounted(mnt, opts):
        assert sorted(os.listdir(mnt / "v" / "dir")) == ["file0.bin", "file1.bin"]
        compare(read_all(_path(mnt, 0)), a.data)
        for _ in range(3):
            start = time.monotonic()
            assert read_errno(_path(mnt, 1)) == errno.EREMOTE
            assert time.monotonic() - start < 5, "an uncached read must fail fast"
        assert xattr(_path(mnt, 1), "user.glacier.job.status") == "Queued"
        assert subprocess.run(["ls", "-lR", str(mnt)], capture_output=True).returncode == 0
    sim.start()


@contextlib.contextmanager
def _silent_endpoint(port: int):
    """A server on ``port`` that accepts connections and never answers: a network that drops
    replies, a wedged proxy. Refused connections fail fast; this is the case that does not."""
    server = socket.create_server(("127.0.0.1", port), reuse_port=False)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_silent_endpoint_never_holds_a_reader_or_a_mount(sim, tmp_path):
    """With an endpoint that never answers, botocore's timeouts and retries add up to minutes.
    A read of an uncached file still answers EREMOTE within seconds, a restore request returns,
    and a first mount (nothing stored) fails with one line instead of hanging."""
    (a, b), cache, mnt = _setup(sim, tmp_path, [MIB, MIB])
    opts = mount_options(sim, cache)
    sim.stop()
    with _silent_endpoint(sim.port), mounted(mnt, opts) as m:
        start = time.monotonic()
        assert read_errno(_path(mnt, 0)) == errno.EREMOTE
        assert time.monotonic() - start < 12, "an uncached read must not wait for Glacier"
        # Once one request of the vault went unanswered, the next callers do not wait again
        # (a thousand-file `glacierfs restore -r` must not take 5 s a file).
        start = time.monotonic()
        assert read_errno(_path(mnt, 0)) == errno.EREMOTE
        os.setxattr(_path(mnt, 1), "user.glacier.restore", b"Bulk")
        assert time.monotonic() - start < 4, "later requests must not wait for Glacier again"
        # getfattr says the files were asked for, though Glacier has not answered yet.
        for i, tier in ((0, "Standard"), (1, "Bulk")):
            assert xattr(_path(mnt, i), "user.glacier.job.status") == "Queued"
            assert xattr(_path(mnt, i), "user.glacier.job.tier") == tier
        assert sorted(os.listdir(mnt / "v" / "dir")) == ["file0.bin", "file1.bin"]
        assert all(os.path.exists(f"/proc/{p}") for p in m.pids)
        fresh = Mount(tmp_path / "mnt2", mount_options(sim, tmp_path / "cache2"))
        start = time.monotonic()
        proc = fresh.start(check=False)
        assert proc.returncode != 0 and "no answer from Glacier" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert time.monotonic() - start < 60
    sim.start()


def test_crawlers_start_no_retrieval(sim, tmp_path):
    (a,), cache, mnt = _setup(sim, tmp_path, [MIB])
    bindir = tmp_path / "bin"
    bindir.mkdir()
    with mounted(mnt, mount_options(sim, cache)):
        for name in ("updatedb", "tumblerd", "gnome-desktop-thumbnailer", "tracker-miner-fs-3"):
            tool = bindir / name
            shutil.copy("/bin/cat", tool)
            proc = subprocess.run([str(tool), str(_path(mnt, 0))], capture_output=True,
                                  text=True, env={"LC_ALL": "C"})
            assert proc.returncode != 0
            assert "No data available" in proc.stderr, (name, proc.stderr)
        assert _initiates(sim) == 0
        assert xattr(_path(mnt, 0), "user.glacier.job.status") is None
        # An ordinary reader does start one.
        assert read_errno(_path(mnt, 0)) == errno.EREMOTE
        assert _initiates(sim) == 1


def test_cache_dir_and_files_are_private(sim, tmp_path):
    (a,), cache, mnt = _setup(sim, tmp_path, [3 * MIB])
    os.chmod(state_dir_for(cache, "us-east-1", sim.url), 0o755)
    with mounted(mnt, mount_options(sim, cache)):
        _read_when_ready(_path(mnt, 0), a.data)
    for root, dirs, files in os.walk(state_dir_for(cache, "us-east-1", sim.url)):
        for d in dirs:
            mode = stat.S_IMODE(os.stat(Path(root) / d).st_mode)
            assert mode == 0o700, f"{root}/{d}: {oct(mode)}"
        for f in files:
            mode = stat.S_IMODE(os.stat(Path(root) / f).st_mode)
            assert mode & 0o077 == 0, f"{root}/{f}: {oct(mode)}"
    assert stat.S_IMODE(os.stat(state_dir_for(cache, "us-east-1", sim.url)).st_mode) == 0o700


def test_cache_dir_owned_by_someone_else_is_refused(sim, tmp_path):
    _, cache, mnt = _setup(sim, tmp_path, [MIB])
    os.chown(state_dir_for(cache, "us-east-1", sim.url), 4242, 4242)
    mnt.mkdir()
    proc = subprocess.run([sys.executable, "-m", "glacierfs.cli", "us-east-1", str(mnt), "-o",
                           mount_options(sim, cache)], capture_output=True, text=True,
                          env=mount_env(), timeout=60)
    assert proc.returncode != 0
    assert "4242" in proc.stderr and "cache dir" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not daemon_pids(mnt)


def test_allow_other_enforces_permissions(sim, tmp_path):
    (a,), cache, mnt = _setup(sim, tmp_path, [MIB])
    tmp_path.chmod(0o755)
    with mounted(mnt, mount_options(sim, cache, allow_other="", umask="077")):
        _read_when_ready(_path(mnt, 0), a.data)  # root reads (cached now)
        with open("/proc/self/mounts") as f:
            line = next(x for x in f if x.split()[1] == str(mnt))
        assert "default_permissions" in line and "allow_other" in line
        proc = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534",
                               "--clear-groups", "cat", str(_path(mnt, 0))],
                              capture_output=True, text=True, env={"LC_ALL": "C"})
        assert proc.returncode != 0 and "Permission denied" in proc.stderr


def test_credentials_never_in_logs_xattrs_or_status(sim, tmp_path):
    (a,), cache, mnt = _setup(sim, tmp_path, [MIB])
    key_id, secret = "AKIAGLACIERFSLEAK42", "s3cr3t/GlacierFS+Leak+Check0123456789abc"
    token = "FQoGZXIvYXdzEPLEAKTOKENglacierfs"
    env = mount_env({"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
                     "AWS_SESSION_TOKEN": token})
    log = tmp_path / "glacierfs.log"
    with mounted(mnt, mount_options(sim, cache, debug="", log=str(log)), env=env):
        sim.set_faults([{"operation": "GetJobOutput", "fault": "throttle", "count": 3},
                        {"operation": "ListJobs", "fault": "error500", "count": 2}])
        _read_when_ready(_path(mnt, 0), a.data)
        count_faults(sim)
        sim.clear_faults()
        shown = subprocess.run(["getfattr", "-R", "-d", "-m", "-", str(mnt)],
                               capture_output=True, text=True).stdout
        status = subprocess.run([sys.executable, "-m", "glacierfs.cli", "status", "--json",
                                 str(mnt)], capture_output=True, text=True).stdout
        human = subprocess.run([sys.executable, "-m", "glacierfs.cli", "status", str(mnt)],
                               capture_output=True, text=True).stdout
        assert json.loads(status)["downloads"]["bytes_verified"] >= a.size
    text = log.read_text()
    assert "DEBUG" in text  # debug logging really was on
    for where, content in (("log", text), ("xattrs", shown), ("status", status + human)):
        for secret_value in (key_id, secret, token, secret[:12]):
            assert secret_value not in content, f"{where} leaks a credential"
    count(faults_injected=0)


@contextlib.contextmanager
def _small_disk(path: Path, size: str):
    """``path`` as a tmpfs of ``size`` (say ``8m``) for the duration, so a test can fill it;
    grow it with ``mount -o remount,size=…``."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_full_gives_enospc_and_recovers(sim, tmp_path):
    """The cache dir on an 8 MiB tmpfs: a 12 MiB file cannot fit; readers of its missing
    chunks get ENOSPC, what is cached stays valid, and once the tmpfs is grown the download
    completes without a new job, and without fetching any chunk twice (a chunk that found the
    disk full is held, not downloaded again)."""
    client = sim.client()
    client.create_vault(vaultName="v")
    big = upload(client, "v", 12 * MIB, seed=300, description="dir/file0.bin")
    mnt = tmp_path / "mnt"
    with _small_disk(tmp_path / "cache", "8m") as cache:
        seed_state(state_dir_for(cache, "us-east-1", sim.url), "v", [big])
        opts = mount_options(sim, cache, cache_size="1G", downloads="2")
        with mounted(mnt, opts):
            assert read_errno(_path(mnt, 0)) == errno.EREMOTE

            def enospc() -> bool:
                for chunk in range(11, -1, -1):  # some chunk is not cached: it cannot fit
                    try:
                        read_all(_path(mnt, 0), chunk * MIB, 4096)
                    except OSError as exc:
                        assert exc.errno in (errno.EREMOTE, errno.ENOSPC), exc
                        if exc.errno == errno.ENOSPC:
                            return True
                return False

            poll_until(enospc, timeout=60, interval=0.3, what="ENOSPC")
            assert unverified_files(state_dir_for(cache, "us-east-1", sim.url) / "chunks", [big]) == []
            # Cached chunks still read exact while the disk is full.
            compare(read_all(_path(mnt, 0), 0, MIB), big.data)
            subprocess.run(["mount", "-o", "remount,size=64m", str(cache)], check=True)
            _read_when_ready(_path(mnt, 0), big.data, timeout=90)
        assert _initiates(sim) == 1
        assert sim.stats()["requests"].get("GetJobOutput") == 12  # 12 MiB in 1 MiB chunks, once
        assert unverified_files(state_dir_for(cache, "us-east-1", sim.url) / "chunks", [big]) == []


@pytest.mark.sim_args("--delay", "inventory=0.5")
def test_inventory_onto_a_full_disk_keeps_the_mount_up_and_loads_once_there_is_room(sim, tmp_path):
    """A 60,000-archive inventory (about 20 MB of JSON) fits the 24 MiB cache disk but its
    index does not: the mount stays up, the vault's xattr says the disk is full, and once the
    disk is grown the next listing loads it, from the same inventory job."""
    sim.client().create_vault(vaultName="big")
    sim.synthesize("big", 60000, size=100, description="photos/img{i}.jpg")
    mnt = tmp_path / "mnt"
    with _small_disk(tmp_path / "cache", "24m") as cache:
        with mounted(mnt, mount_options(sim, cache)) as m:
            def message() -> str:
                os.listdir(mnt / "big")  # listing is what (re)starts the inventory
                return xattr(mnt / "big", "user.glacier.inventory.message") or ""

            poll_until(lambda: "is full" in message(), timeout=90, what="a disk-full message")
            assert all(os.path.exists(f"/proc/{p}") for p in m.pids), "the daemon died"
            assert os.listdir(mnt) == ["big"]
            subprocess.run(["mount", "-o", "remount,size=256m", str(cache)], check=True)

            def photos() -> int:
                names = os.listdir(mnt / "big")
                return len(os.listdir(mnt / "big" / "photos")) if "photos" in names else 0

            poll_until(lambda: photos() == 60000, timeout=90, what="the vault to fill")
            assert xattr(mnt / "big", "user.glacier.number_of_archives") == "60000"
            assert "user.glacier.inventory.message" not in os.listxattr(mnt / "big")
        assert _initiates(sim) == 1  # the finished job was downloaded again, not paid again


def test_payload_helper_is_deterministic():
    assert payload(1000, 1) == payload(1000, 1) != payload(1000, 2)
