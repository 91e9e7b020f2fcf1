"""The native API: `POST /v1/generate` (JSON or SSE) and `GET /v1/tasks`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from contract.command import RELEVANCE_LEVELS
from server.api.generation import GenerationCall, failure_error
from server.api.schemas import (
    STREAM_RESPONSE,
    Controls,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Output,
    Usage,
)
from server.api.sse import sse_event
from server.api.state import ServerState, get_state
from server.engine.request import Delta, RequestDone, RequestFailed, SampleDone

router = APIRouter(tags=["native"])
ROUTE = "/v1/generate"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 429, 499, 503, 504)
}


def output(sample: SampleDone) -> Output:
    return Output(
        index=sample.index,
        text=sample.text,
        words=sample.words,
        tokens=sample.tokens,
        finish_reason=sample.finish_reason,
    )


def response(call: GenerationCall, task: str, controls: Controls, done: RequestDone) -> GenerateResponse:
    return GenerateResponse(
        id=call.request_id,
        model=call.state.model_name,
        task=task,
        controls=controls,
        outputs=[output(s) for s in sorted(call.samples, key=lambda s: s.index)],
        usage=Usage(
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            total_tokens=done.prompt_tokens + done.completion_tokens,
        ),
    )


@router.post("/v1/generate", response_model=GenerateResponse, responses={**ERRORS, **STREAM_RESPONSE})
async def generate(body: GenerateRequest, http_request: Request) -> GenerateResponse | StreamingResponse:
    """Generate `n` outputs for `input` under the command in `controls`.

    With `"stream": true` the answer is `text/event-stream`: `delta` events
    ({index, text}) as text is produced, one `output` event per finished sample, then
    `done` with the same body as the JSON answer, or `error` ({error: {type, message}}).
    """
    state = get_state(http_request)
    call = GenerationCall.admit(state, http_request, ROUTE)
    controls = call.prepare(body.task, body.input, body.controls, body.n, body, body.max_new_tokens, body.stream)
    if body.stream:
        return call.stream_response(native_stream(call, body.task, controls))
    _, done = await call.collect()
    return response(call, body.task, controls, done)


async def native_stream(call: GenerationCall, task: str, controls: Controls) -> AsyncIterator[str]:
    async for event in call.events():
        if isinstance(event, Delta):
            yield sse_event({"index": event.index, "text": event.text}, "delta")
        elif isinstance(event, SampleDone):
            yield sse_event(output(event).model_dump(), "output")
        elif isinstance(event, RequestDone):
            yield sse_event(response(call, task, controls, event).model_dump(), "done")
        elif isinstance(event, RequestFailed):
            status, error = failure_error(event)
            yield sse_event({"error": {**error, "status": status}}, "error")


@router.get("/v1/tasks")
async def tasks(http_request: Request) -> dict[str, object]:
    """What the loaded bundle can do: its tasks, each with the length range it was trained on
    (a request outside it is a 400 `length_out_of_range`), and the relevance levels."""
    state: ServerState = get_state(http_request)
    spec = state.manifest.command
    levels = list(RELEVANCE_LEVELS)

    def length(task: str) -> dict[str, int]:
        low, high = spec.length_range(task)
        return {"min": low, "max": high}

    return {
        "model": state.model_name,
        "tasks": [{"name": t, "length": length(t), "relevance": levels} for t in spec.tasks],
        "length": {"min": spec.min_words, "max": spec.max_words},  # the union, for older clients
        "relevance": levels,
        "defaults": state.manifest.defaults.to_dict(),  # what a request that names none gets
    }
