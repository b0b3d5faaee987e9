"""``glacierfs restore -r``, ``glacierfs wait -r`` and ``glacierfs status --json`` on a live
mount, chained with rsync the way the README tells people to restore a tree."""

from __future__ import annotations

import json
import os
import random
import signal
import sys

import pytest
from e2e_util import (
    getfattr_all,
    glacierfs_cli,
    initiated,
    listing,
    ok,
    run,
    running_emulator,
    text,
    wait_listed,
)
from mount_support import wait_for

from glacierfs.commands.demo import fastglacier, mt2

pytestmark = pytest.mark.e2e

VAULT = "cmds"
RNG = random.Random(3)
ALBUM = {
    "album/one.jpg": (mt2("album/one.jpg", "20190301T101010Z"), RNG.randbytes(1_500_000),
                      1551435010),
    "album/two.jpg": (fastglacier("album/two.jpg", "20190302T111111Z"), RNG.randbytes(70_000),
                      1551525071),
    "album/raw/three.cr2": (mt2("album/raw/three.cr2", "20190303T121212Z"),
                            RNG.randbytes(2_100_000), 1551615132),
}
OTHER = RNG.randbytes(500)
GLACIERFS = f"{sys.executable} -m glacierfs.cli"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with running_emulator(tmp_path_factory.mktemp("sim"), "--delay", "Standard=3") as sim:
        yield sim


@pytest.fixture(scope="module")
def mnt(emulator, module_mounts):
    client = emulator.client()
    client.create_vault(vaultName=VAULT)
    for description, data, _ in ALBUM.values():
        client.upload_archive(vaultName=VAULT, body=data, archiveDescription=description)
    client.upload_archive(vaultName=VAULT, body=OTHER, archiveDescription="other.txt")
    mount = module_mounts(emulator.url, "cmds")
    wait_listed(mount / VAULT, {"album", "other.txt"})
    return mount


def status_json(mnt) -> dict:
    proc = glacierfs_cli("status", mnt.path, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_restore_wait_rsync_a_tree(emulator, mnt, tmp_path):
    album = mnt / VAULT / "album"
    before = initiated(emulator)
    proc = glacierfs_cli("restore", "-r", album)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith(f"requested {len(ALBUM)} archives")
    assert initiated(emulator) - before == len(ALBUM)

    doc = status_json(mnt)
    jobs = {job["path"]: job for job in doc["jobs"]}
    for name in ALBUM:
        assert f"{VAULT}/{name}" in jobs, doc
        job = jobs[f"{VAULT}/{name}"]
        assert job["status"] == "InProgress"
        assert job["tier"] == "Standard"
        assert job["job_id"] == getfattr_all(mnt / VAULT / name)["user.glacier.job.id"]
    assert f"{VAULT}/other.txt" not in jobs
    assert [v["name"] for v in doc["vaults"]] == [VAULT]
    human = text(sys.executable, "-m", "glacierfs.cli", "status", mnt.path)
    assert "InProgress" in human and "album/one.jpg" in human

    dest = tmp_path / "restored"
    script = (f'{GLACIERFS} restore -r "$1" && {GLACIERFS} wait -r "$1" --timeout 60 '
              f'&& rsync -a "$1/" "$2/"')
    ok("sh", "-c", script, "sh", album, dest, timeout=120)
    assert initiated(emulator) - before == len(ALBUM)  # the second restore started nothing
    for name, (_, data, mtime) in ALBUM.items():
        copy = dest / os.path.relpath(name, "album")
        assert copy.read_bytes() == data, copy
        assert os.stat(copy).st_mtime == mtime
    assert sorted(p.name for p in dest.rglob("*")) == ["one.jpg", "raw", "three.cr2", "two.jpg"]

    doc = status_json(mnt)
    assert doc["job_counts"].get("cached") == len(ALBUM)
    assert not [j for j in doc["jobs"] if j["path"].startswith(f"{VAULT}/album/")]
    assert "user.glacier.job.status" not in getfattr_all(mnt / VAULT / "other.txt")
    assert listing(mnt / VAULT) >= {"album", "other.txt"}


def test_wait_without_restore_fails(mnt):
    proc = glacierfs_cli("wait", mnt / VAULT / "other.txt", "--timeout", "5")
    assert proc.returncode == 1
    assert "glacierfs restore" in proc.stderr
    proc = glacierfs_cli("restore", mnt / VAULT / "album")
    assert proc.returncode != 0 and "-r" in proc.stderr


def test_wait_on_files_outside_a_mount_fails(mnt, tmp_path):
    """Nothing will ever fetch a file that is not on a glacierfs mount: wait must not report
    "100% 0/0 files" and exit 0 for it."""
    local = tmp_path / "local.txt"
    local.write_text("not in Glacier\n")
    proc = glacierfs_cli("wait", local, "--timeout", "5")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert f"{local}: not a file on a glacierfs mount" in proc.stderr
    proc = glacierfs_cli("wait", "-r", tmp_path, mnt / VAULT / "other.txt", "--timeout", "5")
    assert proc.returncode == 1 and "not a file on a glacierfs mount" in proc.stderr


def test_wait_says_why_it_stopped_on_timeout(emulator, mnt):
    target = mnt / VAULT / "other.txt"
    emulator.set_delays(Standard=60)
    try:
        ok(sys.executable, "-m", "glacierfs.cli", "restore", target)
        proc = glacierfs_cli("wait", target, "--timeout", "1")
    finally:
        emulator.set_delays(Standard=3)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "1 of 1 files not cached after 1 s" in proc.stderr


def test_status_of_a_directory_in_the_mount_shows_the_mount(mnt, tmp_path):
    proc = glacierfs_cli("status", mnt / VAULT / "album")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith(f"glacierfs on {mnt.path}\n")
    proc = glacierfs_cli("status", tmp_path)
    assert proc.returncode == 1 and "is not a live glacierfs mount" in proc.stderr


def test_a_dead_mount_does_not_hide_the_live_ones(emulator, mnt, mounts):
    dead = mounts(emulator.url, "dead")
    os.kill(dead.pid, signal.SIGKILL)
    wait_for(lambda: run("stat", "-f", dead.path).returncode != 0, 10, "the mount to die")
    proc = glacierfs_cli("status")
    assert proc.returncode == 1
    assert f"glacierfs on {mnt.path}\n" in proc.stdout.decode()   # the live one is shown
    assert f"{dead.path}: Transport endpoint is not connected" in proc.stderr
    assert f"fusermount3 -u {dead.path}" in proc.stderr and "Traceback" not in proc.stderr
    proc = glacierfs_cli("status", dead.path)
    assert proc.returncode == 1 and "fusermount3 -u" in proc.stderr
