"""How an injected fault looks on the wire: the answer a route gives when a fault hits it.

    >>> import asyncio
    >>> from starlette.responses import JSONResponse
    >>> from flashgen.emulator.config import EmulatorConfig
    >>> from flashgen.emulator.service import Emulator
    >>> always_429 = Emulator(EmulatorConfig(faults=["status:429:1"]))
    >>> response = asyncio.run(answer(always_429, "status", lambda: JSONResponse({})))
    >>> response.status_code, response.headers["Retry-After"]
    (429, '1')

``429``, ``5xx``, ``expired``, ``drop`` and the error shapes (``error-200``,
``account-200``, ``402``, ``400``) answer instead of the route, which then never runs.
``extra-fields``, ``legacy-409`` and ``no-status`` let the route answer and then reshape
its body (see ``faults.py``). ``lost-answer``, ``malformed`` (half the body),
``corrupt`` (a file's bytes flipped, its length right) and ``slow`` let the route do its
work (a submit creates its job) and then spoil, lose or delay the answer.

A dropped answer sends its headers with a ``Content-Length`` and then raises
``DroppedConnection``: uvicorn closes the socket without the body, so a client sees
the transport error a reset connection gives. In-process under ``httpx.ASGITransport``
the same exception reaches the caller directly; it is an ``httpx.RemoteProtocolError``,
so the client's transport-error handling is what is exercised in both modes.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import httpx
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from flashgen.emulator.problems import ApiProblem, expired_link

if TYPE_CHECKING:
    from flashgen.emulator.service import Emulator


class DroppedConnection(httpx.RemoteProtocolError):
    """The emulator dropped the connection on purpose (a ``drop`` or ``lost-answer`` fault)."""


class _DroppedAnswer(Response):
    """The headers of a good answer (its content type, a length), then no body."""

    def __init__(self, media_type: str, length: int) -> None:
        super().__init__(media_type=media_type)
        self.length = length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", self.media_type.encode()),
            (b"content-length", str(self.length).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        raise DroppedConnection("emulated fault: the connection was dropped before the answer")


async def answer(
    emulator: Emulator,
    route: str,
    make: Callable[[], Response | Awaitable[Response]],
) -> Response:
    """The answer of ``route``, made by ``make`` unless a fault drawn for it says otherwise."""
    kind = emulator.draw_fault(route)
    config = emulator.config
    if kind == "429":
        retry_after = f"{config.retry_after:g}"
        return ApiProblem(
            429,
            429001,
            f"too many requests; retry after {retry_after} s",
            headers={"Retry-After": retry_after},
        ).response()
    if kind in ("500", "502", "503", "504"):
        return ApiProblem(int(kind), 500001, f"server error {kind} (emulated fault)").response()
    if kind == "expired":
        return expired_link().response()
    if kind in _ERROR_SHAPES:
        return _ERROR_SHAPES[kind]()
    if kind == "drop":
        # What the route would have sent, so a client's content checks pass and it is the
        # missing body that it meets.
        return _DroppedAnswer("image/png" if route == "file" else "application/json", 64)
    try:
        made = make()
        response = await made if inspect.isawaitable(made) else made
    except ApiProblem as problem:
        response = problem.response()
    if kind == "lost-answer":
        return _DroppedAnswer(response.media_type or "application/json", len(response.body))
    if kind == "malformed":
        # Half the body: JSON that does not parse, a PNG that does not decode.
        body = bytes(response.body)
        return Response(body[: len(body) // 2], 200, media_type=response.media_type)
    if kind == "corrupt":
        # Every byte arrives, some of them wrong: the length matches, the image does not.
        body = bytearray(response.body)
        middle = len(body) // 2
        body[middle:middle + 64] = bytes(b ^ 0x5A for b in body[middle:middle + 64])
        return Response(bytes(body), 200, media_type=response.media_type)
    if kind == "slow":
        await asyncio.sleep(config.slow_seconds)
    if kind in _RESHAPES and response.status_code == 200:
        return _RESHAPES[kind](json.loads(bytes(response.body)))
    return response


# Error answers in the shapes RunComfy's own clients read (docs/PROTOCOL-NOTES.md).
_ERROR_SHAPES: dict[str, Callable[[], Response]] = {
    "error-200": lambda: JSONResponse(
        {"error_code": 500001, "error_message": "internal error (emulated fault error-200)"}),
    "account-200": lambda: JSONResponse(
        {"error_code": 10001, "error_message": "insufficient balance (emulated fault "
                                                "account-200)"}),
    "402": lambda: JSONResponse(
        {"status": 402, "error_code": 402001,
         "error_message": "insufficient balance: top up your account (emulated fault 402)"},
        status_code=402),
    "400": lambda: JSONResponse(
        {"error_message": "aspect_ratio invalid (emulated fault 400)"}, status_code=400),
}


def _extra_fields(body: dict) -> Response:
    return JSONResponse({**body, "model_id": "emulated/model", "instance_id": "inst-0001"})


def _legacy_409(body: dict) -> Response:
    """The emulator's cancel refusal before 0.3: 409 with the job's state in ``detail``."""
    if body.get("outcome") != "not_cancellable":
        return JSONResponse({k: v for k, v in body.items() if k != "outcome"})
    return ApiProblem(409, 409001, f"request {body['request_id']} cannot be cancelled",
                      detail={"status": body.get("status")}).response()


_RESHAPES: dict[str, Callable[[dict], Response]] = {
    "extra-fields": _extra_fields,
    "legacy-409": _legacy_409,
    "no-status": lambda body: JSONResponse({k: v for k, v in body.items() if k != "status"}),
}
