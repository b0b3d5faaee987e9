"""Crashes around the paid call, eviction under readers, and hostile inventories.

- A crash between saving the ``Initiating`` record and InitiateJob's answer: at restart the
  job is adopted from ListJobs (or started, if Glacier never got the call) — never twice.
- Cache eviction under ``cache_size`` while files are read: never a wrong byte.
- Inventories that are truncated, malformed, huge, full of duplicates or of hostile
  descriptions: the mount shows a browsable tree, nothing outside it, and keeps answering.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time

import pytest
import trio
from rel_util import (MIB, compare, core, count_duplicate_jobs, inventory_document, mount_options,
                      mounted, options, poll_until, read_all, seed_state, upload)

from glacierfs.jobs.jobstore import INITIATING, JobRecord, JobStore
from glacierfs.options import state_dir_for
from glacierfs.store import Store

pytestmark = pytest.mark.sim_args("--delay", "Standard=0.3", "--seed", "9")


def _write_initiating(opts, archive, vault: str) -> None:
    store = Store(opts.state_dir)
    try:
        JobStore(store).save(JobRecord(
            archive_id=archive.archive_id, vault=vault, state=INITIATING, tier="Standard",
            size=archive.size, tree_hash=archive.tree_hash, requested_at=time.time(),
            initiated_at=time.time()))
    finally:
        store.close()


def test_crash_in_initiating_adopts_or_starts_exactly_one_job(sim, tmp_path, fast):
    client = sim.client()
    client.create_vault(vaultName="v")
    sent = upload(client, "v", 2 * MIB, seed=1, description="sent.bin")
    unsent = upload(client, "v", MIB, seed=2, description="unsent.bin")
    opts = options(sim, tmp_path / "cache")
    seed_state(opts.state_dir, "v", [sent, unsent])
    # The daemon died after InitiateJob reached Glacier for one, before it for the other.
    client.initiate_job(vaultName="v", jobParameters={
        "Type": "archive-retrieval", "ArchiveId": sent.archive_id, "Tier": "Standard",
        "Description": "glacierfs " + sent.archive_id[:40]})
    _write_initiating(opts, sent, "v")
    _write_initiating(opts, unsent, "v")
    before = sim.stats()["requests"].get("InitiateJob", 0)

    async def main() -> None:
        async with core(opts, "v", [sent, unsent], seed=False) as c:
            assert c.retrieval.record(sent.archive_id).state == INITIATING
            await c.read_when_ready(sent, timeout=30)
            await c.read_when_ready(unsent, timeout=30)

    trio.run(main)
    assert sim.stats()["requests"]["InitiateJob"] == before + 1  # only the unsent one
    assert count_duplicate_jobs(client, "v") == 0


def test_eviction_under_concurrent_readers_never_serves_a_wrong_byte(sim, tmp_path, fast):
    """Five 3 MiB files through a 6 MiB cache, read at random offsets by eight tasks: chunks
    are evicted and fetched again all the time; every byte read is compared."""
    client = sim.client()
    client.create_vault(vaultName="v")
    archives = [upload(client, "v", 3 * MIB + 1000 * i, seed=10 + i, description=f"e{i}")
                for i in range(5)]
    opts = options(sim, tmp_path / "cache", cache_size=6 * MIB)

    async def main() -> None:
        async with core(opts, "v", archives) as c:
            rng = random.Random(4)

            async def reader() -> None:
                for _ in range(25):
                    a = rng.choice(archives)
                    offset = rng.randrange(0, a.size)
                    await c.read_when_ready(a, offset, min(rng.randrange(1, 300_000),
                                                           a.size - offset), timeout=60)

            async with trio.open_nursery() as n:
                for _ in range(8):
                    n.start_soon(reader)
            assert c.cache.volume() <= 6 * MIB + MIB  # the limit (plus the index) holds

    trio.run(main)
    assert count_duplicate_jobs(client, "v") == 0


HOSTILE_DESCRIPTIONS = [
    "../../../../etc/passwd", "/etc/shadow", "/absolute/path/file.txt", "a/../../b",
    "nul\x00byte", "ctrl\x01\x1b[31mred\x7f", "x" * 1024, "dir/" + "y" * 1000 + "/z",
    "..", ".", "", "/", "////", "a//b", "back\\slash\\..\\..\\x",
    '<m><v>2</v><p>Li4vLi4vZXRj</p></m>',  # CloudBerry-ish with a traversal payload
    '<m><v>2</v><p>%%%not base64</p><lm>garbage</lm></m>',
    "mt2 <bad>", 'mt2 ' + 'A' * 50, "+AC4-+AC4-/+AC4-+AC4-/etc",  # UTF-7 for ../../
    '{"Path": "../../x", "UTC": "nope"}', '{"broken json', "\u202eevil\u202dtxt",
    "é/ü/日本語.txt", "trailing/", " spaces ",
]


def _hostile_inventory(vault: str) -> bytes:
    rows = []
    for i, desc in enumerate(HOSTILE_DESCRIPTIONS):
        rows.append({"ArchiveId": f"hostile{i:04d}" + "A" * 130, "ArchiveDescription": desc,
                     "CreationDate": "2024-01-01T00:00:00Z", "Size": i * 10,
                     "SHA256TreeHash": "0" * 64})
    # duplicates (same id twice, same name many times), bad rows, absurd values
    rows += [rows[0], rows[0]]
    rows += [{"ArchiveId": f"dup{i}" + "B" * 130, "ArchiveDescription": "same/name.txt",
              "CreationDate": f"2024-01-{i + 1:02d}T00:00:00Z", "Size": i,
              "SHA256TreeHash": "1" * 64} for i in range(20)]
    rows += [{"ArchiveId": None}, {"Size": -5}, "not an object", [1, 2],
             {"ArchiveId": "x" * 5000, "Size": "big", "SHA256TreeHash": "zz"},
             {"ArchiveId": "neg" + "C" * 130, "ArchiveDescription": "neg", "Size": -1,
              "CreationDate": "2024-01-01T00:00:00Z", "SHA256TreeHash": "2" * 64}]
    return json.dumps({"VaultARN": "arn:aws:glacier:us-east-1:123456789012:vaults/" + vault,
                       "InventoryDate": "2024-01-02T00:00:00Z", "ArchiveList": rows}).encode()


INVENTORIES = {
    "hostile": _hostile_inventory("hostile"),
    "truncated": _hostile_inventory("truncated")[:2500],
    "garbage": b"\x00\xff<xml>not an inventory</xml>",
    "empty": b"",
    "huge": inventory_document("huge", [
        {"ArchiveId": f"h{i:07d}" + "D" * 130, "ArchiveDescription": f"d{i % 50}/f{i}",
         "CreationDate": "2024-01-01T00:00:00Z", "Size": i, "SHA256TreeHash": "3" * 64}
        for i in range(30000)]),
}


@pytest.mark.usefixtures("needs_fuse")
def test_hostile_inventories_give_a_browsable_tree_and_nothing_outside(sim, tmp_path):
    cache = tmp_path / "cache"
    state = state_dir_for(cache, "us-east-1", sim.url)
    for vault in INVENTORIES:  # the vaults exist; their stored inventories are what is hostile
        sim.client().create_vault(vaultName=vault)
    outcomes = {}
    for vault, document in INVENTORIES.items():
        try:
            seed_state(state, vault, [], document=document)
            outcomes[vault] = "ingested"
        except Exception as exc:  # a document that is no inventory is refused, never half-taken
            outcomes[vault] = type(exc).__name__
    assert outcomes["hostile"] == outcomes["truncated"] == outcomes["huge"] == "ingested"
    store = Store(state)
    try:
        from glacierfs.catalog.namespace import Namespace
        Namespace(store).set_vaults([(v, None) for v in INVENTORIES])
    finally:
        store.close()
    mnt = tmp_path / "mnt"
    sentinel = tmp_path / "outside.txt"
    sentinel.write_text("outside")
    with mounted(mnt, mount_options(sim, cache, inventory_refresh="off")) as m:
        names: list[str] = []
        for root, dirs, files in os.walk(mnt):
            for name in dirs + files:
                names.append(name)
                assert "/" not in name and "\x00" not in name and name not in (".", "..")
                assert len(name.encode()) <= 255
                path = os.path.join(root, name)
                real = os.path.realpath(path)
                assert real.startswith(str(mnt) + "/"), path
        same = os.listdir(mnt / "hostile" / "same")
        assert len(same) == len(set(same)) == 20  # twenty distinct names for one, none lost
        assert "name.txt" in same
        huge = sum(len(f) for r, _, f in os.walk(mnt / "huge") if ".by-id" not in r)
        assert huge == 30000
        assert len(os.listdir(mnt / "huge" / ".by-id")) == 30000
        assert sentinel.read_text() == "outside"
        # The daemon still answers everything: stat, xattrs, reads (EREMOTE / 0-byte files).
        listing = subprocess.run(["ls", "-laR", str(mnt)], capture_output=True, timeout=120)
        assert listing.returncode == 0
        subprocess.run(["getfattr", "-R", "-d", "-m", "-", str(mnt / "hostile")],
                       capture_output=True, timeout=60, check=True)
        assert m.pids and all(os.path.exists(f"/proc/{p}") for p in m.pids)
        empty = [os.path.join(r, f) for r, _, fs in os.walk(mnt / "hostile") for f in fs
                 if os.path.getsize(os.path.join(r, f)) == 0]
        assert empty and read_all(empty[0]) == b""
        poll_until(lambda: os.listdir(mnt), what="root still answers")


def test_lone_surrogate_in_description_does_not_sink_the_inventory(tmp_path):
    doc = inventory_document("v", [{"ArchiveId": "s" * 138, "ArchiveDescription": "\ud800x",
                                    "CreationDate": "2024-01-01T00:00:00Z", "Size": 1,
                                    "SHA256TreeHash": "0" * 64},
                                   {"ArchiveId": "t" * 138, "ArchiveDescription": "ok.txt",
                                    "CreationDate": "2024-01-01T00:00:00Z", "Size": 1,
                                    "SHA256TreeHash": "0" * 64}])
    seed_state(tmp_path / "state", "v", [], document=doc)
    store = Store(tmp_path / "state")
    try:
        names = {row[0] for row in store.db.execute(
            "SELECT name FROM entries WHERE archive_id IS NOT NULL")}
    finally:
        store.close()
    assert names == {"\ufffdx", "ok.txt"}


def test_names_never_escape_under_fuzzing():
    """hypothesis over the description decoder: every component is a safe name."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from glacierfs.catalog import names

    @settings(max_examples=400, deadline=None)
    @given(st.text(max_size=1100) | st.from_regex(r"(\.\./|/|\x00|<m>.*</m>|mt2 .*)+"))
    def check(description: str) -> None:
        decoded = names.decode_description(description)
        for part in decoded.parts:
            assert part and part not in (".", "..")
            assert "/" not in part and "\x00" not in part
            assert len(part.encode("utf-8", "surrogateescape")) <= 255

    check()


def test_inventory_parser_never_crashes_under_fuzzing():
    """hypothesis over the inventory parser: any bytes either raise its format error before
    the first row, or yield rows that passed validation."""
    import io

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from glacierfs.catalog import inventory

    base = _hostile_inventory("f")

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, len(base)), st.binary(max_size=40), st.sampled_from(["JSON", "CSV"]))
    def check(cut: int, noise: bytes, fmt: str) -> None:
        report = inventory.InventoryReport(vault_arn=None, inventory_date=None, rows_ok=0,
                                           rows_skipped=0, problems=[], truncated=False)
        try:
            for row in inventory.iter_inventory(io.BytesIO(base[:cut] + noise), fmt, report):
                assert row.size >= 0 and len(row.tree_hash) == 64
        except inventory.InventoryFormatError:
            pass

    check()


def test_compare_counts_wrong_bytes(monkeypatch):
    import rel_util
    monkeypatch.setattr(rel_util, "TALLY", dict(rel_util.TALLY))  # keep the real tally clean
    with pytest.raises(AssertionError):
        compare(b"abd", b"abc")
    assert rel_util.TALLY["bad_bytes_served"] >= 1
    compare(b"bc", b"abc", 1)


def test_payload_is_nonempty():
    assert len(inventory_document("v", [])) > 0 and MIB == 1 << 20
