"""The inbox queue as provisioned, and the listener on it: S3 notifies SQS (moto delivers
real notifications), each upload is announced once, a redelivered message sends nothing.
The Prefect end of it runs for real in tests/integration/test_operations.py."""

from __future__ import annotations

import json

import boto3
import pytest

from flashgen.flows.events import PROMPTS_UPLOADED
from flashgen.flows.inbox import InboxWatcher
from flashgen.flows.listen import InboxListener, files_in
from flashgen.infra.provision import Outcome as Provisioned
from flashgen.infra.provision import ProvisionConfig, configure_bucket, configure_inbox_queue
from tests.test_inbox import BUCKET, Server


@pytest.fixture
def queue(store):
    """The bucket of ``store`` (prefix fg) provisioned with its inbox queue; the queue's URL."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    config = ProvisionConfig(bucket=BUCKET, prefix="fg", inbox_queue="fg-inbox")
    first = configure_bucket(config, store.s3) + configure_inbox_queue(config, store.s3, sqs)
    made = {c.kind: c.action for c in first}
    assert made["sqs queue"] == Provisioned.CREATED
    assert made["bucket notification"] == Provisioned.CREATED
    again = configure_inbox_queue(config, store.s3, sqs)
    assert [c.action for c in again] == [Provisioned.UNCHANGED] * 3, again
    url = sqs.get_queue_url(QueueName="fg-inbox")["QueueUrl"]
    _drain(sqs, url)  # S3's s3:TestEvent, sent when the notification was configured
    return sqs, url


def _drain(sqs, url: str) -> list[dict]:
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    for message in got:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return got


def _waiting(sqs, url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"])


def test_provision_keeps_the_buckets_other_notifications(store, queue):
    sqs, url = queue
    other = {"Id": "analytics", "QueueArn": sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"],
        "Events": ["s3:ObjectRemoved:*"]}
    current = store.s3.get_bucket_notification_configuration(Bucket=BUCKET)
    store.s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
        "QueueConfigurations": [*current["QueueConfigurations"], other]})
    config = ProvisionConfig(bucket=BUCKET, prefix="fg", inbox_queue="fg-inbox")
    assert {c.action for c in configure_inbox_queue(config, store.s3, sqs)} == {
        Provisioned.UNCHANGED}
    ids = {q["Id"] for q in store.s3.get_bucket_notification_configuration(
        Bucket=BUCKET)["QueueConfigurations"]}
    assert ids == {"flashgen-inbox", "analytics"}


def test_an_upload_under_the_inbox_is_notified_with_its_key_and_etag(store, queue):
    sqs, url = queue
    key = "fg/inbox/team a/spring+summer.csv"
    etag = store.s3.put_object(Bucket=BUCKET, Key=key, Body=b"prompt\na fox\n")["ETag"]
    store.s3.put_object(Bucket=BUCKET, Key="fg/elsewhere.csv", Body=b"prompt\nno\n")
    [message] = _drain(sqs, url)
    [file] = files_in(message["Body"])
    assert (file.bucket, file.s3_key, file.etag) == (BUCKET, key, etag.strip('"'))
    assert file.is_prompt_file and file.uri == f"s3://{BUCKET}/{key}"
    assert _drain(sqs, url) == []  # nothing for the object outside the inbox


async def test_the_listener_announces_once_and_a_redelivered_message_sends_nothing(
        store, queue):
    sqs, url = queue
    server = Server()
    listener = InboxListener(sqs, url, InboxWatcher(store, server.send), wait_seconds=0)
    store.s3.put_object(Bucket=BUCKET, Key="fg/inbox/a.csv", Body=b"prompt\na fox\n")
    store.s3.put_object(Bucket=BUCKET, Key="fg/inbox/notes.txt", Body=b"not prompts")
    handled = 0
    while _waiting(sqs, url):
        handled += await listener.receive_once()
    assert handled == 2 and [e.event for e in server.received] == [PROMPTS_UPLOADED]
    [event] = server.received
    assert event.payload["uri"] == f"s3://{BUCKET}/fg/inbox/a.csv"

    # The same notification again, as SQS redelivers a message whose listener died
    # between the send and the delete: the marker says it was sent.
    body = {"Records": [{"eventName": "ObjectCreated:Put", "eventTime": event.occurred
                         .isoformat(), "s3": {"bucket": {"name": BUCKET}, "object": {
                             "key": "fg/inbox/a.csv", "eTag": event.payload["etag"],
                             "size": event.payload["size"]}}}]}
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    assert await listener.receive_once() == 1
    assert len(server.received) == 1 and _waiting(sqs, url) == 0


async def test_a_message_another_sender_holds_is_left_for_later(store, queue):
    sqs, url = queue
    store.s3.put_object(Bucket=BUCKET, Key="fg/inbox/b.csv", Body=b"prompt\na fox\n")
    [message] = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)["Messages"]
    [file] = files_in(message["Body"])
    # A sensor (or another listener) has claimed the file and not yet sent its event.
    claimer = InboxWatcher(store, Server().send, owner="sensor")
    store.put_json(claimer.marker_key(file), {"state": "claimed", "claimed_by": "sensor",
                                              "claimed_at": file.last_modified.isoformat(),
                                              "uri": file.uri, "etag": file.etag,
                                              "event_id": str(file.event_id)},
                   if_none_match=True)
    server = Server()
    listener = InboxListener(sqs, url, InboxWatcher(store, server.send), wait_seconds=0,
                             visibility_timeout=0)
    assert await listener.receive_once() == 0  # not deleted: it comes back
    assert server.received == [] and _waiting(sqs, url) == 1
