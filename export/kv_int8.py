"""An int8 KV cache for the INT8 variant: GroupQueryAttention keeps keys and values as int8, one
static scale per (head, channel), calibrated here at export.

Why: at batch 32 a GPT-2 small decode step reads ~115 MB of fp32 keys and values (32 rows x ~49
columns x 72 KB per token), more than its 91 MB of INT8 weights, and the rows of a ragged cache
end at different columns, so the reads come in short runs the CPU's prefetcher streams poorly.
In int8 the kernel reads a quarter of the bytes: 12 layers of attention over 32 rows of 20-80
columns take 7.5 -> 4.3-4.9 ms (`python bench/scheduler.py kernels`). In a closed loop of 32
requests (`python bench/scheduler.py rebuilds BUNDLE`) GPT-2 small gains 6-9% and the tiny
default 9-16%, with the same realistic-intent scores (bench/engine.md, step 9). So it is the
GPT-2 INT8 variant's default (wants_int8_kv says why not Llama's).

The scales: each layer's largest |key| and |value| per (head, channel) over the model's own
greedy continuations of real serving prompts (word-list intents and intents as users type them),
with SCALE_MARGIN of headroom; a value beyond it
saturates at the end of the int8 range (ONNX Runtime clamps, it does not wrap). The calibration
intents are not verification's (export/verify.py), so the INT8 gate judges the cache on prompts
it never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from transformers import PreTrainedModel

from contract.command import RELEVANCE_LEVELS, CommandSpec, TokenizerLike, prompt_ids
from contract.manifest import past_names, present_names, prompt_past_names, prompt_present_names
from runtime.decode import generate
from runtime.padding import pad
from training.torch_runner import TorchRunner

KV_INT8_MODES = ("on", "off")
SCALE_MARGIN = 1.25  # headroom over the calibration maximum, for activations it did not see
CALIBRATION_STEPS = 48  # greedy tokens after each prompt: the cache holds outputs, not only prompts
CALIBRATION_INTENTS = (
    "spring garden party",
    "late night ramen shop",
    "lighthouse in a storm",
    "home espresso setup",
    "trail running shoes",
    "jazz club poster",
    "desert road trip",
    "board game cafe",
    # as users type them: casing, accents, names, numbers (none of them in the realistic held-out
    # set, training/intents/realistic_eval.tsv): their keys and values must fit the scales too
    "Día de Reyes bakery specials",
    "Nürburgring track day 2025",
    "AirPods case engraving",
    "Hokkaidō ski resort deals",
)


def wants_int8_kv(mode: str, architecture: str) -> bool:
    """Whether the INT8 variant gets an int8 cache: GPT-2 students only. A Llama-family one
    (SmolLM2-135M, 30 layers, blockwise INT8 weights) gained 1-5% in a closed loop of 32
    (noise-level: its weight MatMuls dominate), and the int8 cache cost it agreement with PyTorch
    on verification's random prompts (95.3% -> 85.9%; fixed prompts 95.5% -> 95.3%): Llama
    activations carry outlier channels that static scales clip (bench/engine.md, step 10)."""
    return mode == "on" and architecture == "gpt2"


def calibration_prompts(tokenizer: TokenizerLike, spec: CommandSpec) -> list[list[int]]:
    """Every task at its shortest, a middle and its longest length, across CALIBRATION_INTENTS."""
    prompts = []
    for i, intent in enumerate(CALIBRATION_INTENTS):
        for j, task in enumerate(spec.tasks):
            low, high = spec.length_range(task)
            words = (low, spec.clamp_words(20, task), high)[(i + j) % 3]
            relevance = RELEVANCE_LEVELS[(i + j) % len(RELEVANCE_LEVELS)]
            prompts.append(prompt_ids(tokenizer, spec, task, words, relevance, intent))
    return prompts


def kv_scales(model: PreTrainedModel, tokenizer: TokenizerLike, spec: CommandSpec, eos_id: int) -> list[np.ndarray]:
    """One float32 scale [1, n_kv_head, 1, head_dim] per past tensor (past_names order): the
    largest |value| that tensor held over the calibration sequences, x SCALE_MARGIN / 127."""
    runner = TorchRunner(model)
    prompts = calibration_prompts(tokenizer, spec)
    steps = min(CALIBRATION_STEPS, model.config.n_positions - max(len(p) for p in prompts))
    continued = generate(runner, prompts, steps, eos_id=eos_id)
    sequences = [p + g.ids for p, g in zip(prompts, continued.generations, strict=True)]
    # One forward over each whole sequence fills the cache with every position's keys and values;
    # the mask keeps padding columns (their values are the pad token's) out of the maximum.
    input_ids, mask, positions = pad(sequences, eos_id)
    _, present = runner.forward(input_ids, mask, positions, runner.empty_past(len(sequences)))
    real = mask.astype(bool)[:, None, :, None]  # [batch, 1, columns, 1]
    scales = []
    for tensor in present:
        largest = np.where(real, np.abs(tensor), 0.0).max(axis=(0, 2), keepdims=True)  # [1, heads, 1, head_dim]
        # A channel that was always 0 still needs a positive scale.
        scales.append((np.maximum(largest, 1e-6) * SCALE_MARGIN / 127).astype(np.float32))
    return scales


def quantize_kv_cache(path: Path, scales: list[np.ndarray]) -> Path:
    """Rewrite the graph at `path` in place: every GroupQueryAttention keeps its cache in int8
    with its layer's scales, and the past/present tensors at the graph boundary become int8.
    A `mixed` graph's prompt attention shares its layer's scales: its cache joins the batch's."""
    model = onnx.load(str(path))
    graph = model.graph
    n_layer = len(scales) // 2
    names = past_names(n_layer)
    if len(names) != len(scales):
        raise ValueError(f"{len(scales)} scales for a cache of {len(names)} tensors")
    graph.initializer.extend(
        numpy_helper.from_array(scale, name=f"{name}.scale") for name, scale in zip(names, scales, strict=True)
    )
    scale_name = {name: f"{name}.scale" for name in names}
    scale_name |= {prompt: f"{name}.scale" for prompt, name in zip(prompt_past_names(n_layer), names, strict=True)}
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft"]
    caches = {i.name for i in graph.input} & set(scale_name)  # a `ragged` graph has no prompt cache
    if not set(names) <= caches or {n.input[3] for n in attention} | {n.input[4] for n in attention} != caches:
        raise ValueError(f"{path}'s GroupQueryAttention nodes do not read the cache of {n_layer} layers")
    for node in attention:
        past_key, past_value = node.input[3], node.input[4]
        inputs = list(node.input) + [""] * (12 - len(node.input))  # up to head_sink, left empty
        del node.input[:]
        node.input.extend([*inputs[:12], scale_name[past_key], scale_name[past_value]])  # k_scale, v_scale
        node.attribute.extend(
            [
                helper.make_attribute("kv_cache_bit_width", 8),
                helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                helper.make_attribute("v_quant_type", "PER_CHANNEL"),
            ]
        )
    boundary = set(scale_name) | set(present_names(n_layer)) | set(prompt_present_names(n_layer))
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name in boundary:
            value.type.tensor_type.elem_type = TensorProto.INT8
    onnx.save(model, str(path))
    return path
