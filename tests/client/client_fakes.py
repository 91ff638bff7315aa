"""Fakes for the client's unit tests: a scripted API for ``httpx.MockTransport``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from flashgen.outputs import OutputPolicy, parse_networks

TOKEN = "tok-3f9c1d2e7a4b4c0e9d8f"  # a fake token, distinctive enough to grep for
API = "https://api.test"


def local_outputs() -> OutputPolicy:
    """Outputs from the fakes and the emulator: a ``.test`` name stands for 127.0.0.1 (no
    lookup leaves the machine), and 127.0.0.0/8 is allowed, as ``FLASHGEN_OUTPUT_NETWORKS``
    allows it for the local emulator."""
    return OutputPolicy(networks=parse_networks("127.0.0.0/8"),
                        resolve=lambda host, port: ["127.0.0.1"] if host.endswith(".test") else [])


def answer(status: int, body: Any = None, *, headers: dict[str, str] | None = None,
           text: str | None = None) -> httpx.Response:
    """A response with a JSON body (or raw ``text``)."""
    if text is not None:
        return httpx.Response(status, text=text, headers=headers)
    return httpx.Response(status, content=json.dumps(body).encode(),
                          headers={"content-type": "application/json", **(headers or {})})


def problem(status: int, error_code: int, message: str, detail: Any = None,
            headers: dict[str, str] | None = None) -> httpx.Response:
    """An error answer in the API's shape."""
    body = {"status": status, "error_code": error_code, "message": message}
    if detail is not None:
        body["detail"] = detail
    return answer(status, body, headers=headers)


class Script:
    """A fake API for ``httpx.MockTransport``: answers in order, records every request.

    Each step is a response, an exception to raise, or a function of the request.
    The last step repeats once the script runs out.
    """

    def __init__(self, *steps: httpx.Response | BaseException | Callable[[httpx.Request], Any]):
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps[min(len(self.requests), len(self.steps)) - 1]
        if callable(step) and not isinstance(step, httpx.Response | BaseException):
            step = step(request)
        if isinstance(step, BaseException):
            raise step
        return step

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)
