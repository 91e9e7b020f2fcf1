"""Errors as JSON: `{"error": {"type": ..., "message": ..., "param": ...}}` with the right status.

`type` is machine-readable (clients branch on it); the message is for people; `param`
names the request field at fault (dotted, e.g. `controls.length`), or is null. The
shape matches OpenAI's, so the openai client raises its usual exceptions. Every error,
from validation to an unexpected exception, leaves the server in this shape. A 500
`internal_error` (an unexpected exception here, or a failed forward in the engine) also
carries `id`, the `error_id` of its log line, so an operator can find what went wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.engine.request import new_error_id

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
        error_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers or {}
        self.param = param
        self.error_id = error_id


def error_object(
    type: str, message: str, param: str | None = None, error_id: str | None = None, **extra: object
) -> dict[str, object]:
    """What goes under `error`; `id` only where there is a log line to find (5xx)."""
    error: dict[str, object] = {"type": type, "message": message, "param": param, **extra}
    if error_id is not None:
        error["id"] = error_id
    return error


def error_body(
    type: str, message: str, param: str | None = None, error_id: str | None = None, **extra: object
) -> dict[str, object]:
    return {"error": error_object(type, message, param, error_id, **extra)}


def error_response(
    status: int,
    type: str,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
    error_id: str | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(type, message, param, error_id), status_code=status, headers=headers)


def _param(loc: tuple[object, ...] | list[object]) -> str | None:
    """`("body", "controls", "length")` -> `"controls.length"`; pydantic's union branch
    names (`str`, `list[str]`) are not fields and are left out."""
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and ("[" in p or p in ("str", "int")))]
    return ".".join(parts) or None


def count_rejection(request: Request, status: int, type: str) -> None:
    """Count a refusal in `promptgen_rejected_requests_total`: a 4xx, or a 503 (draining).
    Not 499 (the client left during generation), 500 or 504: those were failures, not
    refusals."""
    state = getattr(request.app.state, "server", None)
    if state is not None and ((400 <= status < 500 and status != 499) or status == 503):
        state.metrics.observe_rejection(status, type)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        count_rejection(request, exc.status, exc.type)
        return error_response(exc.status, exc.type, exc.message, exc.param, exc.headers, exc.error_id)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        count_rejection(request, 422, "invalid_request")
        state = getattr(request.app.state, "server", None)
        if state is not None:
            state.metrics.requests.labels(state.model_name, request.url.path, "422", "invalid_request").inc()
        # the offending input is left out: it may be huge, non-finite (not JSON) or private
        details = [
            {k: v for k, v in e.items() if k not in ("input", "ctx", "url")}
            for e in jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        ]
        # in a union (`prompt: str | list[str]`) each branch reports: the one that got furthest says most
        first = max(details, key=lambda e: (len(e.get("loc", ())), not e.get("type", "").endswith("_type")), default={})
        param = _param(first.get("loc", ()))
        message = f"{param or 'body'}: {first.get('msg', 'invalid request')}"
        body = error_body("invalid_request", message, param, details=details)
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        count_rejection(request, exc.status_code, kind)
        return error_response(exc.status_code, kind, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = new_error_id()
        log.error("unhandled error", exc_info=exc, extra={"error_id": error_id, "route": request.url.path})
        body = error_body("internal_error", f"internal error (error id {error_id})", error_id=error_id)
        return JSONResponse(body, status_code=500)
