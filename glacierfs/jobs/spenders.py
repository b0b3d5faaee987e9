"""Who may start paid jobs on a mount, and who did.

On a mount shared with ``allow_other`` every local user, cron job and indexer can read. A read
of bytes not cached starts a retrieval billed to the mounting user's account, so the mount
names who may spend (``retrieve_users``): root and the mounting user always (they hold the
credentials and the cache dir; refusing them protects nothing), the owner the mount shows
(``uid=``: root mounting for alice mounts for her), and the users and groups listed. Everyone else reads what is cached; what would need a new job they are refused
(EACCES, chosen by the adapter), and their restore and select requests too.

Every job record keeps who asked for it (uid, user name, process name). The adapter knows who
asks (the kernel's request context and /proc); it says so with ``asking()`` around its calls
into the lifecycle, and the places that create job records take ``current()``. A context
variable carries it there, so the calls in between (read → request → start queue) need no new
parameter; trio hands it on to tasks started from the request (a request that goes on in the
background, read-ahead). Outside any request (``glacierfs copy`` of glacier:// sources, the
daemon's own work) the asker is this process.

Pure apart from naming: ``this_process()`` reads /proc/self/comm and the user database.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pwd
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from glacierfs.options import MountOptions, Principal

# uid 0 may do anything on the machine anyway (it can become the mounting user).
ROOT_UID = 0


@dataclass(frozen=True)
class Requester:
    """Who asked: the caller's uid, its user name (None if the uid has none) and its process
    name (``/proc/PID/comm``, at most 15 bytes; None if the process was gone)."""
    uid: int | None
    user: str | None = None
    command: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The ``requested_by`` object of ``glacierfs status --json`` (uid and command are the
        contract)."""
        return {"uid": self.uid, "user": self.user, "command": self.command}

    def record_fields(self) -> dict[str, Any]:
        """Keyword arguments for a new job record (JobRecord, SelectRecord)."""
        return {"requested_uid": self.uid, "requested_user": self.user,
                "requested_command": self.command}

    def label(self) -> str:
        """``alice (cat)``, ``uid 1234 (rsync)``, or ``unknown``."""
        if self.uid is None:
            return "unknown"
        who = self.user or f"uid {self.uid}"
        return f"{who} ({self.command})" if self.command else who


UNKNOWN = Requester(None)


def job_description_suffix(rec: Any) -> str:
    """`` for alice (cat) uid 1000`` for a job's Glacier description, so the AWS console and
    other machines' job lists say who asked too. Glacier takes printable ASCII only."""
    who = of_record(rec)
    if who.uid is None:
        return ""
    text = f" for {who.label()} uid {who.uid}"
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def this_process() -> Requester:
    try:
        with open("/proc/self/comm", encoding="utf-8", errors="replace") as f:
            command: str | None = f.read().strip()
    except OSError:
        command = None
    uid = os.getuid()
    return Requester(uid, user_name(uid), command)


_ASKER: contextvars.ContextVar[Requester | None] = contextvars.ContextVar("glacierfs_asker",
                                                                         default=None)


@contextlib.contextmanager
def asking(requester: Requester) -> Iterator[None]:
    """Calls into the lifecycle inside this block are made for ``requester``."""
    token = _ASKER.set(requester)
    try:
        yield
    finally:
        _ASKER.reset(token)


def current() -> Requester:
    """Who the request being served is for (this process outside any request)."""
    return _ASKER.get() or this_process()


def of_record(rec: Any) -> Requester:
    """The requester kept on a job record (UNKNOWN for an adopted job, or one from before
    records kept it)."""
    uid = getattr(rec, "requested_uid", None)
    if uid is None:
        return UNKNOWN
    return Requester(uid, getattr(rec, "requested_user", None),
                     getattr(rec, "requested_command", None))


@dataclass(frozen=True)
class Spenders:
    """The ``retrieve_users`` policy of one mount."""
    owner_uid: int                      # the mounting user (the daemon's uid)
    listed: tuple[Principal, ...] = ()  # empty: root and the owners only
    shown_uid: int | None = None        # ``uid=``: the owner every file shows

    @classmethod
    def for_mount(cls, options: MountOptions, owner_uid: int | None = None) -> Spenders:
        return cls(os.getuid() if owner_uid is None else owner_uid, options.retrieve_users,
                   options.uid)

    def allows(self, uid: int, gids: Iterable[int] = ()) -> bool:
        """May a caller with this uid and these groups (primary and supplementary) start a
        paid job?"""
        if uid in (ROOT_UID, self.owner_uid, self.shown_uid):
            return True
        groups = set(gids)
        return any(p.anyone or p.uid == uid or (p.gid is not None and p.gid in groups)
                   for p in self.listed)

    def describe(self) -> str:
        """Who may, in words: ``root and bob (the mounting user); retrieve_users: alice,
        @backup``."""
        if any(p.anyone for p in self.listed):
            return "anyone (retrieve_users=*)"
        owner = "root" if self.owner_uid == ROOT_UID else \
            f"root and {self._name(self.owner_uid)} (the mounting user)"
        if self.shown_uid not in (None, ROOT_UID, self.owner_uid):
            owner += f", {self._name(self.shown_uid)} (the owner, uid=)"
        names = [p.name for p in self.listed]
        return owner + (f"; retrieve_users: {', '.join(names)}" if names else
                        " (no retrieve_users given)")

    @staticmethod
    def _name(uid: int | None) -> str:
        return (user_name(uid) if uid is not None else None) or f"uid {uid}"

    def refusal(self, requester: Requester) -> str:
        """Why this caller's read or restore starts nothing (the ``user.glacier.may_retrieve``
        value and the log line)."""
        who = requester.user or f"uid {requester.uid}"
        return (f"no: {who} may not start retrievals on this mount (who may: "
                f"{self.describe()}); cached bytes read as usual, the rest fails with EACCES")
