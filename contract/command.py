"""The UDRL command: the conditioning prefix that tells the model what to write.

A training example and a serving request are laid out the same way:

    <|task:NAME|> <|words:N|> <|relevance:LEVEL|>  intent  <|output|>  output  <|endoftext|>

The command tokens are special tokens added to the GPT-2 tokenizer. Training formats
examples with these functions and the server formats requests with them, so the two
can never drift apart. A pretrained student reads the command as plain words instead
(`CommandSpec.format == "plain_words"`): `tags, 12 words, high relevance: intent` then a
newline, the output and EOS; prompt_ids dispatches on the format. This module is pure
Python on purpose: the server imports it without torch, training imports it without FastAPI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

EOS_TOKEN = "<|endoftext|>"
OUTPUT_TOKEN = "<|output|>"
# Command formats (CommandSpec.format), saved with the model so training and serving agree:
# special tokens added to the tokenizer (a student trained from scratch), or plain words a
# pretrained model already reads (`tags, 12 words, high relevance: intent` + newline).
SPECIAL_TOKENS = "special_tokens"
PLAIN_WORDS = "plain_words"
COMMAND_FORMATS: tuple[str, ...] = (SPECIAL_TOKENS, PLAIN_WORDS)
# Ends a plain-words prompt: normalize_text turns every newline in user text into a space,
# so the only newline before the output is this one and user text cannot close the command.
PLAIN_SEPARATOR = "\n"
SPECIAL_LAYOUT = "task words relevance intent <|output|> output <|endoftext|>"
PLAIN_LAYOUT = "task, N words, level relevance: intent \\n output <|endoftext|>"
RELEVANCE_LEVELS: tuple[str, ...] = ("low", "medium", "high")

_WHITESPACE = re.compile(r"\s+")


def task_token(task: str) -> str:
    return f"<|task:{task}|>"


def words_token(words: int) -> str:
    return f"<|words:{words}|>"


def relevance_token(level: str) -> str:
    return f"<|relevance:{level}|>"


def normalize_text(text: str) -> str:
    """Collapse whitespace; the one normalisation intents and outputs both get."""
    return _WHITESPACE.sub(" ", text).strip()


def count_words(text: str) -> int:
    """The length reward: whitespace-separated words, as a reader would count them."""
    return len(text.split())


class CommandError(ValueError):
    """A command the model was not trained to follow (unknown task, length out of range...).
    `kind` says which, machine-readably (the server's error type)."""

    def __init__(self, message: str, kind: str = "invalid_command") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class CommandSpec:
    """The command vocabulary a model was trained with, saved beside it.

    `relevance_edges[task]` holds the two cut points (tertiles on the training split)
    between low/medium and medium/high relevance for that task. They are fitted once,
    by training, and the server only reads them.
    """

    tasks: tuple[str, ...]
    min_words: int = 1
    max_words: int = 48
    relevance_edges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    format: str = SPECIAL_TOKENS  # one of COMMAND_FORMATS

    def __post_init__(self) -> None:
        if self.format not in COMMAND_FORMATS:
            raise CommandError(f"unknown command format {self.format!r}; this code knows {list(COMMAND_FORMATS)}")

    def special_tokens(self) -> list[str]:
        """Every token the tokenizer must add, in a fixed order (ids depend on it)."""
        if self.format == PLAIN_WORDS:
            return []  # a pretrained model reads the command as words: its vocabulary is kept as is
        return (
            [OUTPUT_TOKEN]
            + [task_token(t) for t in self.tasks]
            + [words_token(n) for n in range(self.min_words, self.max_words + 1)]
            + [relevance_token(level) for level in RELEVANCE_LEVELS]
        )

    def check(self, task: str, words: int, relevance: str) -> None:
        if task not in self.tasks:
            raise CommandError(f"unknown task {task!r}; this model knows {list(self.tasks)}", "unknown_task")
        if not self.min_words <= words <= self.max_words:
            raise CommandError(
                f"length {words} is outside the trained range {self.min_words}..{self.max_words} words",
                "length_out_of_range",
            )
        if relevance not in RELEVANCE_LEVELS:
            raise CommandError(
                f"unknown relevance {relevance!r}; use one of {list(RELEVANCE_LEVELS)}", "unknown_relevance"
            )

    def tokens(self, task: str, words: int, relevance: str) -> list[str]:
        self.check(task, words, relevance)
        return [task_token(task), words_token(words), relevance_token(relevance)]

    def relevance_level(self, task: str, score: float) -> str:
        """Quantise a relevance score into the level a sample achieved (hindsight label)."""
        low_edge, high_edge = self.relevance_edges[task]
        if score < low_edge:
            return "low"
        if score < high_edge:
            return "medium"
        return "high"

    def clamp_words(self, words: int) -> int:
        return max(self.min_words, min(self.max_words, words))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "min_words": self.min_words,
            "max_words": self.max_words,
            "relevance_levels": list(RELEVANCE_LEVELS),
            "relevance_edges": {t: list(e) for t, e in self.relevance_edges.items()},
            "special_tokens": self.special_tokens(),
            "format": self.format,
            "layout": PLAIN_LAYOUT if self.format == PLAIN_WORDS else SPECIAL_LAYOUT,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CommandSpec:
        spec = cls(
            tasks=tuple(data["tasks"]),
            min_words=int(data["min_words"]),
            max_words=int(data["max_words"]),
            relevance_edges={t: (float(e[0]), float(e[1])) for t, e in data["relevance_edges"].items()},
            format=str(data.get("format", SPECIAL_TOKENS)),  # absent: saved before plain words existed
        )
        if list(data.get("relevance_levels", RELEVANCE_LEVELS)) != list(RELEVANCE_LEVELS):
            raise CommandError(f"relevance levels {data['relevance_levels']} are not {list(RELEVANCE_LEVELS)}")
        if "special_tokens" in data and list(data["special_tokens"]) != spec.special_tokens():
            raise CommandError("the saved special tokens do not match this command format")
        return spec


class Encoding(Protocol):
    @property
    def ids(self) -> list[int]: ...


class TokenizerLike(Protocol):
    """The slice of `tokenizers.Tokenizer` the prompt needs (duck-typed: no import here)."""

    encode_special_tokens: bool

    # tokenizers.Tokenizer.encode's own parameters, so that the real class satisfies the protocol
    def encode(
        self, sequence: Any, pair: Any | None = None, is_pretokenized: bool = False, add_special_tokens: bool = True
    ) -> Encoding: ...

    def token_to_id(self, token: str) -> int | None: ...


def encode_text(tokenizer: TokenizerLike, text: str) -> list[int]:
    """BPE ids of user or teacher text, never of command tokens.

    With `encode_special_tokens` on, a literal "<|task:x|>" typed by a user is split
    into ordinary BPE pieces, so text can never smuggle a command into the prompt.
    The leading space gives the first word its usual GPT-2 " word" token.
    """
    previous = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        return list(tokenizer.encode(" " + normalize_text(text), add_special_tokens=False).ids)
    finally:
        tokenizer.encode_special_tokens = previous


def special_ids(tokenizer: TokenizerLike, tokens: Sequence[str]) -> list[int]:
    ids = []
    for token in tokens:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise CommandError(f"the tokenizer lacks the command token {token}")
        ids.append(token_id)
    return ids


def plain_command(task: str, words: int, relevance: str) -> str:
    """The command as words: `t2i prompt, 12 words, high relevance:`."""
    return f"{task.replace('_', ' ')}, {words} words, {relevance} relevance:"


def plain_prompt_ids(
    tokenizer: TokenizerLike, spec: CommandSpec, task: str, words: int, relevance: str, intent: str
) -> list[int]:
    """`command: intent` + newline. The command comes first and the newline is encoded by
    us alone (user text is normalised, so it has none): a command typed into the intent is
    only words inside the intent, never the command the model was trained to obey."""
    spec.check(task, words, relevance)
    command = encode_text(tokenizer, plain_command(task, words, relevance))
    return command + encode_text(tokenizer, intent) + plain_separator_ids(tokenizer)


def plain_separator_ids(tokenizer: TokenizerLike) -> list[int]:
    ids = list(tokenizer.encode(PLAIN_SEPARATOR, add_special_tokens=False).ids)
    if not ids:
        raise CommandError("the tokenizer cannot encode the plain-words separator (a newline)")
    return ids


def prompt_ids(
    tokenizer: TokenizerLike, spec: CommandSpec, task: str, words: int, relevance: str, intent: str
) -> list[int]:
    """Token ids of `command + intent + <|output|>`: what the model continues from."""
    if spec.format == PLAIN_WORDS:
        return plain_prompt_ids(tokenizer, spec, task, words, relevance, intent)
    command = special_ids(tokenizer, spec.tokens(task, words, relevance))
    return command + encode_text(tokenizer, intent) + special_ids(tokenizer, [OUTPUT_TOKEN])
