"""Every error the HTTP API sends, mapped in one place: ``{"error": {"code", "message"}}``.

Routes raise what they mean (``ApiError``, or a domain error: a refused upload, a job that cannot
be played, a dead letter that is gone); the handlers installed here turn each into its status and
stable code. Framework errors (no route, wrong method, a parameter that does not validate), S3
not answering (503 ``storage_unavailable``, so the page can say so and ask again) and anything
unexpected (500) get the same shape. The one exception: a ``Host`` header outside the
trusted list gets Starlette's plain-text 400 before any of this runs (security.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from urllib3.exceptions import HTTPError as StorageConnectionError

from dlq_inspector.operations import MessagesNotFound
from uploader.playback import PlaybackError
from uploader.web.intake import UploadError
from uploader.web.refusal import Refusal

#: Stable codes for the framework's own errors.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """A refusal a route raises: HTTP status, stable code, a message for a person."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def as_api_error(exc: Exception) -> ApiError:
    """The domain errors routes let through, as the API reports them."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UploadError | PlaybackError | Refusal):
        return ApiError(exc.status, exc.code, exc.message)
    if isinstance(exc, MessagesNotFound):
        return ApiError(404, "unknown_message", str(exc))
    raise TypeError(f"no API error for {type(exc).__name__}")


def install_error_handlers(app: FastAPI, security_headers: dict[str, str]) -> None:
    """JSON for every error; ``security_headers`` go on 500s, which Starlette sends from its
    outermost layer, past the layer that adds them to everything else."""

    async def domain(request: Request, exc: Exception) -> JSONResponse:
        api = as_api_error(exc)
        return error_response(api.status, api.code, api.message, api.headers)

    async def http(request: Request, exc: Any) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    async def invalid(request: Request, exc: Any) -> JSONResponse:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return error_response(400, "invalid_request", where or "invalid request")

    async def storage_away(request: Request, exc: Exception) -> JSONResponse:
        # urllib3 gave up on S3 (refused, reset, timed out): the page shows it and asks again.
        message = f"S3 does not answer: {type(exc).__name__}"
        return error_response(503, "storage_unavailable", message, {"Retry-After": "2"})

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        message = f"{type(exc).__name__}: {exc}"
        return error_response(500, "internal_error", message, security_headers)

    for kind in (ApiError, UploadError, PlaybackError, MessagesNotFound, Refusal):
        app.add_exception_handler(kind, domain)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StorageConnectionError, storage_away)
    app.add_exception_handler(Exception, internal)
