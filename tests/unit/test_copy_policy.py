"""What ``glacierfs copy`` may request next: cache room (with and without the daemon's
``cache.pinned``), ``max_jobs`` and the daily budget, from a status document."""

from pathlib import Path

from glacierfs.commands.copycmd import STREAM, Tally, blocked, reserve
from glacierfs.commands.copyplan import Item

MIB = 1024 * 1024
LIMIT = 20 * MIB


def item(size=4 * MIB, needs_job=True, job_status=None):
    return Item(src=Path("/m/v/f"), dest=Path("/d/f"), mount=Path("/m"), size=size, mtime_ns=0,
                tree_hash="", cache="absent", job_status=job_status, needs_job=needs_job)


def doc(used=0, pinned=None, max_jobs=0, budget=None, budget_used=0, in_progress=0):
    cache = {"used": used, "limit": LIMIT}
    if pinned is not None:
        cache["pinned"] = pinned
    return {"cache": cache, "job_counts": {"InProgress": in_progress},
            "limits": {"max_jobs": max_jobs, "budget": budget, "budget_used": budget_used}}


def tally(*items):
    t = Tally()
    for i in items:
        t.add(i)
    return t


def test_room_is_the_limit_less_our_uncopied_files():
    four = tally(*(item() for _ in range(4)))          # 16 MiB requested, not yet copied
    assert blocked(item(), doc(), four).startswith("waiting for cache room")
    assert blocked(item(size=3 * MIB), doc(), four) is None
    # The cache's own index needs a little: a batch never fills the limit exactly.
    assert blocked(item(size=4 * MIB), doc(), tally(*(item() for _ in range(3)),
                                                     item(size=4 * MIB - reserve(LIMIT) + 1)))
    # Bytes used by files we already copied do not count: they may be evicted.
    assert blocked(item(size=3 * MIB), doc(used=LIMIT), four) is None


def test_pinned_bytes_count_when_the_mount_reports_them():
    one = tally(item())
    assert blocked(item(), doc(pinned=4 * MIB), one) is None
    assert blocked(item(), doc(pinned=16 * MIB), one).startswith("waiting for cache room")
    # Pinned never counts less than our own outstanding files.
    assert blocked(item(), doc(pinned=0), tally(*(item() for _ in range(4)))) is not None


def test_a_file_alone_is_always_requested_unless_it_can_never_fit():
    assert blocked(item(size=LIMIT - 1), doc(pinned=LIMIT), Tally()) is None
    # Larger than the cache: copied window by window, alone (after our other files).
    assert blocked(item(size=LIMIT + 1), doc(), Tally()) == STREAM
    assert blocked(item(size=LIMIT + 1), doc(), tally(item())).startswith("waiting")
    manual = doc()
    manual["limits"]["retrieve"] = "manual"
    assert blocked(item(size=LIMIT + 1), manual, Tally()).startswith("!larger")


def test_max_jobs_counts_running_jobs_and_our_unstarted_requests():
    mine = tally(item(size=MIB), item(size=MIB, job_status="Queued"))
    assert blocked(item(size=MIB), doc(max_jobs=3, in_progress=1), mine).startswith(
        "waiting for a job slot")
    assert blocked(item(size=MIB), doc(max_jobs=4, in_progress=1), mine) is None
    # A download from a job already done needs no slot.
    assert blocked(item(size=MIB, needs_job=False), doc(max_jobs=1, in_progress=1),
                   mine) is None


def test_budget_counts_what_is_spent_and_what_we_asked_for():
    mine = tally(item(size=MIB))
    assert blocked(item(size=MIB), doc(budget=3 * MIB, budget_used=MIB), mine) is None
    assert blocked(item(size=MIB), doc(budget=2 * MIB, budget_used=MIB), mine).startswith(
        "waiting for the daily budget")
    assert blocked(item(size=3 * MIB), doc(budget=2 * MIB), Tally()).startswith("!larger")
