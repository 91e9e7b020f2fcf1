"""The output-only loss (training/loss.py) is the models' own `labels=` loss, in value and in
gradient, for both decoder families, on right-padded rows whose outputs start at different
places; and bf16 autocast on the CPU is chosen only where asked for."""

from __future__ import annotations

import pytest
import torch
from test_pretrained import tiny_llama
from transformers import GPT2Config, GPT2LMHeadModel

from training.examples import IGNORE_INDEX, Example, collate
from training.loss import OutputLoss
from training.precision import BF16, FP32, autocast_for


def ragged_batch(vocab: int) -> tuple[torch.Tensor, ...]:
    """Three examples of different prompt and output lengths, collated as training does."""
    g = torch.Generator().manual_seed(0)
    examples = []
    for n_prompt, n_output in ((5, 3), (9, 7), (3, 12)):
        ids = torch.randint(1, vocab, (n_prompt + n_output,), generator=g).tolist()
        examples.append(Example(ids=ids, n_prompt=n_prompt, positions=list(range(len(ids)))))
    return tuple(torch.from_numpy(a) for a in collate(examples, pad_id=0))


def gpt2(vocab: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_layer=2,
            n_head=2,
            n_embd=32,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_output_loss_equals_the_models_own_loss_and_gradient(family: str) -> None:
    vocab = 300
    model = gpt2(vocab) if family == "gpt2" else tiny_llama(vocab)
    ids, mask, labels, positions = ragged_batch(vocab)
    assert (labels != IGNORE_INDEX).sum() == 3 + 7 + 12  # the outputs only

    reference = model(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    loss = OutputLoss(model)(ids, mask, positions, labels)
    loss.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_cpu_autocast_is_bf16_only_where_asked() -> None:
    cpu = torch.device("cpu")
    x = torch.ones(4, 4)
    with autocast_for(cpu, FP32, cpu_bf16_wins=True)[0]:
        assert (x @ x).dtype == torch.float32
    with autocast_for(cpu, BF16)[0]:
        assert (x @ x).dtype == torch.bfloat16
    with autocast_for(cpu, "auto", cpu_bf16_wins=False)[0]:
        assert (x @ x).dtype == torch.float32  # a model from scratch: fp32 unless told otherwise
    with pytest.raises(ValueError, match="unknown precision"):
        autocast_for(cpu, "fp8")
