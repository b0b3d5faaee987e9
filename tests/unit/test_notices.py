"""Completion notices: what the listener reads out of a queue message, the mount options that
turn it on, and what ``glacierfs status`` says about it."""

from __future__ import annotations

import json

import pytest

from glacierfs.aws import glacier
from glacierfs.commands.restorecmd import notifications_line
from glacierfs.jobs.notices import parse_notice
from glacierfs.options import OptionError, parse_options

JOB = {"Action": "ArchiveRetrieval", "JobId": "J0B1D", "StatusCode": "Succeeded",
       "Completed": True, "VaultARN": "arn:aws:glacier:us-east-1:123456789012:vaults/photos",
       "SNSTopic": "arn:aws:sns:us-east-1:123456789012:jobs"}
TOPIC = "arn:aws:sns:us-east-1:123456789012:glacier-jobs"
QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/glacier-jobs"


def test_raw_and_enveloped_notices_read_the_same():
    raw = parse_notice(json.dumps(JOB))
    envelope = parse_notice(json.dumps({"Type": "Notification", "MessageId": "m",
                                        "TopicArn": JOB["SNSTopic"],
                                        "Message": json.dumps(JOB)}))
    assert raw == envelope
    assert (raw.job_id, raw.vault, raw.action, raw.status) == \
        ("J0B1D", "photos", "ArchiveRetrieval", "Succeeded")


@pytest.mark.parametrize("body", [
    "", "hello", "[1, 2]", "null", json.dumps({"JobId": 7}), json.dumps({"JobId": ""}),
    json.dumps({"Type": "Notification", "Message": "not json"}),
    json.dumps({"Type": "Notification", "Message": json.dumps({"no": "job"})}),
    json.dumps({"Type": "SubscriptionConfirmation", "Message": "confirm"}),
    json.dumps(dict(JOB, JobId="x" * 2000)),
    "x" * (300 * 1024),
])
def test_anything_else_is_not_a_notice(body):
    assert parse_notice(body) is None


def test_odd_fields_are_dropped_not_trusted():
    notice = parse_notice(json.dumps({"JobId": "j", "VaultARN": 5, "Action": ["x"]}))
    assert (notice.job_id, notice.vault, notice.action, notice.status) == ("j", None, None, None)


def test_notification_options():
    o = parse_options("us-east-1", [f"sns_topic={TOPIC},sqs_queue_url={QUEUE}"])
    assert (o.sns_topic, o.sqs_queue_url, o.sqs_endpoint_url) == (TOPIC, QUEUE, None)
    local = parse_options("us-east-1", ["sqs_queue_url=http://127.0.0.1:5000/123456789012/q,"
                                        "sqs_endpoint_url=http://127.0.0.1:5000"])
    assert local.sqs_endpoint_url == "http://127.0.0.1:5000"


@pytest.mark.parametrize("line, message", [
    ("sns_topic=mytopic", "SNS topic ARN"),
    ("sns_topic=arn:aws:sqs:us-east-1:123456789012:q", "SNS topic ARN"),
    ("sns_topic=arn:aws:sns:us-east-1:123456789012:t.fifo", "SNS topic ARN"),
    ("sns_topic=", "needs a value"),
    ("sqs_queue_url=sqs.us-east-1.amazonaws.com/1/q", "http"),
    ("sqs_queue_url=https://sqs.us-east-1.amazonaws.com/", "queue URL"),
    ("sqs_endpoint_url=http://127.0.0.1:5000", "needs sqs_queue_url"),
])
def test_bad_notification_options_are_refused(line, message):
    with pytest.raises(OptionError, match=message):
        parse_options("us-east-1", [line])


def test_status_says_whether_notifications_are_used_and_when_the_last_arrived():
    assert "off" in notifications_line({"sns_topic": None, "queue_url": None}, 1000.0)
    assert "polling" in notifications_line({"sns_topic": TOPIC, "queue_url": None}, 1000.0)
    text = notifications_line({"sns_topic": TOPIC, "queue_url": QUEUE, "listening": True,
                               "last_message": 880.0, "last_completion": 880.0, "acted": 3,
                               "foreign": 1, "poll_stretch": 4.0}, 1000.0)
    assert QUEUE in text and "2m00s ago" in text and "3 completion(s)" in text
    assert "4x" in text and "other mounts' jobs left in the queue (1 receipts)" in text
    never = notifications_line({"sns_topic": None, "queue_url": QUEUE, "listening": False,
                                "error": "ConnectionError: refused", "last_message": None},
                               1000.0)
    assert "cannot be read" in never and "never" in never


# --- the listener's decisions, with a queue and a Glacier that only record what is asked ----

class FakeQueue:
    queue_url = "http://127.0.0.1:1/123456789012/q"

    def __init__(self) -> None:
        self.deleted: list[str] = []
        self.released: list[str] = []

    def delete(self, receipt: str) -> None:
        self.deleted.append(receipt)

    def release(self, receipt: str, seconds: int) -> None:
        self.released.append(receipt)


class FakeGlacier:
    def __init__(self, answer) -> None:  # a dict, or an exception to raise
        self.answer = answer
        self.asked: list[tuple[str, str]] = []

    async def describe_job(self, vault: str, job_id: str) -> dict:
        self.asked.append((vault, job_id))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Handler:
    def __init__(self, jobs: dict[str, tuple[str, bool]]) -> None:
        self.jobs = jobs
        self.completed: list[dict] = []

    def notice_state(self, job_id: str):
        return self.jobs.get(job_id)

    async def job_completed(self, job: dict) -> None:
        self.completed.append(job)


def handle(answer, jobs, body=None, sent_at=None):
    import time

    import trio

    from glacierfs.aws.sqs import QueueMessage
    from glacierfs.jobs.notices import CompletionListener

    queue, client, handler = FakeQueue(), FakeGlacier(answer), Handler(jobs)
    listener = CompletionListener(queue, client, [handler])  # type: ignore[arg-type]
    message = QueueMessage(body=body or json.dumps(JOB), receipt_handle="r", message_id="m",
                           sent_at=time.time() if sent_at is None else sent_at,
                           receive_count=1)
    outcome = trio.run(listener.handle, message)
    return outcome, queue, client, handler, listener


def test_a_confirmed_completion_is_acted_on_with_glacier_answer_not_the_message():
    truth = dict(JOB, StatusCode="Failed", StatusMessage="gone")
    outcome, queue, client, handler, listener = handle(truth, {"J0B1D": ("mine", True)})
    assert outcome == "acted" and handler.completed == [truth]
    assert client.asked == [("mine", "J0B1D")]   # our record's vault, not the message's
    assert queue.deleted == ["r"] and listener.last_completion


@pytest.mark.parametrize("answer, outcome, deleted", [
    (dict(JOB, Completed=False, StatusCode="InProgress"), "contradicted", True),
    (glacier.NotFound("ResourceNotFoundException", "no job"), "contradicted", True),
    (glacier.Throttled("ThrottlingException", "slow down"), "failed", False),  # asked later
])
def test_what_glacier_contradicts_or_cannot_confirm_changes_nothing(answer, outcome, deleted):
    got, queue, client, handler, _ = handle(answer, {"J0B1D": ("mine", True)})
    assert got == outcome and handler.completed == [] and len(client.asked) == 1
    assert queue.deleted == (["r"] if deleted else [])


def test_duplicates_garbage_and_foreign_notices_cost_no_call():
    import time

    got, queue, client, _, _ = handle({}, {"J0B1D": ("mine", False)})
    assert (got, queue.deleted, client.asked) == ("duplicate", ["r"], [])
    got, queue, client, _, _ = handle({}, {}, body="garbage")
    assert (got, queue.deleted, client.asked) == ("unreadable", ["r"], [])
    got, queue, client, _, _ = handle({}, {})
    assert (got, queue.deleted, queue.released, client.asked) == ("left", [], ["r"], [])
    got, queue, client, _, _ = handle({}, {}, sent_at=time.time() - 2 * 3600)
    assert (got, queue.deleted, client.asked) == ("foreign", ["r"], [])


def test_default_polling_grows_only_while_notifications_flow():
    import time
    from types import SimpleNamespace

    from glacierfs.jobs.lifecycle import Lifecycle
    from glacierfs.jobs.notices import CompletionListener
    from glacierfs.options import MountOptions

    listener = CompletionListener(FakeQueue(), FakeGlacier({}), [])  # type: ignore[arg-type]
    part = SimpleNamespace(options=MountOptions(region="us-east-1"), notices=listener)
    assert Lifecycle._interval(part, "Standard") == 900   # type: ignore[arg-type]
    listener.last_answer = time.time()
    assert Lifecycle._interval(part, "Standard") == 900   # no completion came through yet
    listener.last_completion = time.time()
    assert Lifecycle._interval(part, "Standard") == 3600
    assert Lifecycle._interval(part, "Bulk") == 7200
    listener.last_answer = time.time() - 3600             # the queue stopped answering
    assert Lifecycle._interval(part, "Standard") == 900
    listener.last_answer = time.time()
    part.options = MountOptions(region="us-east-1", poll=30)
    assert Lifecycle._interval(part, "Standard") == 30    # an explicit poll is kept
