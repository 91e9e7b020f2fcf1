"""Incremental detokenization: a sequence's new text, token by token, without decoding it all again.

Byte-level BPE splits one character across tokens (accented letters, CJK, emoji), and
decoding a token alone may differ from decoding it in context (a tokenizer may strip or merge
at the start of a text). So, as TGI and vLLM do, keep two offsets into the ids: `prefix` (where
the last emitted window began) and `read` (what has been emitted). At each push decode
ids[prefix:read] and ids[prefix:]; the new text is what the second adds to the first, emitted
only once it does not end in an incomplete character (U+FFFD). Each push decodes a few tokens,
not the whole sequence.

`push` takes several ids at once: a copy token of the contract expands into the BPE ids of a
word before it reaches the detokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"  # what a decoder yields for the bytes of an incomplete UTF-8 character


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decode to the tail of what was emitted
        self.read = 0  # ids[:read] have been emitted as text
        self.text = ""  # everything emitted so far

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, ids: Sequence[int]) -> str:
        """Take the next ids; return the text they complete ("" while a character is unfinished)."""
        self.ids.extend(ids)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""
        new = after[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        self.text += new
        return new

    def flush(self) -> str:
        """At the end of the sequence: what is left, an unfinished character included (as
        U+FFFD, as decoding all the ids would show it)."""
        before = self._decode(self.ids[self.prefix : self.read])
        new = self._decode(self.ids[self.prefix :])[len(before) :]
        self.prefix = self.read = len(self.ids)
        self.text += new
        return new
