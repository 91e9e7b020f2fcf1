"""Batched sampling with each row's own parameters and random generator.

Every row (one sample of one request) carries its own temperature, top_k, top_p,
repetition penalty and numpy Generator. A sampled row draws exactly one uniform number
per token from its own generator, whatever else is in the batch, so a seeded request
gives the same text alone or inside a busy batch (as long as its logits are the same:
true for FP32/FP16; ORT's dynamic INT8 quantises activations per tensor, i.e. across
the whole batch, so INT8 logits depend slightly on the batch mates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# top_p is exact but sorting a 50k vocabulary per row per step is slow; the nucleus of a
# trained model almost always lies in its few hundred most likely tokens, so sort those
# first and fall back to the full sort only when they hold less than top_p of the mass.
NUCLEUS_CANDIDATES = 256


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # 1: off; >1 discourages repeating generated tokens


@dataclass
class Row:
    """What the sampler needs to know about one row of the batch."""

    params: SamplingParams
    generator: np.random.Generator
    generated: list[int]
    banned: list[int]  # token ids this row may not produce now (e.g. EOS below the minimum length)


def apply_repetition_penalty(logits: np.ndarray, generated: list[int], penalty: float) -> None:
    """CTRL-style: shrink the logits of tokens already generated. In place.

    Only generated tokens count, not the prompt: copying the user's intent into the
    output is what relevance asks for, and must not be penalised.
    """
    if penalty == 1.0 or not generated:
        return
    ids = np.unique(np.asarray(generated, dtype=np.int64))
    values = logits[ids]
    logits[ids] = np.where(values > 0, values / penalty, values * penalty)


def nucleus_mask(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Boolean mask of the smallest set of tokens whose probability reaches top_p."""
    total = probs.sum()
    k = min(NUCLEUS_CANDIDATES, probs.size)
    candidates = np.argpartition(-probs, k - 1)[:k] if k < probs.size else np.arange(probs.size)
    order = candidates[np.argsort(-probs[candidates], kind="stable")]
    cumulative = np.cumsum(probs[order])
    if cumulative[-1] < top_p * total and k < probs.size:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
    # keep tokens whose preceding mass is below top_p: the first one is always kept
    keep = order[(cumulative - probs[order]) < top_p * total]
    mask = np.zeros(probs.size, dtype=bool)
    mask[keep] = True
    return mask


def sample(logits: np.ndarray, rows: list[Row]) -> np.ndarray:
    """One token id per row from logits [rows, vocab] (float32). Does not modify `logits`."""
    logits = np.array(logits, dtype=np.float32, copy=True)
    tokens = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        x = logits[i]
        apply_repetition_penalty(x, row.generated, row.params.repetition_penalty)
        if row.banned:
            x[row.banned] = -np.inf
        if row.params.temperature <= 0.0:
            tokens[i] = int(np.argmax(x))
            continue
        x = x / row.params.temperature
        if 0 < row.params.top_k < x.size:
            kth = np.partition(x, x.size - row.params.top_k)[x.size - row.params.top_k]
            x[x < kth] = -np.inf
        probs = np.exp(x - x.max())
        if row.params.top_p < 1.0:
            probs[~nucleus_mask(probs, row.params.top_p)] = 0.0
        cumulative = np.cumsum(probs, dtype=np.float64)
        u = row.generator.random() * cumulative[-1]
        tokens[i] = min(int(np.searchsorted(cumulative, u, side="right")), x.size - 1)
    return tokens


def make_generator(seed: int | None, sample_index: int) -> np.random.Generator:
    """Sample i of a seeded request gets its own stream, a pure function of (seed, i)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed, sample_index])
