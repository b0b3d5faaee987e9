"""Who is calling: a kernel request's uid and pid turned into what the spend policy
(jobs/spenders.py) and the job records need — the caller's groups, user name and process name.

The kernel gives each request the caller's uid, primary gid and pid (pyfuse3's
RequestContext). Supplementary groups come from ``/proc/PID/status`` (the process's real
credentials), or, if the process is already gone, from the user database. Reads arrive on open
file handles without a usable caller, so the adapter asks here at open() and keeps the answer on
the handle.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from glacierfs.jobs.spenders import Requester, user_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    requester: Requester
    gids: frozenset[int]
    command: str   # "" when the process was gone (retrieve_ignore compares with this)


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_groups(pid: int) -> set[int] | None:
    """The supplementary groups of a live process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:] if g.isdigit()}
    except OSError:
        return None
    return set()


class Callers:
    """Caller lookups, with the user database answers remembered (names change rarely, and a
    read of /etc/passwd per open would show)."""

    def __init__(self) -> None:
        self._names: dict[int, str | None] = {}

    def name(self, uid: int) -> str | None:
        if uid not in self._names:
            if len(self._names) > 4096:
                self._names.clear()
            self._names[uid] = user_name(uid)
        return self._names[uid]

    def of(self, uid: int, gid: int, pid: int, groups: bool = True) -> Caller:
        """The caller; ``groups`` False skips the supplementary groups (only the primary one
        is given) when the policy needs none, as for root and the mounting user."""
        command = process_name(pid)
        name = self.name(uid)
        if not groups:
            return Caller(Requester(uid, name, command or None), frozenset({gid}), command)
        gids = process_groups(pid)
        if gids is None:
            gids = set()
            if name is not None:
                try:
                    gids = set(os.getgrouplist(name, gid))
                except OSError:
                    pass
        gids.add(gid)
        return Caller(Requester(uid, name, command or None), frozenset(gids), command)
