"""Synology Glacier Backup mapping databases: real SQLite files built like Synology's tables
(``file_info_tb``, ``backup_info_tb``), read into a vault's names; the hostile cases leave the
vault listing by id or with safe names, and say why."""

from __future__ import annotations

import io
import json
import sqlite3

import pytest
from synology_support import mapping_db

from glacierfs.catalog import synology
from glacierfs.catalog.namespace import BY_ID_DIR, Namespace, ingest_inventory
from glacierfs.catalog.synology import MappingError, load_mapping
from glacierfs.store import KIND_DIR, KIND_FILE, ROOT_INODE, Store

HASH = "ab" * 32
VAULT = "NAS_0012345ABCDE_1"


def aid(n: int) -> str:
    return (f"S{n:05d}" + "y" * 138)[:138]


def inventory(ids: list[int]) -> io.BytesIO:
    doc = {"VaultARN": f"arn:aws:glacier:us-east-1:123456789012:vaults/{VAULT}",
           "InventoryDate": "2024-01-02T03:04:05Z",
           "ArchiveList": [{"ArchiveId": aid(n), "ArchiveDescription": "",
                            "CreationDate": "2015-05-07T19:50:00.000Z", "Size": n + 1,
                            "SHA256TreeHash": HASH} for n in ids]}
    return io.BytesIO(json.dumps(doc).encode())


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path)
    Namespace(s).set_vaults([(VAULT, None), (VAULT + "_mapping", None)])
    yield s
    s.close()


def tree(store: Store, vault: str = VAULT) -> dict[str, tuple[str | None, int]]:
    """path → (archive id, mtime_ns) of every file under the vault (not .by-id)."""
    ns = Namespace(store)
    root = ns.lookup(ns.get(ROOT_INODE), vault)
    out: dict[str, tuple[str | None, int]] = {}
    stack = [(root, "")]
    while stack:
        d, prefix = stack.pop()
        for child in ns.children(d, 0, 100000):
            path = prefix + child.name
            if child.kind == KIND_FILE:
                out[path] = (child.archive_id, child.mtime_ns)
            elif child.kind == KIND_DIR:
                stack.append((child, path + "/"))
    return out


def by_id(store: Store) -> list[str]:
    ns = Namespace(store)
    vault = ns.lookup(ns.get(ROOT_INODE), VAULT)
    return sorted(e.name for e in ns.children(ns.lookup(vault, BY_ID_DIR), 0, 100000))


def test_paths_dedup_versions_and_mtimes(store, tmp_path):
    ingest_inventory(store, VAULT, inventory([1, 2, 3, 4, 5, 6]), "JSON")
    assert set(tree(store)) == {aid(n) for n in range(1, 7)}  # by id until names come
    db = mapping_db(tmp_path / "map.db", [
        ("photo", "important/photos/march 2015/IMG_20150507_194814.JPG", aid(1), 1431027000, 1, 1),
        # one archive on two rows (a deduplicated file): shown at both paths
        ("photo", "copy/IMG.JPG", aid(1), 1431027001, 1, 1),
        # a path with several versions: the current row wins over a higher version
        ("docs", "report.pdf", aid(2), 1500000000, 1, 1),
        ("docs", "report.pdf", aid(3), 1600000000, 2, 0),
        # no current row: the highest archiveVersion wins
        ("docs", "notes.txt", aid(4), 1400000000, 1, 0),
        ("docs", "notes.txt", aid(5), 1300000000, 3, 0),
    ])
    result = load_mapping(store, VAULT, db, "MAPPING-ARCHIVE")
    assert result.rows == 6 and result.paths == 4 and result.skipped == 0
    names = tree(store)
    assert names["photo/important/photos/march 2015/IMG_20150507_194814.JPG"] == \
        (aid(1), 1431027000 * 10**9)
    assert names["photo/copy/IMG.JPG"] == (aid(1), 1431027001 * 10**9)
    assert names["docs/report.pdf"][0] == aid(2)
    assert names["docs/notes.txt"][0] == aid(5)
    # archives with no row (3: an old version, 4: superseded, 6: none) keep their id names
    assert {p for p in names if "/" not in p} == {aid(3), aid(4), aid(6)}
    # every archive stays at .by-id, once
    assert by_id(store) == sorted(aid(n) for n in range(1, 7))
    state = synology.names_state(store.db, VAULT)
    assert state.status == synology.LOADED and state.paths == 4
    assert "DiskStation" in state.message and state.archive_id == "MAPPING-ARCHIVE"


def test_names_survive_an_inventory_refresh_and_inodes_stay(store, tmp_path):
    ingest_inventory(store, VAULT, inventory([1, 2]), "JSON")
    load_mapping(store, VAULT, mapping_db(tmp_path / "m.db", [
        ("s", "a/one.txt", aid(1), 1, 1, 1), ("s", "b/one-again.txt", aid(1), 2, 1, 1),
        ("s", "two.txt", aid(2), 3, 1, 1)]), "M")
    ns = Namespace(store)
    before = {p: ns.lookup(ns.lookup(ns.get(ROOT_INODE), VAULT), "s").inode for p in ("s",)}
    paths = tree(store)
    ingest_inventory(store, VAULT, inventory([1, 2, 7]), "JSON")  # a newer inventory
    after = tree(store)
    assert {p: v[0] for p, v in after.items()} == {**{p: v[0] for p, v in paths.items()},
                                                    aid(7): aid(7)}
    assert ns.lookup(ns.lookup(ns.get(ROOT_INODE), VAULT), "s").inode == before["s"]
    assert Namespace(store).vault(VAULT).number_of_archives == 3
    # file_by_archive names the archive's own file, not an extra path
    assert ns.path_of(ns.file_by_archive(aid(1))) == f"{VAULT}/s/a/one.txt"


def test_hostile_paths_are_made_safe(store, tmp_path):
    ingest_inventory(store, VAULT, inventory([1, 2, 3, 4, 5, 6]), "JSON")
    long = "n" * 1020 + ".jpg"   # 1,024-byte name
    load_mapping(store, VAULT, mapping_db(tmp_path / "m.db", [
        ("..", "../../etc/passwd", aid(1), 1, 1, 1),
        ("/abs", "/root/.ssh/id_rsa", aid(2), 1, 1, 1),
        ("share", "nul\x00byte\x01.txt", aid(3), 1, 1, 1),
        ("share", long, aid(4), 1, 1, 1),
        ("", ".by-id", aid(5), 1, 1, 1),          # the vault root's own entry
        ("share", "", None, 1, 1, 1),             # no archive id: skipped
        ("", "", aid(6), 1, 1, 1),                # no path: skipped, keeps its id name
    ]), "M")
    names = tree(store)
    assert "__/__/__/etc/passwd" in names
    assert "abs/root/.ssh/id_rsa" in names
    assert "share/nul_byte_.txt" in names
    cut = [p for p in names if p.startswith("share/nnn")]
    assert len(cut) == 1 and cut[0].endswith(".jpg") and len(cut[0].split("/")[1].encode()) <= 255
    assert "_.by-id" in names
    assert aid(6) in names
    for path in names:
        assert all(c not in ("", ".", "..") and "\x00" not in c for c in path.split("/"))
    assert synology.names_state(store.db, VAULT).message.count("2 rows") == 1


@pytest.mark.parametrize("content, reason", [
    (b"this is not a database at all" * 10, "not a SQLite database"),
    (b"", "not a SQLite database"),
])
def test_not_sqlite(store, tmp_path, content, reason):
    path = tmp_path / "m.db"
    path.write_bytes(content)
    with pytest.raises(MappingError, match=reason):
        load_mapping(store, VAULT, path, "M")


def test_damaged_sqlite_is_refused(store, tmp_path):
    path = mapping_db(tmp_path / "m.db", [("s", f"f{i}", aid(1), 1, 1, 1) for i in range(2000)])
    data = bytearray(path.read_bytes())
    data[100:len(data)] = b"\xff" * (len(data) - 100)
    path.write_bytes(bytes(data))
    with pytest.raises(MappingError):
        load_mapping(store, VAULT, path, "M")


def test_missing_table_or_column(store, tmp_path):
    ingest_inventory(store, VAULT, inventory([1]), "JSON")
    path = tmp_path / "m.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE other (x)")
    db.commit()
    db.close()
    with pytest.raises(MappingError, match="no table file_info_tb"):
        load_mapping(store, VAULT, path, "M")
    mapping_db(path, [("s", aid(1), 1)], file_info="CREATE TABLE file_info_tb (key INTEGER, "
               "shareName TEXT, lastBkpTime INTEGER)")
    with pytest.raises(MappingError, match="no column basePath, archiveID"):
        load_mapping(store, VAULT, path, "M")
    assert set(tree(store)) == {aid(1)}   # nothing changed
    # optional columns missing: names still come, the message says what was missing
    mapping_db(path, [("s", "p.txt", aid(1))], file_info="CREATE TABLE file_info_tb "
               "(shareName TEXT, basePath TEXT, archiveID TEXT)")
    result = load_mapping(store, VAULT, path, "M")
    assert result.missing == ("lastBkpTime", "archiveVersion", "current")
    assert "s/p.txt" in tree(store)


def test_views_and_triggers_are_never_run(store, tmp_path):
    """A view named like the table is refused; triggers and a view over a recursive CTE that
    would never end are present but never run; column values can't call functions."""
    ingest_inventory(store, VAULT, inventory([1]), "JSON")
    path = tmp_path / "m.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE real_tb (shareName, basePath, archiveID)")
    db.execute("INSERT INTO real_tb VALUES ('s', 'p', ?)", (aid(1),))
    db.execute("CREATE VIEW file_info_tb AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
               "SELECT x + 1 FROM c) SELECT 's' AS shareName, x AS basePath, "
               f"'{aid(1)}' AS archiveID FROM c")
    db.commit()
    db.close()
    with pytest.raises(MappingError, match="is a view"):
        load_mapping(store, VAULT, path, "M")
    # a real table with triggers, and a generated column computed by an expression
    mapping_db(path, [("s", "ok.txt", aid(1), 1, 1, 1)], extra_sql=[
        "CREATE TABLE log (x)",
        "CREATE TRIGGER t AFTER INSERT ON file_info_tb BEGIN INSERT INTO log VALUES (1); END",
        "CREATE TRIGGER t2 AFTER DELETE ON file_info_tb BEGIN INSERT INTO log VALUES (2); END",
    ])
    load_mapping(store, VAULT, path, "M")
    assert "s/ok.txt" in tree(store)
    mapping_db(path, [("s", aid(1), 1, 1, 1)], file_info=(
        "CREATE TABLE file_info_tb (shareName TEXT, archiveID TEXT, lastBkpTime INTEGER, "
        "archiveVersion INTEGER, current INTEGER, "
        "basePath TEXT GENERATED ALWAYS AS (hex(zeroblob(100000000))) VIRTUAL)"))
    with pytest.raises(MappingError, match="no column basePath"):
        load_mapping(store, VAULT, path, "M")
    # the mapping file itself is never written (immutable, query_only)
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()
    con.close()


@pytest.mark.slow
def test_a_million_rows_stay_bounded(store, tmp_path, monkeypatch):
    """A million rows naming one archive at a million paths: all read (flat memory, batched),
    and with a lower cap the rest is cut and said."""
    ingest_inventory(store, VAULT, inventory([1]), "JSON")
    path = tmp_path / "m.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE file_info_tb (shareName, basePath, archiveID, lastBkpTime, "
               "archiveVersion, current)")
    db.execute("INSERT INTO file_info_tb WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 "
               "FROM c WHERE x < 1000000) SELECT 's', 'same/name.txt', ?, x, x, 0 FROM c",
               (aid(1),))
    db.commit()
    db.close()
    result = load_mapping(store, VAULT, path, "M")
    assert result.rows == 1_000_000 and result.paths == 1 and not result.truncated
    assert tree(store) == {"s/same/name.txt": (aid(1), 1_000_000 * 10**9)}  # highest version
    monkeypatch.setattr(synology, "MAX_ROWS", 1000)
    result = load_mapping(store, VAULT, path, "M")
    assert result.rows == 1000 and result.truncated
    assert "only the first 1000 rows" in synology.names_state(store.db, VAULT).message


def test_mapping_for_archives_not_in_the_inventory_is_ignored(store, tmp_path):
    ingest_inventory(store, VAULT, inventory([1]), "JSON")
    load_mapping(store, VAULT, mapping_db(tmp_path / "m.db", [
        ("s", "here.txt", aid(1), 1, 1, 1), ("s", "gone.txt", aid(9), 1, 1, 1)]), "M")
    assert set(tree(store)) == {"s/here.txt"}


def test_a_file_path_that_is_also_a_directory(store, tmp_path):
    ingest_inventory(store, VAULT, inventory([1, 2]), "JSON")
    load_mapping(store, VAULT, mapping_db(tmp_path / "m.db", [
        ("s", "a", aid(1), 1, 1, 1), ("s", "a/b.txt", aid(2), 1, 1, 1)]), "M")
    names = tree(store)
    assert "s/a/b.txt" in names
    assert [p for p in names if p.startswith("s/a (")] != []   # the file moved aside


def test_names_loaded_before_the_inventory_apply_when_it_comes(store, tmp_path):
    load_mapping(store, VAULT, mapping_db(tmp_path / "m.db", [
        ("s", "later.txt", aid(1), 1, 1, 1)]), "M")
    assert tree(store) == {}
    ingest_inventory(store, VAULT, inventory([1, 2]), "JSON")
    assert set(tree(store)) == {"s/later.txt", aid(2)}


def test_xattr_state_of_a_synology_vault_before_its_first_listing(store):
    state = synology.vault_names(store.db, VAULT)
    assert state.status == synology.PENDING and "first listed" in state.message
    assert synology.vault_names(store.db, VAULT + "_mapping") is None


def test_vault_xattrs_say_where_names_stand(store, tmp_path):
    from glacierfs.fuse.xattrs import vault_attributes
    info = Namespace(store).vault(VAULT)
    assert not any(k.startswith("user.glacier.names") for k in vault_attributes(info))
    attrs = vault_attributes(info, synology.vault_names(store.db, VAULT))
    assert attrs["user.glacier.names.format"] == "synology"
    assert attrs["user.glacier.names.status"] == "Pending"
    assert attrs["user.glacier.names.mapping_vault"] == VAULT + "_mapping"
    ingest_inventory(store, VAULT, inventory([1]), "JSON")
    load_mapping(store, VAULT, mapping_db(tmp_path / "m.db", [("s", "a", aid(1), 1, 1, 1)]), "M")
    attrs = vault_attributes(info, synology.vault_names(store.db, VAULT))
    assert attrs["user.glacier.names.status"] == "Loaded"
    assert attrs["user.glacier.names.mapping_archive_id"] == "M"
    assert attrs["user.glacier.names.paths"] == "1"
