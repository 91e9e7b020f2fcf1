"""A runner over the PyTorch checkpoint: it satisfies runtime.runner.Runner.

`forward(input_ids, attention_mask, position_ids, past) -> (logits [B, vocab] for the last
position, present)`, numpy in and out, past/present ordered as contract.manifest.past_names().
Evaluation and the export checks decode through runtime.decode.generate, so the checkpoint
and any exported ONNX variant are measured by the same loop and export losses show up as
differences in the numbers. It lives here, not in runtime/, because runtime never imports torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from training.model import cache_argument, kv_shape


class TorchRunner:
    def __init__(self, model: PreTrainedModel, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype  # fp32, or fp16 for the GPU check
        self.cache_argument = cache_argument(model)
        config = model.config
        self.n_layer, self.vocab_size = config.num_hidden_layers, config.vocab_size
        self.n_kv_head, self.head_dim = kv_shape(config)  # GPT-2 or Llama family

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.n_kv_head, 0, self.head_dim)
        return [np.zeros(shape, np.float32) for _ in range(2 * self.n_layer)]

    @torch.inference_mode()
    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        if len(past) != 2 * self.n_layer:
            raise ValueError(f"expected {2 * self.n_layer} past arrays, got {len(past)}")
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device, self.dtype) for a in past]
        cache = DynamicCache(ddp_cache_data=list(zip(tensors[0::2], tensors[1::2], strict=True)))
        out = self.model(
            input_ids=torch.from_numpy(input_ids).to(self.device),
            attention_mask=torch.from_numpy(attention_mask).to(self.device),
            position_ids=torch.from_numpy(position_ids).to(self.device),
            use_cache=True,
            logits_to_keep=1,  # only the last position: the LM head is the costly part of a tiny model
            **{self.cache_argument: cache},
        )
        layers: list[Any] = list(cache.layers)  # filled in place by the forward
        present = [t.float().cpu().numpy() for layer in layers for t in (layer.keys, layer.values)]
        return out.logits[:, -1, :].float().cpu().numpy(), present
