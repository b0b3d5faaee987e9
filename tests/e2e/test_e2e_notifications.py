"""Job completions through SNS and SQS on a real mount: with ``poll=3600`` a restore is cached
within seconds of its job's completion because the emulator publishes the completion to moto's
SNS and the mount long-polls the SQS queue subscribed to it. Measured side by side with a mount
that polls: the latency from the job's completion to the file being cached."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from e2e_util import NOT_READY_TEXT, getfattr_one, glacierfs_cli, run, start_emulator, \
    wait_listed
from mount_support import wait_for

from glacierfs.sim import s3server
from glacierfs.sim.testing import DUMMY_KEY_ID, DUMMY_SECRET, REGION

pytestmark = pytest.mark.e2e

VAULT = "notified"
JOB_SECONDS = 4.0   # how long the emulator takes for a Standard job
POLL = 10           # the polling mount's interval: a notice-less mount waits half of it
DATA = {name: bytes([i]) * (300_000 + i) for i, name in enumerate(("a.bin", "b.bin"))}


@pytest.fixture(scope="module")
def moto():
    local = s3server.start()
    yield local
    local.stop()


def aws(moto, service: str):
    import boto3

    return boto3.client(service, endpoint_url=moto.url, region_name=REGION,
                        aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET)


@pytest.fixture(scope="module")
def channel(moto):
    sns, sqs = aws(moto, "sns"), aws(moto, "sqs")
    topic = sns.create_topic(Name="glacier-jobs")["TopicArn"]
    queue = sqs.create_queue(QueueName="glacier-jobs")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"])
    return topic, queue


@pytest.fixture(scope="module")
def emulator(moto, tmp_path_factory):
    sim = start_emulator(tmp_path_factory.mktemp("sim"), "--sns-endpoint", moto.url,
                         "--delay", f"Standard={JOB_SECONDS}", "--delay", "inventory=2")
    client = sim.client()
    client.create_vault(vaultName=VAULT)
    for name, data in DATA.items():
        client.upload_archive(vaultName=VAULT, body=data, archiveDescription=name)
    try:
        yield sim
    finally:
        sim.stop()


def restore_latency(emulator, path) -> float:
    """Start a restore by reading; seconds from the job's completion to the file cached."""
    proc = run("cat", path)
    assert proc.returncode != 0 and NOT_READY_TEXT in proc.stderr, proc.stderr
    job_id = getfattr_one(path, "user.glacier.job.id")
    wait_for(lambda: getfattr_one(path, "user.glacier.cache") == "cached", 90,
             f"{path} to be cached")
    cached_at = time.time()
    job = emulator.client().describe_job(vaultName=VAULT, jobId=job_id)
    done = datetime.fromisoformat(job["CompletionDate"].replace("Z", "+00:00")).timestamp()
    assert run("cat", path).stdout == DATA[path.name]
    return cached_at - done


def test_a_restore_is_cached_within_seconds_of_completion_whatever_poll_says(
        emulator, channel, moto, mounts):
    topic, queue = channel
    notified = mounts(emulator.url, "notified", poll=3600, sns_topic=topic,
                      sqs_queue_url=queue, sqs_endpoint_url=moto.url)
    polling = mounts(emulator.url, "polling", poll=POLL)
    # The inventory too: with poll=3600 it would take an hour without the notice.
    wait_listed(notified / VAULT, set(DATA), timeout=60)
    wait_listed(polling / VAULT, set(DATA), timeout=60)
    with_notice = restore_latency(emulator, notified / VAULT / "a.bin")
    by_polling = restore_latency(emulator, polling / VAULT / "b.bin")
    print(f"\ncompletion → cached: {with_notice:.2f} s with SNS/SQS (poll=3600), "
          f"{by_polling:.2f} s polling every {POLL} s")
    assert with_notice < 15   # seconds, not the hour poll says
    job = emulator.client().describe_job(
        vaultName=VAULT, jobId=getfattr_one(notified / VAULT / "a.bin", "user.glacier.job.id"))
    assert job["SNSTopic"] == topic
    status = glacierfs_cli("status", notified.path)
    assert status.returncode == 0, status.stderr
    out = status.stdout.decode()
    assert f"Notifications: queue {queue}" in out and "last message" in out
    assert "never" not in out.split("Notifications:")[1]
    assert "Notifications: off" in glacierfs_cli("status", polling.path).stdout.decode()
