"""A cache written by the previous release (one diskcache value file per chunk) is moved into
the archive files on open: every chunk stays readable, nothing is fetched again, a move cut
short by a crash is finished by the next open, and a damaged old chunk is dropped, not served."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import diskcache
import pytest

from glacierfs.cache import recovery
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.cache.errors import NotCached
from glacierfs.cache.layout import ArchiveLayout, chunk_key, held_key
from glacierfs.treehash import MIB, tree_hash

ROOT = Path(__file__).resolve().parents[2]


def write_previous_layout(directory: Path, layout: ArchiveLayout, data: bytes,
                          indexes=None, held=()) -> None:
    """The previous release's on-disk format: diskcache rows keyed as today, each chunk in its
    own value file (``disk_min_file_size=0``), its tree hash as the row's tag."""
    directory.mkdir(parents=True, exist_ok=True)
    old = diskcache.Cache(str(directory), size_limit=1 << 40, eviction_policy="least-recently-used",
                          cull_limit=0, disk_min_file_size=0, statistics=0, tag_index=0)
    try:
        for i in range(layout.chunk_count) if indexes is None else indexes:
            start, end = layout.chunk_range(i)
            chunk = data[start:end + 1]
            key = (held_key if i in held else chunk_key)(layout, i)
            old.set(key, chunk, tag=tree_hash(chunk))
    finally:
        old.close()


def value_files(directory: Path) -> list[Path]:
    return list(directory.glob("*/*/*.val"))


def make_data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def test_previous_layout_is_moved_and_read_without_fetching(tmp_path):
    directory = tmp_path / "chunks"
    data = make_data(5 * MIB + 77)
    layout = ArchiveLayout("old-archive", len(data), MIB)
    other = ArchiveLayout("partial", len(data), 2 * MIB)
    write_previous_layout(directory, layout, data)
    write_previous_layout(directory, other, data, indexes=[1])
    assert len(value_files(directory)) == layout.chunk_count + 1
    with ChunkCache(directory, 64 * MIB) as c:
        assert c.state(layout) == "cached"
        assert c.read(layout, 0, len(data)) == data
        assert c.read(layout, MIB - 3, 10) == data[MIB - 3:MIB + 7]
        assert c.missing_chunks(other) == [0, 2]
        assert c.read(other, 2 * MIB, 2 * MIB) == data[2 * MIB:4 * MIB]
        hashes = c.chunk_tree_hashes(layout)
        assert hashes[0] == tree_hash(data[:MIB])
        assert c.volume() < len(data) + 2 * MIB + MIB  # counted once, not twice
    assert value_files(directory) == []
    with ChunkCache(directory, 64 * MIB) as c:  # and it stays moved
        assert c.read(layout, 0, len(data)) == data


def test_held_chunks_of_the_previous_layout_stay_held(tmp_path):
    directory = tmp_path / "chunks"
    data = make_data(3 * MIB)
    layout = ArchiveLayout("held", len(data), MIB)
    write_previous_layout(directory, layout, data, held={1, 2})
    with ChunkCache(directory, 64 * MIB) as c:
        assert c.missing_chunks(layout) == [1, 2]
        with pytest.raises(NotCached):
            c.read(layout, MIB, 10)
        c.promote_held(layout, tree_hash(data))
        assert c.read(layout, 0, len(data)) == data


def test_damaged_chunk_of_the_previous_layout_is_dropped(tmp_path):
    directory = tmp_path / "chunks"
    data = make_data(3 * MIB)
    layout = ArchiveLayout("damaged", len(data), MIB)
    write_previous_layout(directory, layout, data)
    con_files = sorted(value_files(directory), key=lambda p: p.stat().st_ino)
    victim = con_files[0]
    victim.write_bytes(b"\0" * MIB)  # same length, wrong bytes
    with ChunkCache(directory, 64 * MIB) as c:
        assert len(c.missing_chunks(layout)) == 1
        for i in range(layout.chunk_count):
            if c.has_chunk(layout, i):
                assert c.read(layout, i * MIB, MIB) == data[i * MIB:(i + 1) * MIB]
    assert value_files(directory) == []


CRASH_CHILD = textwrap.dedent("""
    import os, sys
    from glacierfs.cache import recovery
    from glacierfs.cache.chunkcache import ChunkCache
    directory, where = sys.argv[1], sys.argv[2]
    recovery.MIGRATE_BATCH = 1  # a sync and a commit per chunk
    calls = [0]
    if where == "mid-copy":
        real = os.pwrite
        def pwrite(fd, data, offset):
            calls[0] += 1
            if calls[0] == 3:
                real(fd, memoryview(data)[:1000], offset)
                os._exit(137)
            return real(fd, data, offset)
        os.pwrite = pwrite
    else:  # rows switched, value files not yet removed
        def unlink(path, *, dir_fd=None):
            calls[0] += 1
            if calls[0] == 2:
                os._exit(137)
            real_unlink(path)
        real_unlink = os.unlink
        os.unlink = unlink
    ChunkCache(directory, 64 * 1024 * 1024)
    sys.exit("not killed")
""")


@pytest.mark.parametrize("where", ["mid-copy", "after-commit"])
def test_move_cut_short_is_finished_by_the_next_open(tmp_path, monkeypatch, where):
    directory = tmp_path / "chunks"
    data = make_data(6 * MIB)
    layout = ArchiveLayout("interrupted", len(data), MIB)
    write_previous_layout(directory, layout, data)
    proc = subprocess.run([sys.executable, "-c", CRASH_CHILD, str(directory), where],
                          cwd=ROOT, capture_output=True)
    assert proc.returncode == 137, proc.stderr.decode()
    assert value_files(directory)  # part of the old layout is still there
    monkeypatch.setattr(recovery, "ORPHAN_GRACE", 0.0)  # old value files no row lists: swept
    with ChunkCache(directory, 64 * MIB) as c:
        assert c.state(layout) == "cached"
        assert c.read(layout, 0, len(data)) == data
    assert value_files(directory) == []
    assert os.listdir(directory / "archives")


def test_a_large_old_cache_is_moved_in_the_background_and_read_meanwhile(tmp_path, monkeypatch):
    """An open moves only what fits its time budget; the rest moves in the background, and an
    archive a reader asks for first is moved at once."""
    monkeypatch.setattr(recovery, "MIGRATE_AT_OPEN", 0.0)
    monkeypatch.setattr(recovery, "MIGRATE_ROWS", 1)
    directory = tmp_path / "chunks"
    archives = {f"a{n}": make_data(3 * MIB, seed=n) for n in range(4)}
    layouts = {aid: ArchiveLayout(aid, len(d), MIB) for aid, d in archives.items()}
    for aid, data in archives.items():
        write_previous_layout(directory, layouts[aid], data)
    with ChunkCache(directory, 64 * MIB) as c:
        for aid in reversed(list(archives)):  # the last ones are moved last in the background
            assert c.state(layouts[aid]) == "cached"
            assert c.read(layouts[aid], 0, 3 * MIB) == archives[aid]
    with ChunkCache(directory, 64 * MIB) as c:
        deadline = time.monotonic() + 60
        while value_files(directory) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert value_files(directory) == []
        for aid, data in archives.items():
            assert c.read(layouts[aid], 0, 3 * MIB) == data


def test_disk_full_during_the_move_drops_chunks_never_serves_wrong_bytes(tmp_path, monkeypatch):
    directory = tmp_path / "chunks"
    data = make_data(4 * MIB)
    layout = ArchiveLayout("full", len(data), MIB)
    write_previous_layout(directory, layout, data)
    real_pwrite, calls = os.pwrite, [0]

    def pwrite(fd, buf, offset):
        calls[0] += 1
        if calls[0] == 3:  # the third chunk's copy meets a full disk, once
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, buf, offset)

    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", pwrite)
        c = ChunkCache(directory, 64 * MIB)  # opens: a full disk is no reason to fail a mount
    with c:
        missing = c.missing_chunks(layout)
        assert missing == [2, 3]  # that round's chunks from the failed copy on; the rest moved
        for i in range(layout.chunk_count):
            if i in missing:
                with pytest.raises(NotCached):
                    c.read(layout, i * MIB, MIB)
            else:
                assert c.read(layout, i * MIB, MIB) == data[i * MIB:(i + 1) * MIB]
        for i in missing:  # room again: downloads store them as usual
            c.put_chunk(layout, i, data[i * MIB:(i + 1) * MIB], tree_hash(data[i * MIB:(i + 1) * MIB]))
        assert c.read(layout, 0, len(data)) == data
    assert value_files(directory) == []
