"""Reward functions on hand-made cases, and the score stage's cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.rewards import Embedder, distinct_n, length_reward, mean_pairwise_cosine_distance
from training.score import journal_path, read_scored, score_records


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_length_counts_whitespace_words() -> None:
    assert length_reward("a red  fox,\tjumping\n") == 4
    assert length_reward("   ") == 0


def test_distinct_2_on_hand_made_groups() -> None:
    assert distinct_n(["a b c", "d e f"], 2) == 1.0  # 4 bigrams, all different
    assert distinct_n(["a b a b", "A B"], 2) == pytest.approx(2 / 4)  # ab, ba, ab, ab (case-folded)
    assert distinct_n(["one", "two"], 2) == 0.0  # no bigram at all: no diversity shown


def test_mean_pairwise_cosine_distance() -> None:
    same = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    orthogonal = np.array([[1.0, 0.0], [0.0, 1.0]])
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert mean_pairwise_cosine_distance(same) == pytest.approx(0.0)
    assert mean_pairwise_cosine_distance(orthogonal) == pytest.approx(1.0)
    assert mean_pairwise_cosine_distance(opposite) == pytest.approx(2.0)
    assert mean_pairwise_cosine_distance(same[:1]) == 0.0


def test_relevance_ranks_related_above_unrelated(embedder: Embedder) -> None:
    intents = ["holiday sale", "holiday sale", "cozy reading nook"]
    outputs = [
        "festive holiday sale banner with discounts on gifts",
        "quarterly tax filing deadline for corporations",
        "a cozy reading nook with a soft armchair and a bookshelf",
    ]
    scores = embedder.relevance(intents, outputs)
    assert scores.shape == (3,)
    assert scores[0] > scores[1] + 0.2
    assert scores[2] > 0.5
    with pytest.raises(ValueError):
        embedder.relevance(["one"], [])


def test_embedder_encodes_each_text_once(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    embedder.embed(["a lighthouse at dusk", "a lighthouse  at dusk", "harbour"])
    calls = []
    real = embedder.model.encode
    monkeypatch.setattr(embedder.model, "encode", lambda texts, **kw: calls.append(list(texts)) or real(texts, **kw))
    vectors = embedder.embed(["harbour", "a lighthouse at dusk", "a new text"])
    assert calls == [["a new text"]]  # whitespace-normalised duplicates and seen texts come from the cache
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.diversity(["harbour", "harbour"]) == pytest.approx(0.0, abs=1e-5)
    assert embedder.diversity(["harbour", "a new text"]) > 0.3


def test_score_records_reuses_cached_scores(embedder: Embedder) -> None:
    records = [
        {"id": "a", "task": "title", "intent": "holiday sale", "output": "Big Holiday Sale", "split": "train"},
        {"id": "b", "task": "title", "intent": "holiday sale", "output": "Tax Forms Explained", "split": "train"},
    ]
    scored, new = score_records(records, embedder)
    assert new == 2
    assert [r["words"] for r in scored] == [3, 3]
    assert scored[0]["relevance"] > scored[1]["relevance"]
    # Everything cached: no model needed (embedder=None would load one).
    again, new = score_records(records, None, cached=scored)
    assert new == 0 and again == scored
    # A record whose text changed under the same id is scored afresh.
    changed = [records[0], {**records[1], "output": "Holiday Sale Today"}]
    rescored, new = score_records(changed, embedder, cached=scored)
    assert new == 1
    assert rescored[1]["relevance"] > scored[1]["relevance"]


def test_score_journal_lets_a_killed_run_keep_its_batches(embedder: Embedder, tmp_path: Path) -> None:
    records = [
        {"id": str(i), "task": "title", "intent": "harbour lights", "output": f"Harbour Lights {i}", "split": "train"}
        for i in range(5)
    ]
    journal = journal_path(tmp_path / "scored.jsonl")
    first, _ = score_records(records[:3], embedder, journal=journal)
    with open(journal, "a") as f:
        f.write('{"id": "torn')  # what a kill mid-write leaves behind
    cached = read_scored(journal)
    assert [r["id"] for r in cached] == ["0", "1", "2"]
    scored, new = score_records(records, embedder, cached=cached)
    assert new == 2  # only the records the killed run never reached
    assert [r["relevance"] for r in scored[:3]] == [r["relevance"] for r in first]


def test_an_uncached_vector_depends_on_its_own_call_only(embedder: Embedder) -> None:
    # what `score` relies on to resume exactly: a batch's vectors do not depend on what earlier
    # batches encoded (with the cache, a text first met in another batch keeps that batch's rounding)
    texts = ["rustic bakery logo", "summer road trip playlist cover", "neon cafe sign at night"]
    embedder.cache.clear()
    alone = embedder.embed(texts, cached=False)
    assert embedder.cache == {}  # nothing kept
    embedder.embed(["rustic bakery logo", "a much longer text about a rustic bakery logo on a paper bag"])
    assert "rustic bakery logo" in embedder.cache  # the cached path keeps what it encodes
    assert np.array_equal(embedder.embed(texts, cached=False), alone)
