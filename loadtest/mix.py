"""The request mix: what a load run sends, one request shape per line of a JSONL file.

A line is `{"task", "intent", "words", "relevance", "n", "stream", "max_new_tokens"}`; only
`task` and `intent` are required. The run cycles through the lines in order, so a file with
three short titles and one long t2i prompt is a 3:1 mix. Without a file the mix is every task
of the server crossed with a few intents, lengths and token budgets (`default_mix`).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_INTENTS = (
    "holiday sale",
    "cozy reading nook",
    "summer hiking trip",
    "minimalist home office",
    "vegan birthday cake",
    "retro gaming night",
    "spring wedding flowers",
    "electric car launch",
)
RELEVANCE = ("low", "medium", "high")


class MixError(ValueError):
    """A mix file the run cannot use; the message names the line and field."""


@dataclass(frozen=True)
class RequestSpec:
    task: str
    intent: str
    words: int | None = None  # None: the server's default length
    relevance: str = "high"
    n: int = 1
    stream: bool = False
    max_new_tokens: int | None = None  # None: the server's default budget

    def body(self, seed: int, temperature: float | None, enforce_length: bool = False) -> dict[str, Any]:
        """The /v1/generate request body; every request gets its own seed so outputs vary."""
        controls: dict[str, Any] = {"relevance": self.relevance, "enforce_length": enforce_length}
        if self.words is not None:
            controls["length"] = self.words
        body: dict[str, Any] = {"task": self.task, "input": self.intent, "controls": controls, "n": self.n}
        body["seed"] = seed
        if self.stream:
            body["stream"] = True
        if self.max_new_tokens is not None:
            body["max_new_tokens"] = self.max_new_tokens
        if temperature is not None:
            body["temperature"] = temperature
        return body


FIELDS = {name: kind for name, kind in RequestSpec.__annotations__.items()}


def parse_line(line: str, where: str) -> RequestSpec:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise MixError(f"{where}: not JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise MixError(f"{where}: expected a JSON object")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise MixError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
    for name in ("task", "intent"):
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            raise MixError(f"{where}: {name!r} must be a non-empty string")
    for name in ("words", "n", "max_new_tokens"):
        value = raw.get(name)
        # bool is an int in Python; `"n": true` is a typo, not 1
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise MixError(f"{where}: {name!r} must be a positive integer")
    if raw.get("relevance", "high") not in RELEVANCE:
        raise MixError(f"{where}: 'relevance' must be one of {', '.join(RELEVANCE)}")
    if not isinstance(raw.get("stream", False), bool):
        raise MixError(f"{where}: 'stream' must be true or false")
    return RequestSpec(**raw)


def load_mix(path: Path | str) -> list[RequestSpec]:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise MixError(f"cannot read mix file {path}: {e.strerror}") from None
    specs = [parse_line(line, f"{path}:{i}") for i, line in enumerate(lines, 1) if line.strip()]
    if not specs:
        raise MixError(f"{path}: no requests in the mix file")
    return specs


def default_mix(
    tasks: list[str],
    lengths: list[int],
    max_new_tokens: list[int],
    relevance: str = "high",
    n: int = 1,
    stream: bool = False,
) -> list[RequestSpec]:
    """Every combination of task, intent, length and token budget, in a fixed order: several
    lengths or budgets make a mixed load of short and long requests, where continuous batching pays."""
    return [
        RequestSpec(task, intent, words, relevance, n, stream, budget)
        for task, intent, words, budget in itertools.product(tasks, DEFAULT_INTENTS, lengths, max_new_tokens)
    ]


def dump_mix(specs: list[RequestSpec]) -> str:
    return "".join(json.dumps({k: v for k, v in asdict(s).items() if v is not None}) + "\n" for s in specs)
