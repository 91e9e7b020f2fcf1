"""Positions: which position id each token of a prompt and its output takes.

GPT-2 adds a learned position embedding to each token; what those positions mean is part of
the contract, because training (training/examples.py) and every decode loop (runtime/decode.py,
the server's scheduler) must give the same token the same position. The spec names the scheme
(`CommandSpec.positions`):

- **aligned**: the prompt is shifted so its last token sits at `output_position - 1`, and the
  output counts on from `output_position`, one position per token. A small model partly
  counts the words it has written by position; aligning the output's start made that count
  independent of the prompt's length (docs/architecture.md, "Aligned output").
- **countdown**: the prompt as above; each output token sits at `output_position` + the words
  still to write once that token is written (the command's length minus the words begun so
  far, never below 0). The model reads how many words remain instead of counting tokens of
  varying size per word, so it stops at the asked length on long outputs too: counting by
  position left 36-word t2i prompts 3-6 words long (docs/architecture.md, "Countdown
  positions"). After the idea of length-difference position encodings (Takase & Okazaki,
  NAACL 2019), in words rather than tokens.

A word begins at a token whose text starts with a space (every output is encoded with a
leading space, contract/text.py) or at a copy token (one token, one intent word).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from contract.text import TokenizerLike

if TYPE_CHECKING:
    from contract.command import CommandSpec

ALIGNED = "aligned"
COUNTDOWN = "countdown"
POSITION_SCHEMES: tuple[str, ...] = (ALIGNED, COUNTDOWN)
SPACE = "\u0120"  # byte-level BPE's space: a token starting with it starts a word
COPY_PREFIX = "<|copy"  # copy tokens (contract/copy.py) each write one whole word


def position_offset(spec: CommandSpec, prompt_length: int) -> int:
    """The position a prompt's first token takes, so that its output starts at
    `spec.output_position`.

    Aligned: a prompt longer than that starts at 0 and its output later. Countdown: the offset
    may be negative, and the prompt's first tokens then share position 0 (runtime.padding and
    training's collate clip at 0), so the prompt never reaches the positions its output
    counts down in."""
    offset = spec.output_position - prompt_length
    return offset if spec.positions == COUNTDOWN else max(0, offset)


def context_room(spec: CommandSpec, n_positions: int, prompt_length: int) -> int:
    """How many tokens an output may take after this prompt: the KV columns left in the
    model's context. A countdown prompt's negative offset shares positions among its first
    tokens; it makes no room."""
    return n_positions - max(0, position_offset(spec, prompt_length)) - prompt_length


@dataclass(frozen=True)
class Countdown:
    """A countdown model's output positions: `base` + the words still to write.

    One per model; each row of a decode loop keeps its own `words_left`, starting at its
    command's length and lowered by `after` at every token it writes."""

    base: int
    word_starts: frozenset[int]  # token ids that begin a word

    def position(self, words_left: int) -> int:
        return self.base + max(0, words_left)

    def after(self, words_left: int, token: int) -> int:
        return words_left - (token in self.word_starts)

    def output_positions(self, words: int, output_ids: Sequence[int]) -> list[int]:
        """The position of each output token as training feeds it (EOS included)."""
        positions = []
        for token in output_ids:
            words = self.after(words, token)
            positions.append(self.position(words))
        return positions


def word_start_ids(tokenizer: TokenizerLike) -> frozenset[int]:
    """Ids of the tokens that begin a word: a leading BPE space, or a copy token."""
    return frozenset(
        i for token, i in tokenizer.get_vocab(with_added_tokens=True).items() if token.startswith((SPACE, COPY_PREFIX))
    )


def countdown(spec: CommandSpec, tokenizer: TokenizerLike) -> Countdown | None:
    """The spec's countdown, or None when its outputs count up (aligned)."""
    if spec.positions != COUNTDOWN:
        return None
    return Countdown(spec.output_position, word_start_ids(tokenizer))


def prompt_positions(spec: CommandSpec, prompt_length: int) -> list[int]:
    """Positions of a prompt's tokens (clipped at 0: see `position_offset`)."""
    offset = position_offset(spec, prompt_length)
    return [max(0, offset + i) for i in range(prompt_length)]


def check_fits(spec: CommandSpec, n_positions: int) -> None:
    """A countdown spec uses positions up to output_position + max_words: they must exist."""
    if spec.positions == COUNTDOWN and spec.output_position + spec.max_words >= n_positions:
        raise ValueError(
            f"countdown positions reach {spec.output_position + spec.max_words}; the model has {n_positions}"
        )


def sequence_positions(
    spec: CommandSpec, counter: Countdown | None, prompt_length: int, words: int, output_ids: Sequence[int]
) -> list[int]:
    """Positions of a whole training example, prompt then output (`words`: its command's length)."""
    prompt = prompt_positions(spec, prompt_length)
    if counter is None:
        start = prompt[-1] + 1 if prompt else 0
        return prompt + list(range(start, start + len(output_ids)))
    return prompt + counter.output_positions(words, output_ids)
