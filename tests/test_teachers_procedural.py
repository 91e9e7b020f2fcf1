"""The procedural teacher: deterministic, fast, and spread along both rewards for every intent."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import pytest

from contract.command import count_words
from training.generate import build_requests
from training.intents import Intent, load_intents
from training.tasks import load_tasks
from training.teachers.base import Completion, Request
from training.teachers.parsing import reject_reason
from training.teachers.procedural import ProceduralTeacher, intent_words, title_case

SAMPLE_INTENTS = [
    Intent("holiday sale", "seasons_holidays", "train"),
    Intent("cozy reading nook", "home", "train"),
    Intent("vegan birthday cake", "food", "val"),
    Intent("tokyo food tour", "travel", "test"),
    Intent("quantum knitting club", "unknown_domain", "test"),  # not in the vocabulary: falls back to general
]


def complete(teacher: ProceduralTeacher, requests: list[Request]) -> list[Completion]:
    async def run() -> list[Completion]:
        return [c async for c in teacher.complete(iter(requests))]

    return asyncio.run(run())


def sample(per_intent: int, intents: list[Intent] = SAMPLE_INTENTS, seed: int = 0) -> list[Completion]:
    teacher = ProceduralTeacher()
    return complete(teacher, build_requests(load_tasks(), intents, teacher, per_intent, seed))


def pairs(completions: list[Completion]) -> list[tuple[Request, str, str, int]]:
    """(request, style, output, target words) for every output."""
    return [
        (c.request, target.style, output, target.words)
        for c in completions
        for output, target in zip(c.outputs, c.request.targets, strict=True)
    ]


def test_same_seed_same_outputs_other_seed_other_outputs() -> None:
    first, again, other = sample(6), sample(6), sample(6, seed=1)
    assert [c.outputs for c in first] == [c.outputs for c in again]
    assert [c.outputs for c in first] != [c.outputs for c in other]


def test_outputs_are_valid_and_lengths_spread_over_each_task_range() -> None:
    tasks = load_tasks()
    completions = sample(12)
    for request, _, output, target in pairs(completions):
        assert reject_reason(request.task, output) is None, output
        assert abs(count_words(output) - target) <= max(3, target // 3), (target, output)
    for name, task in tasks.items():
        lengths = [count_words(o) for r, _, o, _ in pairs(completions) if r.task.name == name]
        low, high = task.target_words
        assert min(lengths) <= low + 2 and max(lengths) >= high - 3, (name, min(lengths), max(lengths))


def test_styles_copy_the_intent_loosely_relate_or_avoid_it() -> None:
    positions: set[str] = set()
    for request, style, output, _ in pairs(sample(12)):
        text, intent = output.lower(), request.intent.lower()
        words = {w.lower() for w in intent_words(request.intent)}
        if style == "high":
            assert intent in text  # verbatim: the behaviour the student must learn
            positions.add("first" if text.startswith(intent) else "later")
        elif style == "medium":
            assert intent not in text
        else:
            assert not words & set(text.replace(",", " ").replace(";", " ").split())
    assert positions == {"first", "later"}  # the intent's placement varies


def test_the_intent_is_copied_as_typed_and_title_cased_in_titles() -> None:
    typed = [
        Intent("rainy evening in Tokyo", "destinations", "test"),
        Intent("café grand opening", "coffee_tea", "test"),
        Intent("iPhone 16 Launch Party", "tech", "test"),
        Intent("Día de los Muertos altar", "world_festivals", "test"),
    ]
    seen = {"title": 0, "other": 0}
    for request, style, output, _ in pairs(sample(6, typed)):
        intent = request.intent
        if style != "high":
            continue
        if request.task.name == "title":
            titled = title_case(intent)
            assert titled in output, (titled, output)  # "Rainy Evening in Tokyo", "iPhone", "Café"
            assert "IPhone" not in output
            seen["title"] += 1
        else:
            assert intent in output, (intent, output)  # as typed, even in lower-case prompts
            seen["other"] += 1
    assert seen["title"] and seen["other"]
    assert title_case("café in São Paulo") == "Café in São Paulo"


def test_styles_spread_along_minilm_relevance() -> None:
    """The relevance reward the student learns from: high > medium > low by a clear margin."""
    from training.rewards import Embedder

    by_style: dict[str, list[tuple[str, str]]] = {"high": [], "medium": [], "low": []}
    intents = random.Random(0).sample(load_intents(), 15)
    for request, style, output, _ in pairs(sample(3, intents)):
        by_style[style].append((request.intent, output))
    embedder = Embedder()
    mean = {
        style: statistics.fmean(embedder.relevance([i for i, _ in items], [o for _, o in items]))
        for style, items in by_style.items()
    }
    assert mean["high"] > mean["medium"] + 0.1 > mean["low"] + 0.2, mean


def test_thousands_of_samples_per_second() -> None:
    intents = load_intents()[:500]
    started = time.perf_counter()
    outputs = sum(len(c.outputs) for c in sample(4, intents))
    rate = outputs / (time.perf_counter() - started)
    assert outputs == 500 * 4 * len(load_tasks())
    assert rate > 1000, f"{rate:.0f} samples/s"


def test_task_without_recipe_is_refused() -> None:
    import dataclasses

    from training.teachers.base import TeacherError

    teacher = ProceduralTeacher()
    task = dataclasses.replace(load_tasks(["title"])["title"], procedural=None)
    request = Request("k", task, "holiday sale", "general", (), 1)
    with pytest.raises(TeacherError, match="no \\[procedural\\] recipe"):
        complete(teacher, [request])
