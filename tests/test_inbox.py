"""The inbox sensor announces each prompt file version exactly once: across passes,
restarts, two sensors at once, and a sensor that dies half-way."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prefect.events import Event

from flashgen.storage import Store
from flashgen.flows.events import PROMPTS_UPLOADED
from flashgen.flows.inbox import InboxWatcher, Outcome

BUCKET = "flashgen-test"  # tests/conftest.py's ``store``: this bucket, prefix "fg"


class Server:
    """Stands in for Prefect's events endpoint: records what arrives, keeps ids once."""

    def __init__(self, fail_times: int = 0) -> None:
        self.received: list[Event] = []
        self.fail_times = fail_times

    async def send(self, event: Event) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("server unreachable")
        await asyncio.sleep(0)  # let another sensor interleave here
        self.received.append(event)

    @property
    def unique(self) -> dict:
        return {e.id: e for e in self.received}


def upload(store: Store, name: str, body: str = "prompt\na fox\n") -> str:
    key = f"fg/inbox/{name}"
    store.s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
    return f"s3://{BUCKET}/{key}"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_each_new_prompt_file_is_announced_once_across_passes(store):
    server = Server()
    watcher = InboxWatcher(store, server.send)
    a = upload(store, "a.csv")
    b = upload(store, "team/b.jsonl", '{"prompt": "an owl"}\n')
    upload(store, "notes.txt", "not prompts")

    first = await watcher.poll()
    assert sorted(first.files[Outcome.EMITTED]) == sorted([a, b])
    assert first.files[Outcome.IGNORED] == [f"s3://{BUCKET}/fg/inbox/notes.txt"]
    event = next(e for e in server.received if e.payload["uri"] == a)
    assert event.event == PROMPTS_UPLOADED
    assert event.resource.id == f"flashgen.inbox.{BUCKET}/fg/inbox/a.csv"
    assert set(event.payload) >= {"uri", "bucket", "key", "etag", "size", "batch_id"}
    assert event.payload["key"] == "fg/inbox/a.csv" and event.payload["size"] > 0
    assert event.payload["batch_id"].startswith("inbox-a-")

    second = await watcher.poll()
    assert second.counts()["emitted"] == second.counts()["recovered"] == 0
    assert len(server.received) == 2


async def test_a_restarted_sensor_sends_nothing_again_even_without_its_cursor(store):
    server = Server()
    upload(store, "a.csv")
    await InboxWatcher(store, server.send).poll()

    restarted = InboxWatcher(store, server.send)  # a new process: only S3 state survives
    assert (await restarted.poll()).counts()["emitted"] == 0
    store.s3.delete_object(Bucket=BUCKET, Key=restarted.cursor_key)  # cursor lost: markers hold
    again = await InboxWatcher(store, server.send).poll()
    assert again.files[Outcome.SEEN] == [f"s3://{BUCKET}/fg/inbox/a.csv"]
    assert len(server.received) == 1


async def test_new_content_under_the_same_key_is_a_new_file(store):
    server = Server()
    watcher = InboxWatcher(store, server.send)
    upload(store, "a.csv", "prompt\na fox\n")
    await watcher.poll()
    upload(store, "a.csv", "prompt\na fox\nan owl\n")
    assert len((await watcher.poll()).files[Outcome.EMITTED]) == 1
    first, second = server.received
    assert first.payload["etag"] != second.payload["etag"] and first.id != second.id
    upload(store, "a.csv", "prompt\na fox\nan owl\n")  # the same bytes again: not new
    assert (await watcher.poll()).counts()["emitted"] == 0


async def test_two_sensors_at_once_announce_each_file_once(store):
    server = Server()
    uris = [upload(store, f"f{n:02}.csv", f"prompt\nthing {n}\n") for n in range(12)]
    one, two = InboxWatcher(store, server.send, owner="one"), InboxWatcher(store, server.send,
                                                                            owner="two")
    await asyncio.gather(one.poll(), two.poll(), one.poll())
    await asyncio.gather(one.poll(), two.poll())
    assert len(server.received) == len(server.unique) == 12
    assert sorted(e.payload["uri"] for e in server.received) == uris


async def test_a_sensor_that_dies_before_marking_is_recovered_with_the_same_event_id(store):
    clock = Clock()
    upload(store, "a.csv")
    down = Server(fail_times=1)
    with pytest.raises(ConnectionError):
        await InboxWatcher(store, down.send, clock=clock).poll()

    server = Server()
    fresh = await InboxWatcher(store, server.send, clock=clock).poll()
    assert fresh.files[Outcome.BUSY] and not server.received  # the claim is still young

    clock.now += timedelta(minutes=5)
    recovered = await InboxWatcher(store, server.send, clock=clock).poll()
    assert recovered.files[Outcome.RECOVERED] == [f"s3://{BUCKET}/fg/inbox/a.csv"]
    assert (await InboxWatcher(store, server.send, clock=clock).poll()).counts()[
        "recovered"] == 0
    assert len(server.received) == 1


async def test_a_send_that_arrived_before_the_crash_is_resent_identically(store):
    """The crash window after the send: the resend carries the same id, which the server
    keeps once; the event body is identical too."""
    clock = Clock()
    upload(store, "a.csv")
    server = Server()
    watcher = InboxWatcher(store, server.send, clock=clock)
    real_put = store.put_json

    def crash_on_mark(key, obj, **kw):
        if obj.get("state") == "emitted":
            raise RuntimeError("killed")
        return real_put(key, obj, **kw)

    store.put_json = crash_on_mark
    with pytest.raises(RuntimeError):
        await watcher.poll()
    store.put_json = real_put
    clock.now += timedelta(minutes=5)
    await InboxWatcher(store, server.send, clock=clock).poll()
    first, again = server.received
    assert first.model_dump() == again.model_dump()
    assert len(server.unique) == 1


async def test_files_older_than_the_lookback_window_are_not_looked_at_again(store):
    clock = Clock()
    server = Server()
    watcher = InboxWatcher(store, server.send, clock=clock, lookback=timedelta(0))
    upload(store, "old.csv")
    await watcher.poll()
    # Lose the old file's marker: a sensor that still looked at it would announce it again.
    seen = [o.s3_key for o in store.list_keys("state/inbox/seen/")]
    store.s3.delete_object(Bucket=BUCKET, Key=seen[0])
    await asyncio.sleep(1.1)  # S3 LastModified has one-second resolution
    upload(store, "new.csv")
    report = await watcher.poll()
    assert report.files[Outcome.EMITTED] == [f"s3://{BUCKET}/fg/inbox/new.csv"]
    assert len(server.received) == 2
