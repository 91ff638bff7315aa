"""BatchStop: a stop request races the work it interrupts; signals turn into a request."""

from __future__ import annotations

import asyncio
import os
import signal

from flashgen.stopping import BatchStop


async def test_work_that_finishes_first_gives_its_result():
    stop = BatchStop(grace=5)
    assert await stop.first(asyncio.sleep(0, result="done")) == (True, "done")
    assert not stop.requested and stop.grace_left() == 5


async def test_a_stop_cancels_the_work_it_interrupts_and_starts_the_grace():
    stop = BatchStop(grace=5)
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.get_running_loop().call_soon(stop.request, "test")
    assert await stop.first(forever()) == (False, None)
    assert cancelled.is_set() and stop.reason == "test" and 0 < stop.grace_left() <= 5
    stop.request("another")  # the first reason stays
    assert stop.reason == "test"
    assert await stop.first(asyncio.sleep(3600)) == (False, None)  # already stopped


async def test_sigterm_and_sigint_request_the_stop_and_handlers_come_back():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stop = BatchStop(grace=1)
    with stop.signals():
        os.kill(os.getpid(), signal.SIGTERM)
        finished, _ = await stop.first(asyncio.sleep(30))
        assert not finished and stop.reason.startswith("SIGTERM")
    assert {sig: signal.getsignal(sig) for sig in before} == before
