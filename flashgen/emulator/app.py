"""The emulator's HTTP face: RunComfy's routes, a file host, and an admin view.

    >>> import asyncio, httpx
    >>> async def submit():
    ...     app = create_app(EmulatorConfig(workers=2, job_time=0.1))
    ...     async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
    ...                                  base_url="http://emulator") as client:
    ...         return await client.post("/v1/models/wan-ai/wan-2-2/flash/text-to-image",
    ...                                  json={"prompt": "a red fox"},
    ...                                  headers={"Authorization": "Bearer any-token"})
    >>> answer = asyncio.run(submit())
    >>> answer.status_code, sorted(answer.json())
    (200, ['cancel_url', 'request_id', 'result_url', 'status_url'])

Works the same under uvicorn and under ``httpx.ASGITransport``: nothing starts at
lifespan, and no state is tied to an event loop (see ``jobs.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from flashgen.emulator.config import EmulatorConfig
from flashgen.emulator.inputs import VALIDATORS
from flashgen.emulator.problems import ApiProblem
from flashgen.emulator.service import Emulator
from flashgen.emulator.wire import answer
from flashgen.models import DEFAULT_MODEL, JobResult, JobStatus, SubmitHandle

DESCRIPTION = """\
A local stand-in for RunComfy's Model API (async queue endpoints), served by flashgen.
Same routes, bodies, states, error shape and absolute URLs; jobs run on a simulated
queue and produce placeholder PNGs that show their prompt. Output files are served
from `/files/…` and need no token. Beyond the model page, it serves what RunComfy's own
clients expect (flashgen's docs/PROTOCOL-NOTES.md): cancel answers with an `outcome`, the
model catalog with prices, and `cost` on results asked for with `include_cost=true`.
"""


class ErrorBody(BaseModel):
    status: int
    error_code: int
    message: str
    detail: Any = None


class CancelAnswer(BaseModel):
    request_id: str
    status: str | None = None
    outcome: Literal["cancelled", "not_cancellable"]


class ModelEntry(BaseModel):
    model_id: str
    base_price_usd: float
    price_unit: Literal["output", "second"]
    pricing_note: str


class ModelList(BaseModel):
    models: list[ModelEntry]


class FaultSettings(BaseModel):
    faults: list[str] = []
    seed: int | None = None


# Module-level: FastAPI resolves the string annotations of dependencies against globals.
_bearer = HTTPBearer(auto_error=False, description="Your RunComfy API token")

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown token (401001)"},
    404: {"model": ErrorBody, "description": "unknown model or request (404001)"},
    429: {"model": ErrorBody, "description": "rate limited (429001); honour Retry-After"},
}


def create_app(
    config: EmulatorConfig | None = None, *, clock: Callable[[], float] | None = None
) -> FastAPI:
    """A fresh emulator: its own jobs, counters and faults.

    ``clock`` (seconds, monotonic) runs the jobs and link expiry; tests pass
    ``flashgen.timing.now`` so that jobs take virtual time, exactly as long as configured.
    """
    emulator = Emulator(config or EmulatorConfig(), clock=clock)
    app = FastAPI(
        title="RunComfy Model API (flashgen emulator)", description=DESCRIPTION, version="1"
    )
    app.state.emulator = emulator
    app.add_exception_handler(ApiProblem, _render_problem)
    app.add_exception_handler(HTTPException, _render_http_error)
    app.add_exception_handler(RequestValidationError, _render_validation_error)
    app.include_router(_api_routes(emulator))
    app.include_router(_file_routes(emulator))
    app.include_router(_admin_routes(emulator), include_in_schema=False)
    return app


def _api_routes(emulator: Emulator) -> APIRouter:
    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> None:
        token = credentials.credentials if credentials else ""
        if not token or (emulator.config.tokens and token not in emulator.config.tokens):
            raise ApiProblem(
                401, 401001, "missing or invalid API token", headers={"WWW-Authenticate": "Bearer"}
            )

    router = APIRouter(
        prefix="/v1", tags=["requests"], dependencies=[Security(require_token)], responses=_ERRORS
    )

    def base(request: Request) -> str:
        return (emulator.config.public_url or str(request.base_url)).rstrip("/")

    @router.post(
        "/models/{model_id:path}",
        summary="Submit a job",
        description="Queue a generation job with the model's input object and get its "
        f"request_id and URLs at once. Known model: `{DEFAULT_MODEL}`; the body is checked "
        "strictly against its input schema (exact enum strings), defaults applied.",
        responses={
            200: {"model": SubmitHandle},
            422: {
                "model": ErrorBody,
                "description": "input fails the schema (422001); detail names each field",
            },
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": VALIDATORS[DEFAULT_MODEL].schema}},
            }
        },
    )
    async def submit(model_id: str, request: Request) -> Response:
        body = await request.body()
        # Kept only for the job:echo-auth fault, which plays an API that leaks it.
        auth = request.headers.get("authorization")
        emulator.note_submit_request(model_id, body)
        return await answer(
            emulator,
            "submit",
            lambda: JSONResponse(emulator.submit(model_id, body, base(request), auth=auth)),
        )

    @router.get(
        "/requests/{request_id}/status",
        summary="Monitor request status",
        description="The job's state: `in_queue` (with its 1-based `queue_position`), "
        "`in_progress`, `completed`, `cancelled` or `failed` (with an `error` object).",
        responses={200: {"model": JobStatus}},
    )
    async def status(request_id: str, request: Request) -> Response:
        emulator.stats.status_polls += 1
        emulator.stats.polls_by_request[request_id] += 1
        return await answer(
            emulator, "status", lambda: JSONResponse(emulator.status(request_id, base(request)))
        )

    @router.get(
        "/requests/{request_id}/result",
        summary="Retrieve request results",
        description="The outputs once completed (`output.image`, a link that needs no token "
        "and may expire: fetch the result again for a fresh one); otherwise the current "
        "state, as from status, so the caller keeps polling. `include_cost=true` adds the "
        "job's `cost` in USD.",
        responses={200: {"model": JobResult}},
    )
    async def result(request_id: str, request: Request, include_cost: bool = False) -> Response:
        emulator.stats.result_calls += 1
        emulator.stats.polls_by_request[request_id] += 1
        return await answer(
            emulator,
            "result",
            lambda: JSONResponse(emulator.result(request_id, base(request), include_cost)),
        )

    @router.post(
        "/requests/{request_id}/cancel",
        summary="Cancel a request",
        description="Cancel a queued job: `outcome` `cancelled`. A running or finished job "
        "cannot be cancelled: still a 200, `outcome` `not_cancellable` and the job's "
        "`status`.",
        responses={200: {"model": CancelAnswer}},
    )
    async def cancel(request_id: str) -> Response:
        emulator.stats.cancels += 1
        return await answer(emulator, "cancel", lambda: JSONResponse(emulator.cancel(request_id)))

    @router.get(
        "/models",
        summary="List models",
        description="Every model served, with its price.",
        responses={200: {"model": ModelList}},
    )
    async def models() -> Response:
        emulator.stats.catalog_calls += 1
        return await answer(emulator, "models", lambda: JSONResponse(emulator.models()))

    @router.get(
        "/models/{model_id:path}",
        summary="Get a model",
        description="One model's catalog entry: `base_price_usd` per `price_unit` "
        "(`output` or `second`) and a `pricing_note`; 404 (404001) for an unknown model.",
        responses={200: {"model": ModelEntry}},
    )
    async def model(model_id: str) -> Response:
        emulator.stats.catalog_calls += 1
        return await answer(emulator, "models", lambda: JSONResponse(emulator.model(model_id)))

    return router


def _file_routes(emulator: Emulator) -> APIRouter:
    router = APIRouter(tags=["files"])

    async def png(data: Awaitable[bytes]) -> Response:
        content = await data
        emulator.stats.file_downloads += 1
        return Response(content, media_type="image/png")

    @router.get(
        "/files/{request_id}/{index:int}.png",
        summary="Download an output file",
        description="The file host: no token needed (and none should be sent). With a link "
        "ttl, links carry `expires` and `sig`; an expired or altered link answers 403.",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}},
            403: {"model": ErrorBody, "description": "link expired or invalid (403003)"},
            404: {"model": ErrorBody, "description": "no such file (404001)"},
        },
    )
    async def file(
        request_id: str,
        index: int,
        request: Request,
        expires: str | None = None,
        sig: str | None = None,
    ) -> Response:
        emulator.stats.file_requests += 1
        if "authorization" in request.headers:
            emulator.stats.file_requests_with_auth += 1
        return await answer(
            emulator, "file", lambda: png(emulator.image(request_id, index, expires, sig))
        )

    return router


def _admin_routes(emulator: Emulator) -> APIRouter:
    """What tests and the demo use to look inside; no token, not in the OpenAPI document."""
    router = APIRouter(prefix="/_emulator")

    @router.get("/stats")
    async def stats() -> dict[str, Any]:
        return emulator.snapshot()

    @router.get("/jobs")
    async def jobs() -> list[dict[str, Any]]:
        return emulator.job_times()

    @router.post("/faults")
    async def set_faults(settings: FaultSettings) -> dict[str, Any]:
        try:
            emulator.set_faults(settings.faults, settings.seed)
        except ValueError as exc:
            raise ApiProblem(422, 422001, str(exc)) from None
        return {"faults": emulator.faults.specs, "seed": emulator.faults.seed}

    @router.post("/reset")
    async def reset() -> dict[str, Any]:
        emulator.reset()
        return emulator.snapshot()

    return router


async def _render_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    return exc.response()


async def _render_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method) in the API's error shape."""
    assert isinstance(exc, HTTPException)
    return ApiProblem(
        exc.status_code, exc.status_code * 1000 + 1, str(exc.detail), headers=exc.headers
    ).response()


async def _render_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
    ]
    return ApiProblem(
        422, 422001, "the request does not match the schema", detail=detail
    ).response()
