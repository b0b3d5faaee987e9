"""Remounting with the same cache dir: the tree is there at once from the stored inventory,
restored files are served from the verified cache, and no job is started again; with the
emulator stopped all of that still works, and reading an uncached file fails fast."""

from __future__ import annotations

import os
import random
import sys
import time

import pytest
from e2e_util import (
    MIB,
    NOT_READY_TEXT,
    getfattr_all,
    listing,
    ok,
    read_when_ready,
    run,
    running_emulator,
    text,
    wait_for,
    wait_listed,
)
from mount_support import daemon_pids

from glacierfs.commands.demo import mt2

pytestmark = pytest.mark.e2e

VAULT = "keep"
RNG = random.Random(7)
CACHED = RNG.randbytes(3 * MIB + 1)
UNCACHED = RNG.randbytes(2 * MIB)
NESTED = RNG.randbytes(999)
NESTED_DESCRIPTION = mt2("dir/nested.txt", "20190101T000000Z")


def tree_listing(root) -> str:
    """What a remount must show exactly as before: every entry's inode, type, mode, size and
    path, and each file's mtime (directories without an uploader's date may show the mount
    time). ``ls -lAR`` must work too and name every file."""
    listed = text("ls", "-lAR", root)
    entries = text("find", root, "-printf", "%i %y %m %s %P\\n")
    files = text("find", root, "-type", "f", "-printf", "%T@ %P\\n")
    for line in files.splitlines():
        assert line.split(" ", 1)[1].rsplit("/", 1)[-1] in listed
    return entries + files


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with running_emulator(tmp_path_factory.mktemp("sim"), "--delay", "Standard=1") as sim:
        yield sim


@pytest.fixture(scope="module")
def first_mount(emulator, module_mounts, tmp_path_factory):
    """Mount once, restore two files, unmount; returns what the next mounts should see."""
    client = emulator.client()
    client.create_vault(vaultName=VAULT)
    client.upload_archive(vaultName=VAULT, body=CACHED, archiveDescription="cached.bin")
    client.upload_archive(vaultName=VAULT, body=UNCACHED, archiveDescription="uncached.bin")
    client.upload_archive(vaultName=VAULT, body=NESTED, archiveDescription=NESTED_DESCRIPTION)
    cache_dir = tmp_path_factory.mktemp("cache")
    mnt = module_mounts(emulator.url, "first", cache_dir=cache_dir, chunk_size="1M")
    root = mnt / VAULT
    wait_listed(root, {"cached.bin", "uncached.bin", "dir"})
    assert read_when_ready(root / "cached.bin") == CACHED
    assert read_when_ready(root / "dir" / "nested.txt") == NESTED
    wait_for(lambda: getfattr_all(root / "cached.bin")["user.glacier.cache"] == "cached", 30,
             "cached.bin fully cached")
    seen = {
        "ls": tree_listing(root),
        "inodes": text("find", root, "-printf", "%i %P\\n"),
        "attrs": getfattr_all(root / "cached.bin"),
    }
    mnt.unmount()
    return {"cache_dir": cache_dir, **seen}


def test_remount_lists_at_once_and_serves_the_cache_without_new_jobs(emulator, first_mount,
                                                                     mounts):
    emulator.reset_stats()
    mnt = mounts(emulator.url, "again", cache_dir=first_mount["cache_dir"], chunk_size="1M")
    root = mnt / VAULT
    # no waiting for an inventory: the stored one lists at once, same names, inodes, sizes
    assert tree_listing(root) == first_mount["ls"]
    assert text("find", root, "-printf", "%i %P\\n") == first_mount["inodes"]
    assert ok("cat", root / "cached.bin") == CACHED
    assert ok("cat", root / "dir" / "nested.txt") == NESTED
    assert ok("dd", f"if={root / 'cached.bin'}", "bs=1000", "skip=1048", "count=3",
              "status=none") == CACHED[1_048_000:1_051_000]
    attrs = getfattr_all(root / "cached.bin")
    assert attrs == first_mount["attrs"]
    assert attrs["user.glacier.cache"] == "cached"
    time.sleep(1.5)  # let background work (polls, downloads) show up in the counters
    requests = emulator.stats()["requests"]
    assert requests.get("InitiateJob", 0) == 0, requests
    assert requests.get("GetJobOutput", 0) == 0, requests
    assert requests.get("DescribeJob", 0) == 0, requests


def test_a_second_live_mount_of_the_same_cache_dir_is_refused(emulator, first_mount, mounts,
                                                              tmp_path):
    """Two live mounts of one state would each pay for the same archive's job (each keeps its
    own view of the job records): the second is refused, naming the first; once the first is
    unmounted the same command mounts at once."""
    cache = tmp_path / "shared-cache"
    one = mounts(emulator.url, "one", cache_dir=cache)
    wait_listed(one / VAULT, {"cached.bin", "uncached.bin", "dir"})
    second = tmp_path / "two"
    second.mkdir()
    command = [sys.executable, "-m", "glacierfs.cli", "us-east-1", second, "-o",
               f"endpoint_url={emulator.url},cache_dir={cache},poll=1"]
    before = emulator.stats()["requests"].get("InitiateJob", 0)
    try:
        proc = run(*command)
        assert proc.returncode == 1, proc.stderr
        assert f"is in use by the glacierfs mount on {one.path}" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert not os.path.ismount(second)
        proc = run("cat", one / VAULT / "uncached.bin")
        assert proc.returncode == 1 and NOT_READY_TEXT in proc.stderr
        one.unmount()
        proc = run(*command)
        assert proc.returncode == 0, proc.stderr
        assert listing(second / VAULT) >= {"cached.bin", "uncached.bin", "dir"}
        assert run("cat", second / VAULT / "uncached.bin").returncode == 1
    finally:
        if os.path.ismount(second):
            run("umount", second)
        wait_for(lambda: not daemon_pids(second), 20, "the second daemon to exit")
    assert emulator.stats()["requests"].get("InitiateJob", 0) == before + 1


def test_remount_with_the_emulator_stopped(emulator, first_mount, mounts):
    """No API call is needed to mount, list, stat, read cached bytes or read xattrs; a read of
    an uncached file fails quickly instead of hanging."""
    emulator.stop()
    try:
        mnt = mounts(emulator.url, "offline", cache_dir=first_mount["cache_dir"],
                     chunk_size="1M")
        root = mnt / VAULT
        assert listing(mnt.path) == {VAULT}
        assert tree_listing(root) == first_mount["ls"]
        assert text("find", root, "-printf", "%i %P\\n") == first_mount["inodes"]
        assert ok("cat", root / "cached.bin") == CACHED
        assert ok("cat", root / "dir" / "nested.txt") == NESTED
        assert ok("dd", f"if={root / 'cached.bin'}", "bs=4097", "skip=511", "count=2",
                  "status=none") == CACHED[4097 * 511:4097 * 513]
        assert getfattr_all(root / "cached.bin") == first_mount["attrs"]
        for _ in range(2):
            began = time.monotonic()
            proc = run("cat", root / "uncached.bin", timeout=60)
            elapsed = time.monotonic() - began
            assert proc.returncode == 1 and proc.stdout == b""
            assert NOT_READY_TEXT in proc.stderr or "Input/output error" in proc.stderr, \
                proc.stderr
            assert elapsed < 30, f"a read with the endpoint down took {elapsed:.1f}s"
        assert ok("cat", root / "cached.bin") == CACHED  # still served after the failures
    finally:
        if not emulator.running():
            emulator.start()
