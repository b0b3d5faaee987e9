"""Completion notices through SNS and SQS, for the mount's core (no FUSE): the emulator
publishes to moto's SNS, a queue subscribed to the topic holds the notices, and the listener
acts on them at once although ``poll`` is an hour. Messages are hints: forged, duplicated,
malformed and foreign ones cost at most one DescribeJob and change nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from glacierfs.aws import glacier, sqs
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.catalog.inventories import Inventories
from glacierfs.catalog.namespace import Namespace
from glacierfs.jobs.jobstore import JobStore
from glacierfs.jobs.notices import CompletionListener
from glacierfs.jobs.retrieval import NotReady, Retrieval
from glacierfs.jobs.selectjobs import SelectJobs
from glacierfs.jobs.selectspec import SelectRequest
from glacierfs.options import MountOptions
from glacierfs.sim import s3server
from glacierfs.sim.testing import DUMMY_KEY_ID, DUMMY_SECRET, REGION, SimProcess, upload
from glacierfs.store import ROOT_INODE, Store

MIB = 1024 * 1024
VAULT = "v"
HOUR = 3600.0
WAIT = 30.0   # generous on a loaded machine; the notice takes about a second
BUCKET = "out"


@pytest.fixture(scope="module")
def moto():
    local = s3server.start(buckets=(BUCKET,))
    yield local
    local.stop()


def aws(moto, service: str):
    import boto3

    return boto3.client(service, endpoint_url=moto.url, region_name=REGION,
                        aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET)


@pytest.fixture
def channel(moto, request):
    """(topic ARN, queue URL), the queue subscribed to the topic with SNS envelopes, or raw
    delivery when the test is parametrized with raw=True."""
    raw = getattr(request, "param", False)
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    sns, sqsc = aws(moto, "sns"), aws(moto, "sqs")
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue = sqsc.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "2"})["QueueUrl"]
    arn = sqsc.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"],
                  Attributes={"RawMessageDelivery": "true" if raw else "false"})
    return topic, queue


@pytest.fixture
def sim(moto, tmp_path):
    proc = SimProcess(tmp_path / "sim", args=["--sns-endpoint", moto.url,
                                              "--s3-endpoint", moto.url,
                                              "--delay", "Standard=2", "--delay", "inventory=2"],
                      log_path=tmp_path / "sim.log")
    client = proc.client(max_attempts=1)
    client.create_vault(vaultName=VAULT)
    yield proc
    proc.stop()


class Core:
    """The mount's parts wired as mount.py wires them, with the listener."""

    def __init__(self, sim, moto, state: Path, topic: str | None, queue_url: str,
                 **opts) -> None:
        self.options = replace(MountOptions(region="us-east-1", endpoint_url=sim.url,
                                            cache_dir=state, poll=HOUR, chunk_size=MIB,
                                            sns_topic=topic, sqs_queue_url=queue_url,
                                            sqs_endpoint_url=moto.url), **opts)
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.options.state_dir)
        self.ns = Namespace(self.store)
        self.client = glacier.GlacierClient(glacier.ClientSettings(
            region="us-east-1", endpoint_url=sim.url, sns_topic=topic))
        self.aclient = glacier.AsyncGlacier(self.client)
        self.cache = ChunkCache(self.options.state_dir / "chunks", 1 << 30)
        self.retrieval = Retrieval(JobStore(self.store), self.aclient, self.cache, self.options,
                                   self.ns)
        self.selects = SelectJobs(self.store, self.aclient, self.options, self.retrieval)
        self.queue = sqs.QueueClient(queue_url, "us-east-1", endpoint_url=moto.url)
        self.inventories: Inventories | None = None
        self.listener: CompletionListener | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self.inventories = Inventories(self.ns, self.aclient, self.options, nursery)
        self.listener = CompletionListener(self.queue, self.aclient,
                                           [self.retrieval, self.inventories, self.selects],
                                           sns_topic=self.options.sns_topic)
        self.retrieval.notices = self.listener
        nursery.start_soon(self.retrieval.run)
        nursery.start_soon(self.listener.run)
        nursery.start_soon(self.selects.run)

    def file(self, name: str):
        return self.ns.lookup(self.ns.lookup(self.ns.get(ROOT_INODE), VAULT), name)

    def close(self) -> None:
        self.cache.close()
        self.store.close()


async def until(predicate, timeout: float = WAIT) -> float:
    """Seconds it took for ``predicate`` to hold."""
    start = trio.current_time()
    while not predicate():
        if trio.current_time() - start > timeout:
            raise AssertionError("condition not reached in time")
        await trio.sleep(0.05)
    return trio.current_time() - start


async def load_inventory(core: Core) -> None:
    core.ns.set_vaults([(VAULT, None)])
    assert core.inventories is not None
    core.inventories.ensure(VAULT)
    await until(lambda: (core.ns.vault(VAULT).inventory_status or "") == "Succeeded")


@pytest.mark.parametrize("channel", [False, True], ids=["envelope", "raw"], indirect=True)
def test_completions_are_acted_on_at_once_although_poll_is_an_hour(sim, moto, channel,
                                                                    tmp_path):
    topic, queue = channel
    data = bytes(range(256)) * (2 * MIB // 256) + b"end"
    upload(sim.client(), VAULT, data, "big.bin")
    core = Core(sim, moto, tmp_path / "state", topic, queue)
    calls: dict[str, int] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            core.start(nursery)
            await load_inventory(core)  # an hour of polling, unless the notice arrives
            f = core.file("big.bin")
            with pytest.raises(NotReady):
                await core.retrieval.read(f, 0, 10, may_start=True)
            rec = core.retrieval.records[f.archive_id]
            await until(lambda: core.cache.state(core.retrieval.layout(f)) == "cached")
            assert await core.retrieval.read(f, 0, len(data), may_start=False) == data
            calls.update(sim.stats()["requests"])
            job = sim.client().describe_job(vaultName=VAULT, jobId=rec.job_id)
            assert job["SNSTopic"] == topic   # the mount names its topic on every job
            assert core.listener.counts["acted"] == 2   # the inventory and the archive
            assert core.listener.status()["listening"]
            nursery.cancel_scope.cancel()

    trio.run(main)
    # Each completion was confirmed once; nothing was polled (poll is an hour).
    assert calls.get("DescribeJob") == 2
    assert calls.get("InitiateJob") == 2
    core.close()


def test_forged_duplicate_malformed_and_foreign_messages_cost_at_most_a_call(sim, moto,
                                                                            channel, tmp_path):
    topic, queue = channel
    sender = aws(moto, "sqs")
    data = b"precious " * 1000
    upload(sim.client(), VAULT, data, "file.txt")
    sim.set_delays(Standard=HOUR)   # the job will not finish unless the test says so
    core = Core(sim, moto, tmp_path / "state", topic, queue)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            core.start(nursery)
            await load_inventory(core)
            f = core.file("file.txt")
            with pytest.raises(NotReady):
                await core.retrieval.read(f, 0, 10, may_start=True)
            rec = core.retrieval.records[f.archive_id]
            assert rec.state == "InProgress"
            listener = core.listener
            sim.reset_stats()
            # A forged completion of our job: one DescribeJob, which says InProgress.
            forged = {"JobId": rec.job_id, "Action": "ArchiveRetrieval", "Completed": True,
                      "StatusCode": "Succeeded",
                      "VaultARN": f"arn:aws:glacier:us-east-1:123456789012:vaults/{VAULT}"}
            sender.send_message(QueueUrl=queue, MessageBody=json.dumps(forged))
            await until(lambda: listener.counts["contradicted"] == 1)
            # Sent again at once: no call now (Glacier just said it is not done); it is
            # looked at again when it comes back, a few seconds later.
            sender.send_message(QueueUrl=queue, MessageBody=json.dumps(forged))
            await until(lambda: listener.counts["deferred"] >= 1)
            assert sim.stats()["requests"] == {"DescribeJob": 1}
            sender.send_message(QueueUrl=queue, MessageBody="not json {")
            sender.send_message(QueueUrl=queue, MessageBody=json.dumps({"Type": "Notification",
                                                                        "Message": "[1, 2]"}))
            await until(lambda: listener.counts["unreadable"] == 2)
            foreign = dict(forged, JobId="another-mounts-job")
            sender.send_message(QueueUrl=queue, MessageBody=json.dumps(foreign))
            await until(lambda: listener.counts["foreign"] >= 1)
            # The foreign message is left for other mounts (it comes back).
            await until(lambda: listener.counts["foreign"] >= 2)
            # The second forgery was confirmed in its turn: one call per message at most.
            await until(lambda: listener.counts["contradicted"] == 2)
            assert rec.state == "InProgress" and rec.job_id == forged["JobId"]
            assert sim.stats()["requests"] == {"DescribeJob": 2}
            assert core.cache.state(core.retrieval.layout(f)) == "absent"
            # The real completion, then a duplicate of it.
            acted = listener.counts["acted"]   # the inventory's so far
            sim.complete_jobs(job_id=rec.job_id)
            await until(lambda: core.cache.state(core.retrieval.layout(f)) == "cached")
            assert listener.counts["acted"] == acted + 1
            real = sim.client().describe_job(vaultName=VAULT, jobId=rec.job_id)
            real.pop("ResponseMetadata")
            sim.reset_stats()
            sender.send_message(QueueUrl=queue, MessageBody=json.dumps(real))
            await until(lambda: listener.counts["duplicate"] == 1)
            assert sim.stats()["requests"] == {}
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert sim.stats()["requests"].get("InitiateJob") is None   # nothing paid twice
    core.close()


def test_an_unreachable_queue_leaves_polling_in_charge(sim, moto, tmp_path):
    import socket

    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}"
    upload(sim.client(), VAULT, b"still comes " * 100, "f.txt")
    core = Core(sim, moto, tmp_path / "state", None, f"{dead}/123456789012/q", poll=1.0,
                sqs_endpoint_url=dead)
    core.queue = sqs.QueueClient(f"{dead}/123456789012/q", "us-east-1", endpoint_url=dead)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            core.start(nursery)
            await load_inventory(core)
            f = core.file("f.txt")
            with pytest.raises(NotReady):
                await core.retrieval.read(f, 0, 10, may_start=True)
            await until(lambda: core.cache.state(core.retrieval.layout(f)) == "cached")
            status = core.listener.status()
            assert status["error"] and not status["listening"]
            assert status["poll_stretch"] == 1.0
            nursery.cancel_scope.cancel()

    trio.run(main)
    core.close()


def test_a_select_result_is_known_at_once(sim, moto, channel, tmp_path):
    topic, queue = channel
    upload(sim.client(), VAULT, b"1,a\n2,b\n3,c\n", "t.csv")
    spec = SelectRequest.build(query="SELECT _2 FROM archive WHERE _1 = '2'", bucket=BUCKET,
                               prefix="notified", tier="Standard", header="none",
                               delimiter=",")
    core = Core(sim, moto, tmp_path / "state", topic, queue)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            core.start(nursery)
            await load_inventory(core)
            rec = await core.selects.request(core.file("t.csv"), spec)
            assert rec.state == "InProgress"
            await until(lambda: rec.state == "Succeeded")
            assert rec.output_path
            nursery.cancel_scope.cancel()

    trio.run(main)
    parts = aws(moto, "s3").list_objects_v2(Bucket=BUCKET, Prefix="notified/")["Contents"]
    assert any("result_manifest" in p["Key"] for p in parts)
    assert sim.stats()["requests"].get("DescribeJob") == 2   # the inventory and the select
    core.close()


def test_a_shared_queue_serves_each_mount_its_own_completions(sim, moto, channel, tmp_path):
    """Two mounts read one queue: each acts on its own jobs' notices and leaves the other's
    (they come back after the 2 s visibility timeout), so both are cached in seconds."""
    topic, queue = channel
    client = sim.client()
    upload(client, VAULT, b"first " * 500, "one.txt")
    upload(client, VAULT, b"second " * 500, "two.txt")
    first = Core(sim, moto, tmp_path / "first", topic, queue)
    second = Core(sim, moto, tmp_path / "second", topic, queue)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            first.start(nursery)
            second.start(nursery)
            await load_inventory(first)
            await load_inventory(second)   # reuses the first one's finished inventory job
            one, two = first.file("one.txt"), second.file("two.txt")
            for core, f in ((first, one), (second, two)):
                with pytest.raises(NotReady):
                    await core.retrieval.read(f, 0, 10, may_start=True)
            await until(lambda: first.cache.state(first.retrieval.layout(one)) == "cached"
                        and second.cache.state(second.retrieval.layout(two)) == "cached")
            assert second.file("one.txt").archive_id not in second.retrieval.records
            nursery.cancel_scope.cancel()

    trio.run(main)
    # Each completion was confirmed once, by the mount whose job it was.
    assert sim.stats()["requests"].get("DescribeJob") == 3   # inventory, one, two
    first.close()
    second.close()
