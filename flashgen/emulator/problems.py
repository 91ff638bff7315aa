"""The one shape every error answer of RunComfy's API takes: status, error code, message.

>>> ApiProblem(404, 404001, "unknown request 'x'").body()
{'status': 404, 'error_code': 404001, 'message': "unknown request 'x'"}
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


class ApiProblem(Exception):
    """An error answer; raise it anywhere below a route and the app renders it."""

    def __init__(
        self,
        status: int,
        error_code: int,
        message: str,
        *,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.detail = detail
        self.headers = headers

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.status,
            "error_code": self.error_code,
            "message": self.message,
        }
        if self.detail is not None:
            body["detail"] = self.detail
        return body

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def unknown_request(request_id: str) -> ApiProblem:
    return ApiProblem(404, 404001, f"unknown request {request_id!r}")


def expired_link() -> ApiProblem:
    """What a file link answers once it expired (or was tampered with)."""
    return ApiProblem(403, 403003, "the link has expired or is not valid; fetch the result again")
