"""A submit is never sent on a connection the server may be closing.

Servers close idle keep-alive connections (uvicorn and the emulator after 5 s, gunicorn
after 2 s). A request that crosses the server's close on the wire gets no answer; for a
status call the client simply retries, but a submit without an answer is ambiguous and is
never resent, so the item ends without its image. Seen once in 10,000 images at the bench,
where httpx kept idle connections exactly as long as the emulator (5 s). The client keeps
an idle connection for ``KEEPALIVE_SECONDS`` only, well inside any server's idle timeout.

``ClosingServer`` plays a server whose idle timeout is ``SERVER_IDLE`` and whose close
crosses the next request: a request that arrives on a connection idle for longer is
dropped unanswered (the emulator behind it answers everything else).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from client_fakes import TOKEN
from emulated import emulated

from flashgen.client import KEEPALIVE_SECONDS, RunComfyClient
from flashgen.models import DEFAULT_MODEL

SERVER_IDLE = 1.5  # gunicorn's default is 2 s: a server well inside common timeouts
FOX = {"prompt": "a red fox in snow", "aspect_ratio": "9:16", "seed": 7}


class ClosingServer:
    """A TCP proxy to ``upstream`` that drops a request arriving after ``idle`` seconds of
    silence on its connection, as a server does whose idle close crosses that request."""

    def __init__(self, upstream: str, idle: float) -> None:
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream, self.idle, self.dropped = (host, int(port)), idle, 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        async def answers() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        back = asyncio.create_task(answers())
        last = time.monotonic()
        try:
            while data := await reader.read(65536):
                if time.monotonic() - last > self.idle:
                    self.dropped += 1
                    return  # closed: the request is never answered
                last = time.monotonic()
                up_writer.write(data)
                await up_writer.drain()
        finally:
            back.cancel()
            for w in (writer, up_writer):
                w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        await self._pipe(reader, writer, up_reader, up_writer)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            yield f"http://127.0.0.1:{port}"


async def test_a_submit_after_an_idle_pause_gets_its_answer() -> None:
    assert KEEPALIVE_SECONDS < SERVER_IDLE
    async with emulated("socket") as emu:
        closing = ClosingServer(emu.base_url, SERVER_IDLE)
        async with closing.running() as url, RunComfyClient(TOKEN, url) as client:
            first = await client.submit(DEFAULT_MODEL, FOX)
            await asyncio.sleep(SERVER_IDLE + 0.5)  # real time: the pool's clock is real
            second = await client.submit(DEFAULT_MODEL, {**FOX, "seed": 8})
        stats = await emu.stats()
    assert first.request_id != second.request_id
    assert closing.dropped == 0 and stats["submissions"] == 2
