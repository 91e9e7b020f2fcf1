"""The intent corpus: short, realistic user intents, each with its domain and split.

The shipped corpus is built from the domain data files (corpus.py, `training/domains/`); a
user's own file (TSV or plain text) loads the same way. The split is a function of the intent
alone, through a leak key that also ignores case, punctuation, plurals and word order, so
"Holiday Sale" and "sales, holiday" always land in the same split: evaluation on val/test sees
intents the student never saw in any form.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from training.records import SPLITS, dedup_key

SPLIT_SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}
UNKNOWN_DOMAIN = "general"

_NON_WORD = re.compile(r"[^\w\s]")


@dataclass(frozen=True)
class Intent:
    text: str
    domain: str
    split: str


class CorpusError(ValueError):
    """An intent file that cannot be used (missing, malformed, duplicated or leaking)."""


def leak_key(text: str) -> str:
    """What two intents share when one would leak the other across splits."""
    words = _NON_WORD.sub(" ", dedup_key(text)).split()
    stems = sorted(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words)
    return " ".join(stems)


def split_of(text: str) -> str:
    """The split an intent belongs to: a stable hash of its leak key, 80/10/10."""
    digest = hashlib.sha256(leak_key(text).encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for split, share in SPLIT_SHARES.items():
        cumulative += share
        if fraction < cumulative:
            return split
    return SPLITS[-1]


def dedup_intents(intents: Iterable[Intent]) -> list[Intent]:
    """First occurrence of each intent, compared case- and whitespace-insensitively."""
    seen: set[str] = set()
    kept = []
    for intent in intents:
        key = dedup_key(intent.text)
        if key and key not in seen:
            seen.add(key)
            kept.append(intent)
    return kept


def check_no_leakage(intents: Iterable[Intent]) -> None:
    """Raise CorpusError if any leak key appears in two splits."""
    split_by_key: dict[str, Intent] = {}
    for intent in intents:
        other = split_by_key.setdefault(leak_key(intent.text), intent)
        if other.split != intent.split:
            raise CorpusError(f"{other.text!r} ({other.split}) and {intent.text!r} ({intent.split}) leak across splits")


def shipped_intents() -> list[Intent]:
    """The corpus built from `training/domains/`, less every intent the realistic evaluation
    set holds (by leak key), de-duplicated, with its splits."""
    from training.intents.corpus import compose, load_domains, load_general
    from training.intents.realistic import load_realistic_eval

    held_out = {leak_key(i.text) for i in load_realistic_eval()}
    qualifiers = load_general()["qualifiers"]
    intents = [
        Intent(text, domain, split_of(text))
        for text, domain in compose(load_domains(), qualifiers)
        if leak_key(text) not in held_out
    ]
    return dedup_intents(intents)


def load_intents(path: Path | None = None) -> list[Intent]:
    """The corpus at `path` (default: the shipped one), checked for duplicates and leakage.

    A plain text file with one intent per line works too: domains default to
    "general" and splits are computed.
    """
    if path is None:
        intents = shipped_intents()
        check_no_leakage(intents)
        return intents
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"intent file {path} does not exist")
    intents = []
    with open(path, encoding="utf-8", newline="") as f:
        for number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or not row[0].strip() or row[0].startswith("#"):
                continue
            text = " ".join(row[0].split())
            domain = row[1].strip() if len(row) > 1 and row[1].strip() else UNKNOWN_DOMAIN
            split = row[2].strip() if len(row) > 2 and row[2].strip() else split_of(text)
            if split not in SPLITS:
                raise CorpusError(f"{path}:{number}: split {split!r} is not one of {SPLITS}")
            intents.append(Intent(text=text, domain=domain, split=split))
    unique = dedup_intents(intents)
    if len(unique) != len(intents):
        raise CorpusError(f"{path} repeats {len(intents) - len(unique)} intents (case/whitespace-insensitively)")
    check_no_leakage(unique)
    return unique
