"""A submit is classified by what its answer proves (``flashgen.answers``): any HTTP answer
shows that the POST arrived, so it is "not sent" only when the answer says no job was made.

Here the emulator really makes the job, and the answer the client sees is then reshaped
on its way back: whatever the shape, the client must not call it unsent. Likewise a status
is read for what it says: a job's state beside an error is the job's end, not a failed call."""

from __future__ import annotations

import json

import httpx
import pytest
from emulated import emulated

from flashgen.errors import AmbiguousSubmissionError
from flashgen.models import DEFAULT_MODEL

FOX = {"prompt": "a red fox in snow", "aspect_ratio": "9:16", "seed": 7}


def _json(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body)


# Each: the answer the client gets in place of the emulator's handle (rid: the real id).
SHAPES = {
    "303 see other": lambda rid: httpx.Response(303, headers={
        "location": f"/v1/requests/{rid}/status"}),
    "307 redirect": lambda rid: httpx.Response(307, headers={"location": "/elsewhere"}),
    "204 no content": lambda rid: httpx.Response(204),
    "200 empty request_id": lambda rid: _json(200, {"request_id": " "}),
    "200 no request_id": lambda rid: _json(200, {"status": "in_queue"}),
    "200 error naming the job": lambda rid: _json(
        200, {"error_code": 500001, "error_message": "timeout", "request_id": rid}),
    "502 from a proxy": lambda rid: httpx.Response(502, text="<html>Bad Gateway</html>"),
    "408": lambda rid: _json(408, {"message": "request timeout"}),
    "200 html": lambda rid: httpx.Response(200, text="<html>ok</html>"),
}


@pytest.mark.parametrize("shape", SHAPES)
async def test_an_answer_that_does_not_say_no_job_was_made_is_ambiguous(shape: str) -> None:
    async with emulated("in-process") as emu, emu.client() as client:
        made: list[str] = []

        async def reshape(request: httpx.Request, response: httpx.Response) -> httpx.Response:
            if request.method != "POST":
                return response
            await response.aread()
            made.append(json.loads(response.content)["request_id"])
            return SHAPES[shape](made[-1])

        emu.recorder.edit = reshape
        with pytest.raises(AmbiguousSubmissionError) as caught:
            await client.submit(DEFAULT_MODEL, FOX)
        stats = await emu.stats()
    assert stats["submissions"] == 1 and len(made) == 1  # a job exists, sent once
    assert not caught.value.transient  # never resent
    if shape == "200 error naming the job":
        assert caught.value.request_id == made[0]  # kept, to be adopted


async def test_a_failed_jobs_error_message_beside_its_state_is_the_jobs_error() -> None:
    """A status that says ``failed`` with a top-level ``error_message`` is a job that
    failed (the call worked), not an error answer to retry until the deadline."""
    from flashgen.errors import JobFailedError

    async with emulated("in-process") as emu, emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id

        async def failed(request: httpx.Request, response: httpx.Response) -> httpx.Response:
            if request.url.path.endswith("/status"):
                return _json(200, {"request_id": rid, "status": "failed",
                                   "error_code": 500001, "error_message": "out of memory"})
            return response

        emu.recorder.edit = failed
        with pytest.raises(JobFailedError) as caught:
            await client.wait(rid, timeout=3600.0)
    assert caught.value.error == "out of memory"
    assert emu.sent("GET", f"/v1/requests/{rid}/status") == 1
