"""The one decode loop: a batch of prompts through any runner, one token per step.

Prompts are left-padded into one batch (padding.py), prefilled with an empty past, then
decoded one token per row per step through the KV cache, each token chosen by the runtime's
sampler (sampler.py), the same one the server's scheduler calls. Evaluation, the export's
parity checks, the export bench and the engine's warm-up all run this loop, so what is
evaluated and verified is what is served. (The server's scheduler runs the same steps with
requests joining and leaving the batch: kv_cache.py.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contract.positions import Countdown
from runtime.padding import pad
from runtime.runner import Runner
from runtime.sampler import GREEDY, NO_TOKEN, Row, Sampler, SamplingParams, make_generator


class NonFiniteLogits(ValueError):
    """The model's logits for a prompt were not finite (NaN or infinity): nothing to sample from,
    so no text to evaluate or check; the server fails such a request alone instead."""


@dataclass(frozen=True)
class Generation:
    ids: list[int]  # generated ids, without the EOS
    finished: bool  # False: stopped by max_new_tokens before the model wrote EOS


@dataclass
class Decoded:
    generations: list[Generation]
    logits: np.ndarray | None  # [steps, batch, vocab] with keep_logits: step 0 is the prefill's
    forward_s: list[float]  # each forward's wall time: [0] the prefill, then one per decode step


def generate(
    runner: Runner,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int | None,
    params: SamplingParams = GREEDY,
    generators: Sequence[np.random.Generator] | None = None,
    never: Sequence[int] = (),
    forced: np.ndarray | None = None,
    keep_logits: bool = False,
    row_never: Sequence[Sequence[int]] | None = None,
    offsets: Sequence[int] | None = None,
    countdown: Countdown | None = None,
    words: Sequence[int] | None = None,
) -> Decoded:
    """Decode up to `max_new_tokens` tokens for each prompt, all prompts in one batch.

    Row i samples with `generators[i]` (default: `make_generator(0, i)`); the server gives
    sample i of a request seeded s `make_generator(s, i)`, so the same seed and prompt give the
    same tokens here and there. `never`: token ids no row may produce; `row_never[i]`: ids
    row i may not produce (the copy tokens its intent has no word for, contract/copy.py).
    `offsets[i]`: row i's first position (contract.positions.position_offset; default 0). A countdown
    model (`countdown`, contract/positions.py) numbers row i's output tokens down from `words[i]`,
    the words its command asks for, instead of counting them up. `eos_id` None: no
    stopping, every row runs all steps (parity checks, timing). `forced` [batch, steps]:
    teacher forcing, the token fed after step t is `forced[:, t]` instead of the sampled one
    (to compare two runners position by position).
    """
    batch = len(prompts)
    pad_id = eos_id if eos_id is not None else 0
    input_ids, mask, positions = pad(prompts, pad_id, offsets)
    shift = np.asarray(offsets if offsets is not None else [0] * batch, np.int64)[:, None]
    if countdown is not None:
        if words is None:
            raise ValueError("a countdown model needs each row's length in words")
        word_starts = np.fromiter(countdown.word_starts, np.int64)
        words_left = np.asarray(words, np.int64)[:, None]
    if generators is None:
        generators = [make_generator(0, i) for i in range(batch)]
    rows = [
        Row(params, g, generated=[], banned=[], never=list(row_never[i]) if row_never else [])
        for i, g in enumerate(generators)
    ]
    sampler = Sampler(runner, never)
    every_row = np.arange(batch)
    past = runner.empty_past(batch)
    finished = np.zeros(batch, dtype=bool)
    all_logits: list[np.ndarray] = []
    forward_s: list[float] = []
    for step in range(max_new_tokens):
        result = sampler.run(input_ids, mask, positions, past, rows, every_row, keep_logits or forced is not None)
        past = result.present
        forward_s.append(result.forward_s)
        if keep_logits and result.logits is not None:
            all_logits.append(result.logits)
        tokens = result.tokens if forced is None else forced[:, step].astype(np.int64)
        if (unsampleable := np.flatnonzero(~finished & (tokens == NO_TOKEN))).size:
            raise NonFiniteLogits(
                f"prompt {unsampleable[0]}: the model's logits are not finite (NaN or infinity) "
                f"at output token {step + 1}"
            )
        for row in np.flatnonzero(~finished):
            if eos_id is not None and tokens[row] == eos_id:
                finished[row] = True
            else:
                rows[row].generated.append(int(tokens[row]))
        if finished.all():
            break
        # Finished rows keep decoding EOS (cheaper than reshaping the batch); their tokens are ignored.
        tokens = np.where(finished, pad_id, tokens)
        if countdown is not None:
            words_left -= np.isin(tokens, word_starts)[:, None]
            positions = countdown.base + np.maximum(words_left, 0)
        else:
            positions = mask.sum(axis=1, keepdims=True) + shift
        input_ids = tokens[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
    generations = [Generation(row.generated, bool(done)) for row, done in zip(rows, finished, strict=True)]
    return Decoded(generations, np.stack(all_logits) if keep_logits else None, forward_s)
