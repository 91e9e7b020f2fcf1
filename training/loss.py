"""The training loss: next-token cross-entropy on the output positions only.

A causal LM's forward computes logits at every position, prompt and padding included,
and the loss then throws most of them away (their labels are IGNORE_INDEX). For a
pretrained student the output layer is a large share of the work (SmolLM2-135M: a
576 x 49,152 matrix, a fifth of the model's multiply-adds), so this module runs the
decoder body, keeps the hidden states whose next token is labelled, and applies the
output layer to those alone. The loss is the same number as the model's own
`labels=` loss (the mean over labelled tokens); tests/test_loss.py holds them together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from training.examples import IGNORE_INDEX


class OutputLoss(torch.nn.Module):
    """Wraps a causal LM (GPT-2 or Llama family); `forward` returns the mean loss on the
    labelled positions. A module, not a function, so DistributedDataParallel can wrap it."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.model.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        # Position t predicts token t+1: the same shift as the models' own loss.
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.model.get_output_embeddings()(hidden[:, :-1][keep])
        return F.cross_entropy(logits.float(), targets[keep])
