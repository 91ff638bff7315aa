"""Each fault kind has its effect, in-process and on a real socket; draws repeat under a seed."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json

import httpx
import pytest
from emulator_helpers import AUTH, SUBMIT, emulator_client, stats, submit, wait_until_done
from PIL import Image
from pydantic import ValidationError

from flashgen.emulator import EmulatorConfig, EmulatorServer
from flashgen.emulator.faults import FaultPlan, parse_faults


async def test_429_carries_retry_after() -> None:
    async with emulator_client(faults=["status:429:1"], retry_after=0.5) as client:
        request_id = await submit(client)
        response = await client.get(f"/v1/requests/{request_id}/status", headers=AUTH)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "0.5"
        assert response.json()["error_code"] == 429001
        assert (await stats(client))["faults_injected"] == {"429": 1}


async def test_a_429_on_submit_creates_no_job() -> None:
    async with emulator_client(faults=["submit:429:1"]) as client:
        response = await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
        assert (response.status_code, response.headers["Retry-After"]) == (429, "1")
        assert (await stats(client))["submissions"] == 0


@pytest.mark.parametrize("code", [500, 502, 503, 504])
async def test_server_errors(code: int) -> None:
    async with emulator_client(faults=[f"result:{code}:1"]) as client:
        request_id = await submit(client)
        response = await client.get(f"/v1/requests/{request_id}/result", headers=AUTH)
        assert response.status_code == code
        assert response.json()["error_code"] == 500001


async def test_slow_answers_late_after_doing_the_work() -> None:
    async with emulator_client(faults=["submit:slow:1"], slow_seconds=30) as client:
        answer = asyncio.create_task(client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH))
        async with asyncio.timeout(10):
            while (await stats(client))["submissions"] == 0:
                await asyncio.sleep(0.01)
        # The job exists while its answer is still on the way: a client that gives up now
        # holds the ambiguous submit it must not resend.
        assert not answer.done()
        answer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await answer

    async with emulator_client(faults=["status:slow:1"], slow_seconds=0.01) as client:
        request_id = await submit(client)
        response = await client.get(f"/v1/requests/{request_id}/status", headers=AUTH)
        assert response.json()["request_id"] == request_id


async def test_drop_raises_a_transport_error_and_creates_no_job() -> None:
    async with emulator_client(faults=["submit:drop:1"]) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
        seen = await stats(client)
        assert (seen["submissions"], seen["faults_injected"]) == (0, {"drop": 1})


async def test_lost_answer_creates_the_job_then_drops_the_answer() -> None:
    async with emulator_client(faults=["submit:lost-answer:1"]) as client:
        with pytest.raises(httpx.TransportError):
            await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
        seen = await stats(client)
        assert seen["submissions"] == 1
        assert sum(seen["jobs_by_status"].values()) == 1


async def test_malformed_answers_200_with_a_body_that_does_not_parse() -> None:
    async with emulator_client(
        faults=["status:malformed:1", "file:malformed:1"], job_time=0
    ) as client:
        request_id = await submit(client)
        response = await client.get(f"/v1/requests/{request_id}/status", headers=AUTH)
        assert response.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            response.json()
        result = (await client.get(f"/v1/requests/{request_id}/result", headers=AUTH)).json()
        download = await client.get(result["output"]["image"])
        assert download.status_code == 200
        with pytest.raises(OSError):
            Image.open(io.BytesIO(download.content)).load()


async def test_expired_makes_a_good_link_answer_403() -> None:
    async with emulator_client(faults=["file:expired:1"], job_time=0) as client:
        request_id = await submit(client)
        result = (await client.get(f"/v1/requests/{request_id}/result", headers=AUTH)).json()
        response = await client.get(result["output"]["image"])
        assert (response.status_code, response.json()["error_code"]) == (403, 403003)


async def test_a_stalled_job_stays_in_progress_and_holds_its_worker() -> None:
    async with emulator_client(faults=["job:stall:1"], workers=1, job_time=0.01) as client:
        stalled = await submit(client, prompt="stuck")
        await client.post("/_emulator/faults", json={"faults": []})
        waiting = await submit(client, prompt="behind it")
        await asyncio.sleep(0.1)  # many times job_time
        status = (await client.get(f"/v1/requests/{stalled}/status", headers=AUTH)).json()
        behind = (await client.get(f"/v1/requests/{waiting}/status", headers=AUTH)).json()
        assert status["status"] == "in_progress"
        assert (behind["status"], behind["queue_position"]) == ("in_queue", 1)
        refused = await client.post(f"/v1/requests/{stalled}/cancel", headers=AUTH)
        assert refused.json()["status"] == "in_progress"
        assert refused.json()["outcome"] == "not_cancellable"


async def test_a_failed_job_ends_failed_with_an_error_object() -> None:
    async with emulator_client(faults=["job:fail:1"], job_time=0.01) as client:
        request_id = await submit(client)
        status = await wait_until_done(client, request_id)
        assert status["status"] == "failed"
        assert set(status["error"]) == {"code", "message"}
        result = (await client.get(f"/v1/requests/{request_id}/result", headers=AUTH)).json()
        assert result == status
        file = await client.get(f"/files/{request_id}/0.png")
        assert file.status_code == 404


async def test_star_applies_a_kind_to_every_route_where_it_makes_sense() -> None:
    async with emulator_client(faults=["*:503:1"]) as client:
        assert (await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)).status_code == 503
        assert (await client.get("/v1/requests/x/status", headers=AUTH)).status_code == 503
        assert (await client.get("/files/x/0.png")).status_code == 503
    plan = FaultPlan(["*:stall:1"])
    assert (plan.draw("job"), plan.draw("status")) == ("stall", None)


async def outcomes(seed: int, calls: int = 40) -> list[int]:
    async with emulator_client(
        faults=["status:429:0.2", "status:500:0.2"], fault_seed=seed, job_time=60
    ) as client:
        request_id = await submit(client)
        return [
            (await client.get(f"/v1/requests/{request_id}/status", headers=AUTH)).status_code
            for _ in range(calls)
        ]


async def test_fault_draws_repeat_under_a_seed() -> None:
    first, again, other = await outcomes(7), await outcomes(7), await outcomes(8)
    assert first == again
    assert first != other
    assert {200, 429, 500} <= set(first)


def test_each_route_draws_independently() -> None:
    """What one route meets does not depend on how often another was called."""
    quiet = FaultPlan(["status:429:0.5", "result:500:0.5"], seed=3)
    busy = FaultPlan(["status:429:0.5", "result:500:0.5"], seed=3)
    for _ in range(17):
        busy.draw("result")
    assert [quiet.draw("status") for _ in range(30)] == [busy.draw("status") for _ in range(30)]


def test_rates_are_shares_of_one_draw() -> None:
    plan = FaultPlan(["status:429:0.25", "status:500:0.25"], seed=1)
    seen = [plan.draw("status") for _ in range(4000)]
    assert 800 < seen.count("429") < 1200 and 800 < seen.count("500") < 1200


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("status:429", "ROUTE:KIND:RATE"),
        ("statuz:429:0.1", "ROUTE one of submit, status, result, cancel, models, file, job, *"),
        ("status:418:0.1", "KIND one of 429, 500"),
        ("status:429:1.5", "RATE from 0 to 1"),
        ("status:429:often", "RATE from 0 to 1"),
        ("status:lost-answer:0.1", "it applies to submit"),
        ("submit:stall:0.1", "it applies to job"),
    ],
)
def test_bad_fault_specs_are_named_with_what_is_allowed(spec: str, says: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_faults([spec])
    assert repr(spec) in str(raised.value) and says in str(raised.value)
    with pytest.raises(ValidationError, match=says.replace("*", r"\*")):
        EmulatorConfig(faults=[spec])


def test_rates_of_one_route_may_not_add_up_past_one() -> None:
    with pytest.raises(ValueError, match="add up to more than 1"):
        parse_faults(["*:500:0.6", "status:429:0.6"])


async def test_faults_can_be_replaced_at_run_time() -> None:
    async with emulator_client() as client:
        request_id = await submit(client)
        bad = await client.post("/_emulator/faults", json={"faults": ["status:nope:1"]})
        assert (bad.status_code, bad.json()["error_code"]) == (422, 422001)
        assert "status:nope:1" in bad.json()["message"]
        ok = await client.post("/_emulator/faults", json={"faults": ["status:502:1"], "seed": 5})
        assert ok.json() == {"faults": ["status:502:1"], "seed": 5}
        assert (
            await client.get(f"/v1/requests/{request_id}/status", headers=AUTH)
        ).status_code == 502


def test_drop_and_lost_answer_on_a_real_socket() -> None:
    with EmulatorServer(EmulatorConfig(job_time=60)) as emulator:
        emulator.set_faults(["submit:drop:1"])
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(f"{emulator.url}{SUBMIT}", json={"prompt": "x"}, headers=AUTH)
        assert emulator.stats()["submissions"] == 0

        emulator.set_faults(["submit:lost-answer:1"])
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(f"{emulator.url}{SUBMIT}", json={"prompt": "x"}, headers=AUTH)
        assert emulator.stats()["submissions"] == 1

        emulator.set_faults([])
        response = httpx.post(f"{emulator.url}{SUBMIT}", json={"prompt": "x"}, headers=AUTH)
        assert response.status_code == 200  # the server is unharmed by the drops
        seen = emulator.stats()
        assert (seen["submissions"], seen["duplicate_submissions"]) == (2, 1)
        assert seen["faults_injected"] == {"drop": 1, "lost-answer": 1}


def test_slow_on_a_real_socket_outlasts_a_client_timeout() -> None:
    config = EmulatorConfig(faults=["status:slow:1"], slow_seconds=0.5)
    with EmulatorServer(config) as emulator, pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{emulator.url}/v1/requests/x/status", headers=AUTH, timeout=0.05)


def test_a_dropped_file_announces_a_png_then_loses_the_body() -> None:
    with EmulatorServer(EmulatorConfig(job_time=0, faults=["file:drop:1"])) as emulator:
        handle = httpx.post(f"{emulator.url}{SUBMIT}", json={"prompt": "x"}, headers=AUTH).json()
        image = httpx.get(handle["result_url"], headers=AUTH).json()["output"]["image"]
        with httpx.stream("GET", image) as response:
            assert response.headers["content-type"] == "image/png"
            with pytest.raises(httpx.RemoteProtocolError):
                response.read()
