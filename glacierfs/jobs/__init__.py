"""The retrieval lifecycle: requests and reads, the start queue and its limits (max_jobs,
budget, cache room), completion polling and adoption through ListJobs, ranged retrievals,
select jobs, the job store (every record written before money is spent) and the clock.

Knows no kernel: never imports ``pyfuse3`` or ``fuse``. Talks to AWS only through ``aws``;
uses ``cache`` for verified bytes.
"""
