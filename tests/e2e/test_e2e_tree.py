"""The tree a user sees: names decoded from every uploader's descriptions, folders, duplicates,
archive-id fallback and ``.by-id``; sizes and mtimes; read-only; the xattr contract before any
retrieval. One emulator and one mount for the module: nothing here starts a retrieval."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from glacierfs.commands.demo import cloudberry, fastglacier, mt2, qnap
from glacierfs.sim.testing import upload, wait_job

from e2e_util import (EROFS_TEXT, getfattr_all, getfattr_one, initiated, listing, run, text,
                       wait_for, wait_listed)

pytestmark = pytest.mark.e2e

VAULT = "tree"
# reference.md, mt-aws-glacier: an mt1 description (JSON UTF-8-encoded twice) → "ЯAЯ", mtime
# 1970-01-01 00:02:03 UTC.
MT1_VECTOR = "mt1 eyJmaWxlbmFtZSI6IsOQwq9Bw5DCryIsIm10aW1lIjoiMTk3MDAxMDFUMDAwMjAzWiJ9"
# reference.md, CloudBerry: Path "dir2/+BEQEMAQ5BDs-3" is UTF-7 for "dir2/файл3".
CLOUDBERRY_VECTOR = json.dumps({"Path": "dir2/+BEQEMAQ5BDs-3", "UTCDateModified":
                                "20230115T101010Z", "Flags": 0})
FASTGLACIER_V1 = ("<ArchiveMetadata><Path>" + base64.b64encode(b"v1/old.txt").decode()
                  + "</Path></ArchiveMetadata>")


def utc(text_: str) -> float:
    return datetime.strptime(text_, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


@dataclass
class Archive:
    path: str | None         # expected path in the vault (None: named by archive id)
    description: str
    data: bytes
    mtime: float | None      # the uploader's mtime; None: CreationDate
    archive_id: str = ""
    tree_hash: str = ""
    creation_date: str = ""


def archives() -> list[Archive]:
    return [
        Archive("photos/2019/beach.jpg", mt2("photos/2019/beach.jpg", "20190812T101500Z"),
                b"beach" * 1000, utc("20190812T101500Z")),
        Archive("photos/Zürich/Grossmünster.jpg",
                mt2("photos/Zürich/Grossmünster.jpg", "20200105T090000Z"), b"\x00\xff" * 777,
                utc("20200105T090000Z")),
        Archive("ЯAЯ", MT1_VECTOR, b"mt1", utc("19700101T000203Z")),
        Archive("docs/ёлка.png", fastglacier("docs/ёлка.png", "20211231T235900Z"),
                b"png" * 333, utc("20211231T235900Z")),
        Archive("docs/notes.txt", fastglacier("docs/notes.txt", "20211230T120000Z", version=2),
                b"notes\n", utc("20211230T120000Z")),
        Archive("docs/v3.txt", fastglacier("docs/v3.txt", "20211229T120000Z", version=3),
                b"v3\n", utc("20211229T120000Z")),
        Archive("v1/old.txt", FASTGLACIER_V1, b"fastglacier v1", None),
        Archive("dir2/файл3", CLOUDBERRY_VECTOR, b"cloudberry", utc("20230115T101010Z")),
        Archive("taxes/2022/return.pdf", cloudberry("taxes/2022/return.pdf", "20230401T080000Z"),
                b"%PDF" * 100, utc("20230401T080000Z")),
        Archive("sample/1234.pdf", qnap("/sample/1234.pdf"), b"qnap", None),
        Archive("projects/thesis/final.tex", "projects\\thesis\\final.tex", b"\\documentclass",
                None),
        Archive("hello.txt", "hello.txt", b"hello world\n", None),
        Archive(None, "", b"no description", None),
    ]


# FastGlacier folder marker: a tiny archive whose path ends in "/" is a directory.
FOLDER_MARKER = fastglacier("empty-folder/", "20210101T000000Z")
DUPLICATE = "2018/IMG_0001.jpg"
HOSTILE_MARKER = fastglacier("../fg-escape/", "20200101T000000Z")
# Descriptions that try to leave the vault or to be unrepresentable as names.
HOSTILE = ["../../escape.txt", "/etc/passwd", "a/./b/../../../c.txt", "..", ".", "/",
           mt2("../../../../mt-escape", "20200101T000000Z"), "x" * 300 + ".txt",
           HOSTILE_MARKER, "..\\..\\win.txt"]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    from e2e_util import start_emulator
    sim = start_emulator(tmp_path_factory.mktemp("sim"))
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def uploaded(emulator):
    client = emulator.client()
    client.create_vault(vaultName=VAULT)
    client.create_vault(vaultName="late")
    items = archives()
    for item in items:
        out = client.upload_archive(vaultName=VAULT, body=item.data,
                                    archiveDescription=item.description)
        item.archive_id, item.tree_hash = out["archiveId"], out["checksum"]
    marker_id = upload(client, VAULT, b"", FOLDER_MARKER)
    older = client.upload_archive(vaultName=VAULT, body=b"older copy", archiveDescription=DUPLICATE)
    time.sleep(0.05)  # CreationDate has millisecond resolution: make "newest" unambiguous
    newer = client.upload_archive(vaultName=VAULT, body=b"newer!", archiveDescription=DUPLICATE)
    upload(client, "late", b"late", "late.txt")
    client.create_vault(vaultName="hostile")
    hostile = {description: upload(client, "hostile", f"hostile {i}".encode(), description)
               for i, description in enumerate(HOSTILE)}
    return {"items": items, "marker": marker_id, "older": older, "newer": newer,
            "hostile": hostile}


@pytest.fixture(scope="module")
def mnt(emulator, uploaded, module_mounts):
    return module_mounts(emulator.url, "tree")


@pytest.fixture(scope="module")
def tree(emulator, uploaded, mnt):
    """The mounted vault once its inventory is in, plus each archive's CreationDate as the
    emulator reports it (from an inventory job of our own, made after the mount's)."""
    wait_listed(mnt / VAULT, {"hello.txt", "photos", "docs"})
    client = emulator.client()
    job = client.initiate_job(vaultName=VAULT, jobParameters={"Type": "inventory-retrieval",
                                                               "Format": "JSON"})
    wait_job(client, VAULT, job["jobId"])
    inventory = json.loads(client.get_job_output(vaultName=VAULT, jobId=job["jobId"])["body"]
                           .read())
    created = {a["ArchiveId"]: a["CreationDate"] for a in inventory["ArchiveList"]}
    for item in uploaded["items"]:
        item.creation_date = created[item.archive_id]
    return {**uploaded, "root": mnt / VAULT, "created": created,
            "archive_count": len(inventory["ArchiveList"])}


def iso_ts(text_: str) -> float:
    return datetime.fromisoformat(text_.replace("Z", "+00:00")).timestamp()


def name_of(item: Archive) -> str:
    return item.path if item.path is not None else item.archive_id


def test_mount_root_lists_vaults(mnt):
    assert listing(mnt.path) == {VAULT, "late", "hostile"}
    st = os.stat(mnt.path)
    assert stat.S_ISDIR(st.st_mode)


def test_vault_is_empty_until_its_inventory_arrives(emulator, uploaded, mnt):
    """Listing a vault starts its inventory job; meanwhile the directory is empty and the
    vault's xattrs say a job is running; then the archives appear."""
    vault = mnt / "late"
    before = initiated(emulator)
    emulator.set_delays(inventory=8)  # long enough to look at the directory meanwhile
    try:
        assert listing(vault) - {".by-id"} == set()
        wait_for(lambda: getfattr_one(vault, "user.glacier.inventory.job.status")
                 == "InProgress", 6, "the vault's inventory.job.status to be InProgress")
        attrs = getfattr_all(vault)
        assert listing(vault) - {".by-id"} == set()
    finally:
        emulator.set_delays(inventory=2)
    assert attrs["user.glacier.vault_arn"].endswith(":vaults/late")
    job = emulator.client().describe_job(vaultName="late",
                                         jobId=attrs["user.glacier.inventory.job.id"])
    assert job["Action"] == "InventoryRetrieval"
    assert "user.glacier.inventory.date" not in attrs
    assert "user.glacier.number_of_archives" not in attrs
    wait_listed(vault, {"late.txt"}, timeout=30)
    assert initiated(emulator) - before == 1  # exactly one inventory job
    assert run("cat", vault / "late.txt").returncode != 0  # nothing retrieved: not readable


def test_ls_lR_shows_decoded_tree(tree):
    root = tree["root"]
    out = text("ls", "-lAR", "--time-style=+%s", root)
    files: dict[str, tuple[str, int, int]] = {}
    dirs: set[str] = set()
    current = ""
    for line in out.splitlines():
        if line.endswith(":") and line.startswith(str(root)):
            current = os.path.relpath(line[:-1], root)
            current = "" if current == "." else current
            continue
        fields = line.split(None, 6)
        if len(fields) < 7 or fields[0] == "total":
            continue
        mode, size, mtime, name = fields[0], int(fields[4]), int(fields[5]), fields[6]
        rel = f"{current}/{name}" if current else name
        if mode.startswith("d"):
            dirs.add(rel)
        else:
            files[rel] = (mode, size, mtime)
    for item in tree["items"]:
        rel = name_of(item)
        assert rel in files, f"{rel} missing from ls -lR: {sorted(files)}"
        mode, size, mtime = files[rel]
        assert mode == "-r--r--r--"
        assert size == len(item.data)
        expected = item.mtime if item.mtime is not None else iso_ts(item.creation_date)
        assert mtime == int(expected // 1)
    # folders from paths, and the FastGlacier folder marker as an (empty) directory
    for d in ("photos", "photos/2019", "photos/Zürich", "docs", "v1", "dir2", "taxes/2022",
              "sample", "projects/thesis", "2018", "empty-folder", ".by-id"):
        assert d in dirs, f"directory {d} missing: {sorted(dirs)}"
    assert "empty-folder" not in files
    assert listing(root / "empty-folder") == set()


def test_find_shows_every_archive_once(tree):
    root = tree["root"]
    out = text("find", root, "-path", str(root / ".by-id"), "-prune", "-o", "-type", "f",
               "-printf", "%P\\t%s\\n")
    found = dict(line.split("\t") for line in out.splitlines())
    expected = {name_of(item): str(len(item.data)) for item in tree["items"]}
    dup = {k: v for k, v in found.items() if k.startswith("2018/")}
    assert {k: v for k, v in found.items() if not k.startswith("2018/")} == expected
    # two archives described "2018/IMG_0001.jpg": the newest keeps the plain name
    assert dup["2018/IMG_0001.jpg"] == str(len(b"newer!"))
    others = sorted(set(dup) - {"2018/IMG_0001.jpg"})
    assert len(others) == 1 and re.fullmatch(r"2018/IMG_0001 \([0-9a-f]{16}\)\.jpg", others[0])
    assert dup[others[0]] == str(len(b"older copy"))
    # every archive of the vault is a regular file somewhere: folder marker aside
    assert len(found) == tree["archive_count"] - 1
    dirs = text("find", root, "-type", "d", "-printf", "%P\\n").splitlines()
    assert "empty-folder" in dirs


def test_duplicates_are_the_right_archives(tree):
    root = tree["root"] / "2018"
    names = listing(root)
    assert len(names) == 2
    plain = getfattr_all(root / "IMG_0001.jpg")
    assert plain["user.glacier.archive_id"] == tree["newer"]["archiveId"]
    (other,) = names - {"IMG_0001.jpg"}
    assert getfattr_all(root / other)["user.glacier.archive_id"] == tree["older"]["archiveId"]


def test_stat_size_and_mtime(tree):
    root = tree["root"]
    for item in tree["items"]:
        out = text("stat", "-c", "%s %.9Y %A %F", root / name_of(item)).split()
        size, mtime, mode, kind = int(out[0]), float(out[1]), out[2], " ".join(out[3:])
        assert kind == "regular file"
        assert mode == "-r--r--r--"
        assert size == len(item.data)
        if item.mtime is not None:
            assert mtime == item.mtime, name_of(item)
        else:
            assert abs(mtime - iso_ts(item.creation_date)) < 0.002, name_of(item)


def test_by_id_reaches_every_archive(tree):
    by_id = tree["root"] / ".by-id"
    ids = {item.archive_id for item in tree["items"]}
    ids |= {tree["older"]["archiveId"], tree["newer"]["archiveId"]}
    assert ids <= listing(by_id)
    for item in tree["items"]:
        out = text("stat", "-c", "%s %i", by_id / item.archive_id).split()
        named = text("stat", "-c", "%s %i", tree["root"] / name_of(item)).split()
        assert out == named  # same size, same inode: the same file
    older = by_id / tree["older"]["archiveId"]
    assert int(text("stat", "-c", "%s", older)) == len(b"older copy")


def test_hostile_paths_stay_inside_the_vault(mnt, uploaded):
    """Descriptions with ``..``, absolute paths and overlong names give plain, unique names
    below their vault: every archive is a file there, and nothing is named ``.``/``..``."""
    root = mnt / "hostile"
    file_ids = {aid for d, aid in uploaded["hostile"].items() if d != HOSTILE_MARKER}
    every_id = set(uploaded["hostile"].values())  # the folder marker is an archive too
    wait_for(lambda: every_id <= listing(root / ".by-id"), 30,
             "every hostile archive, folder marker included, under .by-id")
    files = ok_lines("find", root, "-path", str(root / ".by-id"), "-prune", "-o", "-type", "f",
                     "-print")
    # every archive but the folder marker is a file, each at its own path in the vault
    assert len(set(files)) == len(files) == len(file_ids)
    assert {getfattr_one(f, "user.glacier.archive_id") for f in files} == file_ids
    for path in ok_lines("find", root, "-mindepth", "1"):
        assert path.startswith(str(root) + "/")
        name = os.path.basename(path)
        assert name not in (".", "..") and len(name.encode()) <= 255
    names = {os.path.basename(f) for f in files}
    assert {"escape.txt", "c.txt", "passwd", "mt-escape", "win.txt"} <= names
    assert listing(mnt.path) == {VAULT, "late", "hostile"}  # nothing appeared at the top


def ok_lines(*args) -> list[str]:
    return text(*args).splitlines()


def test_files_are_read_only(tree):
    root = tree["root"]
    f = root / "hello.txt"
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o444
    assert stat.S_IMODE(os.stat(root / "docs").st_mode) == 0o555
    attempts = [
        ("touch", f),                               # setattr on an existing file
        ("touch", root / "new.txt"),                # create
        ("mkdir", root / "newdir"),
        ("rm", "-f", f),
        ("rmdir", root / "empty-folder"),
        ("mv", f, root / "moved.txt"),
        ("chmod", "644", f),
        ("ln", "-s", "hello.txt", root / "link"),
        ("sh", "-c", f"echo x >> '{f}'"),            # open for append
        ("sh", "-c", f"echo x > '{f}'"),             # open with truncate
        ("truncate", "-s", "0", f),
        ("setfattr", "-n", "user.glacier.size", "-v", "1", f),
    ]
    for cmd in attempts:
        proc = run(*cmd)
        assert proc.returncode != 0, f"{cmd} succeeded"
        assert EROFS_TEXT in proc.stderr, f"{cmd}: {proc.stderr}"
    assert listing(root) >= {"hello.txt", "empty-folder"}
    assert "new.txt" not in listing(root) and "newdir" not in listing(root)
    assert text("stat", "-c", "%s", f).strip() == str(len(b"hello world\n"))


def test_getfattr_file_before_any_job(emulator, tree):
    item = next(i for i in tree["items"] if i.path == "docs/ёлка.png")
    attrs = getfattr_all(tree["root"] / item.path)
    assert attrs == {
        "user.glacier.vault": VAULT,
        "user.glacier.archive_id": item.archive_id,
        "user.glacier.size": str(len(item.data)),
        "user.glacier.tree_hash": item.tree_hash,   # what the emulator answered the upload
        "user.glacier.creation_date": item.creation_date,
        "user.glacier.description": item.description,
        "user.glacier.cache": "absent",
        "user.glacier.cache.bytes": "0",
    }
    assert not [name for name in attrs if name.startswith("user.glacier.job.")]
    proc = run("getfattr", "-n", "user.glacier.no_such_thing", tree["root"] / item.path)
    assert proc.returncode != 0 and "No such attribute" in proc.stderr


def test_getfattr_vault_dir(emulator, tree):
    attrs = getfattr_all(tree["root"])
    client = emulator.client()
    described = client.describe_vault(vaultName=VAULT)
    assert attrs["user.glacier.vault_arn"] == described["VaultARN"]
    assert attrs["user.glacier.inventory.job.status"] == "Succeeded"
    assert attrs["user.glacier.number_of_archives"] == str(described["NumberOfArchives"])
    assert attrs["user.glacier.number_of_archives"] == str(tree["archive_count"])
    job = client.describe_job(vaultName=VAULT, jobId=attrs["user.glacier.inventory.job.id"])
    assert job["Action"] == "InventoryRetrieval" and job["StatusCode"] == "Succeeded"
    inventory_date = attrs["user.glacier.inventory.date"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", inventory_date)
    assert abs(iso_ts(inventory_date) - time.time()) < 600
