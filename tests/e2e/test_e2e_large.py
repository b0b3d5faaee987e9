"""Large archives read by range while they download: the chunks a reader waits for are fetched
first, so a range read succeeds while ``user.glacier.cache`` is still ``partial``, and every
byte read equals the source.

The emulator delays each GetJobOutput of the vault (``slow`` fault), as a slow link would, so
the whole download takes seconds and "before the whole archive" is observable, not a race.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time

import pytest
from e2e_util import (
    MIB,
    NOT_READY_TEXT,
    getfattr_all,
    getfattr_one,
    ok,
    run,
    running_emulator,
    wait_for,
    wait_listed,
)

from glacierfs.treehash import tree_hash_hex

pytestmark = pytest.mark.e2e

VAULT = "big"
PATTERN_SIZE = 256 * MIB + 4321          # random bytes: any offset error shows
ZERO_SIZE = 1024 * MIB                    # synthesized by the emulator (zero bytes)
PART = 16 * MIB


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with running_emulator(tmp_path_factory.mktemp("sim"), "--delay", "Standard=1") as sim:
        yield sim


@pytest.fixture(scope="module")
def source(emulator):
    """A 256 MiB archive of random bytes (multipart upload) and a 1 GiB synthesized one."""
    rng = random.Random(99)
    data = b"".join(rng.randbytes(min(PART, PATTERN_SIZE - start))
                    for start in range(0, PATTERN_SIZE, PART))
    client = emulator.client()
    client.create_vault(vaultName=VAULT)
    up = client.initiate_multipart_upload(vaultName=VAULT, archiveDescription="pattern.bin",
                                          partSize=str(PART))
    view = memoryview(data)
    for start in range(0, len(data), PART):
        piece = view[start:start + PART]
        client.upload_multipart_part(vaultName=VAULT, uploadId=up["uploadId"],
                                     range=f"bytes {start}-{start + len(piece) - 1}/*",
                                     body=bytes(piece))
    client.complete_multipart_upload(vaultName=VAULT, uploadId=up["uploadId"],
                                     archiveSize=str(len(data)), checksum=tree_hash_hex(data))
    emulator.synthesize(VAULT, 1, ZERO_SIZE, "zeros-{i}.bin")
    return data


@pytest.fixture(scope="module")
def mnt(emulator, source, module_mounts):
    # One whole-archive job per archive (ranged reads are tests/e2e/test_e2e_ranges.py): what
    # is tested here is a reader's chunks of that job coming first.
    mount = module_mounts(emulator.url, "large", range_size="off")
    wait_listed(mount / VAULT, {"pattern.bin", "zeros-0.bin"})
    return mount


def dd_range(path, offset: int, length: int, timeout: float = 60.0) -> bytes:
    return ok("dd", f"if={path}", "bs=1M", "iflag=skip_bytes,count_bytes", f"skip={offset}",
              f"count={length}", "status=none", timeout=timeout)


def restore_and_slow_down(emulator, f, offset: int, delay: float) -> None:
    """First read (EREMOTE, starts the job); make the vault's downloads slow; wait for the job."""
    proc = run("dd", f"if={f}", "bs=4096", "iflag=skip_bytes", f"skip={offset}", "count=1",
               "of=/dev/null")
    assert proc.returncode == 1 and NOT_READY_TEXT in proc.stderr, proc.stderr
    emulator.add_fault({"operation": "GetJobOutput", "fault": "slow", "delay": delay,
                        "vault": VAULT})
    wait_for(lambda: getfattr_one(f, "user.glacier.job.status") == "Succeeded", 30,
             "the retrieval job to succeed")


def wait_cached(f, size: int, timeout: float) -> None:
    began = time.monotonic()
    proc = run(sys.executable, "-m", "glacierfs.cli", "wait", f, "--timeout", str(timeout),
               timeout=timeout + 30)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert time.monotonic() - began < timeout + 30
    attrs = getfattr_all(f)
    assert attrs["user.glacier.cache"] == "cached"
    assert attrs["user.glacier.cache.bytes"] == str(size)


def test_pattern_archive_read_by_range_while_it_downloads(emulator, source, mnt):
    f = mnt / VAULT / "pattern.bin"
    first = 200 * MIB + 12345                      # inside the 13th 16 MiB chunk
    restore_and_slow_down(emulator, f, first, delay=1.0)
    try:
        got = dd_range(f, first, 100_000)
        assert got == source[first:first + 100_000]
        cache = getfattr_one(f, "user.glacier.cache")
        held = int(getfattr_one(f, "user.glacier.cache.bytes"))
        assert cache == "partial", "the range read waited for the whole archive"
        assert 0 < held < PATTERN_SIZE
        # more ranges while the rest downloads: the tail, and one across a chunk boundary
        tail = PATTERN_SIZE - 5000
        assert dd_range(f, tail, 10_000) == source[tail:]
        edge = 16 * MIB * 7 - 777
        assert dd_range(f, edge, 2000) == source[edge:edge + 2000]
        wait_cached(f, PATTERN_SIZE, 120)
    finally:
        emulator.clear_faults()
    digest = ok("sha256sum", f, timeout=120).split()[0].decode()
    assert digest == hashlib.sha256(source).hexdigest()


def test_one_gib_archive_read_by_range_while_it_downloads(emulator, source, mnt):
    f = mnt / VAULT / "zeros-0.bin"
    assert int(ok("stat", "-c", "%s", f)) == ZERO_SIZE
    first = 700 * MIB + 3
    restore_and_slow_down(emulator, f, first, delay=0.25)
    try:
        assert dd_range(f, first, 3 * MIB) == bytes(3 * MIB)
        assert getfattr_one(f, "user.glacier.cache") == "partial"
        assert 0 < int(getfattr_one(f, "user.glacier.cache.bytes")) < ZERO_SIZE
        assert dd_range(f, ZERO_SIZE - 10, 100) == bytes(10)
        wait_cached(f, ZERO_SIZE, 120)
    finally:
        emulator.clear_faults()
    ok("cmp", "-n", str(ZERO_SIZE), f, "/dev/zero", timeout=120)  # every byte is zero
