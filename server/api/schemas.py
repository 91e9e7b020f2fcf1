"""Request and response bodies of the native API (the OpenAI ones are in openai_compat.py).

These models are the contract: FastAPI turns them into the OpenAPI schema at
/openapi.json and rejects what does not fit with a 422.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.command import RELEVANCE_LEVELS

Relevance = Literal["low", "medium", "high"]
assert set(RELEVANCE_LEVELS) == {"low", "medium", "high"}  # keep the schema in step with the contract


class Controls(BaseModel):
    """The command: what the output should achieve."""

    model_config = ConfigDict(extra="forbid")

    length: int | None = Field(None, ge=1, description="words the output should have (default: the bundle's)")
    relevance: Relevance = Field("high", description="how closely the output should stick to the input")
    enforce_length: bool = Field(
        False, description="guarantee the word count: EOS is masked below the minimum and forced at the maximum"
    )
    length_tolerance: int = Field(0, ge=0, description="with enforce_length: allowed words either side of length")


class SamplingFields(BaseModel):
    """Sampling parameters shared by the native and the OpenAI routes (None: bundle default)."""

    temperature: float | None = Field(None, ge=0.0, le=5.0, description="0 is greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="0 turns top-k off")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="1 is off; >1 discourages repeats")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="same seed, same text, alone or under load")
    stop: str | list[str] | None = Field(None, description="up to 4 strings that end a sample (not included)")
    timeout: float | None = Field(None, gt=0.0, description="seconds before the request fails with 504")


class GenerateRequest(SamplingFields):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(..., description="one of GET /v1/tasks")
    input: str = Field(..., min_length=1, max_length=2000, description="the intent, e.g. 'holiday sale'")
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


class ErrorBody(BaseModel):
    type: str = Field(..., description="machine-readable: invalid_request, unknown_task, overloaded, ...")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
