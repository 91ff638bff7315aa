"""The public routes in-process (httpx.ASGITransport): bodies, states, errors, counters."""

from __future__ import annotations

import asyncio

import pytest
from emulator_helpers import AUTH, SUBMIT, emulator_client, stats, submit, wait_until_done

from flashgen.models import DEFAULT_MODEL, WanFlashInput, fingerprint


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"prompt": "fox", "aspect_ratio": "16:9"}, "aspect_ratio"),
        ({"prompt": "fox", "aspect_ratio": "1440:810"}, "aspect_ratio"),
        ({"negative_prompt": "blur"}, "prompt"),
        ({"prompt": "fox", "seed": "7"}, "seed"),
        ({"prompt": "fox", "duration": 10}, "duration"),
        ({"prompt": "fox", "prompt_extend": "yes"}, "prompt_extend"),
        ({"prompt": "fox", "steps": 4}, "steps"),
    ],
)
async def test_submit_validates_strictly_and_names_the_field(inputs: dict, field: str) -> None:
    async with emulator_client() as client:
        response = await client.post(SUBMIT, json=inputs, headers=AUTH)
        assert response.status_code == 422
        body = response.json()
        assert (body["status"], body["error_code"]) == (422, 422001)
        assert [d["field"] for d in body["detail"]] == [field]
        assert field in body["message"]
        assert (await stats(client))["submissions"] == 0


async def test_a_bad_aspect_ratio_is_answered_with_the_allowed_values() -> None:
    async with emulator_client() as client:
        body = (
            await client.post(SUBMIT, json={"prompt": "x", "aspect_ratio": "16:9"}, headers=AUTH)
        ).json()
        assert "1440:810 (16:9)" in body["detail"][0]["message"]


async def test_a_body_that_is_not_json_is_rejected() -> None:
    async with emulator_client() as client:
        response = await client.post(SUBMIT, content=b"prompt=fox", headers=AUTH)
        assert (response.status_code, response.json()["error_code"]) == (422, 422001)


async def test_unknown_model_and_unknown_request_are_404001() -> None:
    async with emulator_client() as client:
        response = await client.post(
            "/v1/models/acme/other-model", json={"prompt": "x"}, headers=AUTH
        )
        assert (response.status_code, response.json()["error_code"]) == (404, 404001)
        for method, path in [("GET", "status"), ("GET", "result"), ("POST", "cancel")]:
            response = await client.request(method, f"/v1/requests/nope/{path}", headers=AUTH)
            assert response.json() == {
                "status": 404,
                "error_code": 404001,
                "message": "unknown request 'nope'",
            }


async def test_unknown_routes_answer_in_the_same_error_shape() -> None:
    async with emulator_client() as client:
        response = await client.get("/v2/nothing")
        assert response.json()["error_code"] == 404001


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
async def test_configured_tokens_are_required_on_every_api_route(headers: dict) -> None:
    async with emulator_client(tokens=["s3cret"]) as client:
        good = {"Authorization": "Bearer s3cret"}
        request_id = (await client.post(SUBMIT, json={"prompt": "x"}, headers=good)).json()[
            "request_id"
        ]
        calls = [
            ("POST", SUBMIT, {"prompt": "x"}),
            ("GET", f"/v1/requests/{request_id}/status", None),
            ("GET", f"/v1/requests/{request_id}/result", None),
            ("POST", f"/v1/requests/{request_id}/cancel", None),
        ]
        for method, path, body in calls:
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401
            assert response.json()["error_code"] == 401001
        assert (await stats(client))["submissions"] == 1


async def test_without_configured_tokens_any_token_is_accepted_but_one_is_required() -> None:
    async with emulator_client() as client:
        anything = {"Authorization": "Bearer whatever"}
        assert (
            await client.post(SUBMIT, json={"prompt": "x"}, headers=anything)
        ).status_code == 200
        assert (await client.post(SUBMIT, json={"prompt": "x"})).status_code == 401


async def test_queue_position_is_honest() -> None:
    async with emulator_client(workers=2, job_time=60) as client:
        ids = [await submit(client, prompt=f"job {n}") for n in range(5)]

        async def states() -> list[tuple[str, int | None]]:
            bodies = [
                (await client.get(f"/v1/requests/{i}/status", headers=AUTH)).json() for i in ids
            ]
            return [(b["status"], b.get("queue_position")) for b in bodies]

        assert await states() == [
            ("in_progress", None),
            ("in_progress", None),
            ("in_queue", 1),
            ("in_queue", 2),
            ("in_queue", 3),
        ]
        await client.post(f"/v1/requests/{ids[2]}/cancel", headers=AUTH)
        assert await states() == [
            ("in_progress", None),
            ("in_progress", None),
            ("cancelled", None),
            ("in_queue", 1),
            ("in_queue", 2),
        ]


async def test_jobs_run_through_the_queue_to_completion() -> None:
    async with emulator_client(workers=1, job_time=0.03) as client:
        ids = [await submit(client, prompt=f"job {n}") for n in range(3)]
        for request_id in ids:
            assert (await wait_until_done(client, request_id))["status"] == "completed"
        seen = await stats(client)
        assert (seen["in_flight"], seen["jobs_by_status"]) == (0, {"completed": 3})


async def test_max_in_flight_is_the_most_jobs_queued_or_running_at_once() -> None:
    async with emulator_client(workers=2, job_time=60) as client:
        ids = [await submit(client, prompt=f"a{n}") for n in range(5)]
        for queued in ids[2:]:
            await client.post(f"/v1/requests/{queued}/cancel", headers=AUTH)
        await submit(client, prompt="later")
        seen = await stats(client)
        assert (seen["max_in_flight"], seen["in_flight"]) == (5, 3)


async def test_duplicate_submissions_are_counted_by_the_clients_fingerprint() -> None:
    async with emulator_client() as client:
        await submit(client, prompt="a red fox")
        # The same job spelled with its defaults: the same fingerprint, so a duplicate.
        await submit(client, prompt="a red fox", aspect_ratio="1440:810 (16:9)", seed=58583956)
        await submit(client, prompt="a red fox", seed=1)
        seen = await stats(client)
        key = fingerprint(DEFAULT_MODEL, WanFlashInput(prompt="a red fox").model_dump())
        assert seen["submissions"] == 3
        assert seen["duplicate_submissions"] == 1
        assert seen["submissions_by_fingerprint"][key] == 2


async def test_result_is_the_status_until_completed_then_the_output() -> None:
    async with emulator_client(workers=1, job_time=60) as client:
        request_id = await submit(client)
        status = (await client.get(f"/v1/requests/{request_id}/status", headers=AUTH)).json()
        result = (await client.get(f"/v1/requests/{request_id}/result", headers=AUTH)).json()
        assert result == status
        assert result["status"] == "in_progress"

    async with emulator_client(job_time=0.02) as client:
        request_id = await submit(client)
        await wait_until_done(client, request_id)
        result = (await client.get(f"/v1/requests/{request_id}/result", headers=AUTH)).json()
        assert result["status"] == "completed"
        assert result["output"]["image"] == f"http://emulator/files/{request_id}/0.png"
        assert result["created_at"].endswith("Z") and result["finished_at"] >= result["created_at"]


async def test_polls_are_counted_per_request() -> None:
    async with emulator_client(job_time=60) as client:
        a, b = await submit(client, prompt="a"), await submit(client, prompt="b")
        for _ in range(3):
            await client.get(f"/v1/requests/{a}/status", headers=AUTH)
        await client.get(f"/v1/requests/{b}/result", headers=AUTH)
        seen = await stats(client)
        assert seen["polls_by_request"] == {a: 3, b: 1}
        assert (seen["status_polls"], seen["result_calls"]) == (3, 1)


async def test_cancel_answers_not_cancellable_for_finished_jobs_with_their_state() -> None:
    async with emulator_client(workers=1, job_time=0.02) as client:
        done = await submit(client, prompt="done")
        await wait_until_done(client, done)
        refused = await client.post(f"/v1/requests/{done}/cancel", headers=AUTH)
        assert refused.status_code == 200
        assert refused.json() == {"request_id": done, "status": "completed",
                                  "outcome": "not_cancellable"}

    async with emulator_client(workers=1, job_time=60) as client:
        await submit(client, prompt="running")
        queued = await submit(client, prompt="queued")
        first = await client.post(f"/v1/requests/{queued}/cancel", headers=AUTH)
        assert (first.status_code, first.json()["outcome"]) == (200, "cancelled")
        again = await client.post(f"/v1/requests/{queued}/cancel", headers=AUTH)
        assert (again.status_code, again.json()["outcome"], again.json()["status"]) == (
            200, "not_cancellable", "cancelled")
        seen = await stats(client)
        assert (seen["cancels"], seen["cancelled"]) == (2, 1)


async def test_public_url_is_the_base_of_every_absolute_url() -> None:
    async with emulator_client(job_time=0, public_url="https://emu.example/") as client:
        handle = (await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)).json()
        assert handle["status_url"].startswith("https://emu.example/v1/requests/")
        result = (
            await client.get(f"/v1/requests/{handle['request_id']}/result", headers=AUTH)
        ).json()
        assert result["output"]["image"].startswith("https://emu.example/files/")


async def test_reset_clears_the_counters_but_not_the_jobs() -> None:
    async with emulator_client(job_time=60) as client:
        request_id = await submit(client)
        await client.post("/_emulator/reset")
        seen = await stats(client)
        assert (seen["submissions"], seen["submissions_by_fingerprint"]) == (0, {})
        assert seen["max_in_flight"] == seen["in_flight"] == 1
        status = await client.get(f"/v1/requests/{request_id}/status", headers=AUTH)
        assert status.json()["status"] == "in_progress"


async def test_openapi_lists_the_public_routes_and_hides_the_admin_ones() -> None:
    async with emulator_client() as client:
        document = (await client.get("/openapi.json")).json()
        paths = document["paths"]
        assert set(paths) == {
            "/v1/models",
            "/v1/models/{model_id}",
            "/v1/requests/{request_id}/status",
            "/v1/requests/{request_id}/result",
            "/v1/requests/{request_id}/cancel",
            "/files/{request_id}/{index}.png",
        }
        for operations in paths.values():
            for operation in operations.values():
                assert operation["summary"] and operation["description"]
        assert set(paths["/v1/models/{model_id}"]) == {"get", "post"}  # catalog and submit
        submit_body = paths["/v1/models/{model_id}"]["post"]["requestBody"]
        schema = submit_body["content"]["application/json"]["schema"]
        assert schema["properties"]["aspect_ratio"]["enum"][1] == "1440:810 (16:9)"
        assert (await client.get("/docs")).status_code == 200


async def test_many_clients_at_once_see_one_consistent_queue() -> None:
    async with emulator_client(workers=3, job_time=0.02) as client:
        ids = await asyncio.gather(*(submit(client, prompt=f"p{n}") for n in range(12)))
        finals = await asyncio.gather(*(wait_until_done(client, i) for i in ids))
        assert {f["status"] for f in finals} == {"completed"}
        assert (await stats(client))["submissions"] == 12
