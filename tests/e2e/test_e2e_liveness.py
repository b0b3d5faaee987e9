"""No reader waits for ever: held restores yield to readers, and a stop answers every reader.

``cache_size=8M`` leaves room for 4 MiB of held restores (the rest is the index's margin):

* the four steps a new user tried: restore three 3 MiB archives (two wait for room), read none,
  ``cat`` a 1 MiB one — it is served, not queued for ever behind the restores that wait;
* a read whose archive cannot fit beside restores nobody reads is answered at once (ENOSPC)
  with the reason and the way out, and served once the restored files are read;
* ``glacierfs copy -r`` of another folder behind the same held restores copies everything;
* an archive larger than the cache room: ``restore`` says so at once, ``wait`` exits 4 with
  the way out within seconds;
* SIGTERM, and a mount detached under a waiting reader (``wait=300``, a job of an hour): the
  reader is answered at once and the daemon exits within seconds; a remount serves the same
  job (no second one).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
from e2e_util import (
    MIB,
    NOT_READY_TEXT,
    TOOL_ENV,
    archive_jobs,
    getfattr_all,
    getfattr_one,
    glacierfs_cli,
    initiated,
    run,
    running_emulator,
    wait_listed,
)
from mount_support import wait_for

from glacierfs.commands.demo import mt2

pytestmark = pytest.mark.e2e

VAULT = "live"
NO_SPACE_TEXT = "No space left on device"
# Generous bounds for a loaded 2-core machine; without the fixes each of these waited for ever.
SERVED_WITHIN = 90.0
STOPPED_WITHIN = 15.0
FILES = {"held/a.bin": 3 * MIB, "held/b.bin": 3 * MIB, "held/c.bin": 3 * MIB,
         "small/d.bin": MIB, "small/e.bin": 2 * MIB,
         "other/x.bin": MIB, "other/y.bin": MIB,
         "big/huge.bin": 6 * MIB, "slow/hour.bin": 64 * 1024}


@pytest.fixture
def emulator(tmp_path_factory):
    """One per test: a restore on one mount must not be another test's adopted job."""
    with running_emulator(tmp_path_factory.mktemp("sim"), "--delay", "Standard=1") as sim:
        yield sim


@pytest.fixture
def files(emulator):
    client = emulator.client()
    client.create_vault(vaultName=VAULT)
    rng = random.Random(16)
    out = {}
    for name, size in FILES.items():
        data = rng.randbytes(size)
        archive = client.upload_archive(vaultName=VAULT, body=data,
                                        archiveDescription=mt2(name, "20200101T000000Z"))
        out[name] = (archive["archiveId"], data)
    return out


def _mount(mounts, emulator, name: str, **options):
    mnt = mounts(emulator.url, name, cache_size="8M", chunk_size="1M", **options)
    wait_listed(mnt / VAULT, {"held", "small", "other", "big", "slow"})
    return mnt


def _read_when_served(path, timeout: float = SERVED_WITHIN) -> bytes:
    """``cat`` again while the answer is "Object is remote"; fails on any other error."""
    deadline = time.monotonic() + timeout
    while True:
        proc = run("cat", path)
        if proc.returncode == 0:
            return proc.stdout
        assert NOT_READY_TEXT in proc.stderr, proc.stderr
        assert time.monotonic() < deadline, f"{path} not served in {timeout:g} s: " \
                                             f"{getfattr_all(path)}"
        time.sleep(0.5)


def _restore_held(mnt) -> None:
    held = [mnt / VAULT / "held" / n for n in ("a.bin", "b.bin", "c.bin")]
    restore = glacierfs_cli("restore", *held)
    assert restore.returncode == 0, restore.stderr
    assert "2 of them" in restore.stdout.decode() and "exceed the cache room" in \
        restore.stdout.decode(), restore.stdout
    wait_for(lambda: getfattr_one(held[0], "user.glacier.cache") == "cached", SERVED_WITHIN,
             "the first restore cached")


def test_a_small_read_is_never_queued_behind_restores_that_wait_for_room(
        emulator, files, mounts):
    mnt = _mount(mounts, emulator, "four-steps")
    _restore_held(mnt)
    # Step four: a 1 MiB archive fits beside the 3 MiB held; it is served, not queued behind
    # the two restores that wait for room only a reader of the first one can free.
    began = time.monotonic()
    assert _read_when_served(mnt / VAULT / "small/d.bin") == files["small/d.bin"][1]
    assert time.monotonic() - began < SERVED_WITHIN
    waiting = getfattr_all(mnt / VAULT / "held/b.bin")
    assert waiting["user.glacier.job.status"] == "Queued"
    assert waiting["user.glacier.job.status_message"].startswith("waiting for cache room")
    assert getfattr_one(mnt / VAULT / "held/a.bin", "user.glacier.cache") == "cached"

    # 2 MiB does not fit beside the 3 MiB nobody reads: answered at once, with the way out.
    e = mnt / VAULT / "small/e.bin"
    deadline = time.monotonic() + 60
    while True:
        proc = run("cat", e)
        assert proc.returncode != 0
        if NO_SPACE_TEXT in proc.stderr:
            break
        assert NOT_READY_TEXT in proc.stderr, proc.stderr
        assert time.monotonic() < deadline, "a read behind idle restores kept answering EREMOTE"
        time.sleep(1)
    message = getfattr_one(e, "user.glacier.job.status_message") or ""
    assert message.startswith("waiting for cache room") and "cache_size" in message, message
    began = time.monotonic()
    assert run("cat", e).returncode != 0 and time.monotonic() - began < 10
    # Reading the restored files frees their room: each comes in turn, then the waiting read.
    for name in ("held/a.bin", "held/b.bin", "held/c.bin"):
        assert _read_when_served(mnt / VAULT / name) == files[name][1]
    assert _read_when_served(e) == files["small/e.bin"][1]
    for name in ("held/a.bin", "held/b.bin", "held/c.bin", "small/d.bin", "small/e.bin"):
        assert len(archive_jobs(emulator, VAULT, files[name][0])) == 1


def test_copy_of_another_folder_behind_held_restores(emulator, files, mounts, tmp_path):
    mnt = _mount(mounts, emulator, "copy-behind")
    _restore_held(mnt)
    dest = tmp_path / "dest"
    began = time.monotonic()
    copy = glacierfs_cli("copy", "-r", mnt / VAULT / "other", dest, timeout=SERVED_WITHIN + 60)
    took = time.monotonic() - began
    assert copy.returncode == 0, (copy.stdout, copy.stderr)
    for name in ("x.bin", "y.bin"):
        assert (dest / "other" / name).read_bytes() == files[f"other/{name}"][1]
    assert took < SERVED_WITHIN, f"copy took {took:.0f} s"
    # The restores are still held (nobody read them), not evicted to make room for the copy.
    assert getfattr_one(mnt / VAULT / "held/a.bin", "user.glacier.cache") == "cached"


def test_an_archive_larger_than_the_cache_room_is_named_and_wait_exits_4(
        emulator, files, mounts):
    mnt = _mount(mounts, emulator, "too-large")
    huge = mnt / VAULT / "big/huge.bin"
    restore = glacierfs_cli("restore", huge)
    assert restore.returncode == 0, restore.stderr
    out = restore.stdout.decode()
    assert "larger than the cache room" in out and "can never be held whole" in out, out
    assert "as a stream" in out and "cache_size" in out
    began = time.monotonic()
    wait = glacierfs_cli("wait", huge, "--timeout", "120")
    assert wait.returncode == 4, (wait.returncode, wait.stderr)
    assert time.monotonic() - began < 30
    assert "larger than the cache room" in wait.stderr and "as a stream" in wait.stderr
    # And it is read as a stream, from that one job.
    assert _read_when_served(huge) == files["big/huge.bin"][1]
    assert len(archive_jobs(emulator, VAULT, files["big/huge.bin"][0])) == 1


def _waiting_reader(mnt, path):
    """A ``cat`` held in the daemon by wait=300 while the job runs (an hour)."""
    reader = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=TOOL_ENV)
    wait_for(lambda: getfattr_one(path, "user.glacier.job.status") == "InProgress", 30,
             "the job started")
    time.sleep(1)
    assert reader.poll() is None, "the reader should be waiting in the daemon"
    return reader


def _assert_answered_and_stopped(mnt, reader, began: float) -> None:
    _, err = reader.communicate(timeout=STOPPED_WITHIN)
    assert reader.returncode != 0 and NOT_READY_TEXT in err.decode(), err
    assert time.monotonic() - began < STOPPED_WITHIN
    pid = mnt.pid
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
             open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z",
             STOPPED_WITHIN, "the daemon to exit")
    assert time.monotonic() - began < STOPPED_WITHIN + 5
    assert not os.path.ismount(mnt.path)


@pytest.mark.parametrize("how", ["sigterm", "lazy-unmount"])
def test_stop_answers_a_waiting_reader_and_exits_in_seconds(emulator, files, mounts, how):
    emulator.set_delays(Standard=3600)
    try:
        mnt = _mount(mounts, emulator, f"stop-{how}", wait=300)
        path = mnt / VAULT / "slow/hour.bin"
        reader = _waiting_reader(mnt, path)
        jobs = initiated(emulator)
        began = time.monotonic()
        if how == "sigterm":
            os.kill(mnt.pid, signal.SIGTERM)
        else:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt.path)], check=True)
        _assert_answered_and_stopped(mnt, reader, began)
        # The state was saved: a remount knows the job and starts no other.
        again = mounts(emulator.url, f"again-{how}", cache_dir=mnt.cache_dir, cache_size="8M",
                       chunk_size="1M")
        assert getfattr_one(again / VAULT / "slow/hour.bin", "user.glacier.job.status") == \
            "InProgress"
        assert initiated(emulator) == jobs
    finally:
        emulator.set_delays(Standard=1)
        emulator.complete_jobs(vault=VAULT)
