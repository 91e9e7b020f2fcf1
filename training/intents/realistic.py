"""The realistic evaluation set: intents as users of creative and search tools type them.

`realistic_eval.tsv` (intent<TAB>domain) is written by hand, by two people independently (one
of them never saw the training data files), not drawn from the training word lists: real casing,
proper nouns (cities, countries, festivals and holidays of many cultures, landmarks, events,
brand-like names), numbers, hyphens, apostrophes and accented letters, two to eight words; about
700 intents. The project's own test split comes from the same data files as
training, so it cannot show how the model does on what users send; this set can. It is held
out: the training corpus drops any intent with the same leak key (training/intents/corpus.py).
`python -m training eval` reports on it as the `realistic` split.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from contract.copy import intent_words
from training.records import dedup_key

REALISTIC_EVAL_FILE = Path(__file__).with_name("realistic_eval.tsv")


@dataclass(frozen=True)
class RealisticIntent:
    text: str
    domain: str


def load_realistic_eval(path: Path | str | None = None) -> list[RealisticIntent]:
    """The set at `path` (default: the shipped one). ValueError on a malformed line or a
    repeated intent (case- and whitespace-insensitively), naming the file and line."""
    path = Path(path) if path else REALISTIC_EVAL_FILE
    intents: list[RealisticIntent] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{path}:{number}: expected 'intent<TAB>domain', got {row!r}")
            text = " ".join(row[0].split())
            key = dedup_key(text)
            if key in seen:
                raise ValueError(f"{path}:{number}: {text!r} repeats line {seen[key]}")
            seen[key] = number
            intents.append(RealisticIntent(text, row[1].strip()))
    return intents


def key_words(intent: str) -> list[str]:
    """The intent's words an output should carry intact: those with an upper-case or
    non-ASCII letter or a digit (proper nouns, accented words, years), outer punctuation
    stripped. Evaluation checks that they come through unbroken."""
    return [w for w in intent_words(intent) if w and (w != w.lower() or not w.isascii() or any(c.isdigit() for c in w))]
