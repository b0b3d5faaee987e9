"""Cache room on a real mount: restoring twice what the cache holds neither thrashes nor hangs.

10 archives of 8 MiB, ``cache_size=40M`` (room for four beside the index's margin):
``glacierfs restore -r`` starts what fits and says the rest waits; ``glacierfs wait -r`` gives
up within seconds with the fix; reading the restored files frees room and the rest follows,
each archive fetched once with one job.
"""

from __future__ import annotations

import json
import random
import time

import pytest
from e2e_util import (
    MIB,
    archive_jobs,
    getfattr_all,
    glacierfs_cli,
    run,
    running_emulator,
    wait_listed,
)

from glacierfs.commands.demo import mt2
from glacierfs.jobs.room import capacity_of

pytestmark = pytest.mark.e2e

VAULT = "room"
COUNT, SIZE = 10, 8 * MIB
CACHE = 40 * MIB


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with running_emulator(tmp_path_factory.mktemp("sim"), "--delay", "Standard=1") as sim:
        yield sim


@pytest.fixture(scope="module")
def files(emulator):
    client = emulator.client()
    client.create_vault(vaultName=VAULT)
    rng = random.Random(9)
    out = {}
    for i in range(COUNT):
        name = f"set/part{i:02}.bin"
        data = rng.randbytes(SIZE)
        archive = client.upload_archive(vaultName=VAULT, body=data,
                                        archiveDescription=mt2(name, "20200101T000000Z"))
        out[name] = (archive["archiveId"], data)
    return out


def sent(sim) -> int:
    return int(sim.stats()["bytes_sent"])


def test_restore_twice_the_cache_waits_for_room_then_completes_once_read(
        emulator, files, mounts):
    mnt = mounts(emulator.url, "room", cache_size="40M", chunk_size="4M")
    wait_listed(mnt / VAULT, {"set"})
    before = sent(emulator)
    fits = capacity_of(CACHE) // SIZE

    restore = glacierfs_cli("restore", "-r", mnt / VAULT)
    assert restore.returncode == 0, restore.stderr
    out = restore.stdout.decode()
    assert f"requested {COUNT} archives" in out
    assert f"{COUNT - fits} of them" in out and "exceed the cache room" in out, out

    began = time.monotonic()
    wait = glacierfs_cli("wait", "-r", mnt / VAULT, "--timeout", "120")
    took = time.monotonic() - began
    assert wait.returncode == 4, (wait.returncode, wait.stderr)
    assert "wait for cache room" in wait.stderr and "glacierfs copy" in wait.stderr
    assert took < 60, f"wait took {took:.0f}s to see that only a reader can free room"

    states = {name: getfattr_all(mnt / VAULT / name) for name in files}
    cached = [n for n, x in states.items() if x["user.glacier.cache"] == "cached"]
    waiting = [n for n, x in states.items()
               if x.get("user.glacier.job.status") == "Queued"
               and x.get("user.glacier.job.status_message", "").startswith(
                   "waiting for cache room")]
    assert len(cached) == fits and len(waiting) == COUNT - fits, states
    assert all(states[n].get("user.glacier.cache.pinned") == "held" for n in cached)
    # No thrash: what was sent is what fits, not a multiple of it.
    assert sent(emulator) - before <= 1.15 * fits * SIZE
    doc = json.loads(glacierfs_cli("status", mnt.path, "--json").stdout)
    assert doc["cache"]["pinned"] == fits * SIZE
    human = glacierfs_cli("status", mnt.path).stdout.decode()
    assert "held for restored files not yet read" in human

    # Reading the restored files frees their room; the rest starts and is read in turn.
    done: set[str] = set()
    deadline = time.monotonic() + 240
    while len(done) < COUNT and time.monotonic() < deadline:
        for name, (_, data) in files.items():
            if name in done:
                continue
            if getfattr_all(mnt / VAULT / name)["user.glacier.cache"] != "cached":
                continue
            assert (mnt / VAULT / name).read_bytes() == data
            done.add(name)
        time.sleep(0.5)
    assert len(done) == COUNT, f"only {len(done)} of {COUNT} came through"
    assert sent(emulator) - before <= 1.15 * COUNT * SIZE
    for archive_id, _ in files.values():
        assert len(archive_jobs(emulator, VAULT, archive_id)) == 1
    # Files read and then evicted are not "downloaded" any more, and wait says so at once.
    human = glacierfs_cli("status", mnt.path).stdout.decode()
    evicted = [n for n in files
               if getfattr_all(mnt / VAULT / n)["user.glacier.cache"] != "cached"]
    assert evicted, "10 files of 8 MiB cannot all be in a 40 MiB cache"
    assert "since evicted" in getfattr_all(mnt / VAULT / evicted[0])[
        "user.glacier.job.status_message"]
    wait = glacierfs_cli("wait", "-r", mnt / VAULT, "--timeout", "60")
    assert wait.returncode == 4 and "since evicted" in wait.stderr, wait.stderr

    # A remount does not download again what was read and evicted (nobody asked for it).
    mnt.unmount()
    outputs = emulator.stats()["requests"].get("GetJobOutput", 0)
    again = mounts(emulator.url, "room-again", cache_dir=mnt.cache_dir, cache_size="40M",
                   chunk_size="4M")
    wait_listed(again / VAULT, {"set"})
    time.sleep(4)
    assert emulator.stats()["requests"].get("GetJobOutput", 0) == outputs
    assert sorted(n for n in files
                  if getfattr_all(again / VAULT / n)["user.glacier.cache"] == "cached") == \
        sorted(set(files) - set(evicted))


def test_a_reader_never_evicts_restored_unread_data(emulator, files, mounts):
    """A foreground read of another archive while pinned data fills the cache waits for room
    (the reason in its xattr) instead of evicting what was restored."""
    mnt = mounts(emulator.url, "reader", cache_size="20M", chunk_size="4M")
    wait_listed(mnt / VAULT, {"set"})
    names = sorted(files)
    restored = names[:2]                     # 16 MiB of the 16 MiB room
    for name in restored:
        assert glacierfs_cli("restore", mnt / VAULT / name).returncode == 0
    wait = glacierfs_cli("wait", *[mnt / VAULT / n for n in restored], "--timeout", "120")
    assert wait.returncode == 0, wait.stderr
    other = mnt / VAULT / names[5]
    proc = run("cat", other)
    assert proc.returncode != 0
    time.sleep(3)
    again = run("cat", other)
    # "Object is remote" while the restored files are fresh; once they sit unread, "No space
    # left on device" at once: nothing but reading them frees the room (room.py).
    assert again.returncode != 0 and ("Object is remote" in again.stderr
                                      or "No space left on device" in again.stderr), again.stderr
    attrs = getfattr_all(other)
    # Its job from the first test is adopted; its bytes wait for room all the same.
    assert attrs["user.glacier.job.status_message"].startswith("waiting for cache room"), attrs
    for name in restored:
        assert getfattr_all(mnt / VAULT / name)["user.glacier.cache"] == "cached"
    # Reading one restored file whole frees its room; the waiting read then goes through.
    assert (mnt / VAULT / restored[0]).read_bytes() == files[restored[0]][1]
    deadline = time.monotonic() + 120
    while getfattr_all(other)["user.glacier.cache"] != "cached":
        assert time.monotonic() < deadline, getfattr_all(other)
        time.sleep(0.5)
    assert other.read_bytes() == files[names[5]][1]
    assert getfattr_all(mnt / VAULT / restored[1])["user.glacier.cache"] == "cached"
