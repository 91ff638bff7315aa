"""Stopping a batch part-way without losing, or leaving unaccounted, anything it paid for.

A batch stops when its flow run is cancelled (Prefect's UI or ``prefect flow-run cancel``:
a process worker sends the run's process SIGTERM, and SIGKILL 30 s later), when its worker
shuts down (SIGTERM too), or on Ctrl-C or SIGTERM to ``flashgen batch``. Prefect's own
SIGTERM handler ends the run at once, mid-request: a run cancelled that way sent no cancel
to the API, left paid jobs behind and wrote no manifest. So while a batch runs,
``BatchStop.signals`` takes SIGTERM and SIGINT over and turns them into a request to stop:

- no further item is started: it waits for no API slot and sends nothing;
- a job still queued at the API is cancelled there (nothing is paid for it);
- a running job gets ``grace`` seconds (``FLASHGEN_CANCEL_GRACE``) to finish, and is then
  fetched and stored; one still running after that is left running: its request_id is
  in the ledger already, so a rerun (``flashgen resume``) fetches it without paying again;
- the caller then writes the manifest, gallery and catalog for what was done.

A second Ctrl-C stops at once (``KeyboardInterrupt``). A process killed outright (SIGKILL,
or the worker's kill 30 s after its SIGTERM) runs none of this and needs none of it to stay
safe: every request_id reached the ledger (or the local journal) the moment the API
returned it, so a rerun resumes each one; only the manifest waits for that rerun.

    stop = BatchStop(grace=10)
    with stop.signals():
        finished, value = await stop.first(client.wait(request_id))
        if not finished: ...  # the batch is stopping: cancel the job or give it its grace
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class BatchStop:
    """A request to stop one batch, the reason for it, and the grace its running jobs get."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.reason: str | None = None
        self._deadline: float | None = None
        self._event = asyncio.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str) -> None:
        """Stop (the first reason given is kept); the running jobs' grace starts now."""
        if self.requested:
            return
        self.reason = reason
        self._deadline = time.monotonic() + self.grace
        self._event.set()

    async def wait(self) -> None:
        """Return once the stop is requested."""
        await self._event.wait()

    def grace_left(self) -> float:
        """Seconds the running jobs may still take (all of ``grace`` before a stop)."""
        if self._deadline is None:
            return self.grace
        return max(0.0, self._deadline - time.monotonic())

    async def first(self, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
        """``(True, result)`` if ``awaitable`` finishes first, ``(False, None)`` if the stop
        comes first; then ``awaitable`` is cancelled (unless it finished meanwhile)."""
        work = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            stopped.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        if work.cancelled():
            return False, None
        return True, work.result()  # finished (or failed) before the cancel took hold

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT request the stop while the body runs (handlers restored after).

        Only the main thread may set signal handlers; elsewhere this does nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT and self.requested:  # a second Ctrl-C: stop now
                signal.signal(signum, previous[signum])
                raise KeyboardInterrupt
            name = signal.Signals(signum).name
            reason = (f"{name}: the flow run was cancelled, or its worker is stopping"
                      if signum == signal.SIGTERM else f"{name}: interrupted")
            loop.call_soon_threadsafe(self.request, reason)

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

