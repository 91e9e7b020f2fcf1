"""UDRL examples: scored teacher samples turned into `command + intent -> output` token ids.

Hindsight relabelling: every sample trains the command it *achieved*: its own word
count (clamped to the command's range) and the relevance level its score falls in.
The level edges are tertiles of relevance on the train split, fitted here once and
saved with the model (CommandSpec.relevance_edges); the server only reads them.

Copy augmentation (`swap_intent_words`, `--copy-share`) gives a share of examples fresh
random English words, substituted consistently in intent and output, so that recalling
a memorised intent is useless and copying is the only way to lower the loss. The words
come from GPT-2's own vocabulary and the compact tokenizer splits most of them into
sub-word pieces, as it splits an unseen user intent. It is off by default: measured at
the CPU budget (bench/training.md) it cost more relevance than it gave, because the
test intents mostly reuse training words, and the swapped examples are out of
distribution (their relevance labels are the original's, not re-measured).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from contract.command import (
    COPY_SLOTS,
    EOS_TOKEN,
    OUTPUT_POSITION,
    PLAIN_WORDS,
    SPECIAL_TOKENS,
    CommandSpec,
    TokenizerLike,
    prompt_ids,
    special_ids,
)
from contract.copy import encode_output
from contract.positions import ALIGNED, Countdown, countdown, sequence_positions
from training.tokenizer import GPT2_BPE_DIR

IGNORE_INDEX = -100  # label of positions that carry no loss (the command and intent, padding)
LENGTH_TAIL = 0.005  # share of a task's examples at each end of its lengths left out of its command range

# Words kept as they are when swapping intent words: swapping "for" teaches nothing about copying.
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "at",
        "by",
        "for",
        "from",
        "in",
        "into",
        "of",
        "on",
        "or",
        "the",
        "to",
        "with",
        "your",
        "my",
        "our",
    ]
)
_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Example:
    ids: list[int]  # command + intent + <|output|> + output + <|endoftext|>
    n_prompt: int  # how many leading ids are the prompt (no loss on them)
    positions: list[int]  # each id's position (contract/positions.py)

    @property
    def span(self) -> int:
        """The context it needs, as serving counts it (contract.positions.context_room): its first
        position and its tokens. It fits the model if this is at most n_positions."""
        return self.positions[0] + len(self.ids)


def fit_command_spec(
    train_records: Sequence[dict[str, Any]],
    max_words: int = 48,
    copy_slots: int = COPY_SLOTS,
    output_position: int = OUTPUT_POSITION,
    command_format: str = SPECIAL_TOKENS,
    positions: str = ALIGNED,
) -> CommandSpec:
    """Tasks (in first-seen order), per-task relevance tertiles and per-task trained length
    ranges from the train split.

    A task's range drops the rarest lengths at either end (LENGTH_TAIL of its examples each):
    a length seen a handful of times is not one the model can be asked for. A plain-words
    spec (a pretrained student) has no copy tokens: the model copies with what pretraining
    taught it. Its outputs count up from the prompt (no output position) unless it asks for
    countdown positions, which need one."""
    scores: dict[str, list[float]] = {}
    lengths: dict[str, list[int]] = {}
    for record in train_records:
        scores.setdefault(record["task"], []).append(float(record["relevance"]))
        lengths.setdefault(record["task"], []).append(int(record["words"]))
    if not scores:
        raise ValueError("no training records to fit the command vocabulary on")
    edges = {task: (float(np.quantile(s, 1 / 3)), float(np.quantile(s, 2 / 3))) for task, s in scores.items()}
    ranges = {}
    for task, counts in lengths.items():
        low, high = np.quantile(counts, [LENGTH_TAIL, 1 - LENGTH_TAIL], method="nearest")
        ranges[task] = (max(1, int(low)), min(max_words, int(high)))
    plain = command_format == PLAIN_WORDS
    return CommandSpec(
        tasks=tuple(scores),
        max_words=max_words,
        relevance_edges=edges,
        task_words=ranges,
        copy_slots=0 if plain else copy_slots,
        output_position=0 if plain and positions == ALIGNED else output_position,
        format=command_format,
        positions=positions,
    )


def hindsight_command(spec: CommandSpec, record: dict[str, Any]) -> tuple[str, int, str]:
    """The command this sample achieved: (task, words, relevance level)."""
    task = record["task"]
    return task, spec.clamp_words(int(record["words"])), spec.relevance_level(task, float(record["relevance"]))


def encode_example(
    tokenizer: TokenizerLike, spec: CommandSpec, counter: Countdown | None, record: dict[str, Any]
) -> Example:
    """`counter`: the spec's countdown, `contract.positions.countdown(spec, tokenizer)` (None for
    aligned positions), made once by the caller: it scans the vocabulary."""
    task, words, level = hindsight_command(spec, record)
    prompt = prompt_ids(tokenizer, spec, task, words, level, record["intent"], task_range=False)
    output = encode_output(tokenizer, record["intent"], record["output"], spec.copy_slots)
    output += special_ids(tokenizer, [EOS_TOKEN])
    positions = sequence_positions(spec, counter, len(prompt), words, output)
    return Example(ids=prompt + output, n_prompt=len(prompt), positions=positions)


@lru_cache(maxsize=1)
def word_pool() -> tuple[str, ...]:
    """Lower-case English words from GPT-2's vocabulary (tokens " word", 3-12 letters)."""
    vocab = json.loads((GPT2_BPE_DIR / "vocab.json").read_text(encoding="utf-8"))
    words = (t[1:] for t in vocab if t.startswith("\u0120") and 3 <= len(t) - 1 <= 12)
    return tuple(sorted(w for w in words if w.isascii() and w.isalpha() and w.islower()))


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word.capitalize()
    return word


def swap_intent_words(record: dict[str, Any], rng: random.Random, pool: Sequence[str] | None = None) -> dict[str, Any]:
    """The record with each content word of its intent replaced by a random word,
    in the intent and wherever the output repeats it (keeping case and a plural "s").

    Word for word, so the output's word count, and with it the length command, is
    unchanged. The relevance label is kept: the output relates to the new intent as
    the original related to the old one.
    """
    pool = pool or word_pool()
    mapping = {w.lower(): rng.choice(pool) for w in _WORD.findall(record["intent"]) if w.lower() not in STOP_WORDS}
    mapping = {old: new for old, new in mapping.items() if len(old) >= 2}
    if not mapping:
        return record
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(mapping, key=len, reverse=True))) + r")(e?s)?\b", re.I)

    def substitute(match: re.Match[str]) -> str:
        return _match_case(match.group(1), mapping[match.group(1).lower()]) + (match.group(2) or "")

    intent, output = pattern.sub(substitute, record["intent"]), pattern.sub(substitute, record["output"])
    return {**record, "intent": intent, "output": output}


def epoch_examples(
    tokenizer: TokenizerLike,
    spec: CommandSpec,
    records: Sequence[dict[str, Any]],
    copy_share: float,
    seed: int,
    max_len: int,
) -> list[Example]:
    """One epoch's examples: a fresh `copy_share` of records get swapped intent words.

    Seeded by (seed, epoch) through `seed`, so a resumed run rebuilds the same epoch.
    Examples longer than the model's context are dropped, not truncated: a truncated
    example would teach the model to stop without EOS.
    """
    rng = random.Random(seed)
    counter = countdown(spec, tokenizer)
    examples = []
    for record in records:
        if copy_share > 0 and rng.random() < copy_share:
            record = swap_intent_words(record, rng)
        example = encode_example(tokenizer, spec, counter, record)
        if example.span <= max_len:
            examples.append(example)
    return examples


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int, pool: int = 64) -> list[list[int]]:
    """Batches of indices of similar length, in random order.

    Shuffle, cut into pools of `pool` batches, sort each pool by length, and slice it:
    batches are random yet pad little (a t2i prompt is not batched with a title).
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    step = batch_size * pool
    for start in range(0, len(order), step):
        chunk = sorted(order[start : start + step], key=lengths.__getitem__)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: Iterable[Example], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded (input_ids, attention_mask, labels, position_ids); labels are IGNORE_INDEX
    on the prompt and on padding, so the loss is on the output and its EOS only. Each row's
    positions are its example's, as serving's will be (contract/positions.py); padding takes 0."""
    examples = list(examples)
    width = max(len(e.ids) for e in examples)
    input_ids = np.full((len(examples), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(examples), width), dtype=np.int64)
    labels = np.full((len(examples), width), IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros((len(examples), width), dtype=np.int64)
    for row, example in enumerate(examples):
        n = len(example.ids)
        input_ids[row, :n] = example.ids
        attention_mask[row, :n] = 1
        labels[row, example.n_prompt : n] = example.ids[example.n_prompt :]
        position_ids[row, :n] = example.positions
    return input_ids, attention_mask, labels, position_ids
