"""Text as every stage sees it: whitespace normalisation, word counts, and BPE ids of user text.

Pure Python (the tokenizer is duck-typed), shared by the command format (command.py) and the
copy tokens (copy.py).
"""

from __future__ import annotations

import re
from typing import Any, Protocol

_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Collapse whitespace; the one normalisation intents and outputs both get."""
    return _WHITESPACE.sub(" ", text).strip()


def count_words(text: str) -> int:
    """The length reward: whitespace-separated words, as a reader would count them."""
    return len(text.split())


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

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]: ...


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
