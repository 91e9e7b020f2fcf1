"""Small scored teacher records for the training and evaluation tests.

A miniature of what `training generate` + `training score` produce: for each intent,
outputs of many lengths that repeat the intent (relevant) or not (generic filler),
with a relevance stand-in that rises with how much of the intent the output repeats.
Deterministic, so a test's numbers depend only on the code under test.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

TASKS = ("t2i_prompt", "search_queries", "title")
TRAIN_INTENTS = ["holiday sale", "cozy reading nook", "mountain cabin", "summer picnic", "city night", "garden party"]
TEST_INTENTS = ["desert sunrise", "winter market"]
FILLER = [
    "soft",
    "light",
    "warm",
    "colors",
    "detailed",
    "photo",
    "calm",
    "mood",
    "bright",
    "clean",
    "simple",
    "modern",
    "classic",
    "scene",
]


def toy_records(seed: int = 0, per_intent: int = 12) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    for split, intents in (("train", TRAIN_INTENTS), ("val", TRAIN_INTENTS[:2]), ("test", TEST_INTENTS)):
        for task in TASKS:
            for intent in intents:
                for k in range(per_intent):
                    copies = k % 3  # 0: generic, 1: once, 2: twice
                    words = intent.split() * copies + rng.sample(FILLER, rng.randint(1, 8))
                    output = " ".join(words)
                    if task == "title":
                        output = output.title()
                    relevance = round(0.15 + 0.3 * copies + 0.05 * rng.random(), 4)
                    records.append(
                        {
                            "id": f"{split}-{task}-{intent}-{k}",
                            "task": task,
                            "intent": intent,
                            "split": split,
                            "output": output,
                            "teacher": "toy",
                            "words": len(output.split()),
                            "relevance": relevance,
                        }
                    )
    return records


def write_toy_scored(path: Path, **kwargs: Any) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in toy_records(**kwargs)))
    return path
