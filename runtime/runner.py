"""The runner contract: what the decode loop, the sampler and the scheduler need of a model.

`forward(input_ids, attention_mask, position_ids, past) -> (logits, present)`: ids, mask and
positions are int64 numpy arrays [batch, tokens]; logits come back as float32 numpy [batch, vocab]
for the last position only, an array the caller owns (the host sampler may work in it); `past`
and `present` are one tensor per entry of contract.manifest.past_names(), [batch, n_kv_head, seq,
head_dim], in whatever form the runner keeps them (numpy for PyTorch, ORT values on the device
for ONNX): callers only hand them back.
`empty_past(batch)` is the past of a prefill (seq 0).

The shapes speak of key/value heads, not attention heads, so a decoder with grouped-query
attention (fewer key/value heads than query heads) needs no change here.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Runner(Protocol):
    n_layer: int
    n_kv_head: int
    head_dim: int
    vocab_size: int

    def empty_past(self, batch: int) -> list[Any]: ...

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: list[Any]
    ) -> tuple[np.ndarray, list[Any]]: ...
