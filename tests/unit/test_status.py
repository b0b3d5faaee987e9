"""Completion estimates in ``glacierfs status``: learned from this account's finished jobs."""

from glacierfs.jobstore import IN_PROGRESS, SUCCEEDED, JobRecord
from glacierfs.status import observed_durations


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
