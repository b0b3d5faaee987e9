"""Reading through the mount: retrieval on first read (EREMOTE, then the exact bytes), explicit
restores with ``setfattr``, ``retrieve=manual``, concurrent readers sharing one job, range reads
with ``dd`` across chunk boundaries, and ``cp``/``rsync -a`` of a restored tree.

One emulator (short tier delays) and one mount (``chunk_size=1M``) for the module; each test
reads its own files, so the job counts of one never include another's.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import time
from pathlib import Path

import pytest
from e2e_util import (NOT_READY_TEXT, MIB, TOOL_ENV, archive_jobs, getfattr_all, getfattr_one,
                      initiated, ok, read_when_ready, run, start_emulator, wait_for,
                      wait_listed)

from glacierfs.commands.demo import fastglacier, mt2

pytestmark = pytest.mark.e2e

VAULT = "data"
STANDARD_DELAY = 1.5
BULK_DELAY = 3.0
RNG = random.Random(20240601)

# path -> (description, data, mtime or None)
TREE = {
    "tree/a.txt": (mt2("tree/a.txt", "20200101T010203Z"), RNG.randbytes(1000), 1577840523),
    "tree/sub/b.bin": (fastglacier("tree/sub/b.bin", "20210202T020304Z"),
                       RNG.randbytes(MIB + MIB // 2 + 3), 1612231384),
    "tree/sub/ü ñ.txt": (mt2("tree/sub/ü ñ.txt", "20220303T030405Z"), b"unicode\n", 1646276645),
    "tree/empty.txt": (mt2("tree/empty.txt", "20230404T040506Z"), b"", 1680581106),
}
FILES = {
    "small.txt": RNG.randbytes(10_000),
    "bulk.bin": RNG.randbytes(3000),
    "shared.bin": RNG.randbytes(2 * MIB + 7),
    "ranged.bin": RNG.randbytes(5 * MIB + 12345),
    "manual.bin": RNG.randbytes(4321),
}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    sim = start_emulator(tmp_path_factory.mktemp("sim"), "--delay", f"Standard={STANDARD_DELAY}",
                         "--delay", f"Bulk={BULK_DELAY}", "--delay", "Expedited=1")
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def ids(emulator):
    client = emulator.client()
    client.create_vault(vaultName=VAULT)
    out = {}
    for name, data in FILES.items():
        out[name] = client.upload_archive(vaultName=VAULT, body=data,
                                          archiveDescription=name)["archiveId"]
    for name, (description, data, _) in TREE.items():
        out[name] = client.upload_archive(vaultName=VAULT, body=data,
                                          archiveDescription=description)["archiveId"]
    return out


@pytest.fixture(scope="module")
def mnt(emulator, ids, module_mounts):
    mount = module_mounts(emulator.url, "read", chunk_size="1M")
    wait_listed(mount / VAULT, set(FILES) | {"tree"})
    return mount


def wait_attr(path: Path, name: str, value: str, timeout: float = 30.0) -> None:
    wait_for(lambda: getfattr_one(path, name) == value, timeout, f"{name}={value} on {path}")


def test_cat_fails_with_eremote_then_gives_the_exact_bytes(emulator, ids, mnt):
    f = mnt / VAULT / "small.txt"
    before = initiated(emulator)
    began = time.monotonic()
    proc = run("cat", f)
    assert proc.returncode == 1 and proc.stdout == b""
    assert NOT_READY_TEXT in proc.stderr
    assert time.monotonic() - began < 5  # wait=0: no waiting for the job
    attrs = getfattr_all(f)
    assert attrs["user.glacier.job.status"] == "InProgress"
    assert attrs["user.glacier.job.tier"] == "Standard"
    assert attrs["user.glacier.cache"] == "absent"
    jobs = archive_jobs(emulator, VAULT, ids["small.txt"])
    assert [j["JobId"] for j in jobs] == [attrs["user.glacier.job.id"]]
    assert jobs[0]["Tier"] == "Standard"
    assert attrs["user.glacier.job.creation_date"]
    assert read_when_ready(f) == FILES["small.txt"]  # each cat before it is ready: EREMOTE
    assert initiated(emulator) - before == 1  # repeated reads joined the one job
    wait_attr(f, "user.glacier.cache", "cached")
    attrs = getfattr_all(f)
    assert attrs["user.glacier.job.status"] == "Succeeded"
    assert attrs["user.glacier.cache.bytes"] == str(len(FILES["small.txt"]))
    assert attrs["user.glacier.job.completion_date"] >= attrs["user.glacier.job.creation_date"]
    assert ok("cat", f) == FILES["small.txt"]
    assert initiated(emulator) - before == 1


def test_setfattr_restore_bulk(emulator, ids, mnt):
    f = mnt / VAULT / "bulk.bin"
    before = initiated(emulator)
    bad = run("setfattr", "-n", "user.glacier.restore", "-v", "Glacial", f)
    assert bad.returncode != 0 and "Invalid argument" in bad.stderr
    assert "user.glacier.job.status" not in getfattr_all(f)
    ok("setfattr", "-n", "user.glacier.restore", "-v", "Bulk", f)
    attrs = getfattr_all(f)
    assert attrs["user.glacier.job.tier"] == "Bulk"
    assert attrs["user.glacier.job.status"] == "InProgress"
    (job,) = archive_jobs(emulator, VAULT, ids["bulk.bin"])
    assert job["Tier"] == "Bulk" and job["JobId"] == attrs["user.glacier.job.id"]
    proc = run("cat", f)
    assert proc.returncode == 1 and NOT_READY_TEXT in proc.stderr  # reading joins, no new job
    wait_attr(f, "user.glacier.job.status", "Succeeded", timeout=BULK_DELAY + 20)
    # the whole archive is fetched in the background once the job is done: no read needed
    wait_attr(f, "user.glacier.cache", "cached")
    assert ok("cat", f) == FILES["bulk.bin"]
    ok("setfattr", "-n", "user.glacier.restore", "-v", "Standard", f)  # cached: nothing to do
    assert initiated(emulator) - before == 1
    assert getfattr_one(f, "user.glacier.job.tier") == "Bulk"


def test_retrieve_manual_never_starts_a_job_from_a_read(emulator, ids, mnt, mounts):
    manual = mounts(emulator.url, "manual", retrieve="manual")
    f = manual / VAULT / "manual.bin"
    wait_listed(manual / VAULT, {"manual.bin"})
    before = initiated(emulator)
    for tool in (["cat", f], ["dd", f"if={f}", "of=/dev/null", "bs=100", "skip=3", "count=1"]):
        proc = run(*tool)
        assert proc.returncode == 1 and "No data available" in proc.stderr, proc.stderr
    time.sleep(1.5)  # a job started behind the read's back would show up by now
    assert initiated(emulator) == before
    assert archive_jobs(emulator, VAULT, ids["manual.bin"]) == []
    attrs = getfattr_all(f)
    assert not [n for n in attrs if n.startswith("user.glacier.job.")]
    assert attrs["user.glacier.cache"] == "absent"
    # an explicit restore is the way to retrieve on such a mount
    ok("setfattr", "-n", "user.glacier.restore", "-v", "Expedited", f)
    assert getfattr_one(f, "user.glacier.job.tier") == "Expedited"
    assert initiated(emulator) - before == 1
    wait_attr(f, "user.glacier.cache", "cached")
    assert ok("cat", f) == FILES["manual.bin"]


def test_two_concurrent_readers_start_one_job(emulator, ids, mnt, mounts):
    """Two processes read the same uncached file at once on a ``wait=30`` mount: both block
    until the data is there, both get the exact bytes, and Glacier saw one job."""
    waiting = mounts(emulator.url, "waiting", wait=30, chunk_size="1M")
    f = waiting / VAULT / "shared.bin"
    wait_listed(waiting / VAULT, {"shared.bin"})
    before = initiated(emulator)
    began = time.monotonic()
    readers = [subprocess.Popen(["cat", str(f)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=TOOL_ENV) for _ in range(2)]
    results = [r.communicate(timeout=60) for r in readers]
    elapsed = time.monotonic() - began
    for reader, (out, err) in zip(readers, results, strict=True):
        assert reader.returncode == 0, err.decode()
        assert out == FILES["shared.bin"]
    assert elapsed >= STANDARD_DELAY  # they really waited for the job
    assert initiated(emulator) - before == 1
    assert len(archive_jobs(emulator, VAULT, ids["shared.bin"])) == 1


def dd(path: Path, *operands: str) -> bytes:
    return ok("dd", f"if={path}", "status=none", *operands)


# (dd operands, offset, length): unaligned offsets, across the 1 MiB chunk boundaries, at EOF
RANGES = [
    (("bs=1000", "skip=1048", "count=3"), 1_048_000, 3000),             # crosses 1 MiB
    (("bs=4097", "skip=511", "count=2"), 4097 * 511, 8194),              # crosses 2 MiB
    (("bs=7", "count=1"), 0, 7),
    (("bs=1", "skip=5255224"), 5 * MIB + 12344, 1),                      # the last byte
    (("bs=3M", "skip=1", "count=1"), 3 * MIB, 2 * MIB + 12345),          # runs past EOF
    (("bs=64K", "iflag=skip_bytes,count_bytes", f"skip={MIB - 1}", "count=2"), MIB - 1, 2),
    (("bs=1M", "iflag=skip_bytes,count_bytes", f"skip={3 * MIB - 100}", f"count={MIB + 200}"),
     3 * MIB - 100, MIB + 200),                                          # spans three chunks
    (("bs=100", "skip=60000", "count=5"), 6_000_000, 0),                 # beyond EOF: nothing
]


def test_dd_range_reads_match_the_source(emulator, ids, mnt):
    f = mnt / VAULT / "ranged.bin"
    source = FILES["ranged.bin"]
    proc = run("dd", f"if={f}", "of=/dev/null", "bs=4096", "skip=300", "count=1")
    assert proc.returncode == 1 and NOT_READY_TEXT in proc.stderr
    wait_attr(f, "user.glacier.job.status", "Succeeded")
    for operands, offset, length in RANGES:
        got = dd(f, *operands)
        assert got == source[offset:offset + length], operands
    wait_attr(f, "user.glacier.cache", "cached")
    assert int(getfattr_one(f, "user.glacier.cache.bytes")) == len(source)
    for operands, offset, length in reversed(RANGES):
        assert dd(f, *operands) == source[offset:offset + length], operands
    assert ok("cat", f) == source


def test_rsync_and_cp_copy_a_restored_tree(emulator, ids, mnt, tmp_path):
    """rsync copies what is cached and fails (exit 23) on the rest, whose reads start the
    retrievals; run again once they are done, it copies the tree byte-exact with the
    uploader's mtimes. cp -r gives the same bytes."""
    src = mnt / VAULT / "tree"
    before = initiated(emulator)
    first = run("rsync", "-a", f"{src}/", tmp_path / "rsync")
    assert first.returncode == 23, first.stderr
    assert NOT_READY_TEXT in first.stderr
    started = initiated(emulator) - before
    non_empty = [name for name, (_, data, _) in TREE.items() if data]
    assert started == len(non_empty)  # one job per file that has bytes to fetch
    for name in non_empty:
        wait_attr(mnt / VAULT / name, "user.glacier.cache", "cached")
    ok("rsync", "-a", f"{src}/", tmp_path / "rsync")
    ok("cp", "-r", src, tmp_path / "cp")
    for name, (_, data, mtime) in TREE.items():
        rel = Path(name).relative_to("tree")
        for dest in (tmp_path / "rsync" / rel, tmp_path / "cp" / rel):
            assert dest.read_bytes() == data, dest
        st = os.stat(tmp_path / "rsync" / rel)
        assert st.st_mtime == mtime
        assert stat.S_IMODE(st.st_mode) == 0o444
    assert initiated(emulator) - before == started  # the second pass started nothing


def test_mount_readahead_is_raised_or_left_alone(emulator, ids, mnt, mounts):
    """Sequential readers get 1 MiB kernel readahead on the mount by default (fewer, larger
    requests to the daemon); ``readahead=0`` leaves the kernel's own default."""
    def window(mount) -> int:  # noqa: ANN001
        dev = os.stat(mount.path).st_dev
        return int(Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
                   .read_text())

    dev = os.stat(mnt.path).st_dev
    if not os.access(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", os.W_OK):
        pytest.skip("/sys is read-only here: the kernel's default readahead stays")
    wait_for(lambda: window(mnt) == 1024, 10, "1 MiB readahead on the default mount")
    plain = mounts(emulator.url, "plain-readahead", readahead="0")
    wait_listed(plain / VAULT, set(FILES) | {"tree"})
    assert window(plain) != 1024
    bigger = mounts(emulator.url, "big-readahead", readahead="4M")
    assert wait_for(lambda: window(bigger) == 4096, 10, "4 MiB readahead")
