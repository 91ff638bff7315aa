"""What RunComfy's model page says (``shared/spec``, docs/PROTOCOL-NOTES.md §1), each fact
once, run with the client against the emulator."""

from __future__ import annotations

import pytest
from emulated import emulated

from flashgen.errors import AuthenticationError, NotFoundError
from flashgen.models import DEFAULT_MODEL, CancelOutcome, JobState

WAIT = 3600.0
FOX = {"prompt": "a red fox in snow", "aspect_ratio": "9:16", "seed": 7}


async def test_a_submit_answers_a_request_id_and_its_three_urls() -> None:
    async with emulated("in-process") as emu, emu.client() as client:
        handle = await client.submit(DEFAULT_MODEL, FOX)
    rid = handle.request_id
    assert handle.status_url.endswith(f"/v1/requests/{rid}/status")
    assert handle.result_url.endswith(f"/v1/requests/{rid}/result")
    assert handle.cancel_url.endswith(f"/v1/requests/{rid}/cancel")


async def test_a_job_goes_in_queue_then_in_progress_then_completed_with_an_image() -> None:
    async with emulated("in-process", workers=1) as emu, emu.client() as client:
        first = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        second = (await client.submit(DEFAULT_MODEL, {**FOX, "seed": 8})).request_id
        queued = await client.status(second)
        assert (queued.status, queued.queue_position) == ("in_queue", 1)
        assert (await client.status(first)).state is JobState.RUNNING
        await client.wait(second, timeout=WAIT)
        files = await client.fetch_outputs(second)
        stats = await emu.stats()
    assert files[0].content.startswith(b"\x89PNG")
    assert stats["file_requests_with_auth"] == 0  # output links need no token


async def test_a_queued_job_is_cancelled_and_an_in_progress_one_is_not() -> None:
    async with emulated("in-process", workers=1, faults=["job:stall:1"]) as emu, \
            emu.client() as client:
        running = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        queued = (await client.submit(DEFAULT_MODEL, {**FOX, "seed": 8})).request_id
        assert await client.cancel(queued) is CancelOutcome.CANCELLED
        assert await client.cancel(running) is CancelOutcome.NOT_CANCELLABLE


async def test_a_bad_token_is_401() -> None:
    async with emulated("in-process", tokens=["right"]) as emu, emu.client("wrong") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.status("r1")
    assert caught.value.status_code == 401 and caught.value.error_code == 401001


async def test_an_unknown_request_is_404() -> None:
    async with emulated("in-process") as emu, emu.client() as client:
        with pytest.raises(NotFoundError) as caught:
            await client.status("no-such-request")
    assert caught.value.error_code == 404001
