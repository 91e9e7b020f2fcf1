"""Left padding: how prompts of different lengths share one prefill.

Every row's real tokens end at the last column, so the next token of every row goes in the
same column and the batch KV cache stays right-aligned (kv_cache.py). Pads are masked out
(attention_mask 0) and take position 0; real tokens count positions from their row's offset
(0 unless given: contract.positions.position_offset aligns every row's output at one position;
a negative offset puts a long prompt's first tokens at position 0, as training does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, offsets: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask, position_ids [batch, longest prompt], all int64."""
    width = max(len(p) for p in prompts)
    input_ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        if prompt:
            input_ids[row, width - len(prompt) :] = prompt
            attention_mask[row, width - len(prompt) :] = 1
    position_ids = np.clip(attention_mask.cumsum(-1) - 1, 0, None)
    if offsets is not None:
        position_ids = np.maximum(position_ids + np.asarray(offsets, np.int64)[:, None] * attention_mask, 0)
    return input_ids, attention_mask, position_ids
