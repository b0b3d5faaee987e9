"""What ``glacierfs copy`` tells the user: the progress line, the ``--dry-run`` plan
(files, jobs, the cost estimate, and for an S3 DEST the monthly storage at its class) and the
final one-line summary. Reads the mounts' status documents; starts nothing."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Protocol

from glacierfs.commands import pricing
from glacierfs.commands.copyplan import (DONE, FAILED, REQUESTED, SKIPPED, Item, reserve,
                                         status_doc)
from glacierfs.commands.copystream import DEFAULT_WINDOW
from glacierfs.formatting import duration, human

PROGRESS_EVERY = 0.25             # seconds between progress redraws
LOG_EVERY = 60.0                  # … and between progress lines when stderr is no terminal


class Progress:
    """Files, bytes, rate and ETA on stderr, redrawn in place; only on a terminal."""

    def __init__(self, items: list[Item], enabled: bool) -> None:
        self.items = items
        self.enabled = enabled
        self.started = time.monotonic()
        self.copied_bytes = 0      # written in this run
        self.in_file = 0           # of the file being copied now
        self.waiting: str | None = None
        self._drawn = 0.0
        self._logged = time.monotonic()
        self._width = 0

    def total(self) -> tuple[int, int]:
        return len(self.items), sum(i.size for i in self.items)

    def line(self) -> str:
        n, total = self.total()
        done = [i for i in self.items if i.state in (DONE, SKIPPED)]
        done_bytes = sum(i.size for i in done) + self.in_file
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (self.copied_bytes + self.in_file) / elapsed
        requested = sum(1 for i in self.items if i.state == REQUESTED)
        failed = sum(1 for i in self.items if i.state == FAILED)
        text = f"{len(done)}/{n} files, {human(done_bytes)} of {human(total)}"
        if rate > 0 and (self.copied_bytes + self.in_file):
            text += f", {human(rate)}/s, ETA {duration((total - done_bytes) / rate)}"
        if requested:
            text += f"; {requested} restoring"
        if failed:
            text += f"; {failed} failed"
        if self.waiting:
            text += f"; {self.waiting}"
        return text

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled:
            # Not a terminal (a batch job's log): the same line, once a minute.
            if now - self._logged >= LOG_EVERY:
                self._logged = now
                print(self.line(), file=sys.stderr, flush=True)
            return
        if not force and now - self._drawn < PROGRESS_EVERY:
            return
        self._drawn = now
        text = self.line()
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        print("\r" + text + " " * pad, end="", file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.enabled and self._width:
            print("\r" + " " * self._width + "\r", end="", file=sys.stderr, flush=True)
            self._width = 0

    def say(self, text: str) -> None:
        """A line of its own (a failure), above the progress line."""
        self.clear()
        print(text, file=sys.stderr, flush=True)
        self.draw(force=True)


class Counted(Protocol):
    started: float
    copied_bytes: int

    def total(self) -> tuple[int, int]: ...


def money(amount: float) -> str:
    return f"{amount:.2f}" if amount >= 1 or amount == 0 else f"{amount:.4f}"


def dry_run(items: list[Item], tier: str | None, prices: dict,  # type: ignore[type-arg]
            storage_class: str | None = None) -> int:
    """Print the plan; ``storage_class`` for an S3 DEST (adds the monthly storage cost)."""
    docs: dict[Path, dict] = {}  # type: ignore[type-arg]
    jobs: dict[str, tuple[int, int]] = {}
    counts = {"up to date": [0, 0], "cached": [0, 0], "in progress": [0, 0],
              "download": [0, 0], "refused": [0, 0]}
    for item in items:
        if item.mount not in docs:
            docs[item.mount] = status_doc(item.mount)
        if item.state == SKIPPED:
            what = "up to date"
        elif item.state == FAILED:
            what = f"refused: {item.error}"
        elif item.size == 0 or item.cache == "cached":
            what = "cached"
        elif item.job_status in ("InProgress", "Queued") or item.cache == "partial":
            what = "in progress"
        elif item.needs_job:
            t = tier or str(docs[item.mount].get("limits", {}).get("tier") or "Standard")
            count = 1
            if item.size > int(docs[item.mount].get("cache", {}).get("limit") or item.size):
                count = -(-item.size // DEFAULT_WINDOW)   # copied window by window
                what = f"about {count} new {t} jobs, window by window (larger than the cache)"
            else:
                what = f"new {t} job"
            n, b = jobs.get(t, (0, 0))
            jobs[t] = (n + count, b + item.size)
        else:
            what = "download (job done)"
        key = what if what in counts else "refused" if item.state == FAILED else "download"
        counts[key][0] += 1
        counts[key][1] += item.size
        print(f"{item.src} -> {item.where}  {human(item.size)}  {what}")
    total = sum(i.size for i in items)
    to_fetch = counts["in progress"][1] + counts["download"][1]
    line = (f"{len(items)} files, {human(total)}: {counts['up to date'][0]} already in DEST "
            f"({human(counts['up to date'][1])}), {counts['cached'][0]} cached "
            f"({human(counts['cached'][1])}), {counts['in progress'][0]} in progress "
            f"({human(counts['in progress'][1])}), {counts['download'][0]} to retrieve "
            f"({human(counts['download'][1])})")
    if counts["refused"][0]:
        line += f", {counts['refused'][0]} refused ({human(counts['refused'][1])})"
    print(line)
    if jobs:
        print("jobs to start: " + ", ".join(f"{t} {n} ({human(b)})"
                                             for t, (n, b) in sorted(jobs.items())))
    else:
        print("jobs to start: none")
    est = pricing.estimate(prices, jobs, to_fetch)
    print(f"estimated cost ({est.region} prices, {est.currency}): retrieval "
          f"{money(est.retrieval)}, data transfer out {money(est.transfer)}, total "
          f"{money(est.total)} "
          f"(list prices; override with --price-file or ${pricing.PRICE_FILE_ENV})")
    if storage_class is not None:
        stored = [i for i in items if i.state != FAILED]
        month = pricing.storage_month(prices, storage_class, len(stored),
                                      sum(i.size for i in stored))
        print(f"storage in S3 at {storage_class}: {money(month)} {est.currency} a month for "
              f"{len(stored)} objects ({human(sum(i.size for i in stored))}), plus "
              f"{money(est.total)} once")
    for mount, doc in docs.items():
        limit = int(doc.get("cache", {}).get("limit") or 0)
        room = limit - reserve(limit)
        mine = sum(i.size for i in items if i.mount == mount and i.state not in (SKIPPED, FAILED)
                   and i.cache != "cached")
        if limit and mine:
            print(f"cache of {mount}: {human(limit)}; about {max(1, -(-mine // max(room, 1)))} "
                  "round(s) of retrievals")
    return 0


def summary(items: list[Item], progress: Counted, interrupted: bool) -> str:
    n, total = progress.total()
    done = [i for i in items if i.state == DONE]
    skipped = [i for i in items if i.state == SKIPPED]
    failed = [i for i in items if i.state == FAILED]
    elapsed = time.monotonic() - progress.started
    ok_bytes = sum(i.size for i in done + skipped)
    if interrupted:
        return (f"interrupted: {len(done) + len(skipped)} of {n} files in DEST "
                f"({human(ok_bytes)} of {human(total)}); run the same command again to resume")
    rate = progress.copied_bytes / elapsed if elapsed > 0 else 0
    return (f"copied {len(done)} files ({human(progress.copied_bytes)}) in {duration(elapsed)}"
            f" ({human(rate)}/s); {len(skipped)} already up to date; {len(failed)} failed")


def summary_doc(items: list[Item], progress: Counted, outcome: str) -> dict:  # type: ignore[type-arg]
    """``--json``: the summary for scripts (``outcome``: done, failed, interrupted, stopped)."""
    def count(state: str) -> tuple[int, int]:
        chosen = [i for i in items if i.state == state]
        return len(chosen), sum(i.size for i in chosen)
    elapsed = time.monotonic() - progress.started
    return {"outcome": outcome, "files": len(items), "bytes": sum(i.size for i in items),
            "copied": count(DONE)[0], "copied_bytes": progress.copied_bytes,
            "up_to_date": count(SKIPPED)[0], "failed": count(FAILED)[0],
            "seconds": round(elapsed, 3),
            "failures": [{"src": str(i.src), "dest": i.where, "error": i.error}
                         for i in items if i.state == FAILED]}
