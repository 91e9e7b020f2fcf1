"""Padding: how prompts of different lengths share one prefill.

Left padding (the default): every row's real tokens end at the last column, so the next token of
every row goes in the same column and the batch KV cache stays right-aligned (kv_cache.py).
Right padding: every row's real tokens start at column 0, for a ragged cache whose graph reads
each row's own length from the mask (kv_cache.py). Either way pads are masked out
(attention_mask 0) and take a valid position; real tokens count positions from their row's
offset (0 unless given: contract.positions.position_offset aligns every row's output at one
position; a negative offset puts a long prompt's first tokens at position 0, as training does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad(
    prompts: Sequence[Sequence[int]], pad_id: int, offsets: Sequence[int] | None = None, right: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask, position_ids [batch, longest prompt], all int64."""
    width = max(len(p) for p in prompts)
    input_ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        if prompt:
            columns = slice(0, len(prompt)) if right else slice(width - len(prompt), width)
            input_ids[row, columns] = prompt
            attention_mask[row, columns] = 1
    position_ids = np.clip(attention_mask.cumsum(-1) - 1, 0, None)
    if offsets is not None:
        position_ids = np.maximum(position_ids + np.asarray(offsets, np.int64)[:, None] * attention_mask, 0)
    return input_ids, attention_mask, position_ids
