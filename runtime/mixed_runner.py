"""`MixedRunner`: a variant's mixed graph (contract/manifest.py, `mixed_file`) behind the plain
runner contract (runtime/runner.py), so that the one decode loop (runtime/decode.py) drives it.

Each prefill runs as the graph's prompts beside a one-token batch row, each decode step as its
batch rows beside a one-token prompt, so both parts of the graph, and the prompt cache handed on
to the batch, are exercised. Export verification holds the mixed graph to its variant's gates
through it (export/verify.py), and the engine's warm-up initialises the mixed session with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.onnx_runner import OnnxRunner, Prompts


class MixedRunner:
    def __init__(self, runner: OnnxRunner) -> None:
        if not runner.mixed_prefill:
            raise ValueError(f"variant {runner.variant.name} has no mixed graph loaded")
        self.runner = runner
        self.n_layer, self.n_kv_head, self.head_dim = runner.n_layer, runner.n_kv_head, runner.head_dim
        self.vocab_size = runner.vocab_size

    def empty_past(self, batch: int) -> list[Any]:
        return self.runner.empty_past(batch)

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: list[Any]
    ) -> tuple[np.ndarray, list[Any]]:
        one = np.ones((1, 1), np.int64)
        if attention_mask.shape[1] == input_ids.shape[1]:  # a prefill (no past columns): the prompts
            prompts = Prompts(input_ids, attention_mask, position_ids, past)
            logits, _ = self.runner.forward(one, one, one - 1, self.runner.empty_past(1), prompts)
            return logits[1:], prompts.past
        beside = Prompts(one, one, one - 1, self.runner.empty_past(1))
        logits, present = self.runner.forward(input_ids, attention_mask, position_ids, past, beside)
        return logits[:-1], present
