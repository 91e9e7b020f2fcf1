"""`create_app(settings)`: load the bundle, build the engine, mount the routers.

Each app owns its runner, engine thread and metrics registry, so tests can build
several in one process. The engine thread starts with the app (lifespan) and warms up
in the background: /healthz answers at once, /readyz once warm-up is done.
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
from runtime.allocator import retain_freed_memory
from runtime.onnx_runner import OnnxRunner
from server.api import native, openai_compat, ops
from server.api.auth import ApiKeyAuth
from server.api.errors import install_error_handlers
from server.api.guard import RequestGuard
from server.api.schemas import ErrorResponse
from server.api.state import ServerState
from server.config import Settings
from server.engine.engine import Engine
from server.engine.faults import FaultInjector
from server.engine.scheduler import Scheduler
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
    retain_freed_memory()  # before the first cache buffers: rebuilds then reuse memory (runtime/allocator.py)
    runner = OnnxRunner(
        settings.bundle,
        variant=settings.variant,
        provider=settings.provider,
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        manifest=manifest,
        device_sampling=settings.device_sampling,
        spinning=settings.ort_spinning,
        mixed_prefill=settings.mixed_prefill,
    )
    tokenizer = Tokenizer.from_file(str(settings.bundle / manifest.tokenizer_file))
    model_name = settings.model_name or manifest.name
    metrics = Metrics(model_name)
    scheduler = Scheduler(
        runner,
        tokenizer,
        metrics,
        max_batch_size=settings.max_batch_size,
        batch_window_s=settings.batch_window_ms / 1000,
        max_prefill_tokens=settings.max_prefill_tokens,
        faults=FaultInjector.parse(settings.fault_inject),
    )
    engine = Engine(
        scheduler,
        capacity=settings.max_batch_size + settings.max_queue,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
    )
    return ServerState(
        settings=settings,
        manifest=manifest,
        tokenizer=tokenizer,
        engine=engine,
        metrics=metrics,
        model_name=model_name,
        variant=runner.variant.name,
        provider=runner.provider,
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
