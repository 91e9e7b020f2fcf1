"""The student: a GPT-2 built from a preset, or initialised from pretrained weights.

Presets are plain dicts of GPT2Config fields. `tiny` is the default: it trains on two
CPU cores in minutes (with the compact tokenizer, see tokenizer.py). `small` is the
paper's size, GPT-2 124M, and wants the full vocabulary and a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import GPT2Config, GPT2LMHeadModel

PRESETS: dict[str, dict[str, int | float]] = {
    "tiny": {"n_layer": 4, "n_head": 4, "n_embd": 256, "n_positions": 128},
    "small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
}


def build_model(preset: str, vocab_size: int, eos_token_id: int, **overrides: Any) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 of the given preset and vocabulary size."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = GPT2Config(
        vocab_size=vocab_size,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        **{**PRESETS[preset], **overrides},
    )
    return GPT2LMHeadModel(config)


def load_pretrained(path_or_id: str | Path, vocab_size: int) -> GPT2LMHeadModel:
    """Pretrained GPT-2 weights (a local folder, or a hub id for users with hub access),
    with the embedding resized for the command tokens appended to the vocabulary."""
    model = GPT2LMHeadModel.from_pretrained(str(path_or_id))
    if model.config.vocab_size != vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model
