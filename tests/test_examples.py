"""Command fitting, hindsight labels, example layout, copy augmentation and batching."""

from __future__ import annotations

import random

import numpy as np
import pytest
from tokenizers import Tokenizer
from toy_records import toy_records

from contract.command import EOS_TOKEN, OUTPUT_TOKEN, CommandSpec, prompt_ids
from contract.copy import copy_table
from contract.positions import countdown
from training.examples import (
    IGNORE_INDEX,
    collate,
    encode_example,
    epoch_examples,
    fit_command_spec,
    hindsight_command,
    length_bucketed_batches,
    swap_intent_words,
    word_pool,
)
from training.tokenizer import add_command_tokens, compact_gpt2_tokenizer


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return toy_records()


@pytest.fixture(scope="module")
def spec(records: list[dict]) -> CommandSpec:
    return fit_command_spec([r for r in records if r["split"] == "train"], max_words=16)


@pytest.fixture(scope="module")
def tokenizer(records: list[dict], spec: CommandSpec) -> Tokenizer:
    corpus = [r[k] for r in records if r["split"] == "train" for k in ("intent", "output")]
    return add_command_tokens(compact_gpt2_tokenizer(corpus), spec.special_tokens())


def test_relevance_edges_are_train_tertiles(records: list[dict], spec: CommandSpec) -> None:
    assert spec.tasks == ("t2i_prompt", "search_queries", "title")
    for task in spec.tasks:
        scores = [r["relevance"] for r in records if r["split"] == "train" and r["task"] == task]
        low, high = spec.relevance_edges[task]
        assert low < high
        levels = [spec.relevance_level(task, s) for s in scores]
        for level in ("low", "medium", "high"):  # tertiles: each level holds about a third
            assert abs(levels.count(level) / len(levels) - 1 / 3) < 0.1
    # The edges survive the trip through udrl.json / manifest.json unchanged.
    assert CommandSpec.from_dict(spec.to_dict()) == spec


def test_hindsight_command_is_what_the_sample_achieved(spec: CommandSpec) -> None:
    low, high = spec.relevance_edges["title"]
    record = {"task": "title", "words": 40, "relevance": high + 0.01}
    assert hindsight_command(spec, record) == ("title", 16, "high")  # words clamped to max_words
    assert hindsight_command(spec, {**record, "words": 3, "relevance": low - 0.01}) == ("title", 3, "low")


def test_example_is_the_serving_prompt_then_output_and_eos(
    tokenizer: Tokenizer, spec: CommandSpec, records: list[dict]
) -> None:
    record = next(r for r in records if r["task"] == "title" and r["split"] == "train")
    example = encode_example(tokenizer, spec, countdown(spec, tokenizer), record)
    task, words, level = hindsight_command(spec, record)
    # The same function the server formats requests with: the prompts cannot drift apart.
    assert example.ids[: example.n_prompt] == prompt_ids(tokenizer, spec, task, words, level, record["intent"])
    assert example.ids[example.n_prompt - 1] == tokenizer.token_to_id(OUTPUT_TOKEN)
    assert example.ids[-1] == tokenizer.token_to_id(EOS_TOKEN)
    table = copy_table(tokenizer, record["intent"], spec.copy_slots)
    output_text = tokenizer.decode(table.expand(example.ids[example.n_prompt : -1]))
    assert output_text.strip() == record["output"]


def test_collate_puts_loss_on_output_and_eos_only(tokenizer: Tokenizer, spec: CommandSpec, records: list[dict]) -> None:
    examples = [encode_example(tokenizer, spec, countdown(spec, tokenizer), r) for r in records[:3]]
    pad = tokenizer.token_to_id(EOS_TOKEN)
    ids, mask, labels, positions = collate(examples, pad)
    for row, example in enumerate(examples):
        n = len(example.ids)
        # positions as serving gives them: the output's first token at the spec's output position
        assert positions[row, example.n_prompt] == max(spec.output_position, example.n_prompt)
        assert (np.diff(positions[row]) == 1).all()
        assert ids[row, :n].tolist() == example.ids
        assert mask[row].sum() == n
        assert (labels[row, : example.n_prompt] == IGNORE_INDEX).all()
        assert labels[row, example.n_prompt : n].tolist() == example.ids[example.n_prompt :]
        assert (labels[row, n:] == IGNORE_INDEX).all()


def test_swap_intent_words_keeps_length_and_moves_every_mention() -> None:
    record = {"intent": "Holiday sale", "output": "Holiday Sales for the holiday, SALE now", "words": 7}
    swapped = swap_intent_words(record, random.Random(3), pool=["lantern", "orbit"])
    new_intent = swapped["intent"].lower().split()
    assert len(new_intent) == 2 and set(new_intent) <= {"lantern", "orbit"}
    out = swapped["output"]
    assert len(out.split()) == len(record["output"].split())
    assert "holiday" not in out.lower() and "sale" not in out.lower()
    assert out.split()[0][0].isupper() and out.split()[-2].isupper()  # case kept: "Holiday" -> "X", "SALE" -> "Y"
    assert out.split()[1].endswith("s")  # plural kept
    assert swap_intent_words({"intent": "a to the", "output": "x"}, random.Random(0)) == {
        "intent": "a to the",
        "output": "x",
    }


def test_word_pool_is_plain_english_words() -> None:
    pool = word_pool()
    assert len(pool) > 10_000
    assert all(w.isalpha() and w.islower() for w in pool[:500])


def test_epoch_examples_are_reproducible_and_augmented(
    tokenizer: Tokenizer, spec: CommandSpec, records: list[dict]
) -> None:
    train = [r for r in records if r["split"] == "train"]
    first = epoch_examples(tokenizer, spec, train, copy_share=0.5, seed=7, max_len=128)
    again = epoch_examples(tokenizer, spec, train, copy_share=0.5, seed=7, max_len=128)
    plain = epoch_examples(tokenizer, spec, train, copy_share=0.0, seed=7, max_len=128)
    assert [e.ids for e in first] == [e.ids for e in again]  # a resumed run rebuilds the same epoch
    changed = sum(a.ids != b.ids for a, b in zip(first, plain, strict=True))
    assert 0.3 < changed / len(plain) < 0.7
    assert len(epoch_examples(tokenizer, spec, train, 0.0, 7, max_len=12)) < len(plain)  # too long: dropped


def test_length_bucketed_batches_cover_everything_and_pad_little() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 100, size=1000).tolist()
    batches = length_bucketed_batches(lengths, batch_size=16, seed=1, pool=8)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches != length_bucketed_batches(lengths, batch_size=16, seed=2, pool=8)

    def padding(bs: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    order = rng.permutation(1000).tolist()
    unsorted = [order[i : i + 16] for i in range(0, 1000, 16)]
    assert padding(batches) < padding(unsorted) / 4
