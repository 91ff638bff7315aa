"""The emulator, in-process or on a real socket, behind one small handle for client tests.

Its jobs and links run on ``timing.now``, the test's virtual clock: a job of 2 s ends when
the client has slept 2 s, however slow the machine.

    async with emulated("socket", job_time=0.05) as emu:
        async with emu.client() as client:
            await client.submit(DEFAULT_MODEL, {"prompt": "a fox"})
        assert (await emu.stats())["submissions"] == 1
        assert emu.sent("POST", "/v1/models/") == 1

``Recorder`` wraps the client's transport to see what the client itself sent (a 401
never reaches the emulator's counters) and, optionally, to edit answers on the way back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from client_fakes import TOKEN, local_outputs

from flashgen import timing
from flashgen.client import RunComfyClient
from flashgen.emulator import EmulatorConfig, EmulatorServer, create_app
from flashgen.emulator.faults import FaultPlan

Edit = Callable[[httpx.Request, httpx.Response], Awaitable[httpx.Response]]


class Recorder(httpx.AsyncBaseTransport):
    """Records every request the client sends; the fixture, not the client, closes it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []
        self.edit: Edit | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = await self.inner.handle_async_request(request)
        return await self.edit(request, response) if self.edit else response

    async def aclose(self) -> None:  # shared by every client a test makes
        pass


class Emulated:
    def __init__(self, mode: str, base_url: str, inner: httpx.AsyncBaseTransport) -> None:
        self.mode = mode
        self.base_url = base_url
        self.recorder = Recorder(inner)
        self._admin = httpx.AsyncClient(transport=inner, base_url=base_url)

    def client(self, token: str = TOKEN, **kw: Any) -> RunComfyClient:
        kw.setdefault("outputs", local_outputs())
        return RunComfyClient(token, self.base_url, transport=self.recorder, **kw)

    async def stats(self) -> dict[str, Any]:
        return (await self._admin.get("/_emulator/stats")).json()

    async def set_faults(self, faults: list[str], seed: int | None = None) -> None:
        response = await self._admin.post("/_emulator/faults", json={"faults": faults,
                                                                     "seed": seed})
        response.raise_for_status()

    def sent(self, method: str, path_prefix: str) -> int:
        """How many requests the client sent with this method and path prefix."""
        return sum(1 for r in self.recorder.requests
                   if r.method == method and r.url.path.startswith(path_prefix))


@asynccontextmanager
async def emulated(mode: str, **config: Any) -> AsyncIterator[Emulated]:
    """An emulator with ``config`` (tiny job times by default), in ``mode``."""
    settings = EmulatorConfig(**{"job_time": 0.05, "job_time_spread": 0.0, **config})
    if mode == "in-process":
        emu = Emulated(mode, "http://emulator.test",
                       httpx.ASGITransport(app=create_app(settings, clock=timing.now)))
        async with emu._admin:
            yield emu
        return
    server = EmulatorServer(settings, clock=timing.now).start()
    transport = httpx.AsyncHTTPTransport()
    try:
        emu = Emulated(mode, server.url, transport)
        async with emu._admin:
            yield emu
    finally:
        await transport.aclose()
        await asyncio.to_thread(server.stop)


def seed_for(route: str, spec: str, pattern: list[str | None]) -> int:
    """A fault seed whose first draws on ``route`` are exactly ``pattern``."""
    for seed in range(100_000):
        plan = FaultPlan([spec], seed)
        if [plan.draw(route) for _ in pattern] == pattern:
            return seed
    raise AssertionError(f"no seed gives {pattern} for {spec}")
