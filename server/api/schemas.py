"""Request and response bodies of the native API (the OpenAI ones are in openai_compat.py).

These models are the contract: FastAPI turns them into the OpenAPI schema at
/openapi.json and rejects what does not fit with a 422.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from contract.command import RELEVANCE_LEVELS

Relevance = Literal["low", "medium", "high"]
assert set(RELEVANCE_LEVELS) == {"low", "medium", "high"}  # keep the schema in step with the contract


MAX_INPUT_CHARS = 2000
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64
ALLOWED_CONTROLS = frozenset("\t\n\r")


def plain_text(value: str) -> str:
    """Text the model reads: not blank, no control characters (tab and newlines aside),
    no lone surrogates (a JSON "\\ud800" escape; not UTF-8, the tokenizer would fail).
    Command and special-token strings ("<|task:title|>") stay: they are tokenised as
    plain text (contract.command.encode_text), never as commands."""
    if not value.strip():
        raise ValueError("must contain non-whitespace text")
    for i, ch in enumerate(value):
        category = unicodedata.category(ch)
        if (category == "Cc" and ch not in ALLOWED_CONTROLS) or category == "Cs":
            raise ValueError(f"character {i} (U+{ord(ch):04X}) is a control character or a lone surrogate")
    return value


InputText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_INPUT_CHARS), AfterValidator(plain_text)]
StopString = Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS), AfterValidator(plain_text)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Controls(BaseModel):
    """The command: what the output should achieve."""

    model_config = ConfigDict(extra="forbid")

    length: int | None = Field(None, ge=1, le=4096, description="words the output should have (default: the bundle's)")
    relevance: Relevance = Field("high", description="how closely the output should stick to the input")
    enforce_length: bool = Field(
        False, description="guarantee the word count: EOS is masked below the minimum and forced at the maximum"
    )
    length_tolerance: int = Field(0, ge=0, le=4096, description="with enforce_length: words allowed either side")


class SamplingFields(BaseModel):
    """Sampling parameters shared by the native and the OpenAI routes (None: bundle default).
    Numbers must be finite (NaN and Infinity are refused before this, by guard.py)."""

    model_config = ConfigDict(allow_inf_nan=False)

    temperature: float | None = Field(None, ge=0.0, le=5.0, description="0 is greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=1_000_000, description="0 turns top-k off")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="1 is off; >1 discourages repeats")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="same seed, same text, alone or under load")
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = Field(
        None, description=f"up to {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} characters that end a sample"
    )
    timeout: float | None = Field(
        None, gt=0.0, le=3600.0, description="seconds before 504 (at most the server's max_request_timeout_s)"
    )


class GenerateRequest(SamplingFields):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    task: Name = Field(..., description="one of GET /v1/tasks")
    input: InputText = Field(..., description="the intent, e.g. 'holiday sale' (plain text, not blank)")
    controls: Controls = Field(default_factory=Controls)
    n: int = Field(1, ge=1, le=16, description="samples of the same command (they share one prefill)")
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    stream: bool = Field(False, description="server-sent events: delta, output, done (or error)")


class Output(BaseModel):
    index: int
    text: str
    words: int = Field(..., description="what the output achieved, to compare with controls.length")
    tokens: int
    finish_reason: str = Field(..., description="stop (EOS, stop string, length bound) or length (token budget)")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    id: str
    model: str
    task: str
    controls: Controls = Field(..., description="what was asked, with defaults filled in")
    outputs: list[Output]
    usage: Usage


# `"stream": true` answers 200 as server-sent events (sse.py); documented beside the JSON body
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` server-sent events",
        "content": {
            "text/event-stream": {  # one schema per event (an `event:` name, a `data:` line of JSON or [DONE])
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                }
            }
        },
    }
}


class ErrorBody(BaseModel):
    type: str = Field(..., description="machine-readable: invalid_request, unknown_task, overloaded, ...")
    message: str
    param: str | None = Field(None, description="the request field at fault, dotted (controls.length), or null")
    id: str | None = Field(None, description="500 only: the error_id of the server's log line for this error")


class ErrorResponse(BaseModel):
    error: ErrorBody
