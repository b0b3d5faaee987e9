"""The verified chunk cache: contents, verification, eviction, crash and disk-full behaviour."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from glacierfs.cache import handles as handles_mod, layout as layout_mod, recovery, sparse
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.cache.errors import CacheError, CacheFullError, ChunkVerificationError, NotCached
from glacierfs.cache.layout import ArchiveLayout
from glacierfs.treehash import MIB, fold, tree_hash

ROOT = Path(__file__).resolve().parents[2]


def make_data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def piece(layout: ArchiveLayout, data: bytes, index: int) -> bytes:
    start, end = layout.chunk_range(index)
    return data[start:end + 1]


def put(cache: ChunkCache, layout: ArchiveLayout, data: bytes, indexes=None) -> None:
    for i in range(layout.chunk_count) if indexes is None else indexes:
        chunk = piece(layout, data, i)
        cache.put_chunk(layout, i, chunk, tree_hash(chunk))


def archive_files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.glob("archives/*")}


def stray_bytes(directory: Path) -> int:
    """Bytes on disk in archive files that no index row lists: they would count for nothing
    (never readable, outside the size limit). Row ranges are rounded out to whole blocks."""
    con = sqlite3.connect(directory / "cache.db")
    try:
        rows = con.execute("SELECT key, size FROM Cache WHERE raw = 1").fetchall()
    finally:
        con.close()
    covered: dict[str, list[tuple[int, int]]] = {}
    for key, size in rows:
        aid, chunk_size, index, _ = layout_mod.parse_key(key)
        start = index * chunk_size
        covered.setdefault(layout_mod.archive_file(aid, chunk_size), []).append(
            (start, -(-(start + size) // 4096) * 4096))
    stray = 0
    for name in archive_files(directory):
        fd = os.open(directory / name, os.O_RDONLY)
        try:
            for start, end in sparse.data_ranges(fd):
                for offset in range(start, end, 4096):
                    if not any(lo <= offset < hi for lo, hi in covered.get(name, ())):
                        stray += min(4096, end - offset)
        finally:
            os.close(fd)
    return stray


@pytest.fixture
def cache(tmp_path):
    c = ChunkCache(tmp_path / "chunks", 256 * MIB)
    yield c
    c.close()


# --- layout ----------------------------------------------------------------------------------

def test_layout_cuts_archive_into_chunks():
    layout = ArchiveLayout("a", 5 * MIB + 1, 2 * MIB)
    assert layout.chunk_count == 3
    assert layout.chunk_range(0) == (0, 2 * MIB - 1)
    assert layout.chunk_range(2) == (4 * MIB, 5 * MIB)
    assert layout.chunks_for(0, 1) == range(0, 1)
    assert layout.chunks_for(2 * MIB - 1, 2) == range(0, 2)
    assert layout.chunks_for(4 * MIB, 10 * MIB) == range(2, 3)  # clamped to the size
    assert layout.chunks_for(5 * MIB + 1, 10) == range(0)  # at EOF: nothing to read
    with pytest.raises(IndexError):
        layout.chunk_range(3)


def test_layout_of_empty_archive_is_one_empty_chunk():
    layout = ArchiveLayout("a", 0, MIB)
    assert layout.chunk_count == 1
    assert layout.chunk_range(0) == (0, -1)
    assert layout.chunks_for(0, 100) == range(0)


@pytest.mark.parametrize("chunk", [0, MIB // 2, 3 * MIB, 6 * MIB, MIB + 1])
def test_layout_refuses_unaligned_chunk_sizes(chunk):
    with pytest.raises(ValueError):
        ArchiveLayout("a", 10 * MIB, chunk)


# --- put and read ----------------------------------------------------------------------------

def test_read_whole_archive_and_across_chunk_boundaries(cache):
    data = make_data(5 * MIB + 123)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(cache, layout, data)
    assert cache.read(layout, 0, len(data)) == data
    for boundary in range(MIB, len(data), MIB):
        for delta in (-2, -1, 0, 1):
            off = boundary + delta
            assert cache.read(layout, off, 3) == data[off:off + 3]
    # spans three chunks in one request
    assert cache.read(layout, MIB - 10, 2 * MIB + 20) == data[MIB - 10:3 * MIB + 10]


def test_reads_clamp_to_the_archive_size(cache):
    data = make_data(MIB + 7)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(cache, layout, data)
    assert cache.read(layout, MIB, 4 * MIB) == data[MIB:]
    assert cache.read(layout, len(data), 10) == b""
    assert cache.read(layout, len(data) + 100, 10) == b""
    assert cache.read(layout, 5, 0) == b""


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    data = make_data(7 * MIB + 4321, seed=7)
    c = ChunkCache(tmp_path_factory.mktemp("filled") / "chunks", 64 * MIB)
    layouts = {}
    for chunk in (MIB, 2 * MIB, 4 * MIB):
        layout = ArchiveLayout("hypo", len(data), chunk)
        put(c, layout, data)
        layouts[chunk] = layout
    yield c, layouts, data
    c.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunk=st.sampled_from([MIB, 2 * MIB, 4 * MIB]),
       offset=st.integers(0, 7 * MIB + 5000), length=st.integers(0, 3 * MIB),
       near_boundary=st.booleans())
def test_any_read_equals_the_source_bytes(filled, chunk, offset, length, near_boundary):
    c, layouts, data = filled
    if near_boundary:  # bias towards the edges where off-by-one errors live
        offset = (offset // chunk) * chunk + (offset % 5) - 2
        offset = max(0, offset)
    assert c.read(layouts[chunk], offset, length) == data[offset:offset + length]


def test_refuses_data_with_the_wrong_tree_hash_and_stays_unchanged(cache):
    data = make_data(2 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(cache, layout, data, [0])
    before = (cache.volume(), stray_bytes(cache.directory), cache.missing_chunks(layout))
    good = piece(layout, data, 1)
    bad = bytearray(good)
    bad[12345] ^= 1
    with pytest.raises(ChunkVerificationError):
        cache.put_chunk(layout, 1, bytes(bad), tree_hash(good))
    with pytest.raises(ChunkVerificationError):
        cache.put_chunk(layout, 1, good, tree_hash(piece(layout, data, 0)))
    with pytest.raises(ChunkVerificationError):  # right hash for the bytes, wrong length
        cache.put_chunk(layout, 1, good[:-1], tree_hash(good[:-1]))
    assert (cache.volume(), stray_bytes(cache.directory), cache.missing_chunks(layout)) == before
    with pytest.raises(NotCached):
        cache.read(layout, MIB, 1)


def test_not_cached_names_every_missing_chunk_and_returns_nothing(cache):
    data = make_data(6 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(cache, layout, data, [0, 2, 5])
    with pytest.raises(NotCached) as exc:
        cache.read(layout, 0, len(data))
    assert exc.value.missing == [1, 3, 4]
    with pytest.raises(NotCached) as exc:
        cache.read(layout, 2 * MIB + 5, MIB)
    assert exc.value.missing == [3]
    assert cache.read(layout, 2 * MIB, MIB) == data[2 * MIB:3 * MIB]
    assert cache.missing_chunks(layout) == [1, 3, 4]
    assert [cache.has_chunk(layout, i) for i in range(6)] == [True, False, True, False, False, True]


def test_state_and_cached_bytes_follow_the_chunks(cache):
    data = make_data(3 * MIB + 10)
    layout = ArchiveLayout("arch", len(data), MIB)
    assert (cache.state(layout), cache.cached_bytes(layout)) == ("absent", 0)
    put(cache, layout, data, [3])
    assert (cache.state(layout), cache.cached_bytes(layout)) == ("partial", 10)
    put(cache, layout, data, [0, 1])
    assert (cache.state(layout), cache.cached_bytes(layout)) == ("partial", 2 * MIB + 10)
    put(cache, layout, data, [2])
    assert (cache.state(layout), cache.cached_bytes(layout)) == ("cached", len(data))
    assert cache.missing_chunks(layout) == []


def test_stored_tree_hashes_fold_into_the_archive_root(cache):
    data = make_data(9 * MIB + 1)
    layout = ArchiveLayout("arch", len(data), 4 * MIB)
    put(cache, layout, data)
    hashes = cache.chunk_tree_hashes(layout)
    assert sorted(hashes) == [0, 1, 2]
    assert hashes[1] == cache.chunk_tree_hash(layout, 1) == tree_hash(piece(layout, data, 1))
    assert fold([hashes[i] for i in range(3)]) == tree_hash(data)
    assert cache.chunk_tree_hash(ArchiveLayout("other", 1, MIB), 0) is None


def test_putting_a_cached_chunk_again_changes_nothing(cache):
    data = make_data(MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(cache, layout, data)
    files = (archive_files(cache.directory), os.stat(cache.directory / "archives").st_mtime_ns)
    put(cache, layout, data)
    assert (archive_files(cache.directory), os.stat(cache.directory / "archives").st_mtime_ns) == files
    assert cache.read(layout, 0, MIB) == data


def test_empty_archive(cache):
    layout = ArchiveLayout("empty", 0, MIB)
    assert cache.state(layout) == "absent"
    assert cache.missing_chunks(layout) == [0]
    cache.put_chunk(layout, 0, b"", tree_hash(b""))
    assert cache.state(layout) == "cached"
    assert cache.cached_bytes(layout) == 0
    assert cache.read(layout, 0, 4096) == b""


def test_chunk_size_change_keeps_grids_apart(cache):
    data = make_data(4 * MIB)
    small = ArchiveLayout("arch", len(data), MIB)
    big = ArchiveLayout("arch", len(data), 2 * MIB)
    put(cache, small, data, [0, 1, 2, 3])
    assert cache.state(small) == "cached"
    assert cache.state(big) == "absent"
    with pytest.raises(NotCached) as exc:
        cache.read(big, 0, 10)
    assert exc.value.missing == [0]
    put(cache, big, data, [1])
    assert cache.missing_chunks(big) == [0]
    assert cache.read(big, 3 * MIB, 100) == data[3 * MIB:3 * MIB + 100]


def test_discard_archive_removes_every_grid_and_nothing_else(cache):
    data = make_data(2 * MIB)
    layouts = [ArchiveLayout(aid, len(data), chunk)
               for aid in ("a", "ab", "a/1048576", "b") for chunk in (MIB, 2 * MIB)]
    for layout in layouts:
        put(cache, layout, data)
    cache.read(layouts[0], 0, 10)  # an open handle must not keep it readable
    cache.discard_archive("a")
    states = {(lay.archive_id, lay.chunk_size): cache.state(lay) for lay in layouts}
    assert states[("a", MIB)] == states[("a", 2 * MIB)] == "absent"
    assert all(s == "cached" for (aid, _), s in states.items() if aid != "a")
    with pytest.raises(NotCached):
        cache.read(layouts[0], 0, 10)
    assert stray_bytes(cache.directory) == 0


def test_chunks_persist_across_reopen(tmp_path):
    data = make_data(3 * MIB + 5)
    layout = ArchiveLayout("arch", len(data), MIB)
    with ChunkCache(tmp_path / "c", 64 * MIB) as c:
        put(c, layout, data, [0, 2, 3])
        hashes = c.chunk_tree_hashes(layout)
    with ChunkCache(tmp_path / "c", 64 * MIB) as c:
        assert c.missing_chunks(layout) == [1]
        assert c.chunk_tree_hashes(layout) == hashes
        assert c.read(layout, 2 * MIB, MIB + 5) == data[2 * MIB:]


def test_damaged_chunk_file_is_dropped_not_served(cache):
    data = make_data(2 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(cache, layout, data)
    for name in archive_files(cache.directory):
        with open(cache.directory / name, "r+b") as f:
            f.truncate(MIB - 1)
    with pytest.raises(NotCached) as exc:
        cache.read(layout, 0, 2 * MIB)
    assert exc.value.missing == [0, 1]
    assert cache.state(layout) == "absent"


def test_chunk_file_truncated_under_an_open_handle_is_dropped(cache):
    data = make_data(MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(cache, layout, data)
    assert cache.read(layout, 0, 10) == data[:10]  # handle now open
    (name,) = archive_files(cache.directory)
    with open(cache.directory / name, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(NotCached):
        cache.read(layout, 900, 200)
    assert cache.state(layout) == "absent"


# --- eviction --------------------------------------------------------------------------------

def test_eviction_holds_the_size_limit_least_recently_used_first(tmp_path, monkeypatch):
    limit = 8 * MIB
    c = ChunkCache(tmp_path / "c", limit)
    data = make_data(20 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(c, layout, data, [0, 1, 2, 3, 4])
    c.read(layout, 0, 10)  # chunk 0 is now the most recently used
    first_evicted = None
    for i in range(5, 20):
        put(c, layout, data, [i])
        assert c.volume() <= limit
        gone = [j for j in range(i) if not c.has_chunk(layout, j)]
        if gone and first_evicted is None:
            first_evicted = gone
    assert first_evicted == [1]  # chunk 0 was read since: 1 is the least recently used
    held = [i for i in range(20) if c.has_chunk(layout, i)]
    # evicted one at a time: the cache stays nearly full, holding the newest chunks
    assert len(held) >= 6
    assert held == list(range(20 - len(held), 20))
    assert c.volume() > limit - 2 * MIB
    with pytest.raises(NotCached) as exc:
        c.read(layout, 0, 20 * MIB)
    assert exc.value.missing == list(range(0, 20 - len(held)))
    assert stray_bytes(c.directory) == 0
    c.close()


def test_rereads_through_open_handles_count_as_use(tmp_path):
    c = ChunkCache(tmp_path / "c", 7 * MIB)
    data = make_data(12 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(c, layout, data, range(5))
    c.read(layout, 0, 10)
    c.read(layout, MIB, 10)
    c.read(layout, 0, 10)  # through the open handle: 0 is now newer than 1
    order = []
    for i in range(5, 12):
        put(c, layout, data, [i])
        order += [j for j in range(5) if j not in order and not c.has_chunk(layout, j)]
    assert order == [2, 3, 4, 1, 0]
    c.close()


def test_cached_reads_do_not_write_the_index(cache):
    data = make_data(2 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(cache, layout, data)

    def access_times():
        con = sqlite3.connect(cache.directory / "cache.db")
        try:
            return con.execute("SELECT key, access_time FROM Cache ORDER BY key").fetchall()
        finally:
            con.close()

    before = access_times()
    for off in range(0, 2 * MIB, 128 * 1024):
        assert cache.read(layout, off, 128 * 1024) == data[off:off + 128 * 1024]
    assert access_times() == before


def test_chunk_removed_elsewhere_stops_being_served_after_the_recheck(tmp_path, monkeypatch):
    data = make_data(2 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    reader = ChunkCache(tmp_path / "c", 64 * MIB)
    put(reader, layout, data)
    assert reader.read(layout, 0, 10) == data[:10]  # handle open on chunk 0
    with ChunkCache(tmp_path / "c", 64 * MIB) as other:  # e.g. another process
        other.discard_archive("arch")
    assert reader.read(layout, 0, 10) == data[:10]  # open handle, within the interval: old bytes
    monkeypatch.setattr(handles_mod, "RECHECK_INTERVAL", 0.0)
    with pytest.raises(NotCached):
        reader.read(layout, 0, 10)
    assert reader.state(layout) == "absent"
    reader.close()


def test_handle_retired_mid_read_stays_open_until_the_read_ends(cache, monkeypatch):
    monkeypatch.setattr(handles_mod, "HANDLE_CACHE_SIZE", 1)
    data = {name: make_data(4 * MIB, seed=n) for n, name in enumerate(("a", "b"))}
    layouts = {name: ArchiveLayout(name, 4 * MIB, MIB) for name in data}
    for name in data:
        put(cache, layouts[name], data[name])
        cache.read(layouts[name], 0, 4 * MIB)
    errors: list[BaseException] = []

    def open_archive_files() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                count += target.startswith(str(cache.directory)) and target.endswith(".arc")
        return count

    def reader(name: str) -> None:  # two archives, one table slot: handles retire mid-read
        try:
            for _ in range(30):
                assert cache.read(layouts[name], 10, 4 * MIB) == data[name][10:]
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(name,)) for name in data for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert open_archive_files() <= 1  # every retired handle closed once its reads ended


def test_eviction_frees_the_bytes_only_after_the_delete_is_durable(tmp_path, monkeypatch):
    """Evicted chunks give their disk space back (holes punched, files removed), and never
    before the index's delete is on disk: after a power cut a row must not list a hole."""
    events: list[str] = []
    real_punch, real_barrier = sparse.punch_hole, recovery.index_barrier
    monkeypatch.setattr(sparse, "punch_hole",
                        lambda fd, off, n: events.append("punch") or real_punch(fd, off, n))
    monkeypatch.setattr(recovery, "index_barrier",
                        lambda d: events.append("barrier") or real_barrier(d))
    limit = 4 * MIB
    data = make_data(8 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    other = ArchiveLayout("other", MIB, MIB)
    with ChunkCache(tmp_path / "c", limit) as c:
        put(c, other, data[:MIB])
        put(c, layout, data)
        assert "punch" in events and events.index("barrier") < events.index("punch")
        assert c.state(other) == "absent"
        allocated = sum(os.stat(p).st_blocks * 512 for p in (tmp_path / "c" / "archives").iterdir())
        assert allocated <= limit
        assert len(archive_files(c.directory)) == 1  # the other archive's file is gone
        assert stray_bytes(c.directory) == 0
        present = [i for i in range(layout.chunk_count) if c.has_chunk(layout, i)]
        assert present and c.read(layout, present[0] * MIB, MIB) == piece(layout, data, present[0])


def test_evicted_chunk_with_an_open_handle_reads_as_not_cached(tmp_path):
    c = ChunkCache(tmp_path / "c", 4 * MIB)
    data = make_data(6 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(c, layout, data, [0])
    assert c.read(layout, 0, 100) == data[:100]  # opens and keeps a handle on chunk 0
    put(c, layout, data, [1, 2, 3, 4, 5])
    assert not c.has_chunk(layout, 0)
    with pytest.raises(NotCached) as exc:
        c.read(layout, 0, 100)
    assert exc.value.missing == [0]
    c.close()


def test_chunk_larger_than_the_cache_is_refused_without_evicting(tmp_path):
    c = ChunkCache(tmp_path / "c", 3 * MIB)
    data = make_data(5 * MIB)
    small = ArchiveLayout("small", MIB, MIB)
    put(c, small, data[:MIB])
    big = ArchiveLayout("big", len(data), 4 * MIB)
    with pytest.raises(CacheFullError):
        put(c, big, data, [0])
    assert c.state(small) == "cached"
    assert c.state(big) == "absent"
    c.close()


def test_reopening_with_a_smaller_limit_evicts_down_to_it(tmp_path):
    data = make_data(8 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    with ChunkCache(tmp_path / "c", 64 * MIB) as c:
        put(c, layout, data)
    with ChunkCache(tmp_path / "c", 4 * MIB) as c:
        assert c.volume() <= 4 * MIB
        assert c.missing_chunks(layout)[:4] == [0, 1, 2, 3]


def test_concurrent_puts_and_reads_respect_the_limit_and_never_return_wrong_bytes(tmp_path):
    limit = 10 * MIB
    c = ChunkCache(tmp_path / "c", limit)
    archives = {f"arch{n}": make_data(8 * MIB, seed=n) for n in range(4)}
    layouts = {aid: ArchiveLayout(aid, len(d), MIB) for aid, d in archives.items()}
    errors: list[BaseException] = []
    over_limit: list[int] = []
    stop = threading.Event()

    def writer(aid: str) -> None:
        try:
            for _ in range(3):
                put(c, layouts[aid], archives[aid])
                if c.volume() > limit:
                    over_limit.append(c.volume())
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            while not stop.is_set():
                aid = rnd.choice(list(archives))
                off, length = rnd.randrange(8 * MIB), rnd.randrange(1, 2 * MIB)
                try:
                    got = c.read(layouts[aid], off, length)
                except NotCached:
                    continue
                if got != archives[aid][off:off + length]:
                    errors.append(AssertionError(f"wrong bytes {aid} {off} {length}"))
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    writers = [threading.Thread(target=writer, args=(aid,)) for aid in archives]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[:3]
    assert not over_limit
    assert stray_bytes(c.directory) == 0
    c.close()


# --- disk full -------------------------------------------------------------------------------

def _fail_writes_after(monkeypatch, budget: int, err: int = errno.ENOSPC) -> None:
    """Let ``budget`` bytes through os.pwrite, then fail like a full disk (short write first)."""
    real_pwrite = os.pwrite
    left = [budget]

    def pwrite(fd, buf, offset):
        if left[0] <= 0:
            raise OSError(err, os.strerror(err))
        n = real_pwrite(fd, memoryview(buf)[:left[0]], offset)
        left[0] -= n
        return n

    monkeypatch.setattr(os, "pwrite", pwrite)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_mid_write_raises_and_leaves_nothing_behind(cache, monkeypatch, err):
    data = make_data(3 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(cache, layout, data, [0])
    with monkeypatch.context() as m:
        _fail_writes_after(m, MIB // 2, err)
        with pytest.raises(CacheFullError):
            put(cache, layout, data, [1])
    assert stray_bytes(cache.directory) == 0
    assert cache.missing_chunks(layout) == [1, 2]
    put(cache, layout, data, [1, 2])  # space is back: work resumes
    assert cache.read(layout, 0, len(data)) == data


def test_disk_full_on_fsync(cache, monkeypatch):
    data = make_data(MIB)
    layout = ArchiveLayout("arch", len(data), MIB)

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fsync)
        m.setattr(os, "fdatasync", fsync)  # chunk files are made durable with it
        with pytest.raises(CacheFullError):
            put(cache, layout, data)
        with pytest.raises(CacheFullError):  # the streaming writer alike
            writer = cache.chunk_writer(layout, 0, memoryview(bytearray(data)))
            writer.commit(tree_hash(data))
    assert stray_bytes(cache.directory) == 0
    assert cache.state(layout) == "absent"


def test_index_full_after_the_file_is_written(cache, monkeypatch):
    """SQLite hitting ENOSPC: the bytes just written are punched out, the index still works."""
    data = make_data(2 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)

    def row_insert(*args, **kwargs):
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode = sqlite3.SQLITE_FULL
        raise exc

    with monkeypatch.context() as m:
        m.setattr(cache._cache, "_row_insert", row_insert)
        with pytest.raises(CacheFullError):
            put(cache, layout, data, [0])
    assert stray_bytes(cache.directory) == 0
    assert cache.state(layout) == "absent"
    put(cache, layout, data)
    assert cache.read(layout, 0, len(data)) == data


def test_index_full_while_evicting_to_make_room(tmp_path, monkeypatch):
    c = ChunkCache(tmp_path / "c", 3 * MIB)
    data = make_data(4 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    put(c, layout, data, [0, 1])

    def delete(*args, **kwargs):
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode = sqlite3.SQLITE_FULL
        raise exc

    with monkeypatch.context() as m:
        m.setattr(c._cache, "delete", delete)
        with pytest.raises(CacheFullError):
            put(c, layout, data, [2])
    assert c.missing_chunks(layout) == [2, 3]
    assert stray_bytes(c.directory) == 0
    put(c, layout, data, [2, 3])
    assert c.read(layout, 2 * MIB, 2 * MIB) == data[2 * MIB:]
    c.close()


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                         capture_output=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_disk_full_on_a_tiny_tmpfs(tiny_fs):
    c = ChunkCache(tiny_fs / "c", 64 * MIB)  # the limit is not what stops us: the device is
    data = make_data(8 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    stored = []
    with pytest.raises(CacheFullError):
        for i in range(layout.chunk_count):
            put(c, layout, data, [i])
            stored.append(i)
    assert stored and len(stored) < 3
    assert stray_bytes(c.directory) == 0
    assert [i for i in range(8) if c.has_chunk(layout, i)] == stored
    assert c.read(layout, 0, len(stored) * MIB) == data[:len(stored) * MIB]
    c.discard_archive("arch")  # space returns
    put(c, layout, data, [5])
    assert c.read(layout, 5 * MIB, MIB) == data[5 * MIB:6 * MIB]
    c.close()


# --- crashes ---------------------------------------------------------------------------------

CRASH_CHILD = textwrap.dedent("""
    import os, random, sys
    from glacierfs.cache import chunkcache as cm
    from glacierfs.cache.layout import ArchiveLayout
    from glacierfs.treehash import MIB, tree_hash
    directory, where, how = sys.argv[1], sys.argv[2], sys.argv[3]
    data = random.Random(3).randbytes(2 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    c = cm.ChunkCache(directory, 64 * MIB)
    c.put_chunk(layout, 0, data[:MIB], tree_hash(data[:MIB]))
    if where == "mid-write":
        real_write, real_pwrite = os.write, os.pwrite
        def write(fd, buf):
            real_write(fd, memoryview(buf)[:MIB // 3])
            os._exit(137)
        def pwrite(fd, buf, offset):
            real_pwrite(fd, memoryview(buf)[:MIB // 3], offset)
            os._exit(137)
        os.write = write
        os.pwrite = pwrite
    else:  # file complete and durable, row not yet committed
        os.fsync = os.fdatasync = lambda fd: os._exit(137)
    if how == "put":
        c.put_chunk(layout, 1, data[MIB:], tree_hash(data[MIB:]))
    else:  # the downloader's streaming writer
        buf = bytearray(data[MIB:])
        w = c.chunk_writer(layout, 1, memoryview(buf))
        w.filled(len(buf))
        w.commit(tree_hash(data[MIB:]))
    sys.exit("not killed")
""")


@pytest.mark.parametrize("how", ["put", "writer"])
@pytest.mark.parametrize("where", ["mid-write", "before-commit"])
def test_kill_during_a_write_leaves_no_readable_partial_chunk(tmp_path, monkeypatch, where, how):
    directory = tmp_path / "c"
    proc = subprocess.run([sys.executable, "-c", CRASH_CHILD, str(directory), where, how],
                          cwd=ROOT, capture_output=True)
    assert proc.returncode == 137, proc.stderr.decode()
    orphans = stray_bytes(directory)
    assert orphans > 0  # the interrupted write is on disk, listed by no row

    data = make_data(2 * MIB, seed=3)
    layout = ArchiveLayout("arch", len(data), MIB)
    with ChunkCache(directory, 64 * MIB) as c:  # young orphan: maybe another writer's; kept
        assert c.missing_chunks(layout) == [1]
        with pytest.raises(NotCached):
            c.read(layout, MIB, 10)
        assert stray_bytes(directory) == orphans
    monkeypatch.setattr(recovery, "ORPHAN_GRACE", 0.0)
    with ChunkCache(directory, 64 * MIB) as c:  # old orphan: swept
        assert stray_bytes(directory) == 0
        assert c.read(layout, 0, MIB) == data[:MIB]
        put(c, layout, data, [1])
        assert c.read(layout, 0, len(data)) == data


# --- permissions -----------------------------------------------------------------------------

def test_directory_0700_and_files_0600(tmp_path):
    directory = tmp_path / "c"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    with ChunkCache(directory, 64 * MIB) as c:
        data = make_data(3 * MIB)
        put(c, ArchiveLayout("arch", len(data), MIB), data)
        c.read(ArchiveLayout("arch", len(data), MIB), 0, 10)
        modes = {}
        for root, dirs, files in os.walk(directory):
            for name in dirs + files:
                p = Path(root, name)
                modes[str(p.relative_to(directory))] = stat.S_IMODE(p.stat().st_mode)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert "cache.db" in modes and any(n.endswith(".arc") for n in modes)
    for name, mode in modes.items():
        assert mode == (0o700 if (directory / name).is_dir() else 0o600), (name, oct(mode))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_directory_owned_by_someone_else_is_refused(tmp_path):
    directory = tmp_path / "c"
    directory.mkdir(mode=0o700)
    os.chown(directory, 12345, 12345)
    with pytest.raises(CacheError):
        ChunkCache(directory, 64 * MIB)


# --- keys ------------------------------------------------------------------------------------

@given(aid=st.text(min_size=1, max_size=200), shift=st.integers(0, 10), index=st.integers(0, 10**6))
def test_keys_round_trip_and_never_share_an_archive_prefix(aid, shift, index):
    layout = ArchiveLayout(aid, 1, MIB << shift)
    key = layout_mod.chunk_key(layout, index)
    assert layout_mod.slot_of(key) == (aid, MIB << shift, index)
    low, high = layout_mod.prefix_bounds(layout_mod.key_prefix(aid))
    assert low <= key < high
    other = ArchiveLayout(aid + "0", 1, MIB)  # an id extending this one is outside its range
    assert not low <= layout_mod.chunk_key(other, index) < high


# --- streaming writer and chunks held unverified ---------------------------------------------

def write_chunk(cache: ChunkCache, layout: ArchiveLayout, data: bytes, index: int,
                expected: bytes | None, hold: bool = False) -> bytes:
    """Store one chunk through the downloader's writer, fed a leaf at a time."""
    chunk = bytearray(piece(layout, data, index))
    writer = cache.chunk_writer(layout, index, memoryview(chunk))
    for upto in range(MIB, len(chunk) + MIB, MIB):
        writer.filled(min(upto, len(chunk)))
    return writer.commit(expected, hold=hold)


def test_streaming_writer_stores_only_the_expected_bytes(cache):
    data = make_data(5 * MIB + 17)
    layout = ArchiveLayout("w", len(data), 2 * MIB)
    for i in range(layout.chunk_count):
        assert write_chunk(cache, layout, data, i, tree_hash(piece(layout, data, i))) == \
            tree_hash(piece(layout, data, i))
    assert cache.read(layout, 0, len(data)) == data
    other = ArchiveLayout("w2", len(data), 2 * MIB)
    with pytest.raises(ChunkVerificationError):
        write_chunk(cache, other, data, 0, tree_hash(b"something else"))
    assert cache.state(other) == "absent"
    assert stray_bytes(cache.directory) == 0


def test_held_chunks_are_unreadable_until_the_whole_root_matches(cache):
    data = make_data(3 * MIB + 5)
    layout = ArchiveLayout("held", len(data), MIB)
    write_chunk(cache, layout, data, 0, tree_hash(piece(layout, data, 0)))  # one verified
    for i in (1, 2):
        write_chunk(cache, layout, data, i, None, hold=True)
    assert cache.missing_chunks(layout) == [1, 2, 3]
    with pytest.raises(NotCached):
        cache.read(layout, MIB, 10)
    with pytest.raises(NotCached):  # chunk 3 neither held nor verified: nothing changes
        cache.promote_held(layout, tree_hash(data))
    assert sorted(cache.held_tree_hashes(layout)) == [1, 2]
    write_chunk(cache, layout, data, 3, None, hold=True)
    cache.promote_held(layout, tree_hash(data))
    assert cache.state(layout) == "cached" and cache.held_tree_hashes(layout) == {}
    assert cache.read(layout, 0, len(data)) == data


def test_held_chunks_with_a_wrong_root_are_dropped(cache):
    data = make_data(2 * MIB)
    layout = ArchiveLayout("bad", len(data), MIB)
    for i in range(2):
        write_chunk(cache, layout, data, i, None, hold=True)
    with pytest.raises(ChunkVerificationError):
        cache.promote_held(layout, tree_hash(b"the inventory says otherwise"))
    assert cache.held_tree_hashes(layout) == {} and cache.state(layout) == "absent"
    assert archive_files(cache.directory) == set()


def test_held_chunks_can_be_evicted_like_any_other(tmp_path):
    with ChunkCache(tmp_path / "c", 3 * MIB) as c:
        data = make_data(4 * MIB)
        layout = ArchiveLayout("ev", len(data), MIB)
        for i in range(4):
            write_chunk(c, layout, data, i, None, hold=True)
        assert len(c.held_tree_hashes(layout)) < 4
        assert c.volume() <= 3 * MIB
        with pytest.raises(NotCached):
            c.promote_held(layout, tree_hash(data))


def test_chunks_that_finish_together_share_one_sync(tmp_path, monkeypatch):
    """Writers of one archive committing while another's sync runs are made durable by one
    fdatasync after it, and their rows commit together; each chunk is readable once committed."""
    data = make_data(4 * MIB)
    layout = ArchiveLayout("arch", len(data), MIB)
    c = ChunkCache(tmp_path / "c", 64 * MIB)
    group = c._group
    path = c.archive_path(layout)
    syncs: list[int] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd):
        if not syncs:  # the first sync waits until the three others are queued behind it
            deadline = time.monotonic() + 60
            while len(group._queues.get(path, ())) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        syncs.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    errors: list[BaseException] = []

    def store(index: int) -> None:
        try:
            write_chunk(c, layout, data, index, tree_hash(piece(layout, data, index)))
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(syncs) == 2  # the first chunk alone, then the three that queued behind it
    assert c.read(layout, 0, len(data)) == data
    c.close()
