"""The cache room's Queued reasons, as ``glacierfs status`` and getfattr show them."""

from glacierfs.jobs.room import ROOM_REASON, CacheRoom, capacity_of
from glacierfs.store import Store

MIB = 1024 * 1024


def test_waiting_reasons_give_sizes_people_read(tmp_path):
    room = CacheRoom(Store(tmp_path), 40 * MIB)
    assert room.capacity == capacity_of(40 * MIB) == 36 * MIB
    for n in range(5):
        room.want(f"a{n}", 7 * MIB)
        room.hold(f"a{n}")
    assert room.refuses("a9", 7 * MIB) == (
        f"{ROOM_REASON}: 35.0 MiB of 36.0 MiB are held for restored files not yet read; read "
        "or copy them (glacierfs copy), or raise cache_size")
    assert room.refuses("big", 50 * MIB) == (
        f"{ROOM_REASON}: larger than the cache (50.0 MiB of 36.0 MiB); starts once the "
        "35.0 MiB held for restored files are read")
    assert room.refuses("a0", 7 * MIB) is None
