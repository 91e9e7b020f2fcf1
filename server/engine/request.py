"""A generation request as the engine sees it, and the events it sends back.

The API layer validates and tokenises, then hands the engine a `GenerationRequest`
with a `sink`: a thread-safe callback the engine thread calls with each event. The
engine knows nothing about HTTP; the API knows nothing about batches.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime.sampler import SamplingParams

# finish reasons, as OpenAI spells the first two
STOP = "stop"  # EOS, a stop string, or the forced end at the maximum length
LENGTH = "length"  # max_new_tokens or the model's context ran out


@dataclass(frozen=True)
class LengthBounds:
    """Word-count bounds the engine enforces: EOS masked below `min_words`, forced
    instead of a token that would start word `max_words + 1`."""

    min_words: int
    max_words: int


@dataclass(frozen=True)
class Delta:
    """Streaming: new text of sample `index` (held back while it may become a stop string)."""

    index: int
    text: str


@dataclass(frozen=True)
class SampleDone:
    index: int
    text: str
    words: int
    tokens: int
    finish_reason: str


@dataclass(frozen=True)
class RequestDone:
    prompt_tokens: int
    completion_tokens: int
    queue_s: float


def new_error_id() -> str:
    """A short id that ties a 500's body to its log line."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class RequestFailed:
    """The engine gave up on the request: `reason` is deadline | aborted | internal | model_error.
    An internal failure has an `error_id`, also in the engine's log line, so a client's
    500 can be found in the logs."""

    reason: str
    message: str
    error_id: str | None = None


Event = Delta | SampleDone | RequestDone | RequestFailed


@dataclass
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    n: int
    params: SamplingParams
    max_new_tokens: int
    sink: Callable[[Event], None]
    seed: int | None = None
    stop: tuple[str, ...] = ()
    length_bounds: LengthBounds | None = None
    # copy tokens (contract/copy.py): what each of this intent's expands to, and those it has no word for
    copies: dict[int, list[int]] = field(default_factory=dict)
    never: list[int] = field(default_factory=list)
    position_offset: int = 0  # the prompt's first position (contract.positions.position_offset)
    words: int = 0  # the command's length: a countdown model's output positions count down from it
    stream: bool = False
    deadline: float = float("inf")  # time.monotonic() by which it must be done
    arrival: float = field(default_factory=time.monotonic)
