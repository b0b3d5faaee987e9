"""``glacierfs sim --bandwidth RATE`` caps each connection's job output; ``--bandwidth-total``
caps them all together. Timed over HTTP with unmodified boto3 (loose bounds: shared machine)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from glacierfs.sim.testing import upload
from glacierfs.treehash import MIB

SIZE = 8 * MIB


def _finished_job(sim, glacier, vault: str) -> str:
    archive = upload(glacier, vault, os.urandom(SIZE), "big")
    job_id = glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive, "Tier": "Expedited"})["jobId"]
    sim.complete_jobs(job_id=job_id)
    return job_id


def _timed_downloads(sim, vault: str, job_id: str, streams: int) -> list[float]:
    """``streams`` whole-output downloads at once, each on its own connection: seconds each."""
    times: list[float] = [0.0] * streams
    errors: list[BaseException] = []
    clients = [sim.client(max_attempts=1) for _ in range(streams)]

    def one(i: int) -> None:
        try:
            started = time.monotonic()
            body = clients[i].get_job_output(vaultName=vault, jobId=job_id)["body"]
            got = sum(len(piece) for piece in body.iter_chunks(MIB))
            times[i] = time.monotonic() - started
            assert got == SIZE
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return times


@pytest.mark.sim_args("--bandwidth", "4M")
def test_each_connection_gets_the_cap(sim, glacier, vault):
    job_id = _finished_job(sim, glacier, vault)
    (alone,) = _timed_downloads(sim, vault, job_id, 1)
    assert 1.5 <= alone <= 6.0, alone          # 8 MiB at 4 MiB/s: 2 s
    both = _timed_downloads(sim, vault, job_id, 2)
    # Each stream has its own bucket: two at once take about as long as one, not twice.
    assert all(1.5 <= t <= 3.5 for t in both), both


@pytest.mark.sim_args("--bandwidth-total", "8M")
def test_the_total_cap_is_shared(sim, glacier, vault):
    job_id = _finished_job(sim, glacier, vault)
    (alone,) = _timed_downloads(sim, vault, job_id, 1)
    assert 0.7 <= alone <= 3.0, alone          # 8 MiB at 8 MiB/s: 1 s
    both = _timed_downloads(sim, vault, job_id, 2)
    assert max(both) >= 1.5, both              # 16 MiB through one 8 MiB/s bucket: 2 s


def test_the_rate_flag_is_checked(sim):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "glacierfs.cli", "sim", "--data-dir",
                          str(sim.data_dir), "--bandwidth", "fast"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "not a rate" in out.stderr and "Traceback" not in out.stderr
