"""The shipped intent corpus, built from the domain data files in `training/domains/`.

Each domain file (`<domain>.toml`) lists stand-alone intents and groups of modifiers and heads
whose pairings read like something a user would type ("vegan birthday cake", "street food in
Lisbon": a group's `pattern` says how the two combine, "{modifier} {head}" by default), minus the
pairings in `avoid`. The builder takes every stand-alone intent and, per domain, QUOTA pairings
in a seeded order (going round again when a domain has fewer), about half of them narrowed by a
qualifier from `general.toml` (a prefix such as "cheap", a suffix such as "for kids" or "2025",
or "in <city>"; every second round's pairing is), so intents run from one word to eight and
every domain meets proper nouns. Then each intent gets the casing a user might type
(mostly as written, some Sentence case, some Title Case, a few all lower case, chosen by a hash
of the text), duplicates are dropped (case-insensitively), and splits follow the leak key.

Held out: any intent whose leak key is also in the realistic evaluation set
(`realistic_eval.tsv`) is dropped, so that set stays unseen in every form.

Deterministic and fast (well under a second), so the corpus is built when it is loaded and no
generated file ships beside its source.
"""

from __future__ import annotations

import hashlib
import random
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOMAINS_DIR = Path(__file__).resolve().parent.parent / "domains"
GENERAL = "general"  # the file of shared words and qualifiers; it has no intents of its own
QUOTA = 480  # composed intents per domain (before de-duplication)
QUALIFIED_SHARE = 0.55  # share of composed intents narrowed by a qualifier
MAX_WORDS = 8
QUALIFIER_KINDS = ("prefixes", "suffixes", "suffixes", "places")  # drawn uniformly: suffixes twice as often
SEED = 20261204
# (share, casing) in order: how users type
CASINGS: tuple[tuple[float, str], ...] = ((0.60, "as_written"), (0.15, "sentence"), (0.15, "title"), (0.10, "lower"))


@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    standalone: tuple[str, ...]
    pairings: tuple[str, ...]  # every modifier x head of every group, minus `avoid`
    teacher: dict[str, list[str]]
    qualifiers: tuple[str, ...] = QUALIFIER_KINDS  # kinds its intents may take ("places": not for destinations)


class DomainError(ValueError):
    """A domain file that is missing, malformed or inconsistent."""


def _pairings(name: str, data: dict[str, Any]) -> tuple[str, ...]:
    avoid = set(data.get("avoid", []))
    out = []
    for group in data.get("groups", []):
        pattern = group.get("pattern", "{modifier} {head}")
        if "{modifier}" not in pattern or "{head}" not in pattern:
            raise DomainError(f"domain {name}: a group's pattern must hold {{modifier}} and {{head}}: {pattern!r}")
        for modifier in group["modifiers"]:
            for head in group["heads"]:
                text = pattern.format(modifier=modifier, head=head)
                words = text.lower().split()
                if text not in avoid and len(set(words)) == len(words):  # "team team offsite": never
                    out.append(text)
    return tuple(out)


def load_domains(domains_dir: Path = DOMAINS_DIR) -> dict[str, Domain]:
    """Every domain file, by name (the general one included: its teacher words are the fallback)."""
    domains = {}
    for path in sorted(Path(domains_dir).glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            domains[path.stem] = Domain(
                name=path.stem,
                description=str(data["description"]),
                standalone=tuple(data.get("standalone", [])),
                pairings=_pairings(path.stem, data),
                teacher={k: list(v) for k, v in data.get("teacher", {}).items()},
                qualifiers=tuple(data.get("qualifiers", QUALIFIER_KINDS)),
            )
        except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError) as error:
            raise DomainError(f"domain file {path}: {type(error).__name__}: {error}") from None
    if GENERAL not in domains:
        raise DomainError(f"{domains_dir} has no {GENERAL}.toml (shared teacher words and qualifiers)")
    return domains


def load_general(domains_dir: Path = DOMAINS_DIR) -> dict[str, Any]:
    """general.toml as parsed: [generic] teacher words, [teacher] of the general domain, [qualifiers]."""
    return tomllib.loads((Path(domains_dir) / f"{GENERAL}.toml").read_text(encoding="utf-8"))


def _stable_fraction(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def title_word(word: str) -> str:
    """The word's first letter up, the rest as written; a word with a capital inside
    ("iPhone", "eBay") is left as it is."""
    return word if any(c.isupper() for c in word[1:]) else word[:1].upper() + word[1:]


def typed_casing(text: str) -> str:
    """The casing a user might give this intent, chosen by a stable hash of it."""
    fraction, cumulative = _stable_fraction("case\x1f" + text), 0.0
    casing = CASINGS[-1][1]
    for share, name in CASINGS:
        cumulative += share
        if fraction < cumulative:
            casing = name
            break
    if casing == "sentence":
        first, _, rest = text.partition(" ")
        return f"{title_word(first)} {rest}".rstrip()
    if casing == "title":
        return " ".join(title_word(w) for w in text.split())
    if casing == "lower":
        return text.lower()
    return text


def qualify(text: str, qualifiers: dict[str, list[str]], kinds: tuple[str, ...], rng: random.Random) -> str:
    """`text` narrowed by one qualifier of the given kinds: a prefix, a suffix, or "in <place>"."""
    kind = rng.choice(kinds)
    word = rng.choice(qualifiers[kind])
    if kind == "prefixes" and text.split()[0].lower() not in ("a", "an", "the"):
        return f"{word} {text}"
    if kind == "places" and " in " not in text:
        return f"{text} in {word}"
    return f"{text} {rng.choice(qualifiers['suffixes'])}"


def compose(domains: dict[str, Domain], qualifiers: dict[str, list[str]]) -> Iterable[tuple[str, str]]:
    """(intent, domain) in a fixed order: each domain's stand-alone intents, then its quota of
    pairings; a domain with fewer pairings than its quota goes round them again, qualified."""
    rng = random.Random(SEED)
    for domain in domains.values():
        yield from ((typed_casing(text), domain.name) for text in domain.standalone)
        pairings = list(domain.pairings)
        rng.shuffle(pairings)
        for i in range(QUOTA if pairings else 0):
            text = pairings[i % len(pairings)]
            if i >= len(pairings) or rng.random() < QUALIFIED_SHARE:
                qualified = qualify(text, qualifiers, domain.qualifiers, rng)
                text = qualified if len(qualified.split()) <= MAX_WORDS else text
            yield typed_casing(text), domain.name
