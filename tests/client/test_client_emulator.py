"""RunComfyClient against the emulator, in-process (ASGITransport) and on a real socket.

Each test shows one row of the client's retry table (``flashgen.client``'s docstring)
under the fault that tests it, and checks what the emulator saw. Sleeps are recorded,
not slept (``no_sleeps``), and the emulator's jobs and links run on the same virtual
clock, so no test depends on how fast the machine is; every ``wait`` still has a
timeout, so that a bug cannot hang a test.
"""

from __future__ import annotations

import io
import json

import httpx
import pytest
from client_fakes import TOKEN
from emulated import emulated, seed_for
from PIL import Image

from flashgen import timing
from flashgen.errors import (
    AmbiguousSubmissionError,
    AuthenticationError,
    DownloadError,
    JobCancelledError,
    JobDeadlineError,
    JobFailedError,
    RateLimitedError,
)
from flashgen.models import DEFAULT_MODEL, CancelOutcome, JobState
from flashgen.polling import PollLog
from flashgen.timing import Backoff

WAIT = 3600.0  # virtual seconds: a bound that a 0.05 s job never comes near
# The only real time left: a read timeout is the transport's, so the slow fault is real
# seconds. Connects get ample time, so only the deliberately slow answer can time out.
READ_TIMEOUT = httpx.Timeout(10.0, read=0.3)
SLOW = 1.0
FOX = {"prompt": "a red fox in snow", "aspect_ratio": "9:16", "seed": 7}


@pytest.fixture(params=["in-process", "socket"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


async def test_round_trip_sends_token_to_the_api_only(mode: str) -> None:
    async with emulated(mode) as emu, emu.client() as client:
        handle = await client.submit(DEFAULT_MODEL, FOX)
        log = PollLog()
        done = await client.wait(handle.request_id, timeout=WAIT, on_status=log)
        (png,) = await client.fetch_outputs(handle.request_id)
        stats = await emu.stats()

    assert done.state is JobState.COMPLETED and log.polls == stats["status_polls"]
    assert png.content_type == "image/png" and png.size == len(png.content)
    assert Image.open(io.BytesIO(png.content)).size == (810, 1440)  # "9:16" arrived normalised
    assert stats["submissions"] == 1 and stats["duplicate_submissions"] == 0
    assert stats["file_downloads"] == 1 and stats["file_requests_with_auth"] == 0
    for request in emu.recorder.requests:
        has_token = request.headers.get("authorization") == f"Bearer {TOKEN}"
        assert has_token == request.url.path.startswith("/v1/"), request.url


# --- 429: wait exactly as long as Retry-After says ----------------------------------------


@pytest.mark.parametrize("route", ["submit", "status"])
async def test_429_waits_as_retry_after_says(mode: str, route: str) -> None:
    seed = seed_for(route, f"{route}:429:0.5", ["429", None])
    async with emulated(mode, retry_after=2.5, faults=[f"{route}:429:0.5"],
                        fault_seed=seed) as emu, emu.client() as client:
        handle = await client.submit(DEFAULT_MODEL, FOX)
        await client.status(handle.request_id)
        stats = await emu.stats()
    assert timing.recorded_sleeps() == [2.5]
    assert stats["faults_injected"] == {"429": 1}
    assert stats["submissions"] == 1 and stats["duplicate_submissions"] == 0
    assert stats["status_polls"] == (2 if route == "status" else 1)


async def test_429_that_never_ends_is_raised_as_rate_limited(mode: str) -> None:
    async with emulated(mode, retry_after=2.5, faults=["status:429:1"]) as emu, \
            emu.client(retries={"status": Backoff(attempts=3)}) as client:
        handle = await client.submit(DEFAULT_MODEL, FOX)
        with pytest.raises(RateLimitedError) as caught:
            await client.status(handle.request_id)
        stats = await emu.stats()
    assert caught.value.retry_after == 2.5 and caught.value.request_id == handle.request_id
    assert timing.recorded_sleeps() == [2.5, 2.5] and stats["status_polls"] == 3


# --- safe calls: retried through 5xx, drops, slowness and garbage --------------------------


@pytest.mark.parametrize("kind", ["500", "502", "503", "504", "drop", "malformed"])
async def test_status_faults_are_retried_then_succeed(mode: str, kind: str) -> None:
    seed = seed_for("status", f"status:{kind}:0.5", [kind, kind, None])
    async with emulated(mode, faults=[f"status:{kind}:0.5"], fault_seed=seed) as emu, \
            emu.client() as client:
        handle = await client.submit(DEFAULT_MODEL, FOX)
        status = await client.status(handle.request_id)
        stats = await emu.stats()
    assert status.request_id == handle.request_id
    assert stats["status_polls"] == 3 and len(timing.recorded_sleeps()) == 2


@pytest.mark.parametrize("kind", ["503", "malformed", "drop"])
async def test_result_faults_are_retried_then_succeed(mode: str, kind: str) -> None:
    seed = seed_for("result", f"result:{kind}:0.5", [kind, None])
    async with emulated(mode, faults=[f"result:{kind}:0.5"], fault_seed=seed) as emu, \
            emu.client() as client:
        handle = await client.submit(DEFAULT_MODEL, FOX)
        await client.wait(handle.request_id, timeout=WAIT)
        result = await client.result(handle.request_id)
        stats = await emu.stats()
    assert result.state is JobState.COMPLETED and len(result.uris) == 1
    assert stats["result_calls"] == 2


async def test_slow_status_answer_is_retried_after_the_client_timeout(mode: str) -> None:
    seed = seed_for("status", "status:slow:0.5", ["slow", None])
    async with emulated(mode, faults=["status:slow:0.5"], fault_seed=seed,
                        slow_seconds=SLOW) as emu, emu.client(timeout=READ_TIMEOUT) as client:
        handle = await client.submit(DEFAULT_MODEL, FOX)
        status = await client.status(handle.request_id)
        stats = await emu.stats()
    assert status.request_id == handle.request_id
    # On a socket the read timeout fires and the poll is repeated (on a very loaded machine
    # perhaps more than once); in-process, ASGITransport has no timeouts, so the slow
    # answer simply arrives.
    if mode == "socket":
        assert stats["status_polls"] >= 2
    else:
        assert stats["status_polls"] == 1


# --- submit: never resent once it may have arrived -----------------------------------------


@pytest.mark.parametrize(
    ("kind", "jobs_created"),
    [("lost-answer", 1), ("malformed", 1), ("500", 0), ("502", 0), ("503", 0), ("504", 0),
     ("drop", 0)],
)
async def test_submit_without_a_usable_answer_is_ambiguous_and_not_resent(
    mode: str, kind: str, jobs_created: int
) -> None:
    async with emulated(mode, faults=[f"submit:{kind}:1"]) as emu, emu.client() as client:
        with pytest.raises(AmbiguousSubmissionError) as caught:
            await client.submit(DEFAULT_MODEL, FOX)
        stats = await emu.stats()
    assert emu.sent("POST", "/v1/models/") == 1  # never resent
    assert stats["submissions"] == jobs_created  # a lost answer did create a (paid) job
    assert not caught.value.transient and timing.recorded_sleeps() == []


async def test_slow_submit_on_a_socket_is_ambiguous(mode: str) -> None:
    async with emulated(mode, faults=["submit:slow:1"], slow_seconds=SLOW) as emu, \
            emu.client(timeout=READ_TIMEOUT) as client:
        if mode == "socket":
            with pytest.raises(AmbiguousSubmissionError, match="ReadTimeout"):
                await client.submit(DEFAULT_MODEL, FOX)
        else:  # no timeouts in-process: the slow answer arrives
            await client.submit(DEFAULT_MODEL, FOX)
        stats = await emu.stats()
    assert emu.sent("POST", "/v1/models/") == 1 and stats["submissions"] == 1


async def test_bad_token_fails_at_once_without_showing_it(mode: str) -> None:
    async with emulated(mode, tokens=["the-right-token"]) as emu, emu.client() as client:
        with pytest.raises(AuthenticationError) as on_submit:
            await client.submit(DEFAULT_MODEL, FOX)
        with pytest.raises(AuthenticationError) as on_status:
            await client.status("any-request")
        stats = await emu.stats()
    assert len(emu.recorder.requests) == 2  # one each: no retry
    assert stats["submissions"] == 0 and timing.recorded_sleeps() == []
    for error in (on_submit.value, on_status.value):
        assert "rejected the token" in str(error) and "RUNCOMFY_API_TOKEN" in str(error)
        assert TOKEN not in str(error) and TOKEN not in repr(error.__dict__)
        assert error.status_code == 401 and error.error_code == 401001
    assert on_status.value.request_id == "any-request"


# --- cancel and the end states of wait -------------------------------------------------------


async def test_cancel_queued_running_and_finished(mode: str) -> None:
    # One worker and stalled jobs: the first runs for ever, the second waits behind it.
    async with emulated(mode, workers=1, faults=["job:stall:1"]) as emu, \
            emu.client() as client:
        running = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        queued = (await client.submit(DEFAULT_MODEL, {**FOX, "seed": 8})).request_id
        assert (await client.status(queued)).queue_position == 1

        assert await client.cancel(queued) is CancelOutcome.CANCELLED
        assert await client.cancel(running) is CancelOutcome.NOT_CANCELLABLE
        assert await client.cancel(queued) is CancelOutcome.ALREADY_FINISHED
        with pytest.raises(JobCancelledError):
            await client.wait(queued, timeout=WAIT)
        stats = await emu.stats()
    assert stats["cancels"] == 3 and stats["cancelled"] == 1


async def test_cancel_of_a_completed_job_says_already_finished(mode: str) -> None:
    async with emulated(mode) as emu, emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        await client.wait(rid, timeout=WAIT)
        assert await client.cancel(rid) is CancelOutcome.ALREADY_FINISHED


async def test_stalled_job_meets_the_deadline(mode: str) -> None:
    async with emulated(mode, faults=["job:stall:1"]) as emu, emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        log = PollLog()
        with pytest.raises(JobDeadlineError) as caught:
            await client.wait(rid, timeout=60, on_status=log)
    assert caught.value.transient and caught.value.request_id == rid
    assert caught.value.status == "in_progress"
    # Looked at every quarter of the 5 s prior, then, overdue, every 5 % of the time it has
    # run: 4.75 s * 1.05 ** 51 > 60 s, so a little over 50 polls, never a busy loop.
    assert 1 < log.polls <= 58


async def test_failed_job_raises_with_its_error(mode: str) -> None:
    async with emulated(mode, faults=["job:fail:1"]) as emu, emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        with pytest.raises(JobFailedError) as caught:
            await client.wait(rid, timeout=WAIT)
    assert caught.value.error["code"] == 500001 and caught.value.request_id == rid
    assert rid in str(caught.value)


async def test_unknown_status_strings_keep_polling(mode: str) -> None:
    async def rename(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        """A newer API with states we have never heard of, until it completes."""
        if not request.url.path.endswith("/status"):
            return response
        body = json.loads(await response.aread())
        if body["status"] in ("in_queue", "in_progress"):
            body["status"] = "provisioning"
        return httpx.Response(response.status_code, json=body)

    async with emulated(mode, job_time=10) as emu, emu.client() as client:
        emu.recorder.edit = rename
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        log = PollLog()
        done = await client.wait(rid, timeout=WAIT, on_status=log)
    assert done.state is JobState.COMPLETED
    assert JobState.UNKNOWN in log.first_seen and log.polls > 1


# --- files -----------------------------------------------------------------------------------


async def test_expired_link_is_refreshed_once_and_the_download_succeeds(mode: str) -> None:
    async with emulated(mode, link_ttl=0.3) as emu, emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        await client.wait(rid, timeout=WAIT)
        stale = await client.result(rid)
        await timing.sleep(0.4)  # virtual time: the link's 0.3 s run out
        (png,) = await client.fetch_outputs(rid, stale)
        stats = await emu.stats()
    assert png.uri != stale.uris[0] and png.content.startswith(b"\x89PNG")
    assert stats["result_calls"] == 2  # the one above and exactly one refresh
    assert stats["file_requests"] == 2 and stats["file_downloads"] == 1
    assert stats["file_requests_with_auth"] == 0


async def test_link_that_stays_expired_fails_after_one_refresh(mode: str) -> None:
    async with emulated(mode, faults=["file:expired:1"]) as emu, emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        await client.wait(rid, timeout=WAIT)
        with pytest.raises(DownloadError, match="after refreshing the link once") as caught:
            await client.fetch_outputs(rid)
        stats = await emu.stats()
    assert caught.value.status_code == 403 and caught.value.request_id == rid
    assert not caught.value.transient
    assert stats["result_calls"] == 2 and stats["file_requests"] == 2
    assert stats["file_requests_with_auth"] == 0


@pytest.mark.parametrize("kind", ["503", "drop"])
async def test_file_host_blips_are_retried(
    mode: str, kind: str, request: pytest.FixtureRequest
) -> None:
    seed = seed_for("file", f"file:{kind}:0.5", [kind, None])
    async with emulated(mode, faults=[f"file:{kind}:0.5"], fault_seed=seed) as emu, \
            emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        await client.wait(rid, timeout=WAIT)
        (png,) = await client.fetch_outputs(rid)
        stats = await emu.stats()
    assert png.content.startswith(b"\x89PNG")
    assert stats["file_requests"] == 2 and stats["result_calls"] == 1  # no refresh needed


async def test_download_cap_refuses_a_large_file(mode: str) -> None:
    async with emulated(mode) as emu, emu.client(max_image_bytes=1024) as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        await client.wait(rid, timeout=WAIT)
        with pytest.raises(DownloadError, match="1024-byte cap") as caught:
            await client.fetch_outputs(rid)
    assert not caught.value.transient and emu.sent("GET", "/files/") == 1
