"""`create_app(settings)`: load the bundle, build the engine, mount the routers.

Each app owns its engine (a process of its own by default, or a thread with its runner in
this one) and its metrics registry, so tests can build several in one process. The bundle
is loaded before the app serves (a broken one refuses to start); the engine then warms up in
the background: /healthz answers at once, /readyz once warm-up is done.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tokenizers import Tokenizer

from contract.manifest import load_manifest
from server.api import native, openai_compat, ops
from server.api.auth import ApiKeyAuth
from server.api.errors import install_error_handlers
from server.api.guard import RequestGuard
from server.api.schemas import ErrorResponse
from server.api.state import ServerState
from server.config import Settings
from server.engine.engine import EngineBase, build_engine
from server.engine.process import EngineProcess
from server.metrics import Metrics

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Take the caller's X-Request-ID (or make one), keep it in `request.state`, echo
    it on the response. Plain ASGI, so it does not get in the way of streaming."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = given if _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


def build_state(settings: Settings) -> ServerState:
    manifest = load_manifest(settings.bundle)
    tokenizer = Tokenizer.from_file(str(settings.bundle / manifest.tokenizer_file))
    model_name = settings.model_name or manifest.name
    metrics = Metrics(model_name)
    engine: EngineBase
    if settings.engine_process:
        engine = EngineProcess(settings, model_name, metrics)
    else:
        engine = build_engine(settings, manifest, tokenizer, metrics)
    return ServerState(
        settings=settings,
        manifest=manifest,
        tokenizer=tokenizer,
        engine=engine,
        metrics=metrics,
        model_name=model_name,
        variant=engine.variant,
        provider=engine.provider,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = build_state(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.engine.start()
        log.info(
            "server started",
            extra={"model": state.model_name, "variant": state.variant, "provider": state.provider},
        )
        yield
        state.engine.stop()
        log.info("server stopped")

    app = FastAPI(
        title="promptgen",
        summary="Reward-conditioned prompt generation by a small GPT-2 (upside-down RL), served from ONNX.",
        version="0.1.0",
        lifespan=lifespan,
        # any route can answer these (auth.py, errors.py); schemathesis holds every answer to the schema
        responses={code: {"model": ErrorResponse} for code in (401, 500)},
    )
    app.state.server = state
    install_error_handlers(app)
    app.include_router(native.router)
    app.include_router(openai_compat.router)
    app.include_router(ops.router)
    # Starlette runs the last added outermost: request id, CORS, keys, then the body guard.
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_body_bytes,
        max_json_depth=settings.max_json_depth,
        metrics=state.metrics,
    )
    app.add_middleware(
        ApiKeyAuth, api_keys=settings.keys("api"), metrics_keys=settings.keys("metrics"), metrics=state.metrics
    )
    if settings.cors_origins.strip():  # off by default: a browser page elsewhere cannot call us
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(RequestIdMiddleware)
    return app
