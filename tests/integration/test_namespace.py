"""Inventory → tree: names, duplicates, folders, stable inodes across refreshes."""

import io
import json

import pytest

from glacierfs.commands.demo import fastglacier, mt2
from glacierfs.catalog.namespace import Namespace, ingest_inventory
from glacierfs.store import KIND_DIR, KIND_FILE, ROOT_INODE, Store

HASH = "ab" * 32


def _aid(n: int) -> str:
    return (f"A{n:04d}" + "x" * 138)[:138]


def _inventory(rows: list[tuple[int, str, str]]) -> io.BytesIO:
    doc = {"VaultARN": "arn:aws:glacier:us-east-1:123456789012:vaults/v",
           "InventoryDate": "2024-01-02T03:04:05Z",
           "ArchiveList": [{"ArchiveId": _aid(n), "ArchiveDescription": desc,
                            "CreationDate": created, "Size": n * 10, "SHA256TreeHash": HASH}
                           for n, desc, created in rows]}
    return io.BytesIO(json.dumps(doc).encode())


@pytest.fixture
def ns(tmp_path):
    store = Store(tmp_path)
    namespace = Namespace(store)
    namespace.set_vaults([("v", "arn:aws:glacier:us-east-1:123456789012:vaults/v")])
    yield namespace
    store.close()


def _tree(ns: Namespace) -> dict[str, tuple[int, int]]:
    """path -> (kind, inode) of everything in vault v."""
    out = {}
    vault = ns.lookup(ns.get(ROOT_INODE), "v")
    stack = [(vault, "")]
    while stack:
        d, prefix = stack.pop()
        for child in ns.children(d, 0, 100000):
            path = f"{prefix}{child.name}"
            out[path] = (child.kind, child.inode)
            if child.kind == KIND_DIR:
                stack.append((child, path + "/"))
    return out


def test_names_folders_duplicates_and_fallback(ns):
    rows = [
        (1, mt2("photos/2019/a.jpg", "20190101T000000Z"), "2020-01-01T00:00:00.000Z"),
        (2, "photos/2019/a.jpg", "2021-01-01T00:00:00.000Z"),            # newest: plain name
        (3, fastglacier("empty-folder/", "20200101T000000Z"), "2020-01-01T00:00:00.000Z"),
        (4, "", "2020-01-01T00:00:00.000Z"),                            # no description
        (5, "photos", "2020-01-01T00:00:00.000Z"),                       # clashes with a dir
        (6, "../../etc/passwd", "2020-01-01T00:00:00.000Z"),
    ]
    ingest_inventory(ns.store, "v", _inventory(rows), "JSON", "job1")
    tree = _tree(ns)
    assert tree["photos"][0] == KIND_DIR
    assert tree["empty-folder"][0] == KIND_DIR
    assert tree["photos/2019/a.jpg"][0] == KIND_FILE
    a = ns.lookup(ns.get(tree["photos/2019"][1]), "a.jpg")
    assert a.archive_id == _aid(2)
    older = [p for p in tree if p.startswith("photos/2019/") and p != "photos/2019/a.jpg"]
    assert len(older) == 1 and older[0].endswith(".jpg")
    assert ns.get(tree[older[0]][1]).archive_id == _aid(1)
    assert any(ns.get(i).archive_id == _aid(4) for k, i in tree.values() if k == KIND_FILE)
    photos_files = [p for p in tree if p.startswith("photos") and "/" not in p]
    assert len(photos_files) == 2  # the directory and the renamed plain file
    # nothing escapes the vault: every entry hangs below it
    assert all(".." not in p.split("/") for p in tree)
    assert ns.vault("v").number_of_archives == 6
    # .by-id reaches every archive, under its id, with the same inode
    by_id = ns.lookup(ns.lookup(ns.get(ROOT_INODE), "v"), ".by-id")
    listed = {e.name: e.inode for e in ns.children(by_id, 0)}
    assert len(listed) == 6  # every archive, the folder marker included
    marker = ns.lookup(by_id, _aid(3))
    assert marker is not None and marker.kind == KIND_FILE and marker.size == 30
    assert _aid(3) not in {ns.get(i).archive_id for k, i in tree.values() if k == KIND_FILE}
    assert listed[_aid(2)] == a.inode
    assert ns.lookup(by_id, _aid(2)).inode == a.inode


def test_refresh_keeps_inodes_and_drops_deleted(ns):
    rows = [(1, "a/x.txt", "2020-01-01T00:00:00.000Z"), (2, "a/y.txt", "2020-01-01T00:00:00.000Z")]
    ingest_inventory(ns.store, "v", _inventory(rows), "JSON", "job1")
    before = _tree(ns)
    rows2 = [(1, "a/x.txt", "2020-01-01T00:00:00.000Z"), (3, "b/z.txt", "2020-01-01T00:00:00.000Z"),
             (4, "a/x.txt", "2022-01-01T00:00:00.000Z")]  # a newer x.txt takes the plain name
    ingest_inventory(ns.store, "v", _inventory(rows2), "JSON", "job2")
    after = _tree(ns)
    assert "a/y.txt" not in after
    assert after["a"][1] == before["a"][1]
    assert ns.get(after["a/x.txt"][1]).archive_id == _aid(4)
    renamed = [p for p in after if p.startswith("a/x") and p != "a/x.txt"]
    assert after[renamed[0]][1] == before["a/x.txt"][1]  # same archive, same inode
    assert ns.vault("v").inventory_job_id == "job2"


def test_truncated_inventory_keeps_what_it_held(ns):
    data = _inventory([(n, f"f{n}.txt", "2020-01-01T00:00:00.000Z") for n in range(1, 50)]).getvalue()
    result = ingest_inventory(ns.store, "v", io.BytesIO(data[: len(data) // 2]), "JSON", "j")
    assert result.truncated
    assert 0 < result.archives < 49
    assert "truncated" in ns.vault("v").inventory_message
    assert len([p for p in _tree(ns) if p != ".by-id"]) == result.archives


def test_directory_mtime_is_newest_member(ns):
    rows = [(1, mt2("d/old.txt", "20100101T000000Z"), "2020-01-01T00:00:00.000Z"),
            (2, mt2("d/e/new.txt", "20150101T000000Z"), "2020-01-01T00:00:00.000Z")]
    ingest_inventory(ns.store, "v", _inventory(rows), "JSON", "j")
    tree = _tree(ns)
    assert ns.get(tree["d"][1]).mtime_ns == ns.get(tree["d/e/new.txt"][1]).mtime_ns
