"""``glacierfs status | restore | wait``: what a mount is doing, asking for files, and waiting
for them to be cached.

They talk to a running mount through its extended attributes only (the root's
``user.glacier.status`` JSON, each file's ``user.glacier.*``, and ``user.glacier.restore``),
so they work for any user who can see the mount and with any mount option, ``ro`` included.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

from glacierfs.commands.common import (BY_ID_DIR, EXIT_FAILED, EXIT_OK, EXIT_STUCK, EXIT_TIMEOUT,
                                       STATUS_XATTR, CommandError, glacierfs_mounts, mount_of,
                                       read_xattr, seconds)
from glacierfs.formatting import duration, human

ROOM_REASON = "waiting for cache room"   # the daemon's Queued message (glacierfs/jobs/room.py)
EVICTED_REASON = "downloaded and verified, since evicted"   # glacierfs/jobs/retrieval.py EVICTED
# `wait` gives up when everything left waits for cache room that only a reader can free, and
# nothing else is under way, for this long (the daemon's queue looks again every few seconds).
STUCK_AFTER = 6.0
TOO_LARGE_FIX = ("read it as a stream (cat, cp or dd through the mount: it is downloaded as it "
                 "is read, from the same job), or remount with a larger cache_size")


def _bar(done: int, total: int, width: int = 24) -> str:
    frac = 1.0 if total <= 0 else min(done / total, 1.0)
    filled = int(frac * width)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {frac * 100:5.1f}%"


# --- status --------------------------------------------------------------------------------

def cmd_status(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="glacierfs status",
                                description="Show vaults, jobs, downloads, cache and limits "
                                            "of a running glacierfs mount.")
    p.add_argument("mountpoint", nargs="?", help="default: every glacierfs mount")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    mounts = [Path(args.mountpoint)] if args.mountpoint else glacierfs_mounts()
    if not mounts:
        raise CommandError("no glacierfs mount found (give the mount point)")
    docs = {}
    dead = []
    for mnt in mounts:
        raw = read_xattr(mnt, STATUS_XATTR)
        if raw is None and args.mountpoint:
            inside = mount_of(mnt)
            if inside:   # a directory in a mount: status belongs to the mount point
                mnt = inside
                raw = read_xattr(mnt, STATUS_XATTR)
        if raw is None:
            dead.append(mnt)
            continue
        docs[str(mnt)] = json.loads(raw)
    for mnt in dead:   # one dead mount must not hide the live ones
        print(f"glacierfs status: {_not_live(mnt)}", file=sys.stderr)
    if not docs:
        return EXIT_FAILED
    if args.json:
        print(json.dumps(docs if len(docs) > 1 else next(iter(docs.values())), indent=2))
        return EXIT_FAILED if dead else EXIT_OK
    for mnt, doc in docs.items():
        print(render_status(mnt, doc))
    return EXIT_FAILED if dead else EXIT_OK


def _not_live(mnt: Path) -> str:
    try:
        os.statvfs(mnt)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return (f"{mnt}: Transport endpoint is not connected (its glacierfs process "
                    f"died: fusermount3 -u {mnt}, then mount again)")
    return f"{mnt} is not a live glacierfs mount"


def render_status(mountpoint: str, doc: dict) -> str:  # type: ignore[type-arg]
    lines = [f"glacierfs on {mountpoint}"]
    lines.append("Vaults:")
    for v in doc.get("vaults", []):
        inv = v.get("inventory_status") or "None"
        detail = f"inventory {v['inventory_date']}" if v.get("inventory_date") else f"inventory {inv}"
        count = v.get("archives")
        lines.append(f"  {v['name']:<24} {count if count is not None else '-':>9} archives  "
                     f"{detail}" + (f"  ({v['inventory_message']})"
                                    if v.get("inventory_message") else ""))
        names = v.get("names")
        if names:
            lines.append(f"    names: {names.get('format')} {names.get('status')}"
                         + (f" ({names['message']})" if names.get("message") else ""))
    counts = doc.get("job_counts", {})
    lines.append("Jobs: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"))
    now = doc.get("time", time.time())
    for job in doc.get("jobs", []):
        name = job.get("path") or job["archive_id"][:24]
        line = f"  {job['status']:<10} {job['tier']:<9} {duration(job['age']):>6} ago  {name}"
        line += f"  {requester_label(job.get('requested_by'))}"
        if job.get("expected_completion") and job["status"] in ("InProgress", "Queued"):
            line += f"  (expected in ~{duration(job['expected_completion'] - now)})"
        if job["status"] == "Succeeded" or job.get("cached_bytes"):
            line += f"\n             {_bar(job.get('cached_bytes', 0), job.get('size', 0))} " \
                    f"{human(job.get('cached_bytes', 0))} of {human(job.get('size', 0))}"
        if job.get("ranges"):
            line += f"\n             {ranges_line(job['ranges'])}"
        if job.get("message"):
            line += f"\n             {job['message']}"
        lines.append(line)
    selects = doc.get("select", {}).get("jobs") or []
    if selects:
        lines.append(f"Select jobs: {len(selects)}")
    for job in selects:
        name = job.get("path") or job["archive_id"][:24]
        line = f"  {job['status']:<10} {job['tier']:<9} {duration(job['age']):>6} ago  {name}"
        line += f"  {requester_label(job.get('requested_by'))}"
        line += f"\n             {job['query'][:100]}"
        if job.get("output_path"):
            line += f"\n             → s3://{job['bucket']}/{job['output_path']}"
        if job.get("message") and job["status"] != "Succeeded":
            line += f"\n             {job['message']}"
        lines.append(line)
    cache = doc.get("cache", {})
    line = (f"Cache: {human(cache.get('used', 0))} of {human(cache.get('limit', 0))} "
            f"{_bar(cache.get('used', 0), cache.get('limit', 1), 16)}")
    free = cache.get("disk_free")
    if free is not None:
        line += f"  ({human(free)} free on its disk)"
        if free < cache.get("limit", 0) - cache.get("used", 0):
            line += "\n  the disk will fill before the cache limit: downloads pause when it does"
    if cache.get("pinned"):
        line += (f"\n  {human(cache['pinned'])} held for restored files not yet read; "
                 f"{human(cache.get('room', 0))} room for new retrievals")
    if cache.get("unsaved_job_changes"):
        line += (f"\n  {cache['unsaved_job_changes']} job change(s) not yet saved: the cache "
                 "disk refuses writes (kept in memory, saved when it has room)")
    lines.append(line)
    lim = doc.get("limits", {})
    budget = lim.get("budget")
    lines.append(f"Limits: tier {lim.get('tier')}, retrieve={lim.get('retrieve')}, max_jobs "
                 f"{lim.get('max_jobs') or 'unlimited'}, budget "
                 + (f"{human(lim.get('budget_used', 0))} of {human(budget)} per day" if budget
                    else "unlimited")
                 + (f", retrieve_users {', '.join(lim['retrieve_users'])}"
                    if lim.get("retrieve_users") else ""))
    lines.append(notifications_line(doc.get("notifications") or {}, now))
    return "\n".join(lines)


def _why_refused(path: Path, exc: OSError) -> str:
    """On a shared mount: who may start retrievals (``user.glacier.may_retrieve``), or that the
    kernel wants write permission on the file for a ``setfattr`` (root only, files are 0444)."""
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return ""
    why = read_xattr(path, "user.glacier.may_retrieve") or ""
    if why.startswith("no:"):
        return " (" + why.removeprefix("no: ") + ")"
    return (" (the kernel allows setting the restore attribute to root only; as another user, "
            "reading the file starts its retrieval)")


def requester_label(who: dict | None) -> str:  # type: ignore[type-arg]
    """``by alice (cat)``, ``by uid 1234 (rsync)``; a job adopted from Glacier's job list (started
    elsewhere), or recorded before requesters were kept, has none."""
    if not who or who.get("uid") is None:
        return "(requester unknown: started elsewhere)"
    name = who.get("user") or f"uid {who['uid']}"
    return f"by {name} ({who['command']})" if who.get("command") else f"by {name}"


def notifications_line(notes: dict, now: float) -> str:  # type: ignore[type-arg]
    """Whether job completions arrive through SNS/SQS, and when the last one did."""
    topic = notes.get("sns_topic")
    if not notes.get("queue_url"):
        if topic:
            return (f"Notifications: jobs notify {topic}; no queue is read by this mount "
                    "(sqs_queue_url=): completions are found by polling")
        return "Notifications: off (completions are found by polling)"
    line = f"Notifications: queue {notes['queue_url']}"
    if topic:
        line += f" (jobs notify {topic})"
    if notes.get("error"):
        line += f"\n  the queue cannot be read: {notes['error']}; polling carries on"
    elif not notes.get("listening"):
        line += "\n  not answering yet; polling carries on"
    last = notes.get("last_message")
    line += "\n  last message " + (f"{duration(now - last)} ago" if last else "never") + \
        f"; {notes.get('acted', 0)} completion(s) acted on"
    if notes.get("last_completion"):
        line += f", last {duration(now - notes['last_completion'])} ago"
    others = notes.get("foreign", 0)
    if others:
        line += f"; notices of other mounts' jobs left in the queue ({others} receipts)"
    if (notes.get("poll_stretch") or 1) > 1:
        line += f"\n  polling every {notes['poll_stretch']:g}x the default interval while " \
                "notifications flow"
    return line


def ranges_line(r: dict) -> str:  # type: ignore[type-arg]
    """The human line for an archive retrieved in ranges (``user.glacier.ranges``)."""
    parts = [f"{r[k]} {label}" for k, label in (
        ("queued", "queued"), ("in_progress", "in progress"), ("succeeded", "downloading"),
        ("cached", "cached"), ("failed", "failed")) if r.get(k)]
    line = f"ranges of {human(r.get('range_size', 0))}: {r.get('requested', 0)} of " \
           f"{r.get('windows', 0)} requested" + (f" ({', '.join(parts)})" if parts else "")
    if r.get("waiting_for_budget"):
        line += (f"; {r['waiting_for_budget']} wait for the daily budget (retrieved range by "
                 "range across days)")
    if r.get("waiting_for"):
        line += f"; the reader waits for {r['waiting_for']}"
    return line


# --- restore and wait ---------------------------------------------------------------------

@dataclass
class FileState:
    path: Path
    size: int
    cache: str
    cached_bytes: int
    job_status: str | None
    message: str | None
    pinned: str | None = None   # "wanted"/"held": kept in the cache until read
    partly_requested: bool = False   # some ranges requested, not the whole archive

    @property
    def waits_for_room(self) -> bool:
        return self.job_status == "Queued" and (self.message or "").startswith(ROOM_REASON)

    @property
    def evicted(self) -> bool:
        """Downloaded once, since evicted: only a read brings it back."""
        return self.cache != "cached" and (self.message or "").startswith(EVICTED_REASON)


def file_state(path: Path) -> FileState | None:
    size = read_xattr(path, "user.glacier.size")
    if size is None:
        return None
    ranges = read_xattr(path, "user.glacier.ranges")
    partly = False
    if ranges:
        info = json.loads(ranges)
        partly = not info.get("whole_requested") and not info.get("failed")
    return FileState(path, int(size), read_xattr(path, "user.glacier.cache") or "absent",
                     int(read_xattr(path, "user.glacier.cache.bytes") or 0),
                     read_xattr(path, "user.glacier.job.status"),
                     read_xattr(path, "user.glacier.job.status_message"),
                     read_xattr(path, "user.glacier.cache.pinned"), partly)


def iter_files(paths: list[str], recursive: bool) -> Iterator[Path]:
    for text in paths:
        path = Path(text)
        if path.is_dir():
            if not recursive:
                raise CommandError(f"{path} is a directory (use -r)")
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d != BY_ID_DIR)
                for name in sorted(files):
                    yield Path(root) / name
        elif path.exists():
            yield path
        else:
            raise CommandError(f"{path}: no such file")


def cmd_restore(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="glacierfs restore",
                                description="Start retrievals for files or whole trees.")
    p.add_argument("paths", nargs="+")
    p.add_argument("--tier", choices=["Expedited", "Standard", "Bulk"],
                   help="default: the mount's tier")
    p.add_argument("-r", "--recursive", action="store_true")
    args = p.parse_args(argv)
    requested = cached = running = failed = 0
    req_bytes = 0
    asked: list[Path] = []
    tiers: dict[Path, str | None] = {}   # mount point → its tier, read once per mount
    for path in iter_files(args.paths, args.recursive):
        st = file_state(path)
        if st is None:
            print(f"glacierfs restore: {path}: not a file on a glacierfs mount", file=sys.stderr)
            failed += 1
            continue
        if st.cache == "cached":
            cached += 1
            continue
        under_way = st.job_status in ("InProgress", "Queued", "Succeeded")
        if under_way and st.pinned and not st.partly_requested:
            running += 1
            continue
        tier = args.tier or _mount_tier(path, tiers) or "Standard"
        try:
            os.setxattr(path, "user.glacier.restore", tier.encode())
        except OSError as exc:
            print(f"glacierfs restore: {path}: {exc.strerror}{_why_refused(path, exc)}",
                  file=sys.stderr)
            failed += 1
            continue
        asked.append(path)
        if under_way and not st.partly_requested:   # started by a read: now kept until read
            running += 1
            continue
        requested += 1
        req_bytes += st.size
    print(f"requested {requested} archives ({human(req_bytes)}); {cached} already cached, "
          f"{running} already in progress" + (f", {failed} failed" if failed else ""))
    states = [st for st in map(file_state, asked) if st is not None]
    capacities: dict[Path, int | None] = {}
    large = [st for st in states if _too_large(st, capacities)]
    if large:
        print(f"{len(large)} of them ({human(sum(st.size for st in large))}) are larger than "
              f"the cache room ({human(max(c or 0 for c in capacities.values()))}) and can "
              f"never be held whole: {TOO_LARGE_FIX}")
        for st in large:
            print(f"  {st.path} ({human(st.size)})")
    waiting = [st for st in states if st.waits_for_room and st not in large]
    if waiting:
        print(f"{len(waiting)} of them ({human(sum(st.size for st in waiting))}) exceed the "
              "cache room and wait: restored files stay cached until read, and each starts "
              "as reading earlier ones frees room (glacierfs copy does that batch by batch); "
              "or raise cache_size")
    return EXIT_FAILED if failed else EXIT_OK


def _too_large(st: FileState, known: dict[Path, int | None]) -> bool:
    """Is the file larger than its mount's cache room (so it can never be cached whole)?"""
    if st.cache == "cached":
        return False
    mnt = mount_of(st.path)
    if mnt is None:
        return False
    if mnt not in known:
        raw = read_xattr(mnt, STATUS_XATTR)
        capacity = json.loads(raw).get("cache", {}).get("capacity") if raw else None
        known[mnt] = int(capacity) if capacity else None
    capacity = known[mnt]
    return capacity is not None and st.size > capacity


def _mount_tier(path: Path, known: dict[Path, str | None]) -> str | None:
    mnt = mount_of(path)
    if mnt is None:
        return None
    if mnt not in known:
        raw = read_xattr(mnt, STATUS_XATTR)
        known[mnt] = json.loads(raw).get("limits", {}).get("tier") if raw else None
    return known[mnt]


def cmd_wait(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="glacierfs wait",
                                description="Wait until files are cached. Exit 0 when all are, "
                                            "1 if a retrieval failed, 3 on timeout, 4 when the rest "
                                            "waits for cache room only a reader can free, or "
                                            "can never be cached whole (larger than the "
                                            "cache).")
    p.add_argument("paths", nargs="+")
    p.add_argument("-r", "--recursive", action="store_true")
    p.add_argument("--timeout", type=seconds, default=None, help="seconds (default: no limit)")
    p.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    files = list(iter_files(args.paths, args.recursive))
    outside = [f for f in files if file_state(f) is None]
    for path in outside:
        print(f"glacierfs wait: {path}: not a file on a glacierfs mount", file=sys.stderr)
    if outside:   # never "100% 0/0 files" and exit 0 for files nothing will ever fetch
        return EXIT_FAILED
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    tty = sys.stderr.isatty()
    stuck_since: float | None = None
    capacities: dict[Path, int | None] = {}
    while True:
        states = [s for s in (file_state(f) for f in files) if s is not None]
        total = sum(s.size for s in states)
        done = sum(s.cached_bytes if s.cache != "cached" else s.size for s in states)
        ready = sum(1 for s in states if s.cache == "cached")
        failed = [s for s in states if s.job_status == "Failed" and s.cache != "cached"]
        not_requested = [s for s in states if s.cache != "cached" and (
            s.job_status is None or s.partly_requested and s.job_status == "Succeeded")]
        line = f"{_bar(done, total)} {ready}/{len(states)} files, {human(done)} of {human(total)}"
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        left = [s for s in states if s.cache != "cached"]
        stuck = bool(left) and all(s.waits_for_room or s.evicted for s in left) \
            and not _mount_busy(left)
        stuck_since = (stuck_since or time.monotonic()) if stuck else None
        large = [s for s in left if _too_large(s, capacities)]
        if ready == len(states) or failed or not_requested or large or \
                (stuck_since and time.monotonic() - stuck_since >= STUCK_AFTER) or \
                (deadline and time.monotonic() >= deadline):
            break
        time.sleep(args.interval)
    if tty:
        print(file=sys.stderr)
    print(line)
    for s in failed:
        print(f"glacierfs wait: {s.path}: retrieval failed: {s.message or 'unknown reason'}",
              file=sys.stderr)
    if failed:
        return EXIT_FAILED
    if ready == len(states):
        return EXIT_OK
    if not_requested:
        print(f"glacierfs wait: {len(not_requested)} files have no retrieval "
              "(run glacierfs restore first)", file=sys.stderr)
        return EXIT_FAILED
    if large:
        for s in large:
            print(f"glacierfs wait: {s.path} ({human(s.size)}) is larger than the cache room "
                  f"and can never be cached whole: {TOO_LARGE_FIX}", file=sys.stderr)
        return EXIT_STUCK
    if stuck_since:
        evicted = sum(1 for s in states if s.evicted)
        if evicted:
            print(f"glacierfs wait: {evicted} files were downloaded and since evicted from the "
                  "cache (they were read, or the cache is too small): reading them retrieves "
                  "them again", file=sys.stderr)
        if len(states) - ready - evicted:
            print(f"glacierfs wait: {len(states) - ready - evicted} files wait for cache room "
                  "held by restored files not yet read: read or copy the cached ones "
                  "(glacierfs copy does both), or raise cache_size", file=sys.stderr)
        return EXIT_STUCK
    print(f"glacierfs wait: {len(states) - ready} of {len(states)} files not cached after "
          f"{args.timeout:g} s; their retrievals go on (run wait again)", file=sys.stderr)
    return EXIT_TIMEOUT


def _mount_busy(states: list[FileState]) -> bool:
    """Is anything under way on the mounts holding these files (a job running, a download)
    that will free room or end without a reader? Then waiting still makes progress."""
    mounts = {mount_of(s.path) for s in states} - {None}
    for mnt in mounts:
        raw = read_xattr(mnt, STATUS_XATTR)
        if raw is None:
            return True   # cannot tell: keep waiting
        for job in json.loads(raw).get("jobs", []):
            if job.get("status") in ("InProgress",) or job.get("downloading"):
                return True
    return False
