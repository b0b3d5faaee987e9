"""Completion estimates in ``glacierfs status``: learned from this account's finished jobs."""

from glacierfs.jobs.jobstore import IN_PROGRESS, SUCCEEDED, JobRecord
from glacierfs.fuse.status import observed_durations


def _rec(state, tier, created, completed=None):
    return JobRecord(archive_id=f"a{created}{tier}", vault="v", state=state, tier=tier, size=1,
                     tree_hash=None, requested_at=0.0, creation_date=created,
                     completion_date=completed)


def test_estimates_come_from_finished_jobs_of_the_same_tier():
    records = [
        _rec(SUCCEEDED, "Standard", "2024-01-01T00:00:00.000Z", "2024-01-01T00:00:20.000Z"),
        _rec(SUCCEEDED, "Standard", "2024-01-01T00:00:00.000Z", "2024-01-01T00:00:40.000Z"),
        _rec(SUCCEEDED, "Standard", "2024-01-01T00:00:00.000Z", "2024-01-01T00:10:00.000Z"),
        _rec(IN_PROGRESS, "Bulk", "2024-01-01T00:00:00.000Z"),
        _rec(SUCCEEDED, "Expedited", "2024-01-01T00:00:00.000Z", "not a date"),
    ]
    assert observed_durations(records) == {"Standard": 40.0}


def test_status_text_warns_of_a_disk_that_fills_first_and_of_unsaved_state():
    from glacierfs.commands.restorecmd import render_status
    doc = {"time": 0, "vaults": [], "jobs": [], "job_counts": {},
           "cache": {"used": 1 << 30, "limit": 10 << 30, "disk_free": 2 << 30,
                     "unsaved_job_changes": 3},
           "limits": {"tier": "Standard", "retrieve": "auto", "max_jobs": 0, "budget": None}}
    text = render_status("/mnt/glacier", doc)
    assert "2.0 GiB free on its disk" in text
    assert "the disk will fill before the cache limit" in text
    assert "3 job change(s) not yet saved" in text
    roomy = dict(doc, cache={"used": 1 << 30, "limit": 10 << 30, "disk_free": 50 << 30,
                             "unsaved_job_changes": 0})
    text = render_status("/mnt/glacier", roomy)
    assert "will fill" not in text and "not yet saved" not in text


def test_no_aws_estimate_against_an_emulator_until_a_job_of_the_tier_finished():
    from glacierfs.fuse.status import TYPICAL_DURATION, expected_duration
    emulator, aws = "http://127.0.0.1:7380", None
    assert expected_duration("Standard", {}, emulator) is None
    assert expected_duration("Standard", {"Standard": 20.0}, emulator) == 20.0
    assert expected_duration("Standard", {"Expedited": 5.0}, emulator) is None
    assert expected_duration("Standard", {}, aws) == TYPICAL_DURATION["Standard"]
    assert expected_duration("Bulk", {"Bulk": 30000.0}, aws) == 30000.0
