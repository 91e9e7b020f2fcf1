"""PyTorch GPT-2 or Llama-family decoder -> one ONNX decoder graph with a KV cache
(the decoder contract in docs/architecture.md).

The graph serves both prefill (past length 0) and decode (one new token per row):

    inputs   input_ids [B,S], attention_mask [B,P+S], position_ids [B,S],
             past_key_values.{i}.key/value [B,n_kv_head,P,head_dim]
    outputs  logits [B,vocab] (last position only), present.{i}.key/value [B,n_kv_head,P+S,head_dim]

Batches are left-padded, so the last position is every row's newest token, and the LM head
runs on one position per row instead of the whole prompt.

A plain `torch.onnx.export(dynamo=False)` of a wrapper with flat past tensors matches torch
to ~1e-7 (docs/architecture.md). transformers 5 wants a Cache object, so the wrapper builds a
DynamicCache from the flat tensors; the tracer only ever sees plain tensors at the boundary.

One wrapper per decoder family (WRAPPERS, keyed by the manifest's architecture): GPT-2 (learned
positions, LayerNorm, GELU MLP) and Llama (RoPE, RMSNorm, SwiGLU, grouped-query attention:
n_kv_head < n_head key/value heads in the cache). Both take position_ids from the caller, so a
left-padded row's first real token is position 0 (runtime/padding.py) for the learned table and
RoPE alike; the KV cache's shape comes from the manifest's n_kv_head and head_dim, nothing else.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from onnx import helper
from transformers import DynamicCache, PreTrainedModel

from contract.manifest import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, past_names, present_names
from training.model import architecture, kv_shape

OPSET = 17  # the first opset with LayerNormalization as one op


class DecoderWithPast(torch.nn.Module):
    """A decoder with flat past/present tensors and last-position logits: the graph's signature.
    `body` is the family's stack of blocks (GPT-2's `transformer`, Llama's `model`)."""

    def __init__(self, model: PreTrainedModel, body: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.body = model, body
        self.n_layer = model.config.num_hidden_layers

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache(
            ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.n_layer)], config=self.model.config
        )
        out = self.body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True
        )
        logits = self.model.lm_head(out.last_hidden_state[:, -1, :])
        present = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        return (logits, *present)


class GPT2DecoderWithPast(DecoderWithPast):
    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model, model.transformer)


class LlamaDecoderWithPast(DecoderWithPast):
    """RoPE from position_ids, grouped-query attention (the cache holds n_kv_head heads), SwiGLU."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model, model.model)


WRAPPERS: dict[str, type[DecoderWithPast]] = {"gpt2": GPT2DecoderWithPast, "llama": LlamaDecoderWithPast}


def sample_inputs(model: PreTrainedModel, batch: int = 2, past: int = 3, seq: int = 4) -> tuple[torch.Tensor, ...]:
    """Tracing inputs with a past and a left-padded row, so no shape- or padding-specific
    shortcut (empty cache, all-ones mask) can be baked into the traced graph."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, past + seq, dtype=torch.long)
    attention_mask[0, :2] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    n_kv_head, head_dim = kv_shape(config)
    n_layer = config.num_hidden_layers
    kv = [torch.randn(batch, n_kv_head, past, head_dim, generator=generator) for _ in range(2 * n_layer)]
    return (input_ids, attention_mask, position_ids, *kv)


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite plain Gemm nodes (GPT-2's Conv1D exports as addmm -> Gemm) into MatMul + Add.

    ONNX Runtime's dynamic quantisation handles MatMul but not Gemm, so without this the
    INT8 variant would quantise only the LM head. MatMul + Add computes the same thing.
    """
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        plain = plain and not attrs.get("transA", 0) and not attrs.get("transB", 0)
        if node.op_type != "Gemm" or not plain or len(node.input) != 3:
            nodes.append(node)
            continue
        product = node.output[0] + "_matmul"
        nodes.append(helper.make_node("MatMul", node.input[:2], [product], name=node.name + "_matmul"))
        nodes.append(helper.make_node("Add", [product, node.input[2]], list(node.output), name=node.name + "_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def export_decoder(model: PreTrainedModel, path: Path | str, opset: int = OPSET) -> Path:
    """Export the FP32 decoder graph to `path` and check it with the ONNX checker."""
    path = Path(path)
    n_layer = model.config.num_hidden_layers
    inputs = [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *past_names(n_layer)]
    outputs = [LOGITS, *present_names(n_layer)]
    dynamic_axes: dict[str, dict[int, str]] = {
        INPUT_IDS: {0: "batch", 1: "seq"},
        ATTENTION_MASK: {0: "batch", 1: "total_seq"},
        POSITION_IDS: {0: "batch", 1: "seq"},
        LOGITS: {0: "batch"},
    }
    dynamic_axes |= {name: {0: "batch", 2: "past_seq"} for name in past_names(n_layer)}
    dynamic_axes |= {name: {0: "batch", 2: "total_seq"} for name in present_names(n_layer)}
    # Eager attention traces to plain MatMul/Softmax that every ONNX Runtime provider runs.
    # Restored afterwards, so the PyTorch reference that verification compares against
    # keeps its own attention kernel: an independent implementation, not the traced one.
    attention = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    # eval() matters twice: no dropout, and torch.onnx.export restores the wrapper's own
    # training flag on the way out, so a training-mode wrapper would leave the model training.
    decoder = WRAPPERS[architecture(model)](model).eval()
    # The tracer warns about every Python branch on a shape; tracing with a past and a padded
    # row picks the general branch, and verification runs other shapes against PyTorch.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose (see top)
        try:
            torch.onnx.export(
                decoder,
                sample_inputs(model),
                str(path),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        finally:
            model.config._attn_implementation = attention
    graph = gemm_to_matmul(onnx.load(str(path)))
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


def io_shapes(path: Path | str) -> dict[str, list[str | int]]:
    """Every graph input's and output's dims: the axis name where dynamic, the size where fixed."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        value.name: [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in [*graph.input, *graph.output]
    }
