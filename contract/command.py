"""The UDRL command: the conditioning prefix that tells the model what to write.

A training example and a serving request are laid out the same way:

    <|task:NAME|> <|words:N|> <|relevance:LEVEL|>  intent  <|output|>  output  <|endoftext|>

The command tokens are special tokens added to the GPT-2 tokenizer. With copy slots (the
default since command format 2), each intent word is preceded by its `<|copy:i|>` marker and
the output may write intent words as copy tokens (copy.py). Training formats
examples with these functions and the server formats requests with them, so the two
can never drift apart. A pretrained student reads the command as plain words instead
(`CommandSpec.format == "plain_words"`): `tags, 12 words, high relevance: intent` then a
newline, the output and EOS; prompt_ids dispatches on the format. This module is pure
Python on purpose: the server imports it without torch, training imports it without FastAPI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contract.copy import copy_tokens, encode_intent
from contract.positions import ALIGNED, POSITION_SCHEMES
from contract.text import Encoding as Encoding
from contract.text import TokenizerLike as TokenizerLike
from contract.text import count_words as count_words
from contract.text import encode_text as encode_text
from contract.text import normalize_text as normalize_text

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
COPY_SLOTS = 16  # intent words a copy token can point at: realistic intents have 2-8
OUTPUT_POSITION = 32  # where new models' outputs start: past the prompt of nearly every intent of 8 words
# A plain-words command is longer in a pretrained tokenizer's BPE (18-27 tokens for the corpus's
# intents, against 8-12 with command tokens), so its outputs start later.
PLAIN_OUTPUT_POSITION = 48


def task_token(task: str) -> str:
    return f"<|task:{task}|>"


def words_token(words: int) -> str:
    return f"<|words:{words}|>"


def relevance_token(level: str) -> str:
    return f"<|relevance:{level}|>"


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
    between low/medium and medium/high relevance for that task. `task_words[task]` is the
    length range that task was trained on (lengths with enough examples): a command outside
    it is refused, since the model never learnt it (a 32-word title). Both are fitted once,
    by training, and the server only reads them. `copy_slots`: how many intent words copy
    tokens can point at (copy.py); 0 in models from before copy tokens. `output_position`:
    the position the output starts at, whatever the prompt's length (positions.py); 0:
    positions start at 0 (models from before). `positions`: how output tokens are numbered
    from there, counting up (aligned) or down the words still to write (countdown).
    """

    tasks: tuple[str, ...]
    min_words: int = 1
    max_words: int = 48
    relevance_edges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    task_words: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    copy_slots: int = 0
    output_position: int = 0
    format: str = SPECIAL_TOKENS  # one of COMMAND_FORMATS
    positions: str = ALIGNED  # one of contract.positions.POSITION_SCHEMES

    def __post_init__(self) -> None:
        if self.format not in COMMAND_FORMATS:
            raise CommandError(f"unknown command format {self.format!r}; this code knows {list(COMMAND_FORMATS)}")
        if self.format == PLAIN_WORDS and self.copy_slots:
            raise CommandError("copy tokens are special tokens: a plain-words command has none")
        if self.positions not in POSITION_SCHEMES:
            raise CommandError(f"unknown position scheme {self.positions!r}; this code knows {list(POSITION_SCHEMES)}")
        if self.positions != ALIGNED and not self.output_position:
            raise CommandError(f"{self.positions} positions need an output position (a pretrained model has none)")

    def special_tokens(self) -> list[str]:
        """Every token the tokenizer must add, in a fixed order (ids depend on it)."""
        return self.input_tokens() + copy_tokens(self.copy_slots)

    def input_tokens(self) -> list[str]:
        """The command's own tokens: they are read, never written (the sampler bans them).
        None for plain words: a pretrained model reads the command as words it knows."""
        if self.format == PLAIN_WORDS:
            return []
        return (
            [OUTPUT_TOKEN]
            + [task_token(t) for t in self.tasks]
            + [words_token(n) for n in range(self.min_words, self.max_words + 1)]
            + [relevance_token(level) for level in RELEVANCE_LEVELS]
        )

    def length_range(self, task: str) -> tuple[int, int]:
        """The lengths in words this task was trained on."""
        low, high = self.task_words.get(task, (self.min_words, self.max_words))
        return low, high

    def check(self, task: str, words: int, relevance: str, task_range: bool = True) -> None:
        """Raise CommandError unless the model can follow this command. `task_range` False
        accepts any length with a token (training's hindsight labels: a rare length is still
        a true label; only asking for it is refused)."""
        if task not in self.tasks:
            raise CommandError(f"unknown task {task!r}; this model knows {list(self.tasks)}", "unknown_task")
        low, high = self.length_range(task) if task_range else (self.min_words, self.max_words)
        if not low <= words <= high:
            raise CommandError(
                f"length {words} is outside the trained range {low}..{high} words of task {task!r}",
                "length_out_of_range",
            )
        if relevance not in RELEVANCE_LEVELS:
            raise CommandError(
                f"unknown relevance {relevance!r}; use one of {list(RELEVANCE_LEVELS)}", "unknown_relevance"
            )

    def tokens(self, task: str, words: int, relevance: str, task_range: bool = True) -> list[str]:
        self.check(task, words, relevance, task_range)
        return [task_token(task), words_token(words), relevance_token(relevance)]

    def relevance_level(self, task: str, score: float) -> str:
        """Quantise a relevance score into the level a sample achieved (hindsight label)."""
        low_edge, high_edge = self.relevance_edges[task]
        if score < low_edge:
            return "low"
        if score < high_edge:
            return "medium"
        return "high"

    def clamp_words(self, words: int, task: str | None = None) -> int:
        """`words` moved into the command's range (the task's, when one is named)."""
        low, high = self.length_range(task) if task is not None else (self.min_words, self.max_words)
        return max(low, min(high, words))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "min_words": self.min_words,
            "max_words": self.max_words,
            "task_words": {t: list(r) for t, r in self.task_words.items()},
            "relevance_levels": list(RELEVANCE_LEVELS),
            "relevance_edges": {t: list(e) for t, e in self.relevance_edges.items()},
            "copy_slots": self.copy_slots,
            "output_position": self.output_position,
            "positions": self.positions,
            "special_tokens": self.special_tokens(),
            "format": self.format,
            "layout": PLAIN_LAYOUT if self.format == PLAIN_WORDS else SPECIAL_LAYOUT,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CommandSpec:
        """What `to_dict` wrote; a spec saved before per-task ranges and copy tokens reads
        with the global range and no copy slots."""
        spec = cls(
            tasks=tuple(data["tasks"]),
            min_words=int(data["min_words"]),
            max_words=int(data["max_words"]),
            relevance_edges={t: (float(e[0]), float(e[1])) for t, e in data["relevance_edges"].items()},
            task_words={t: (int(r[0]), int(r[1])) for t, r in data.get("task_words", {}).items()},
            copy_slots=int(data.get("copy_slots", 0)),
            output_position=int(data.get("output_position", 0)),
            format=str(data.get("format", SPECIAL_TOKENS)),  # absent: saved before plain words existed
            positions=str(data.get("positions", ALIGNED)),  # absent: saved before countdown positions
        )
        if list(data.get("relevance_levels", RELEVANCE_LEVELS)) != list(RELEVANCE_LEVELS):
            raise CommandError(f"relevance levels {data['relevance_levels']} are not {list(RELEVANCE_LEVELS)}")
        if "special_tokens" in data and list(data["special_tokens"]) != spec.special_tokens():
            raise CommandError("the saved special tokens do not match this command format")
        return spec


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
    tokenizer: TokenizerLike,
    spec: CommandSpec,
    task: str,
    words: int,
    relevance: str,
    intent: str,
    task_range: bool = True,
) -> list[int]:
    """`command: intent` + newline. The command comes first and the newline is encoded by
    us alone (user text is normalised, so it has none): a command typed into the intent is
    only words inside the intent, never the command the model was trained to obey."""
    spec.check(task, words, relevance, task_range)
    command = encode_text(tokenizer, plain_command(task, words, relevance))
    return command + encode_text(tokenizer, intent) + plain_separator_ids(tokenizer)


def plain_separator_ids(tokenizer: TokenizerLike) -> list[int]:
    ids = list(tokenizer.encode(PLAIN_SEPARATOR, add_special_tokens=False).ids)
    if not ids:
        raise CommandError("the tokenizer cannot encode the plain-words separator (a newline)")
    return ids


def prompt_ids(
    tokenizer: TokenizerLike,
    spec: CommandSpec,
    task: str,
    words: int,
    relevance: str,
    intent: str,
    task_range: bool = True,
) -> list[int]:
    """Token ids of `command + intent + <|output|>`: what the model continues from
    (`task_range`: see CommandSpec.check); for a plain-words spec, `plain_prompt_ids`."""
    if spec.format == PLAIN_WORDS:
        return plain_prompt_ids(tokenizer, spec, task, words, relevance, intent, task_range)
    command = special_ids(tokenizer, spec.tokens(task, words, relevance, task_range))
    return command + encode_intent(tokenizer, intent, spec.copy_slots) + special_ids(tokenizer, [OUTPUT_TOKEN])
