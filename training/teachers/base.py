"""The teacher interface every backend implements.

A `Request` asks one teacher for several outputs for one intent on one task, each
with a target length and a relevance style, so that the rewards spread for every
intent. A teacher streams back one `Completion` per request, in whatever order its
backend finishes them; it decides by itself how many requests to batch or keep in
flight (`complete` pulls requests from the iterator only as it has room).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from training.tasks import TaskSpec


class TeacherError(RuntimeError):
    """The teacher cannot be used at all (unreachable endpoint, unknown model, missing file)."""


@dataclass(frozen=True)
class Target:
    words: int
    style: str  # one of training.tasks.STYLES


@dataclass(frozen=True)
class Request:
    key: str  # stable identity: a resumed run skips requests whose key the store has committed
    task: TaskSpec
    intent: str
    domain: str
    targets: tuple[Target, ...]
    seed: int


@dataclass
class Completion:
    request: Request
    outputs: list[str | None]  # cleaned outputs in the order of request.targets; None where one is missing
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: Counter[str] = field(default_factory=Counter)  # reason -> count, e.g. {"429": 1, "timeout": 2}
    extra: int = 0  # answer lines beyond the targets asked for
    malformed: int = 0  # answers that could not be parsed at all
    failed: bool = False  # the teacher gave up on this request: not committed, so a re-run asks again


class Teacher(ABC):
    kind: str  # "procedural" | "openai" | "hf": written into every record's provenance
    model: str

    @abstractmethod
    def prompt_hash(self, task: TaskSpec) -> str:
        """Hash of everything that shapes this teacher's answers for `task` besides the intent."""

    async def check(self) -> None:  # noqa: B027 - optional hook, most backends need no check
        """Fail fast with TeacherError before a long run if the backend is unusable."""

    @abstractmethod
    def complete(self, requests: Iterator[Request]) -> AsyncIterator[Completion]:
        """One Completion per request, as they finish."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections or models."""
