"""Who may start paid jobs (``retrieve_users``) and who did (job records, status)."""

from __future__ import annotations

import grp
import os
import pwd
import sqlite3

import pytest
import trio

from glacierfs.commands.restorecmd import render_status, requester_label
from glacierfs.jobs import spenders
from glacierfs.jobs.jobstore import QUEUED, JobRecord, JobStore
from glacierfs.jobs.spenders import Requester, Spenders
from glacierfs.options import OptionError, Principal, parse_options
from glacierfs.store import Store

ROOT_GROUP = grp.getgrgid(0).gr_name
NOBODY = pwd.getpwnam("nobody")


def _opts(value: str | None = None):  # type: ignore[no-untyped-def]
    return parse_options("us-east-1", [f"retrieve_users={value}"] if value is not None else [])


def test_retrieve_users_takes_users_and_groups_by_name_or_number() -> None:
    opts = _opts(f"nobody:1234:@{ROOT_GROUP}:@4321")
    assert opts.retrieve_users == (Principal("nobody", uid=NOBODY.pw_uid), Principal("1234", uid=1234),
                                   Principal(f"@{ROOT_GROUP}", gid=0),
                                   Principal("@4321", gid=4321))
    assert _opts().retrieve_users == ()
    assert _opts("*").retrieve_users[0].anyone


@pytest.mark.parametrize("value, message", [
    ("no-such-user-zz", "no user named 'no-such-user-zz'"),
    ("nobody:@no-such-group-zz", "no group named 'no-such-group-zz'"),
    ("", "needs a value"),
    (":", "needs at least one user or @group"),
])
def test_unknown_names_are_a_mount_error(value: str, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        _opts(value)


def test_by_default_only_root_and_the_mounting_user_may_spend() -> None:
    policy = Spenders(owner_uid=1000)
    assert policy.allows(0) and policy.allows(1000, [1000])
    assert not policy.allows(1001, [1001, 27])
    assert not policy.allows(NOBODY.pw_uid, [NOBODY.pw_gid])


def test_the_owner_a_mount_shows_may_spend() -> None:
    policy = Spenders.for_mount(parse_options("us-east-1", ["uid=1500"]), owner_uid=0)
    assert policy.allows(1500) and policy.allows(0) and not policy.allows(1501)
    assert "uid=" in policy.describe()


def test_listed_users_and_groups_may_spend_and_no_one_else() -> None:
    policy = Spenders.for_mount(_opts("1234:@4321"), owner_uid=1000)
    assert policy.allows(1234, [])
    assert policy.allows(5555, [5555, 4321])       # a supplementary group counts
    assert not policy.allows(5555, [5555, 4322])
    assert policy.allows(1000) and policy.allows(0)
    assert Spenders.for_mount(_opts("*"), owner_uid=1000).allows(5555, [])


def test_the_refusal_says_who_may() -> None:
    policy = Spenders.for_mount(_opts("1234:@4321"), owner_uid=0)
    why = policy.refusal(Requester(5555, "carol", "cat"))
    assert why.startswith("no: carol may not start retrievals")
    assert "1234, @4321" in why and "EACCES" in why
    assert "uid 77 may not" in policy.refusal(Requester(77))


def test_the_asker_is_carried_into_tasks_started_for_the_request() -> None:
    seen: list[Requester] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            async def child() -> None:
                seen.append(spenders.current())
            with spenders.asking(Requester(42, "dave", "rsync")):
                nursery.start_soon(child)   # a request that goes on in the background
            seen.append(spenders.current())  # outside: this process

    trio.run(main)
    assert Requester(42, "dave", "rsync") in seen
    me = [r for r in seen if r.uid != 42]
    assert me and me[0].uid == os.getuid()


OLD_JOBS_TABLE = """
CREATE TABLE jobs (archive_id TEXT NOT NULL, vault TEXT NOT NULL, state TEXT NOT NULL,
    job_id TEXT, tier TEXT NOT NULL, size INTEGER NOT NULL, tree_hash TEXT, creation_date TEXT,
    completion_date TEXT, status_message TEXT, requested_at REAL NOT NULL, initiated_at REAL,
    next_poll REAL, range_start INTEGER NOT NULL DEFAULT 0,
    range_end INTEGER NOT NULL DEFAULT -1, PRIMARY KEY (archive_id, range_start, range_end));
INSERT INTO jobs (archive_id, vault, state, job_id, tier, size, requested_at)
    VALUES ('old', 'v', 'InProgress', 'J1', 'Bulk', 5, 1.0);
"""


def test_a_state_dir_from_before_keeps_its_jobs_and_records_requesters_from_now_on(tmp_path):  # type: ignore[no-untyped-def]
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript(OLD_JOBS_TABLE)
    db.close()
    jobs = JobStore(Store(tmp_path))
    old = jobs.load_all()["old"]
    assert old.job_id == "J1" and spenders.of_record(old) == spenders.UNKNOWN
    with spenders.asking(Requester(1234, "erin", "cp")):
        fields = spenders.current().record_fields()
    jobs.save(JobRecord(archive_id="new", vault="v", state=QUEUED, tier="Bulk", size=1,
                        tree_hash=None, requested_at=2.0, **fields))
    again = JobStore(Store(tmp_path)).load_all()
    assert spenders.of_record(again["new"]) == Requester(1234, "erin", "cp")
    assert again["old"].job_id == "J1"


def test_status_names_who_started_each_job() -> None:
    job = {"status": "InProgress", "tier": "Bulk", "age": 5, "archive_id": "A" * 30,
           "path": "v/report.pdf", "size": 10, "cached_bytes": 0,
           "requested_by": {"uid": 1234, "user": "erin", "command": "cp"}}
    adopted = dict(job, path="v/other.pdf",
                   requested_by={"uid": None, "user": None, "command": None})
    doc = {"time": 0, "vaults": [], "jobs": [job, adopted], "job_counts": {"InProgress": 2},
           "cache": {"used": 0, "limit": 1 << 30},
           "limits": {"tier": "Standard", "retrieve": "auto", "max_jobs": 0, "budget": None,
                      "retrieve_users": ["erin", "@backup"]}}
    lines = render_status("/mnt/g", doc).splitlines()
    assert "by erin (cp)" in next(x for x in lines if "report.pdf" in x)
    assert "requester unknown" in next(x for x in lines if "other.pdf" in x)
    assert "retrieve_users erin, @backup" in next(x for x in lines if x.startswith("Limits:"))
    assert requester_label({"uid": 7, "user": None, "command": None}) == "by uid 7"


def test_glacier_job_descriptions_name_the_asker_in_printable_ascii() -> None:
    rec = JobRecord(archive_id="a", vault="v", state=QUEUED, tier="Bulk", size=1, tree_hash=None,
                    requested_at=0.0, requested_uid=1001, requested_user="jürgen",
                    requested_command="cp")
    assert spenders.job_description_suffix(rec) == " for j?rgen (cp) uid 1001"
    rec.requested_uid = None
    assert spenders.job_description_suffix(rec) == ""


OLD_SELECT_TABLE = """
CREATE TABLE select_jobs (
    key TEXT PRIMARY KEY, archive_id TEXT NOT NULL, vault TEXT NOT NULL, state TEXT NOT NULL,
    tier TEXT NOT NULL, size INTEGER NOT NULL, request TEXT NOT NULL, requested_at REAL NOT NULL,
    job_id TEXT, output_path TEXT, status_message TEXT, creation_date TEXT,
    completion_date TEXT, initiated_at REAL, next_poll REAL);
INSERT INTO select_jobs (key, archive_id, vault, state, tier, size, request, requested_at)
    VALUES ('k', 'a', 'v', 'InProgress', 'Standard', 3,
            '{"query": "SELECT * FROM archive", "output": "s3://b/p"}', 1.0);
"""


def test_select_jobs_from_before_keep_their_records_and_say_the_requester_is_unknown(tmp_path):  # type: ignore[no-untyped-def]
    from glacierfs.jobs.selectjobs import SelectJobs
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript(OLD_SELECT_TABLE)
    db.close()
    selects = SelectJobs(Store(tmp_path), None, _opts(), None)  # type: ignore[arg-type]
    (entry,) = selects.status_entries()
    assert entry["key"] == "k" and entry["status"] == "InProgress"
    assert entry["requested_by"] == {"uid": None, "user": None, "command": None}


def test_a_callers_groups_and_name_come_from_its_process() -> None:
    from glacierfs.fuse.callers import Callers
    me = Callers().of(os.getuid(), os.getgid(), os.getpid())
    assert set(os.getgroups()) | {os.getgid()} <= me.gids
    assert me.requester.uid == os.getuid() and me.requester.command == me.command != ""
    gone = Callers().of(NOBODY.pw_uid, NOBODY.pw_gid, 2 ** 22 + 1)   # no such process
    assert gone.requester == Requester(NOBODY.pw_uid, "nobody", None)
    assert NOBODY.pw_gid in gone.gids
