"""Completion notices: what the listener reads out of a queue message, the mount options that
turn it on, and what ``glacierfs status`` says about it."""

from __future__ import annotations

import json

import pytest

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
    assert "4x" in text and "other mounts" in text
    never = notifications_line({"sns_topic": None, "queue_url": QUEUE, "listening": False,
                                "error": "ConnectionError: refused", "last_message": None},
                               1000.0)
    assert "cannot be read" in never and "never" in never
