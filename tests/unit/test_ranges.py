"""ranges.py and the range_size option: window sizes by tier and budget, units that never
overlap a recorded range, which ListJobs ranges can be adopted, and the option's errors."""

from __future__ import annotations

from dataclasses import replace

import pytest

from glacierfs.cache.layout import ArchiveLayout
from glacierfs.jobs.jobstore import QUEUED, SUCCEEDED, JobRecord
from glacierfs.options import MountOptions, OptionError, parse_options
from glacierfs.jobs.ranges import RangeBook

MIB = 1024 * 1024
SIZE = 100 * MIB + 7


def _book(records: list[JobRecord] | None = None, **opts) -> RangeBook:
    options = replace(MountOptions(region="us-east-1", chunk_size=MIB), **opts)
    return RangeBook({r.key: r for r in records or []}, options, cache=None)  # type: ignore[arg-type]


def _rec(start: int, end: int, state: str = SUCCEEDED) -> JobRecord:
    return JobRecord(archive_id="A", vault="v", state=state, tier="Standard",
                     size=end - start + 1, tree_hash=None, requested_at=0.0,
                     range_start=start, range_end=end)


def test_range_size_option():
    assert parse_options("us-east-1", ["range_size=32M"]).range_size == 32 * MIB
    assert parse_options("us-east-1", ["range_size=off"]).range_size == 0
    assert parse_options("us-east-1", []).range_size is None   # the default by tier
    for bad, says in (("range_size=24M", "power-of-two"), ("range_size=1000", "power-of-two"),
                      ("range_size=8M,chunk_size=16M", "multiple of chunk_size")):
        with pytest.raises(OptionError, match=says):
            parse_options("us-east-1", [bad])


def test_window_by_tier_budget_and_chunk():
    book = _book()
    assert book.window("Standard") == 32 * MIB and book.window("Bulk") == 32 * MIB
    assert book.window("Expedited") == 128 * MIB               # under Expedited's 250 MB
    assert _book(range_size=512 * MIB).window("Expedited") == 128 * MIB
    assert _book(range_size=512 * MIB).window("Standard") == 512 * MIB
    assert _book(range_size=64 * MIB, budget=20 * MIB).window("Standard") == 16 * MIB
    assert _book(chunk_size=64 * MIB).window("Standard") == 64 * MIB  # never below a chunk


def test_units_are_windows_halved_around_recorded_ranges():
    layout = ArchiveLayout("A", SIZE, MIB)
    book = _book(range_size=32 * MIB)
    assert book.unit_for(layout, 40, "Standard") == (32 * MIB, 64 * MIB - 1)
    assert book.unit_for(layout, 99, "Standard") == (96 * MIB, SIZE - 1)   # the short last one
    # An 8 MiB range recorded at 40-48 MiB (a remount with another range_size, or adopted):
    book = _book([_rec(40 * MIB, 48 * MIB - 1)], range_size=32 * MIB)
    assert book.unit_for(layout, 33, "Standard") == (32 * MIB, 40 * MIB - 1)
    assert book.unit_for(layout, 50, "Standard") == (48 * MIB, 64 * MIB - 1)
    assert book.covering(layout, 44).range_start == 40 * MIB
    units = book.plan(layout, range(30, 60), "Standard")
    assert units == [(0, 32 * MIB - 1), (32 * MIB, 40 * MIB - 1), (48 * MIB, 64 * MIB - 1)]
    spans = sorted([*units, (40 * MIB, 48 * MIB - 1)])
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_a_whole_archive_record_covers_every_chunk():
    layout = ArchiveLayout("A", SIZE, MIB)
    whole = JobRecord(archive_id="A", vault="v", state=QUEUED, tier="Standard", size=SIZE,
                      tree_hash=None, requested_at=0.0)
    book = _book([whole])
    assert all(book.covering(layout, i) is whole for i in (0, 50, 100))
    assert book.plan(layout, range(101), "Standard") == []


def test_adoptable_ranges_from_listjobs():
    book = _book(chunk_size=4 * MIB)
    ok = {"RetrievalByteRange": f"{8 * MIB}-{16 * MIB - 1}"}
    assert book.usable_remote(ok, SIZE) == (8 * MIB, 16 * MIB - 1)
    assert book.usable_remote({"RetrievalByteRange": f"{MIB}-{3 * MIB - 1}"}, SIZE) is None
    assert book.usable_remote({"RetrievalByteRange": f"{2 * MIB}-{4 * MIB - 1}"}, SIZE) is None
    assert book.usable_remote({"RetrievalByteRange": f"{96 * MIB}-{SIZE - 1}"}, SIZE) == \
        (96 * MIB, SIZE - 1)
    assert book.usable_remote({"RetrievalByteRange": f"0-{SIZE - 1}"}, SIZE) is None  # whole
    assert book.usable_remote({}, SIZE) is None


class _Hashes:
    """The one cache query range verification makes: verified tree hash per stored chunk."""

    def __init__(self, hashes: dict[int, bytes]) -> None:
        self.hashes = hashes

    def chunk_tree_hashes(self, layout: ArchiveLayout) -> dict[int, bytes]:
        return dict(self.hashes)


def test_a_range_is_verified_against_its_tree_hash_once_its_chunks_are_in():
    from glacierfs.treehash import tree_hash, tree_hash_hex
    data = bytes(range(256)) * (4 * MIB // 256)          # chunks 4-7 of an archive, 1 MiB each
    layout = ArchiveLayout("A", 16 * MIB, MIB)
    hashes = {4 + i: tree_hash(data[i * MIB:(i + 1) * MIB]) for i in range(4)}
    rec = _rec(4 * MIB, 8 * MIB - 1)
    rec.tree_hash = tree_hash_hex(data)                   # Glacier's SHA256TreeHash of the range
    book = _book([rec])
    book.cache = _Hashes({k: v for k, v in hashes.items() if k != 6})
    assert book.verify(rec, layout) is None               # a chunk still missing
    book.cache = _Hashes(hashes)
    assert book.verify(rec, layout) is True
    wrong = _rec(4 * MIB, 8 * MIB - 1)
    wrong.tree_hash = tree_hash_hex(data[::-1])
    other = _book([wrong])
    other.cache = _Hashes(hashes)
    assert other.verify(wrong, layout) is False


def test_ranges_recorded_earlier_are_kept_with_range_size_off():
    """A remount with range_size=off must not pay for the recorded ranges' bytes again."""
    from glacierfs.catalog.namespace import Entry
    entry = Entry(inode=5, parent=2, name="a.img", kind=1, vault="v", archive_id="A",
                  size=SIZE, mtime_ns=0, tree_hash=None, creation_ns=None, description=None)
    off = _book(range_size=0)
    assert not off.reads_ranged(entry, "Standard")
    assert not off.whole_as_ranges(entry, "Standard")
    kept = _book([_rec(0, 32 * MIB - 1)], range_size=0)
    assert kept.reads_ranged(entry, "Standard") and kept.whole_as_ranges(entry, "Standard")
    assert kept.plan(ArchiveLayout("A", SIZE, MIB), range(101), "Standard")[0] == \
        (32 * MIB, 64 * MIB - 1)
