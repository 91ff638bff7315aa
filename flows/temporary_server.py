"""Prefect's temporary (ephemeral) server, started with the patience a busy machine needs.

With no ``PREFECT_API_URL``, Prefect starts a server of its own on the first API call and
gives it 20 s; its first start runs every database migration, which takes longer than that
at a load of 4–5 on two cores ("Timed out while attempting to connect to ephemeral Prefect
API server"). ``flashgen batch``, ``generate`` and ``demo`` start it here first: 90 s, and
90 s more while its process is still starting. The flow then finds it running.
"""

from __future__ import annotations

import time

import httpx

from flashgen.errors import FlashgenError

STARTUP_SECONDS = 90
TIMED_OUT = "ephemeral Prefect API server"  # in the RuntimeError Prefect raises
ADVICE = (f"Prefect's temporary server did not start within {2 * STARTUP_SECONDS} s (a busy "
          "machine; its first start migrates its database): run the command again when the "
          "machine is quieter, or start a server (`prefect server start`) and set "
          "PREFECT_API_URL=http://127.0.0.1:4200/api")


class ServerStartError(FlashgenError):
    """Prefect's temporary server did not start; the message says what to do."""


def start_temporary_server(timeout: float = STARTUP_SECONDS) -> str | None:
    """Start Prefect's temporary server unless PREFECT_API_URL names one; its API URL.

    Raises ``ServerStartError`` (with what to do) when it is not up after two waits.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    server = SubprocessASGIServer()  # the one instance Prefect's clients use
    try:
        server.start(timeout=int(timeout))
        return server.api_url
    except RuntimeError as exc:
        if TIMED_OUT not in str(exc):
            raise
    # One retry: the process is usually still migrating; wait for it rather than start
    # a second server on the same database.
    process = server.server_process
    if process is not None and process.poll() is None and _healthy_within(
            server.api_url, timeout):
        server.running = True
        return server.api_url
    if process is not None and process.poll() is None:
        process.kill()
    raise ServerStartError(ADVICE)


def _healthy_within(api_url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(f"{api_url}/health").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    return False
