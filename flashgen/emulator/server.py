"""Running the emulator on a real socket: blocking for the CLI, or in a thread for tests.

    >>> with EmulatorServer(EmulatorConfig(job_time=0.1)) as emulator:
    ...     answer = httpx.post(emulator.url + "/v1/models/wan-ai/wan-2-2/flash/text-to-image",
    ...                         json={"prompt": "a fox"}, headers={"Authorization": "Bearer t"})
    ...     emulator.stats()["submissions"], emulator.stats()["duplicate_submissions"]
    (1, 0)

Point a ``RunComfyClient(base_url=emulator.url, token=...)`` at it the same way.

The socket is bound before uvicorn starts, so ``port=0`` picks a free port with no race
and ``.url`` is known at once.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncio
import logging
import socket
import threading
import time
from typing import Any, Self

import httpx
import uvicorn

from flashgen.emulator.app import create_app
from flashgen.emulator.config import EmulatorConfig
from flashgen.emulator.wire import DroppedConnection


def serve(config: EmulatorConfig, host: str = "127.0.0.1", port: int = 8188) -> None:
    """Serve until interrupted; print one line with the URL once it accepts requests."""
    sock = _bind(host, port)
    server = _server(config, quiet=False)

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if server.started:
            print(f"flashgen emulator listening on {_url(sock)}", flush=True)
        await serving

    asyncio.run(main())


class EmulatorServer:
    """The emulator under uvicorn in a background thread, for tests and the demo."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.clock = clock  # see create_app
        self.host = host
        self.port = port
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> Self:
        sock = _bind(self.host, self.port)
        self.url = _url(sock)
        self._server = server = _server(self.config, quiet=True, clock=self.clock)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="flashgen-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start at {self.url}")
            time.sleep(0.01)
        self.stats()  # it answers
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """What the emulator saw so far (``GET /_emulator/stats``)."""
        return self._admin("GET", "stats").json()

    def job_times(self) -> list[dict[str, Any]]:
        """Each job's submitted/started/completed times, epoch seconds (``GET /_emulator/jobs``)."""
        return self._admin("GET", "jobs").json()

    def set_faults(self, faults: list[str], seed: int | None = None) -> None:
        """Replace the faults in force, e.g. ``["status:429:0.3", "job:fail:0.1"]``."""
        self._admin("POST", "faults", json={"faults": faults, "seed": seed})

    def reset(self) -> None:
        """Clear the counters (jobs carry on)."""
        self._admin("POST", "reset")

    def _admin(self, method: str, name: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.url}/_emulator/{name}", timeout=10, **kwargs)
        if response.status_code >= 400:
            raise ValueError(response.json().get("message", response.text))
        return response


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    # Accepted sockets inherit this on Linux. Without it uvicorn's separate writes of
    # headers and body meet Nagle and delayed ACKs: ~40 ms per keep-alive request.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(
    config: EmulatorConfig, *, quiet: bool, clock: Callable[[], float] | None = None
) -> uvicorn.Server:
    logging.getLogger("uvicorn.error").addFilter(_hide_deliberate_drops)
    return uvicorn.Server(
        uvicorn.Config(
            create_app(config, clock=clock),
            lifespan="off",  # nothing to start: the app works without it (see jobs.py)
            log_level="warning" if quiet else "info",
            access_log=not quiet,
            timeout_graceful_shutdown=1,
        )
    )


def _hide_deliberate_drops(record: logging.LogRecord) -> bool:
    """uvicorn logs a traceback for every exception; a drop fault is not a bug."""
    return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))
