"""OpenAI-compatible routes: `POST /v1/completions` and `GET /v1/models`.

Existing OpenAI clients work unchanged; our command goes in as extra body fields
(`extra_body={"task": ..., "controls": {...}}` in the openai client). The prompt is the
intent: it is formatted with the command exactly like the native route's `input`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import ConfigDict, Field

from server.api.errors import ApiError
from server.api.generation import GenerationCall, failure_error
from server.api.schemas import (
    MAX_INPUT_CHARS,
    STREAM_RESPONSE,
    Controls,
    ErrorResponse,
    InputText,
    Name,
    SamplingFields,
)
from server.api.sse import sse_event
from server.api.state import ServerState, get_state
from server.engine.request import Delta, RequestDone, RequestFailed, SampleDone

router = APIRouter(tags=["openai"])
ROUTE = "/v1/completions"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 429, 499, 503, 504)
}


class CompletionRequest(SamplingFields):
    # The unknown-field rule is the native route's: an unknown field is a 422
    # (server/README.md). OpenAI's own parameters that we do not implement are known:
    # declared below, accepted and ignored, so the openai client works unchanged.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: Name | None = None
    prompt: InputText | Annotated[list[InputText], Field(min_length=1, max_length=1)] = Field(
        ..., description="the intent (one string, or a list of exactly one)"
    )
    max_tokens: int | None = Field(None, ge=1, le=4096)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    task: Name | None = Field(None, description="extra field: the task (default: the bundle's first)")
    controls: Controls = Field(default_factory=Controls, description="extra field: the command")
    # accepted and ignored (OpenAI parameters this server does not implement)
    best_of: int | None = Field(None, ge=1, le=16, description="ignored")
    echo: bool | None = Field(None, description="ignored")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="ignored")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="ignored")
    logit_bias: dict[str, float] | None = Field(None, max_length=300, description="ignored")
    logprobs: int | None = Field(None, ge=0, le=5, description="ignored")
    suffix: str | None = Field(None, max_length=MAX_INPUT_CHARS, description="ignored")
    user: str | None = Field(None, max_length=256, description="ignored")
    stream_options: dict[str, bool] | None = Field(None, max_length=4, description="ignored")


def finish_reason(reason: str) -> str:
    return reason if reason in ("stop", "length") else "stop"


def check_model(state: ServerState, model: str | None) -> None:
    if model is not None and model != state.model_name:
        raise ApiError(404, "model_not_found", f"model {model!r} is not served here; this is {state.model_name!r}")


def intent_of(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) != 1:
        raise ApiError(400, "invalid_request", "prompt must be one string (batches of prompts are not supported)")
    return prompt[0]


@router.post("/v1/completions", responses={**ERRORS, **STREAM_RESPONSE})
async def completions(body: CompletionRequest, http_request: Request) -> Any:
    state = get_state(http_request)
    check_model(state, body.model)
    intent = intent_of(body.prompt)
    if not intent.strip():
        raise ApiError(400, "invalid_request", "prompt is empty")
    task = body.task or state.manifest.command.tasks[0]
    call = GenerationCall.admit(state, http_request, ROUTE)
    call.prepare(task, intent, body.controls, body.n, body, body.max_tokens, body.stream)
    completion_id = f"cmpl-{call.request_id}"
    created = int(time.time())
    if body.stream:
        chunks = completion_stream(call, completion_id, created)
        return call.stream_response(chunks)
    samples, done = await call.collect()
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": state.model_name,
        "choices": [
            {"index": s.index, "text": s.text, "logprobs": None, "finish_reason": finish_reason(s.finish_reason)}
            for s in samples
        ],
        "usage": usage(done),
    }


def usage(done: RequestDone) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


async def completion_stream(call: GenerationCall, completion_id: str, created: int) -> AsyncIterator[str]:
    def chunk(index: int, text: str, reason: str | None) -> str:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
        body = {"id": completion_id, "object": "text_completion", "created": created, "model": call.state.model_name}
        return sse_event({**body, "choices": [choice]})

    async for event in call.events():
        if isinstance(event, Delta):
            yield chunk(event.index, event.text, None)
        elif isinstance(event, SampleDone):
            yield chunk(event.index, "", finish_reason(event.finish_reason))
        elif isinstance(event, RequestFailed):
            status, error = failure_error(event)
            yield sse_event({"error": {**error, "code": status}})
    yield sse_event("[DONE]")


@router.get("/v1/models")
async def models(http_request: Request) -> dict[str, Any]:
    state = get_state(http_request)
    return {
        "object": "list",
        "data": [{"id": state.model_name, "object": "model", "created": state.created, "owned_by": "promptgen"}],
    }
