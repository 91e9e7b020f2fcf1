"""The built-in offline teacher: composes outputs from curated vocabularies, fast and deterministic.

Each output is a list of pieces joined by the task's joiner (", " for prompts and tags,
"; " for queries, " " for titles), built to a target length and one relevance style:

- high: the intent's own words, verbatim, in an anchor piece placed at a varying
  position, plus on-topic detail from the intent's domain. Copying the intent is the
  behaviour the student must learn for intents it never saw.
- medium: part of the intent (some of its words) or, for one-word intents, only the
  domain's words: loosely related.
- low: another domain's details, filtered so no intent word appears: off-topic.

The intent is copied the way an LLM copies it: as the user typed it ("Tokyo", "café" stay so
even in a lower-case prompt, where only the teacher's own words are lower-cased), and
title-cased in titles (first letters up, the rest as typed: "iPhone" survives).

Recipes (which pieces, which joiner, which case) live in the task files; words live in the
`[teacher]` table of each domain file (`training/domains/`) and in `general.toml`. The same
request seed gives the same outputs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from contract.command import count_words
from training.intents.corpus import DOMAINS_DIR, DomainError, load_domains, load_general, title_word
from training.tasks import ProceduralRecipe, TaskSpec
from training.teachers.base import Completion, Request, Target, Teacher, TeacherError

VERSION = 2  # bump when the composition code changes what it writes: it is part of the prompt hash
GENERIC_DOMAIN = "general"
STOPWORDS = frozenset(
    "a an and the of for to in on at with by from my your our is are day's s".split()  # noqa: SIM905
)
SMALL_TITLE_WORDS = frozenset("a an and the of for to in on at with by or".split())  # noqa: SIM905
FILL_ATTEMPTS = 40  # draws per output before settling for a length near the target
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
INTENT_SLOTS = frozenset({"intent", "part", "intent_word"})  # written as the user typed them
_LEADING_CONNECTOR = re.compile(r"^(?:&|and|for|of|with)\s+", re.IGNORECASE)


def intent_words(intent: str) -> list[str]:
    """The intent's content words as typed, in order: what medium outputs keep part of and low
    outputs avoid (compared case-insensitively)."""
    words = [w.strip(".,;:!?\"'()") for w in intent.split()]
    return [w for w in words if w and w.lower() not in STOPWORDS]


def title_case(text: str) -> str:
    """First letters up, the rest as written; small words lower; a word with a capital inside
    ("iPhone", "eBay") is left as it is."""
    words = text.split()
    return " ".join(w if i and w.lower() in SMALL_TITLE_WORDS else title_word(w) for i, w in enumerate(words))


def _repeats_a_word(piece: str, others: list[str]) -> bool:
    words = [w for w in piece.lower().split() if w not in STOPWORDS]
    seen = {w for other in others for w in other.lower().split()}
    return len(set(words)) < len(words) or bool(seen.intersection(words))


class ProceduralTeacher(Teacher):
    kind = "procedural"

    def __init__(self, domains_dir: Path = DOMAINS_DIR) -> None:
        try:
            domains = load_domains(domains_dir)
            self.generic: dict[str, list[str]] = load_general(domains_dir)["generic"]
            raw = b"".join(path.read_bytes() for path in sorted(Path(domains_dir).glob("*.toml")))
        except (OSError, KeyError, DomainError) as error:
            raise TeacherError(f"cannot read the procedural vocabulary in {domains_dir}: {error}") from None
        self.model = f"procedural-v{VERSION}"
        self._vocab_hash = hashlib.sha256(raw).hexdigest()
        self.domains: dict[str, dict[str, list[str]]] = {name: d.teacher for name, d in domains.items() if d.teacher}

    def prompt_hash(self, task: TaskSpec) -> str:
        recipe = json.dumps(task.source.get("procedural"), sort_keys=True)
        return hashlib.sha256(f"{VERSION}\n{self._vocab_hash}\n{recipe}".encode()).hexdigest()[:16]

    async def complete(self, requests: Iterator[Request]) -> AsyncIterator[Completion]:
        for count, request in enumerate(requests):
            if request.task.procedural is None:
                raise TeacherError(f"task {request.task.name} has no [procedural] recipe")
            rng = random.Random(request.seed)
            outputs: list[str | None] = [
                self.compose(request.task.procedural, request.intent, request.domain, t, rng) for t in request.targets
            ]
            yield Completion(request=request, outputs=outputs)
            if count % 256 == 255:
                await asyncio.sleep(0)  # let the event loop see a Ctrl-C between blocks

    def compose(self, recipe: ProceduralRecipe, intent: str, domain: str, target: Target, rng: random.Random) -> str:
        words = intent_words(intent)
        own = self.domains.get(domain, self.domains[GENERIC_DOMAIN])
        if target.style == "low":
            others = [d for d in self.domains if d not in (domain, GENERIC_DOMAIN)]
            pool = self.domains[rng.choice(others)]
        else:
            pool = own
        part = self._part(words, own, rng)

        lower = recipe.case == "lower"

        def render(template: str) -> str:
            """The template filled in; in a lower-case recipe only the teacher's own words are
            lower-cased, the intent's stay as the user typed them."""

            def slot(match: re.Match[str]) -> str:
                value = self._slot(match.group(1), intent, part, words, pool, rng)
                return value.lower() if lower and match.group(1) not in INTENT_SLOTS else value

            return _PLACEHOLDER.sub(slot, template.lower() if lower else template)

        anchors: list[str] = []
        if target.style == "high":
            full = [t for t in recipe.high if "{intent}" in t]
            anchors.append(render(rng.choice(full)))
            for _ in range(rng.randint(0, recipe.max_anchors - 1)):
                piece = render(rng.choice(recipe.high))
                if piece not in anchors:
                    anchors.append(piece)
        elif target.style == "medium" and part:
            anchors.append(render(rng.choice(recipe.medium)))

        forbidden = {w.lower() for w in words} if target.style == "low" else set()
        pieces: list[str] = []
        total = sum(count_words(a) for a in anchors)
        for attempt in range(FILL_ATTEMPTS):
            if total >= target.words and len(pieces) + len(anchors) >= recipe.min_pieces:
                break
            piece = render(rng.choice(recipe.fill))
            slack = 0 if attempt < FILL_ATTEMPTS // 2 else 2  # exact first, then near enough
            too_long = total + count_words(piece) > target.words + slack
            if piece in pieces or piece in anchors or (too_long and len(pieces) + len(anchors) >= recipe.min_pieces):
                continue
            if attempt < FILL_ATTEMPTS // 2 and _repeats_a_word(piece, pieces + anchors):
                continue  # "study tips tips", "Elegant Elegant": avoid while there is choice left
            if target.style != "high" and intent.lower() in piece.lower():
                continue  # a filler must not smuggle the whole intent into a lower-relevance output
            if forbidden & set(piece.lower().split()):
                continue
            pieces.append(piece)
            total += count_words(piece)

        for anchor in anchors:  # varied placement: often first, sometimes last, sometimes inside
            where = rng.random()
            index = 0 if where < 0.5 else len(pieces) if where < 0.75 else rng.randint(0, len(pieces))
            pieces.insert(index, anchor)
        if pieces:
            pieces[0] = _LEADING_CONNECTOR.sub("", pieces[0])
        text = recipe.joiner.join(pieces)
        if recipe.case == "title":
            return title_case(text)
        return text

    def _part(self, words: list[str], own: dict[str, list[str]], rng: random.Random) -> str:
        """Some but not all of the intent's words, in order; a domain keyword for one-word intents."""
        if len(words) < 2:
            return rng.choice(own["keywords"])
        keep = sorted(rng.sample(range(len(words)), rng.randint(1, len(words) - 1)))
        return " ".join(words[i] for i in keep)

    def _slot(
        self, name: str, intent: str, part: str, words: list[str], pool: dict[str, list[str]], rng: random.Random
    ) -> str:
        if name == "intent":
            return intent
        if name == "part":
            return part
        if name == "intent_word":
            return rng.choice(words) if words else intent
        source = pool.get(f"{name}s") or self.generic.get(name)
        if not source:
            raise TeacherError(f"the procedural vocabulary has no {name!r} words")
        return rng.choice(source)
