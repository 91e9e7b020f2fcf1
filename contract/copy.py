"""Copy tokens: the model writes "word i of the intent" instead of spelling it.

A small model trained from scratch cannot spell a word it never saw ("Tromsø", "Songkran",
"café"): byte-level BPE splits such words into pieces it has no reason to reproduce, and it
writes corpus words instead (docs/architecture.md, "Copying"). So the contract gives it a
pointer: the prompt marks each intent word with `<|copy:i|>`, and in the output the model may
emit one of three copy tokens per word,

    <|copy:i|>        word i as the user typed it          ("Tokyo", "café")
    <|copy_cap:i|>    word i with its first letter upper   (titles: "Café")
    <|copy_lower:i|>  word i in lower case                 ("tokyo" in a lower-case prompt)

each of which stands for exactly one whitespace-separated word. Training replaces the
output's words that match an intent word by these tokens (`encode_output`); evaluation and
serving expand them back into the word's BPE ids (`CopyTable.expand`) before detokenizing,
so streamed text, word counts and the length command stay exact, and any word, casing or
script the user types comes through intact. Copy tokens whose word does not exist in this
intent are banned for that request (`CopyTable.banned`).

Pure Python, like the rest of the contract: the server imports it without torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from contract.text import TokenizerLike, encode_text, normalize_text

# (name, how the word is written) in token-id order: the order is part of the vocabulary
COPY_FORMS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("copy", lambda word: word),
    ("copy_cap", lambda word: word[:1].upper() + word[1:]),
    ("copy_lower", lambda word: word.lower()),
)
# Punctuation that may cling to a word without being part of it ("Tokyo," "(Rome)").
_OUTER_PUNCTUATION = "\"'“”‘’«»()[]{}.,;:!?…"
# What may follow a copied word inside the same output word: a possessive, then punctuation.
_COPY_SUFFIX = re.compile(r"^(?:['’]s)?[^\w\s]*$")


def copy_token(form: str, position: int) -> str:
    return f"<|{form}:{position}|>"


def copy_tokens(slots: int) -> list[str]:
    """Every copy token of a vocabulary with `slots` positions, in id order."""
    return [copy_token(form, i) for form, _ in COPY_FORMS for i in range(slots)]


def intent_words(intent: str) -> list[str]:
    """The intent's words as the user typed them, outer punctuation removed: what copy
    token i stands for. A word made only of punctuation ("-", "&") is "" (never copied)."""
    return [word.strip(_OUTER_PUNCTUATION) for word in normalize_text(intent).split()]


def _special_id(tokenizer: TokenizerLike, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"the tokenizer lacks the copy token {token}")
    return token_id


def encode_intent(tokenizer: TokenizerLike, intent: str, slots: int) -> list[int]:
    """The intent as the prompt carries it: each of its first `slots` words preceded by its
    `<|copy:i|>` marker, so the model can point at a word by the marker it saw before it.
    Words past the slots are plain text. With `slots` 0 this is plain `encode_text`."""
    if slots == 0:
        return encode_text(tokenizer, intent)
    ids: list[int] = []
    for position, word in enumerate(normalize_text(intent).split()):
        if position < slots:
            ids.append(_special_id(tokenizer, copy_token("copy", position)))
        ids += encode_text(tokenizer, word)
    return ids


def _match(word: str, candidates: dict[str, int]) -> tuple[int, str] | None:
    """(copy token id, the rest of the word) when `word` starts with a candidate spelling and
    the rest is a possessive or punctuation; the longest spelling wins."""
    for spelling in sorted((s for s in candidates if word.startswith(s)), key=len, reverse=True):
        rest = word[len(spelling) :]
        if _COPY_SUFFIX.match(rest):
            return candidates[spelling], rest
    return None


@dataclass(frozen=True)
class CopyTable:
    """One request's copy tokens: what each expands to, and which may not be written."""

    expansions: dict[int, list[int]]  # copy token id -> BPE ids of " word" in its form
    spellings: dict[str, int]  # the word as written -> copy token id (first position wins)
    banned: list[int]  # copy token ids with no word in this intent

    def expand(self, ids: Sequence[int]) -> list[int]:
        """Generated ids with every copy token replaced by its word's BPE ids."""
        out: list[int] = []
        for token in ids:
            out += self.expansions.get(token, [token])
        return out


def copy_table(tokenizer: TokenizerLike, intent: str, slots: int) -> CopyTable:
    expansions: dict[int, list[int]] = {}
    spellings: dict[str, int] = {}
    words = intent_words(intent)[:slots]
    for form, write in COPY_FORMS:
        for position, word in enumerate(words):
            if not word:
                continue
            token_id = _special_id(tokenizer, copy_token(form, position))
            spelled = write(word)
            expansions[token_id] = encode_text(tokenizer, spelled)
            spellings.setdefault(spelled, token_id)
    every = [_special_id(tokenizer, token) for token in copy_tokens(slots)]
    banned = [token_id for token_id in every if token_id not in expansions]
    return CopyTable(expansions, spellings, banned)


def encode_output(tokenizer: TokenizerLike, intent: str, output: str, slots: int) -> list[int]:
    """The output's ids with every word that matches an intent word (as typed, capitalised
    or lower-cased, possibly followed by 's or punctuation) written as its copy token.
    Everything else is BPE, exactly as `encode_text` would encode it."""
    if slots == 0:
        return encode_text(tokenizer, output)
    table = copy_table(tokenizer, intent, slots)
    ids: list[int] = []
    plain: list[str] = []  # words waiting to be BPE-encoded together

    def flush() -> None:
        if plain:
            ids.extend(encode_text(tokenizer, " ".join(plain)))
            plain.clear()

    for word in normalize_text(output).split():
        match = _match(word, table.spellings)
        if match is None:
            plain.append(word)
            continue
        flush()
        token_id, rest = match
        ids.append(token_id)
        if rest:  # "Tokyo," -> copy + ",": no space between them
            ids += tokenizer.encode(rest, add_special_tokens=False).ids
    flush()
    return ids
