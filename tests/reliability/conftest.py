"""Fixtures for the reliability tests (faults, crashes, hostile input, cost limits, security).

``fast`` shrinks the downloader's and the lifecycle's waits (backoff base and cap, the pause
after a disk-full or a failed start) so a storm of faults costs a test seconds, not minutes;
the logic under test is unchanged. The tally of faults, retries and verified bytes is printed
at the end of the run.
"""

from __future__ import annotations

import json

import pytest
import rel_util

from glacierfs.cache import download
from glacierfs.jobs import lifecycle


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No developer credentials or instance-metadata lookups in any test."""
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "BACKOFF_BASE", 0.02)
    monkeypatch.setattr(download, "BACKOFF_CAP", 0.3)
    monkeypatch.setattr(download, "DISK_FULL_PAUSE", 0.3)
    monkeypatch.setattr(download, "ROUND_PAUSE", 0.5)
    monkeypatch.setattr(lifecycle, "START_RETRY", 1.0)


@pytest.fixture
def needs_fuse() -> None:
    reason = rel_util.fuse_unavailable()
    if reason:
        pytest.skip(reason)


def pytest_sessionstart(session: pytest.Session) -> None:
    rel_util.TALLY_FILE.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not rel_util.TALLY.get("bytes_compared") and not rel_util.TALLY.get("faults_injected"):
        return
    rel_util.TALLY_FILE.write_text(json.dumps(rel_util.TALLY, indent=2))
    terminalreporter.section("glacierfs reliability tally")
    for key, value in rel_util.TALLY.items():
        terminalreporter.write_line(f"{key:>18}: {value}")
