"""Completion latency: SNS/SQS notifications (poll=3600) vs polling (poll=--poll).

moto's server runs here as SNS and SQS; the emulator publishes each job's completion to a
topic there, and a queue subscribed to it is what the notified mount long-polls. Two mounts run
side by side: one with ``sns_topic``/``sqs_queue_url`` and ``poll=3600``, one that only polls
every ``--poll`` seconds. Each round restores one archive on each (``user.glacier.restore``),
alternating which goes first. Measured per restore: seconds from the job's completion (its
CompletionDate, the emulator's clock being this machine's) to the file being cached. Polling
waits half its interval on average; a notice should take about a second whatever ``poll`` says.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import common

from glacierfs.sim import s3server
from glacierfs.sim.testing import DUMMY_KEY_ID, DUMMY_SECRET, REGION

VAULT = "bench"
JOB_SECONDS = 5.0


def channel(moto) -> tuple[str, str]:  # noqa: ANN001
    import boto3
    kwargs = {"endpoint_url": moto.url, "region_name": REGION,
              "aws_access_key_id": DUMMY_KEY_ID, "aws_secret_access_key": DUMMY_SECRET}
    sns, sqs = boto3.client("sns", **kwargs), boto3.client("sqs", **kwargs)
    topic = sns.create_topic(Name="bench-jobs")["TopicArn"]
    queue = sqs.create_queue(QueueName="bench-jobs")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"])
    return topic, queue


def latency(glacier, path: Path) -> float:  # noqa: ANN001
    """Restore ``path``; seconds from its job's completion to the file cached."""
    os.setxattr(path, "user.glacier.restore", b"Standard")
    common.wait_for(lambda: common.getxattr(path, "user.glacier.cache") == "cached",
                    JOB_SECONDS + 600, f"{path.name} to be cached", interval=0.05)
    cached_at = time.time()
    job_id = common.getxattr(path, "user.glacier.job.id")
    job = glacier.describe_job(vaultName=VAULT, jobId=job_id)
    done = datetime.fromisoformat(job["CompletionDate"].replace("Z", "+00:00")).timestamp()
    return cached_at - done


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--poll", type=float, default=30.0,
                   help="the polling mount's interval in seconds (default 30: Expedited's "
                        "default on AWS; Standard's is 900)")
    args = p.parse_args()
    common.print_machine()
    moto = s3server.start()   # in this process: it goes when the benchmark does
    try:
        topic, queue = channel(moto)
        with (common.workdir(args, "notify") as work,
              common.emulator(work, "--sns-endpoint", moto.url, "--delay",
                              f"Standard={JOB_SECONDS}", "--delay", "inventory=1") as sim):
            glacier = common.client(sim)
            glacier.create_vault(vaultName=VAULT)
            for i in range(2 * args.repeat):
                glacier.upload_archive(vaultName=VAULT, archiveDescription=f"f{i}.bin",
                                       body=bytes([i % 256]) * 100_000)
            notified = (f"poll=3600,sns_topic={topic},sqs_queue_url={queue},"
                        f"sqs_endpoint_url={moto.url}")
            with (common.mounted(sim, work / "notified", work / "cache-n", notified),
                  common.mounted(sim, work / "polling", work / "cache-p",
                                 f"poll={args.poll:g}")):
                for side in ("notified", "polling"):
                    common.wait_for(lambda s=side: (work / s / VAULT / "f0.bin").exists(),
                                    3600 if side == "polling" else 120,
                                    f"the {side} mount's listing")
                files = iter(range(2 * args.repeat))
                notice, poll = common.alternate(
                    args.repeat,
                    lambda: latency(glacier, work / "notified" / VAULT / f"f{next(files)}.bin"),
                    lambda: latency(glacier, work / "polling" / VAULT / f"f{next(files)}.bin"))
    finally:
        moto.stop()
    common.table(f"job completion → file cached (Standard jobs of {JOB_SECONDS:g} s, medians "
                 f"of {args.repeat})",
                 [("completion to cached", f"{notice:.2f} s (SNS/SQS, poll=3600)",
                   f"{poll:.2f} s (poll={args.poll:g})", f"{notice / poll:.3f}×",
                   "seconds, whatever poll says")])


if __name__ == "__main__":
    common.run(main)
