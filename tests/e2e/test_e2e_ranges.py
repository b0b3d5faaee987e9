"""Ranged retrievals on a real mount: a 200+ MiB zip of stored members with ``range_size=32M``.

``unzip -l`` needs only the central directory at the end and retrieves at most two windows;
``unzip -p`` of one member retrieves only the windows the member spans; ``glacierfs restore``
afterwards completes the archive with the missing windows only (no two jobs for the same bytes)
and every byte equals the source; a ``kill -9`` between ranges and a remount lose nothing and
pay nothing twice; an archive of three times the daily budget is retrieved one window per
(emulated) day. Jobs are counted with ListJobs on the emulator, bytes compared with the source.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import time
import zipfile

import pytest
from e2e_util import (
    MIB,
    getfattr_one,
    glacierfs_cli,
    ok,
    run,
    running_emulator,
    start_emulator,
    wait_for,
    wait_listed,
)

from glacierfs.treehash import tree_hash_hex

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip not installed")]

VAULT = "zips"
WINDOW = 32 * MIB
PART = 16 * MIB
ZIP_MIN = 200 * MIB


def _upload(client, vault: str, data: bytes, description: str) -> str:
    """A multipart upload, as backup tools send big archives."""
    up = client.initiate_multipart_upload(vaultName=vault, archiveDescription=description,
                                          partSize=str(PART))
    view = memoryview(data)
    for start in range(0, len(data), PART):
        piece = view[start:start + PART]
        client.upload_multipart_part(vaultName=vault, uploadId=up["uploadId"],
                                     range=f"bytes {start}-{start + len(piece) - 1}/*",
                                     body=bytes(piece))
    out = client.complete_multipart_upload(vaultName=vault, uploadId=up["uploadId"],
                                           archiveSize=str(len(data)),
                                           checksum=tree_hash_hex(data))
    return out["archiveId"]


def _make_zip() -> tuple[bytes, dict[str, bytes]]:
    rng = random.Random(11)
    members: dict[str, bytes] = {}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        i = 0
        while buf.tell() < ZIP_MIN:
            name = f"dir{i % 4}/member-{i:03d}.bin"
            members[name] = rng.randbytes(rng.randint(1 * MIB, 9 * MIB))
            zf.writestr(name, members[name])
            i += 1
    return buf.getvalue(), members


def _jobs(sim, vault: str) -> list[tuple[int, int]]:
    """(start, end) of every archive-retrieval job of the vault, sorted."""
    client = sim.client(max_attempts=1)
    out = []
    for job in client.list_jobs(vaultName=vault)["JobList"]:
        if job["Action"] != "ArchiveRetrieval":
            continue
        rng = job.get("RetrievalByteRange") or f"0-{job['ArchiveSizeInBytes'] - 1}"
        start, end = map(int, rng.split("-"))
        out.append((start, end))
    return sorted(out)


def _assert_no_overlap(ranges: list[tuple[int, int]]) -> None:
    for (s1, e1), (s2, e2) in zip(ranges, ranges[1:], strict=False):
        assert e1 < s2, f"two jobs for the same bytes: {s1}-{e1} and {s2}-{e2}"


def _ranges_xattr(path) -> dict:
    raw = getfattr_one(path, "user.glacier.ranges")
    assert raw is not None, "no user.glacier.ranges on a file retrieved in ranges"
    return json.loads(raw)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with running_emulator(tmp_path_factory.mktemp("sim"), "--delay", "Standard=1") as sim:
        yield sim


@pytest.fixture(scope="module")
def source(emulator):
    data, members = _make_zip()
    client = emulator.client()
    client.create_vault(vaultName=VAULT)
    _upload(client, VAULT, data, "backup.zip")
    return data, members


@pytest.fixture(scope="module")
def mnt(emulator, source, module_mounts):
    mount = module_mounts(emulator.url, "ranges", range_size="32M", wait=60)
    wait_listed(mount / VAULT, {"backup.zip"})
    return mount


def test_unzip_list_retrieves_at_most_two_windows(emulator, source, mnt):
    data, members = source
    path = mnt / VAULT / "backup.zip"
    out = ok("unzip", "-l", path, timeout=120).decode()
    for name in members:
        assert name in out
    jobs = _jobs(emulator, VAULT)
    assert 1 <= len(jobs) <= 2, jobs
    assert all(e - s + 1 <= WINDOW for s, e in jobs)
    assert jobs[-1][1] == len(data) - 1          # the end of the zip: its central directory
    info = _ranges_xattr(path)
    assert info["requested"] == len(jobs) and info["cached"] == len(jobs)
    assert info["range_size"] == WINDOW and not info["whole_requested"]
    assert getfattr_one(path, "user.glacier.cache") == "partial"
    proc = glacierfs_cli("status", str(mnt.path))
    assert proc.returncode == 0, proc.stderr
    status = proc.stdout.decode()
    assert "ranges of 32.0 MiB" in status and "backup.zip" in status


def test_unzip_p_of_one_member_retrieves_only_the_windows_it_spans(emulator, source, mnt):
    data, members = source
    before = set(_jobs(emulator, VAULT))
    zf = zipfile.ZipFile(io.BytesIO(data))
    # A member that crosses a window boundary, away from the windows unzip -l asked for.
    taken = {s // WINDOW for s, _ in before}
    for info in zf.infolist():
        first = info.header_offset // WINDOW
        last = (info.header_offset + 200 + info.compress_size) // WINDOW
        if first != last and not {first, last} & taken:
            break
    else:
        pytest.fail("no member crosses a window boundary")
    out = ok("unzip", "-p", mnt / VAULT / "backup.zip", info.filename, timeout=120)
    assert hashlib.sha256(out).digest() == hashlib.sha256(members[info.filename]).digest()
    new = sorted(set(_jobs(emulator, VAULT)) - before)
    assert [s // WINDOW for s, _ in new] == [first, last], (new, first, last)


def test_whole_restore_completes_it_without_overlapping_jobs(emulator, source, mnt):
    data, _ = source
    path = mnt / VAULT / "backup.zip"
    proc = glacierfs_cli("restore", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "requested 1 archives" in proc.stdout.decode()
    proc = glacierfs_cli("wait", str(path), "--timeout", "180", timeout=200)
    assert proc.returncode == 0, proc.stderr
    jobs = _jobs(emulator, VAULT)
    _assert_no_overlap(jobs)
    assert sum(e - s + 1 for s, e in jobs) == len(data)   # every byte paid for exactly once
    assert len(jobs) == -(-len(data) // WINDOW)
    got = ok("cat", path, timeout=120)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert getfattr_one(path, "user.glacier.cache") == "cached"
    assert "verified" in (getfattr_one(path, "user.glacier.job.status_message") or "")


def test_kill9_between_ranges_and_remount_lose_nothing_and_pay_nothing_twice(
        emulator, mounts, tmp_path):
    rng = random.Random(3)
    data = rng.randbytes(3 * WINDOW + 5 * MIB)
    client = emulator.client()
    client.create_vault(vaultName="kill")
    _upload(client, "kill", data, "disk.img")
    cache = tmp_path / "cache"
    mnt = mounts(emulator.url, "kill", cache_dir=cache, range_size="32M", wait=60)
    path = mnt / "kill" / "disk.img"
    wait_listed(mnt / "kill", {"disk.img"})
    # One window read and cached; then the others requested, and the daemon killed at once.
    offset = WINDOW + 12345
    got = ok("dd", f"if={path}", "bs=64K", "iflag=skip_bytes,count_bytes", f"skip={offset}",
             "count=65536", "status=none", timeout=120)
    assert got == data[offset:offset + 65536]
    emulator.set_delays(Standard=4)   # the rest still running when the daemon dies
    proc = glacierfs_cli("restore", str(path))
    assert proc.returncode == 0, proc.stderr
    os.kill(mnt.pid, signal.SIGKILL)
    wait_for(lambda: run("stat", mnt.path).returncode != 0, 10, "the mount to be dead")
    run("fusermount3", "-uz", mnt.path)
    mnt.pid = None
    jobs_at_kill = _jobs(emulator, "kill")
    again = mounts(emulator.url, "kill2", cache_dir=cache, range_size="32M", wait=60)
    path = again / "kill" / "disk.img"
    # Nothing verified was lost: the window read before the kill is still cached.
    assert int(getfattr_one(path, "user.glacier.cache.bytes") or 0) >= WINDOW
    proc = glacierfs_cli("wait", str(path), "--timeout", "120", timeout=140)
    assert proc.returncode == 0, proc.stderr + proc.stdout.decode()
    jobs = _jobs(emulator, "kill")
    _assert_no_overlap(jobs)
    assert sum(e - s + 1 for s, e in jobs) == len(data)
    assert set(jobs_at_kill) <= set(jobs)
    got = ok("cat", path, timeout=120)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    emulator.set_delays(Standard=1)


def test_archive_of_three_budgets_is_retrieved_over_three_days(mounts, tmp_path,
                                                               monkeypatch):
    sim = start_emulator(tmp_path / "sim", "--delay", "Standard=1")
    try:
        data = random.Random(4).randbytes(3 * WINDOW)
        client = sim.client()
        client.create_vault(vaultName="paced")
        _upload(client, "paced", data, "paced.tar")
        clock = tmp_path / "clock"
        clock.write_text("0")
        monkeypatch.setenv("GLACIERFS_TEST_CLOCK_FILE", str(clock))
        mnt = mounts(sim.url, "paced", range_size="32M", budget="32M")
        path = mnt / "paced" / "paced.tar"
        wait_listed(mnt / "paced", {"paced.tar"})
        proc = glacierfs_cli("restore", str(path))
        assert proc.returncode == 0, proc.stderr
        seen: set[tuple[int, int]] = set()   # jobs ever listed (a day later they expire)
        for day in range(1, 4):
            wait_for(lambda d=day: int(getfattr_one(path, "user.glacier.cache.bytes") or 0)
                     == d * WINDOW, 60, f"day {day}'s window to be cached")
            time.sleep(2.5)   # a polling round or two: nothing more may start today
            seen |= set(_jobs(sim, "paced"))
            assert len(seen) == day, seen
            info = _ranges_xattr(path)
            if day < 3:
                assert info["queued"] == 3 - day, info
                assert "budget" in (getfattr_one(path, "user.glacier.job.status_message")
                                    or "")
                status = glacierfs_cli("status", str(mnt.path)).stdout.decode()
                assert f"{3 - day} queued" in status
                assert f"{3 - day} wait for the daily budget" in status
                assert info["waiting_for_budget"] == 3 - day
            clock.write_text(str(day * 86400 + 60))
            sim.advance_clock(86400 + 60)
        _assert_no_overlap(sorted(seen))
        assert sorted(seen) == [(d * WINDOW, (d + 1) * WINDOW - 1) for d in range(3)]
        got = ok("cat", path, timeout=60)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    finally:
        sim.stop()
