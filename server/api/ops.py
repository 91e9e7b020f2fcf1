"""Operations: `/healthz` (keep it running), `/readyz` (send it traffic), `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.state import get_state

router = APIRouter(tags=["operations"])


@router.get("/healthz", responses={503: {"description": "engine_failed: the engine is gone for good; restart"}})
async def healthz(http_request: Request) -> JSONResponse:
    """Liveness: restart the server if this fails. 200 while the process serves HTTP and its
    engine can still serve (warming up, draining, even stalled: /readyz keeps traffic away
    meanwhile); 503 once the engine has failed for good (its process died, or its warm-up
    failed), which nothing but a restart mends. vLLM's /health fails the same way on a dead
    engine core."""
    engine = get_state(http_request).engine
    if engine.failure is not None:
        return JSONResponse({"status": "engine_failed", "reason": engine.failure}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz", responses={503: {"description": "not ready: warming_up, draining, engine_stalled, engine_failed"}}
)
async def readyz(http_request: Request) -> JSONResponse:
    """Readiness: 200 only after warm-up, while the engine loop's heartbeat is recent,
    and not while draining for shutdown. A hung engine fails this, not /healthz."""
    state = get_state(http_request)
    engine = state.engine
    body: dict[str, object] = {
        "model": state.model_name,
        "variant": state.variant,
        "provider": state.provider,
        "heartbeat_age_s": round(engine.heartbeat_age(), 3),
    }
    status = engine.status()
    if status == "engine_failed":
        body["reason"] = engine.failure
    return JSONResponse({"status": status, **body}, status_code=200 if status == "ready" else 503)


@router.get("/metrics", response_class=PlainTextResponse)  # Prometheus text, documented as such
async def metrics(http_request: Request) -> Response:
    state = get_state(http_request)
    state.metrics.heartbeat_age.labels(state.model_name).set(state.engine.heartbeat_age())
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
