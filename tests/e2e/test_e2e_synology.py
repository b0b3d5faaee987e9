"""A Synology Glacier Backup pair mounted for the first time: the data vault lists by archive
id and says why until the mapping job is in, then shows SHARE/BASEPATH names with the backup
time as mtime; every archive stays at .by-id; ``cat``, ``glacierfs status`` and a remount use
the same names, and no second job is ever started for the mapping archive."""

from __future__ import annotations

import json
import os

import pytest
from e2e_util import (
    getfattr_all,
    getfattr_one,
    glacierfs_cli,
    listing,
    read_when_ready,
    running_emulator,
    wait_for,
)
from synology_support import mapping_db

from glacierfs.sim.testing import upload

pytestmark = pytest.mark.e2e

VAULT = "NAS_0012345ABCDE_1"
MAPPING = VAULT + "_mapping"
PHOTO = b"JPEG bytes of a photo\n" * 50
BUDGET = b"budget 2017\n" * 20


@pytest.fixture
def emulator(tmp_path_factory):
    with running_emulator(tmp_path_factory.mktemp("sim"), "--delay", "inventory=1",
                          "--delay", "Standard=3") as sim:
        yield sim


def test_a_synology_pair_shows_real_names_once_the_mapping_is_in(emulator, mounts, tmp_path):
    glacier = emulator.client(max_attempts=1)
    glacier.create_vault(vaultName=VAULT)
    glacier.create_vault(vaultName=MAPPING)
    photo = upload(glacier, VAULT, PHOTO, "")
    old = upload(glacier, VAULT, b"budget 2015\n", "")
    budget = upload(glacier, VAULT, BUDGET, "")
    db = mapping_db(tmp_path / "m.db", [
        ("photo", "important/photos/march 2015/IMG_20150507_194814.JPG", photo, 1431027000, 1, 1),
        ("homes", "admin/Desktop/IMG_20150507_194814.JPG", photo, 1431027000, 1, 1),
        ("homes", "admin/budget.txt", old, 1431027000, 1, 0),
        ("homes", "admin/budget.txt", budget, 1500000000, 2, 1),
    ])
    mapping_id = upload(glacier, MAPPING, db.read_bytes(), "")

    mnt = mounts(emulator.url)
    root = mnt / VAULT
    listing(root)  # the first listing starts the inventories and the mapping's retrieval
    attrs = getfattr_all(root)
    assert attrs["user.glacier.names.format"] == "synology"
    assert attrs["user.glacier.names.status"] == "Pending"
    assert "names" in attrs["user.glacier.names.message"]
    # until the names come, archives are listed by id (or the vault is still empty)
    early = listing(root)
    assert early <= {".by-id", photo, old, budget} or "homes" in early

    wait_for(lambda: "homes" in listing(root) or None, 90, "Synology names")
    assert listing(root) == {".by-id", "homes", "photo", old}
    assert getfattr_one(root, "user.glacier.names.status") == "Loaded"
    assert getfattr_one(root, "user.glacier.names.mapping_archive_id") == mapping_id
    picture = root / "photo/important/photos/march 2015/IMG_20150507_194814.JPG"
    copy = root / "homes/admin/Desktop/IMG_20150507_194814.JPG"
    assert os.stat(picture).st_mtime == 1431027000
    assert os.stat(root / "homes/admin/budget.txt").st_size == len(BUDGET)
    assert listing(root / ".by-id") == {photo, old, budget}
    assert read_when_ready(copy, 60) == PHOTO
    assert read_when_ready(picture, 60) == PHOTO   # the same archive: cached already

    status = json.loads(getfattr_one(mnt.path, "user.glacier.status"))
    (vault,) = [v for v in status["vaults"] if v["name"] == VAULT]
    assert vault["names"]["status"] == "Loaded" and vault["names"]["paths"] == 3
    text = glacierfs_cli("status", mnt.path).stdout.decode()
    assert "names: synology Loaded" in text

    jobs = [j for j in glacier.list_jobs(vaultName=MAPPING)["JobList"]
            if j["Action"] == "ArchiveRetrieval"]
    assert len(jobs) == 1
    mnt.unmount()

    again = mounts(emulator.url, cache_dir=mnt.cache_dir, name="again")
    assert "homes" in listing(again / VAULT)     # at once, from the stored names
    assert getfattr_one(again / VAULT, "user.glacier.names.status") == "Loaded"
    jobs = [j for j in glacier.list_jobs(vaultName=MAPPING)["JobList"]
            if j["Action"] == "ArchiveRetrieval"]
    assert len(jobs) == 1


def test_a_copy_from_glacier_without_a_mount_uses_the_synology_names(emulator, tmp_path):
    """``glacierfs copy -r glacier://REGION/V DEST`` (no FUSE) waits for the mapping as it waits
    for the inventory, and writes SHARE/BASEPATH paths with the backup time, not archive ids."""
    glacier = emulator.client(max_attempts=1)
    glacier.create_vault(vaultName=VAULT)
    glacier.create_vault(vaultName=MAPPING)
    photo = upload(glacier, VAULT, PHOTO, "")
    budget = upload(glacier, VAULT, BUDGET, "")
    db = mapping_db(tmp_path / "m.db", [
        ("photo", "2015/IMG_1.JPG", photo, 1431027000, 1, 1),
        ("homes", "admin/budget.txt", budget, 1500000000, 1, 1),
    ])
    upload(glacier, MAPPING, db.read_bytes(), "")
    opts = f"endpoint_url={emulator.url},cache_dir={tmp_path / 'state'},poll=1"
    dest = tmp_path / "out"
    proc = glacierfs_cli("copy", "-r", f"glacier://us-east-1/{VAULT}", dest, "-o", opts,
                         timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    copied = dest / VAULT
    assert (copied / "photo/2015/IMG_1.JPG").read_bytes() == PHOTO
    assert (copied / "homes/admin/budget.txt").read_bytes() == BUDGET
    assert os.stat(copied / "photo/2015/IMG_1.JPG").st_mtime == 1431027000
    assert not (copied / photo).exists() and not (copied / budget).exists()
    jobs = [j for j in glacier.list_jobs(vaultName=MAPPING)["JobList"]
            if j["Action"] == "ArchiveRetrieval"]
    assert len(jobs) == 1
