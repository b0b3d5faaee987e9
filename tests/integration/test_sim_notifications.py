"""Job-completion notifications from the emulator, received as a user receives Glacier's: an SQS
queue subscribed to an SNS topic, all on moto's server, read with boto3. Also the vault
notification configuration API and the SNSTopic check of InitiateJob."""

from __future__ import annotations

import json
import time

import pytest
from botocore.exceptions import ClientError

from glacierfs.sim import s3server
from glacierfs.sim.testing import DUMMY_KEY_ID, DUMMY_SECRET, REGION, SimProcess, upload

VAULT = "notes"
WAIT = 30.0  # seconds a message may take on a loaded machine; it takes well under one


def code(exc) -> str:
    return exc.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def moto():
    local = s3server.start()
    yield local
    local.stop()


def aws(moto, service: str):
    import boto3

    return boto3.client(service, endpoint_url=moto.url, region_name=REGION,
                        aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET)


@pytest.fixture
def sim(moto, tmp_path):
    proc = SimProcess(tmp_path / "data", args=["--sns-endpoint", moto.url,
                                               "--delay", "Standard=3600",
                                               "--delay", "inventory=3600",
                                               "--delay", "Expedited=1"],
                      log_path=tmp_path / "sim.log")
    yield proc
    proc.stop()


@pytest.fixture
def glacier(sim):
    client = sim.client(max_attempts=1)
    client.create_vault(vaultName=VAULT)
    return client


class Channel:
    """A topic with a queue subscribed to it (raw delivery or SNS envelopes)."""

    def __init__(self, moto, name: str, raw: bool) -> None:
        self.sns, self.sqs = aws(moto, "sns"), aws(moto, "sqs")
        self.topic = self.sns.create_topic(Name=name)["TopicArn"]
        self.queue = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])
        self.sns.subscribe(TopicArn=self.topic, Protocol="sqs",
                           Endpoint=arn["Attributes"]["QueueArn"],
                           Attributes={"RawMessageDelivery": "true" if raw else "false"})
        self.raw = raw

    def receive(self, count: int, timeout: float = WAIT) -> list[dict]:
        """The next ``count`` job descriptions (unwrapped from their envelopes)."""
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            got = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1)
            for msg in got.get("Messages", []):
                body = json.loads(msg["Body"])
                if not self.raw:
                    assert body["Type"] == "Notification" and body["TopicArn"] == self.topic
                    body = json.loads(body["Message"])
                out.append(body)
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=msg["ReceiptHandle"])
        return out

    def quiet(self, seconds: float = 2.0) -> bool:
        """No message arrives for ``seconds``."""
        got = self.sqs.receive_message(QueueUrl=self.queue, WaitTimeSeconds=int(seconds))
        return not got.get("Messages")


def test_a_jobs_own_topic_gets_its_description_once(moto, sim, glacier):
    chan = Channel(moto, "own-topic", raw=False)
    archive = upload(glacier, VAULT, b"hello" * 100, "a.txt")
    job_id = glacier.initiate_job(vaultName=VAULT, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive, "SNSTopic": chan.topic,
        "Description": "mine"})["jobId"]
    assert glacier.describe_job(vaultName=VAULT, jobId=job_id)["SNSTopic"] == chan.topic
    listed = glacier.list_jobs(vaultName=VAULT)["JobList"]
    assert [j["SNSTopic"] for j in listed] == [chan.topic]
    assert chan.quiet(1)  # nothing before completion
    sim.complete_jobs(job_id=job_id)
    [message] = chan.receive(1)
    described = glacier.describe_job(vaultName=VAULT, jobId=job_id)
    described.pop("ResponseMetadata")
    assert all(v is None for k, v in message.items() if k not in described)
    for key, value in described.items():
        assert message[key] == value, key
    assert message["Completed"] is True and message["StatusCode"] == "Succeeded"
    assert message["JobId"] == job_id and message["SNSTopic"] == chan.topic
    # Later requests that look at the job do not announce it again.
    glacier.describe_job(vaultName=VAULT, jobId=job_id)
    glacier.list_jobs(vaultName=VAULT)
    assert chan.quiet(2)
    assert sim.stats()["notifications"]["published"] == 1


def test_a_due_job_is_announced_on_time_without_any_request(moto, sim, glacier):
    chan = Channel(moto, "on-time", raw=True)
    archive = upload(glacier, VAULT, b"x" * 3000)
    started = time.monotonic()
    job_id = glacier.initiate_job(vaultName=VAULT, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive, "Tier": "Expedited",
        "SNSTopic": chan.topic})["jobId"]
    [message] = chan.receive(1)  # nobody asked Glacier about the job meanwhile
    assert message["JobId"] == job_id and message["StatusCode"] == "Succeeded"
    assert time.monotonic() - started < WAIT
    assert sim.stats()["requests"].get("DescribeJob", 0) == 0


def test_failed_jobs_are_announced_too(moto, sim, glacier):
    chan = Channel(moto, "failures", raw=True)
    archive = upload(glacier, VAULT, b"y" * 10)
    job_id = glacier.initiate_job(vaultName=VAULT, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive, "SNSTopic": chan.topic})["jobId"]
    sim.fail_job(job_id, "The archive could not be read.")
    [message] = chan.receive(1)
    assert (message["StatusCode"], message["StatusMessage"]) == \
        ("Failed", "The archive could not be read.")
    sim.complete_jobs(job_id=job_id)  # already complete: no second message
    assert chan.quiet(2)


def test_vault_notifications_configuration_and_delivery(moto, sim, glacier):
    chan = Channel(moto, "vault-topic", raw=False)
    own = Channel(moto, "job-topic", raw=True)
    with pytest.raises(ClientError) as exc:
        glacier.get_vault_notifications(vaultName=VAULT)
    assert code(exc) == "ResourceNotFoundException"
    glacier.set_vault_notifications(vaultName=VAULT, vaultNotificationConfig={
        "SNSTopic": chan.topic, "Events": ["InventoryRetrievalCompleted"]})
    config = glacier.get_vault_notifications(vaultName=VAULT)["vaultNotificationConfig"]
    assert config == {"SNSTopic": chan.topic, "Events": ["InventoryRetrievalCompleted"]}
    archive = upload(glacier, VAULT, b"z" * 10)
    inventory = glacier.initiate_job(vaultName=VAULT, jobParameters={
        "Type": "inventory-retrieval", "SNSTopic": own.topic})["jobId"]
    retrieval = glacier.initiate_job(vaultName=VAULT, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive})["jobId"]
    sim.complete_jobs(vault=VAULT)
    # The inventory goes to both topics; the retrieval matches no configured event.
    [on_vault] = chan.receive(1)
    [on_own] = own.receive(1)
    assert on_vault == on_own
    assert on_vault["JobId"] == inventory and on_vault["Action"] == "InventoryRetrieval"
    assert on_vault["InventorySizeInBytes"] > 0
    assert chan.quiet(2)

    glacier.set_vault_notifications(vaultName=VAULT, vaultNotificationConfig={
        "SNSTopic": chan.topic, "Events": ["ArchiveRetrievalCompleted",
                                           "InventoryRetrievalCompleted"]})
    second = glacier.initiate_job(vaultName=VAULT, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive})["jobId"]
    sim.complete_jobs(job_id=second)
    [message] = chan.receive(1)
    assert message["JobId"] == second and message["SNSTopic"] is None
    assert retrieval != second

    glacier.delete_vault_notifications(vaultName=VAULT)
    with pytest.raises(ClientError) as exc:
        glacier.get_vault_notifications(vaultName=VAULT)
    assert code(exc) == "ResourceNotFoundException"
    third = glacier.initiate_job(vaultName=VAULT, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive})["jobId"]
    sim.complete_jobs(job_id=third)
    assert chan.quiet(2)


@pytest.mark.parametrize("config, error", [
    ({"SNSTopic": "arn:aws:sns:us-east-1:123456789012:t", "Events": ["JobDone"]},
     "InvalidParameterValueException"),
    ({"SNSTopic": "arn:aws:sqs:us-east-1:123456789012:t",
      "Events": ["ArchiveRetrievalCompleted"]}, "InvalidParameterValueException"),
    ({"SNSTopic": "arn:aws:sns:us-east-1:123456789012:t", "Events": []},
     "InvalidParameterValueException"),
])
def test_bad_vault_notification_configurations_are_refused(glacier, config, error):
    with pytest.raises(ClientError) as exc:
        glacier.set_vault_notifications(vaultName=VAULT, vaultNotificationConfig=config)
    assert code(exc) == error
    with pytest.raises(ClientError):
        glacier.get_vault_notifications(vaultName=VAULT)


def test_missing_fields_and_unknown_vaults(sim, glacier):
    import urllib.request

    req = urllib.request.Request(f"{sim.url}/-/vaults/{VAULT}/notification-configuration",
                                 data=b'{"Events": ["ArchiveRetrievalCompleted"]}', method="PUT")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=30)
    assert exc.value.code == 400
    assert json.loads(exc.value.read())["code"] == "MissingParameterValueException"
    with pytest.raises(ClientError) as err:
        glacier.set_vault_notifications(vaultName="nope", vaultNotificationConfig={
            "SNSTopic": "arn:aws:sns:us-east-1:123456789012:t",
            "Events": ["ArchiveRetrievalCompleted"]})
    assert code(err) == "ResourceNotFoundException"


@pytest.mark.parametrize("topic", ["not-an-arn", "arn:aws:sns:us-east-1:123:short-account",
                                   "arn:aws:sqs:us-east-1:123456789012:queue",
                                   "arn:aws:sns:us-east-1:123456789012:bad/name"])
def test_initiate_job_checks_the_topic_for_every_type(glacier, topic):
    archive = upload(glacier, VAULT, b"q")
    for params in ({"Type": "archive-retrieval", "ArchiveId": archive},
                   {"Type": "inventory-retrieval"}):
        with pytest.raises(ClientError) as exc:
            glacier.initiate_job(vaultName=VAULT, jobParameters={**params, "SNSTopic": topic})
        assert code(exc) == "InvalidParameterValueException"
    assert glacier.list_jobs(vaultName=VAULT)["JobList"] == []


def test_an_unknown_topic_is_logged_and_the_job_still_completes(sim, glacier):
    archive = upload(glacier, VAULT, b"w" * 10)
    job_id = glacier.initiate_job(vaultName=VAULT, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive,
        "SNSTopic": "arn:aws:sns:us-east-1:123456789012:nobody-made-this"})["jobId"]
    sim.complete_jobs(job_id=job_id)
    assert glacier.describe_job(vaultName=VAULT, jobId=job_id)["StatusCode"] == "Succeeded"
    deadline = time.monotonic() + WAIT
    while sim.stats()["notifications"]["failed"] < 1:
        assert time.monotonic() < deadline, sim.log_tail()
        time.sleep(0.2)
    assert sim.running()


def test_without_an_endpoint_topics_are_kept_but_nothing_is_sent(moto, tmp_path):
    chan = Channel(moto, "no-endpoint", raw=True)
    with SimProcess(tmp_path / "plain", log_path=tmp_path / "plain.log") as plain:
        client = plain.client(max_attempts=1)
        client.create_vault(vaultName=VAULT)
        archive = upload(client, VAULT, b"v")
        job_id = client.initiate_job(vaultName=VAULT, jobParameters={
            "Type": "archive-retrieval", "ArchiveId": archive, "SNSTopic": chan.topic})["jobId"]
        plain.complete_jobs(job_id=job_id)
        assert client.describe_job(vaultName=VAULT, jobId=job_id)["SNSTopic"] == chan.topic
        assert chan.quiet(2)
        assert plain.stats()["notifications"]["published"] == 0
