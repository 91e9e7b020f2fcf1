"""`RequestGuard`: what a request body must be before any route sees it.

A plain ASGI middleware in front of every route (docs/architecture.md: the HTTP layer
refuses what the engine must never see). A body (POST, PUT, PATCH) must be
- `Content-Type: application/json` (charset, if given, utf-8), else 415 `unsupported_media_type`;
- at most `max_body_bytes`, else 413 `body_too_large` (checked on Content-Length and
  again while reading, so a chunked body cannot get past it);
- UTF-8, valid JSON, without NaN / Infinity / -Infinity (Python's parser accepts them,
  JSON does not) and nested at most `max_json_depth` deep, else 400 `invalid_json`
  with `param` naming the field where that can be told.
The body is then handed on unchanged, so FastAPI's own validation (schemas.py) runs
as usual. Each refusal is counted in `promptgen_rejected_requests_total`.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import error_response
from server.metrics import Metrics

BODY_METHODS = {"POST", "PUT", "PATCH"}


class _NonFinite:
    """Stands in for NaN / Infinity while parsing, so the field can be named."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


class BodyError(Exception):
    def __init__(self, status: int, type: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.param = status, type, message, param


def _path(parts: list[str]) -> str | None:
    return ".".join(parts) or None


def _check(value: Any, max_depth: int, parts: list[str], depth: int = 0) -> None:
    if isinstance(value, _NonFinite):
        raise BodyError(400, "invalid_json", f"{value.literal} is not a JSON number", _path(parts))
    if isinstance(value, dict | list):
        if depth >= max_depth:
            field = _path(parts[:1])  # the request field that holds the nesting
            raise BodyError(400, "invalid_json", f"the body is nested deeper than {max_depth} levels", field)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _check(item, max_depth, [*parts, str(key)], depth + 1)


def check_json(body: bytes, max_depth: int) -> None:
    """Raise BodyError unless `body` is strict UTF-8 JSON within `max_depth`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BodyError(400, "invalid_json", f"the body is not UTF-8 (byte {e.start})") from e
    try:
        value = json.loads(text, parse_constant=_NonFinite)
    except RecursionError as e:
        raise BodyError(400, "invalid_json", f"the body is nested deeper than {max_depth} levels") from e
    except ValueError as e:
        raise BodyError(400, "invalid_json", f"the body is not valid JSON: {e}") from e
    _check(value, max_depth, [])


def check_content_type(headers: dict[bytes, bytes]) -> None:
    raw = headers.get(b"content-type", b"").decode("latin-1")
    media, *params = [p.strip().lower() for p in raw.split(";")]
    charset = next((p.split("=", 1)[1].strip('"') for p in params if p.startswith("charset=")), "utf-8")
    if media != "application/json" or charset not in ("utf-8", "utf8"):
        raise BodyError(415, "unsupported_media_type", f"send Content-Type: application/json, not {raw or 'none'!r}")


class RequestGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_json_depth: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
            check_json(body, self.max_json_depth)
        except BodyError as e:
            self.metrics.observe_rejection(e.status, e.type)
            await error_response(e.status, e.type, e.message, e.param)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only http.disconnect

        await self.app(scope, replay, send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        headers = dict(scope["headers"])
        check_content_type(headers)
        too_large = BodyError(413, "body_too_large", f"the body is over {self.max_body_bytes} bytes")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BodyError(400, "invalid_request", "the client went away while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
