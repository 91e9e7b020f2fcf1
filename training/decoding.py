"""One sampling loop over any runner (PyTorch checkpoint or ONNX variant).

Prompts are left-padded into one batch (attention_mask 0 on pads, position_ids =
cumsum(mask) - 1), prefilled with an empty past, then decoded one token per step
through the KV cache, exactly as the ONNX decoder contract lays it out. Evaluation
uses this loop for every runner, so differences between runners are the models'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Runner(Protocol):
    n_layer: int
    n_head: int
    head_dim: int
    vocab_size: int
    kv_dtype: np.dtype

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]: ...


@dataclass(frozen=True)
class Generation:
    ids: list[int]  # generated ids, without the EOS
    finished: bool  # False: stopped by max_new_tokens before the model wrote EOS


def sample_tokens(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """One token per row: greedy at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(axis=-1)
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    order = np.argsort(-probs, axis=-1)
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
    keep = np.cumsum(sorted_probs, axis=-1) - sorted_probs < top_p
    sorted_probs = np.where(keep, sorted_probs, 0.0)
    cumulative = np.cumsum(sorted_probs, axis=-1)
    draws = rng.random(len(logits)) * cumulative[:, -1]
    picks = (cumulative < draws[:, None]).sum(axis=-1)
    return order[np.arange(len(logits)), np.minimum(picks, order.shape[1] - 1)]


def generate(
    runner: Runner,
    prompts: Sequence[Sequence[int]],
    eos_id: int,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
) -> list[Generation]:
    """Sample one continuation per prompt, all prompts decoding together in one batch."""
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    input_ids = np.full((batch, width), eos_id, dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    past = [np.zeros((batch, runner.n_head, 0, runner.head_dim), runner.kv_dtype) for _ in range(2 * runner.n_layer)]
    rng = np.random.default_rng(seed)
    generated: list[list[int]] = [[] for _ in range(batch)]
    finished = np.zeros(batch, dtype=bool)
    for _ in range(max_new_tokens):
        logits, past = runner.forward(input_ids, mask, positions, past)
        tokens = sample_tokens(logits, temperature, top_p, rng)
        for row in np.flatnonzero(~finished):
            if tokens[row] == eos_id:
                finished[row] = True
            else:
                generated[row].append(int(tokens[row]))
        if finished.all():
            break
        # Finished rows keep decoding EOS (cheaper than reshaping the batch); their tokens are ignored.
        tokens = np.where(finished, eos_id, tokens)
        positions = mask.sum(axis=1, keepdims=True)
        input_ids = tokens[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
    return [Generation(ids, bool(done)) for ids, done in zip(generated, finished, strict=True)]
