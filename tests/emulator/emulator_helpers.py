"""Shared by the emulator tests: an in-process client, and polling until a job ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from flashgen.emulator import EmulatorConfig, create_app
from flashgen.models import DEFAULT_MODEL

SUBMIT = f"/v1/models/{DEFAULT_MODEL}"
AUTH = {"Authorization": "Bearer test-token"}
TERMINAL = {"completed", "cancelled", "failed"}


@contextlib.asynccontextmanager
async def emulator_client(**options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client wired in-process to a fresh emulator (no socket, no lifespan).

    Made inside each test rather than as a fixture, so that it lives on the test's loop.
    """
    options.setdefault("job_time", 0.05)
    app = create_app(EmulatorConfig(**options))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as client:
        yield client


async def submit(client: httpx.AsyncClient, **inputs: Any) -> str:
    inputs.setdefault("prompt", "a red fox in the snow")
    response = await client.post(SUBMIT, json=inputs, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


async def wait_until_done(
    client: httpx.AsyncClient, request_id: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll status until the job ends; the deadline only guards against a hang."""
    async with asyncio.timeout(timeout):
        while True:
            body = (await client.get(f"/v1/requests/{request_id}/status", headers=AUTH)).json()
            if body["status"] in TERMINAL:
                return body
            await asyncio.sleep(0.01)


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    return (await client.get("/_emulator/stats")).json()
