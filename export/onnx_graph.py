"""PyTorch GPT-2 or Llama-family decoder -> one ONNX decoder graph with a KV cache
(the decoder contract in docs/architecture.md).

The graph serves both prefill (past length 0) and decode (one new token per row):

    inputs   input_ids [B,S], attention_mask [B,P+S], position_ids [B,S],
             past_key_values.{i}.key/value
    outputs  logits [B,vocab] (each row's last real token only), present.{i}.key/value

where each KV tensor is one buffer [B,n_kv_head,capacity,head_dim] bound as past and present
(`ragged`, contract/manifest.py): the graph writes each row's new columns after its own last
one, so rows may have lengths of their own, or be left-padded. The LM head runs on one position
per row instead of the whole prompt.

`export_decoder(..., mixed=True)` gives the same weights a second part (a variant's `mixed_file`):
prompts joining the batch [J,S'] with their own cache buffers, prefilled in the same forward as
the rows' step, logits [B+J, vocab] (StepParts says how).

Both families are written out block by block around ONNX Runtime's GroupQueryAttention, from
the model's own modules (projections, norms, MLP, rotary embedding), traced by the legacy
`torch.onnx.export(dynamo=False)`; verification compares the graph with PyTorch's own forward.
Bundles of format 1-3 hold `concat` graphs (present = concat(past, new), Llama's until format
4's export); the runtime still serves them.

One wrapper per decoder family (WRAPPERS, keyed by the manifest's architecture): GPT-2 (learned
positions, LayerNorm, GELU MLP) and Llama (RoPE, RMSNorm, SwiGLU, grouped-query attention:
n_kv_head < n_head key/value heads in the cache). Both take position_ids from the caller, so a
left-padded row's first real token is position 0 (runtime/padding.py) for the learned table and
RoPE alike; the KV cache's shape comes from the manifest's n_kv_head and head_dim, nothing else.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import onnx
import torch
from onnx import TensorProto, helper
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from contract.manifest import (
    ATTENTION_MASK,
    INPUT_IDS,
    KV_RAGGED,
    LOGITS,
    POSITION_IDS,
    PROMPT_INPUTS,
    past_names,
    present_names,
    prompt_past_names,
    prompt_present_names,
)
from training.model import architecture, kv_shape

OPSET = 17  # the first opset with LayerNormalization as one op


class AttentionLengths(NamedTuple):
    """GroupQueryAttention's length inputs, the same for every block (ragged_lengths)."""

    seqlens_k: torch.Tensor  # [B] int32: each row's last real column
    total: torch.Tensor  # scalar int32: the mask's width, P+S
    bias: torch.Tensor  # [B,1,S,P+S]: 0, or MASKED on a padding column


class GroupQueryAttention(torch.autograd.Function):
    """ONNX Runtime's contrib op `com.microsoft::GroupQueryAttention` in the traced graph.

    Why this op: it is the one attention kernel of ONNX Runtime's CPU provider that writes the
    new key/value columns into a preallocated cache in place (when past and present are bound
    to the same buffer, which it detects by pointer), and it fuses QK', the mask, softmax and
    PV into one kernel. Row b's new columns go at column seqlens_k[b] + 1 - S, and it attends to
    its columns up to seqlens_k[b] only, so each row may have its own length (a ragged cache,
    kv_cache.py); left-padded rows all have the same one, and their padding columns are masked
    by `bias` (0 or -10000 per key column). Query, key and
    value come packed in one [B, S, (num_heads + 2 * kv_num_heads) * head_dim] tensor (GPT-2's
    QKV projection's output as is; Llama's three projections, RoPE applied, concatenated).
    The eager forward is only for the tracer (shapes); verification compares the exported
    graph with PyTorch's own GPT-2, not with this.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: object,
        qkv: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        seqlens_k: torch.Tensor,
        total_length: torch.Tensor,
        bias: torch.Tensor,
        num_heads: int,
        kv_num_heads: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attended = qkv.shape[-1] * num_heads // (num_heads + 2 * kv_num_heads)
        return torch.zeros_like(qkv[..., :attended]), past_key.clone(), past_value.clone()

    @staticmethod
    def symbolic(
        g: torch.Graph,
        qkv: torch.Value,
        past_key: torch.Value,
        past_value: torch.Value,
        seqlens_k: torch.Value,
        total_length: torch.Value,
        bias: torch.Value,
        num_heads: int,
        kv_num_heads: int,
    ) -> tuple[torch.Value, ...]:
        # The legacy exporter cannot leave an input empty: fill_optional_inputs does it after.
        args = (qkv, past_key, past_value, seqlens_k, total_length, bias)
        op = "com.microsoft::GroupQueryAttention"
        attended, present_key, present_value = g.op(
            op, *args, num_heads_i=num_heads, kv_num_heads_i=kv_num_heads, outputs=3
        )
        # Typed, so that ONNX shape inference carries on past the contrib op and the graph's
        # outputs keep their static sizes (logits [batch, vocab], the manifest's `shapes`).
        sizes = qkv.type().varyingSizes()
        width = sizes[-1] * num_heads // (num_heads + 2 * kv_num_heads) if sizes[-1] else None
        attended.setType(qkv.type().with_sizes([*sizes[:-1], width]))
        present_key.setType(past_key.type())
        present_value.setType(past_value.type())
        return attended, present_key, present_value


MASKED = -10000.0  # added to a padding column's score: exp() of it is 0 in fp32 and fp16 alike


class Projection(torch.nn.Module):
    """GPT-2's Conv1D, x @ weight + bias, as one MatMul and one Add on the 3-D activations.
    HF's Conv1D flattens to 2-D and back, which traces to a Shape/Gather/Unsqueeze/Concat/
    Reshape chain per projection: 48 chains in GPT-2 small, each a few small ops that cost
    ORT a dispatch every step (bench/engine.md)."""

    def __init__(self, conv1d: torch.nn.Module) -> None:
        super().__init__()
        self.weight, self.bias = conv1d.weight, conv1d.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class GPT2MLP(torch.nn.Module):
    """HF's GPT2MLP with Projections; named `mlp` in its block, so the down projection's nodes
    are `/blocks.{i}/mlp/c_proj/...`, the name export/variants.py keeps it in FP32 by."""

    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.c_fc, self.act, self.c_proj = Projection(mlp.c_fc), mlp.act, Projection(mlp.c_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


def ragged_lengths(attention_mask: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, AttentionLengths]:
    """What the mask [B,P+S] says (the `ragged` contract): each row's last real column `last`
    (its own length - 1 for a row that starts at column 0, P+S-1 for a left-padded row, whose
    last column is always real), and GroupQueryAttention's inputs from it: that as int32
    seqlens_k, total_sequence_length = P+S, and the additive bias [B,1,S,P+S] (MASKED on padding)."""
    # Traced from tensors, not Python ints, so they stay dynamic in the graph.
    total = torch.ones_like(attention_mask[0]).sum()
    last = (attention_mask * (torch.ones_like(attention_mask).cumsum(-1) - 1)).amax(-1)
    keep = attention_mask[:, None, None, :].to(hidden.dtype)  # [B,1,1,P+S]
    bias = (1.0 - keep) * MASKED + torch.zeros_like(hidden[:, None, :, :1])  # [B,1,S,P+S]
    return last, AttentionLengths(last.to(torch.int32), total.to(torch.int32), bias)


def last_token(hidden: torch.Tensor, last: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Each row's hidden state [B, hidden] at its last real token: at its own index in a
    right-padded prefill (last < S-1), at the last position otherwise (decode, left padding)."""
    index = torch.minimum(last, torch.ones_like(input_ids[0]).sum() - 1)
    return hidden.gather(1, index[:, None, None].expand(-1, 1, hidden.shape[-1]))[:, 0, :]


def flatten(rows: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
    """The batch's rows [B,S,w] and the prompts [J,S',w] as one sequence [1, B*S + J*S', w];
    the rows as they are in a graph without prompts."""
    if prompts is None:
        return rows
    return torch.cat([rows.reshape(1, -1, rows.shape[-1]), prompts.reshape(1, -1, prompts.shape[-1])], dim=1)


class StepParts(NamedTuple):
    """What one forward holds: the batch's rows [B,S] and, in a `mixed` graph (a variant's
    `mixed_file`, contract/manifest.py), prompts joining the batch [J,S']. The two go through
    every weight MatMul as one flat sequence (`flatten`), so the weights are read once for
    both; only attention and the last-token pick see them apart, each part on its own cache.
    Why not one attention call over a [B+J, S'] view: the decode rows' one token would be padded
    to S' there, and scattering to and from that view copies ~8 MB per layer at GPT-2 small's
    batch of 32 (bench/engine.md)."""

    row_ids: torch.Tensor  # [B,S]: its shape is the split point
    row_last: torch.Tensor  # [B]: each row's last real column (ragged_lengths)
    row_lengths: AttentionLengths
    prompt_ids: torch.Tensor | None = None  # [J,S']
    prompt_last: torch.Tensor | None = None  # [J]
    prompt_lengths: AttentionLengths | None = None

    @classmethod
    def of(
        cls, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, prompts: EmbeddedPrompts | None
    ) -> StepParts:
        row_last, row_lengths = ragged_lengths(attention_mask, rows)
        if prompts is None:
            return cls(input_ids, row_last, row_lengths)
        prompt_last, prompt_lengths = ragged_lengths(prompts.attention_mask, prompts.hidden)
        return cls(input_ids, row_last, row_lengths, prompts.input_ids, prompt_last, prompt_lengths)

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[1, T, w] -> the rows' [B,S,w] and the prompts' [J,S',w] (flatten's inverse)."""
        if self.prompt_ids is None:
            return flat, None
        batch, seq = self.row_ids.shape
        prompts, prompt_seq = self.prompt_ids.shape
        cut = batch * seq
        return flat[:, :cut].reshape(batch, seq, -1), flat[:, cut:].reshape(prompts, prompt_seq, -1)

    def last_tokens(self, flat: torch.Tensor) -> torch.Tensor:
        """[B (+ J), hidden]: each row's hidden state at its last real token, then each prompt's."""
        rows, prompts = self.split(flat)
        last = last_token(rows, self.row_last, self.row_ids)
        if prompts is None or self.prompt_last is None or self.prompt_ids is None:
            return last
        return torch.cat([last, last_token(prompts, self.prompt_last, self.prompt_ids)])


class EmbeddedPrompts(NamedTuple):
    """A mixed graph's prompt inputs, embedded (`hidden`) by the wrapper."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    hidden: torch.Tensor


def attend(
    qkv: torch.Tensor, caches: tuple[torch.Tensor, ...], parts: StepParts, num_heads: int, kv_num_heads: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One layer's attention: the rows on the batch cache, the prompts (if any) on theirs.
    `caches` is (key, value[, prompt key, prompt value]); the same come back as present."""
    rows, prompts = parts.split(qkv)
    rows, key, value = GroupQueryAttention.apply(rows, *caches[:2], *parts.row_lengths, num_heads, kv_num_heads)
    if prompts is None or parts.prompt_lengths is None:
        return rows, (key, value)
    prompts, prompt_key, prompt_value = GroupQueryAttention.apply(
        prompts, *caches[2:], *parts.prompt_lengths, num_heads, kv_num_heads
    )
    return flatten(rows, prompts), (key, value, prompt_key, prompt_value)


def split_inputs(
    rest: tuple[torch.Tensor, ...], mixed: bool
) -> tuple[tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...]]:
    """The inputs after position_ids: a mixed graph's three prompt inputs, then the past (the
    batch's 2L tensors, then the prompts' 2L)."""
    return (rest[:3], rest[3:]) if mixed else (None, rest)


def layer_caches(past: tuple[torch.Tensor, ...], layer: int, mixed: bool) -> tuple[torch.Tensor, ...]:
    """Layer i's (key, value[, prompt key, prompt value]) from the graph's past inputs."""
    n = len(past) // 2 if mixed else len(past)
    batch = (past[2 * layer], past[2 * layer + 1])
    return (*batch, past[n + 2 * layer], past[n + 2 * layer + 1]) if mixed else batch


def present_outputs(logits: torch.Tensor, caches: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """The graph's outputs in the contract's order: logits, the batch's present, the prompts'."""
    return (logits, *[c for layer in caches for c in layer[:2]], *[c for layer in caches for c in layer[2:]])


class GPT2BlockInPlace(torch.nn.Module):
    """One GPT-2 block (HF's GPT2Block, eager attention) around GroupQueryAttention."""

    def __init__(self, block: torch.nn.Module, n_head: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2, self.n_head = block.ln_1, block.ln_2, n_head
        self.c_attn, self.c_proj = Projection(block.attn.c_attn), Projection(block.attn.c_proj)
        self.mlp = GPT2MLP(block.mlp)

    def forward(
        self, hidden: torch.Tensor, caches: tuple[torch.Tensor, ...], parts: StepParts
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        attended, present = attend(self.c_attn(self.ln_1(hidden)), caches, parts, self.n_head, self.n_head)
        hidden = hidden + self.c_proj(attended)
        hidden = hidden + self.mlp(self.ln_2(hidden))
        return hidden, present


class GPT2DecoderInPlace(torch.nn.Module):
    """GPT-2 written out block by block with GroupQueryAttention, so that its KV cache is
    `ragged` (in place, with rows of their own lengths): past_key_values.{i}.* are buffers of
    capacity >= P+S columns, the graph writes each row's S new columns after its last past one,
    and present.{i}.* is that same buffer (the runner binds both to it). `mixed`: the graph also
    prefills joining prompts on buffers of their own (StepParts; contract/manifest.py).

    attention_mask [B,P+S] is the only source of the lengths: row b's seqlens_k is the index of
    its last 1 (P+S-1 for a left-padded row, its own length - 1 for a row that starts at column
    0), total_sequence_length = P+S, and its zeros become the additive bias. GroupQueryAttention
    reads row b's columns up to seqlens_k only, so a short row costs only its own length.
    The arithmetic is GPT-2's (HF's GPT2Model with eager attention): learned positions from
    position_ids, pre-LayerNorm blocks, gelu_new MLP, 1/sqrt(head_dim) scale, causal."""

    kv_cache = KV_RAGGED

    def __init__(self, model: PreTrainedModel, mixed: bool = False) -> None:
        super().__init__()
        config = model.config
        if config.scale_attn_by_inverse_layer_idx or config.reorder_and_upcast_attn or not config.scale_attn_weights:
            raise ValueError("GPT-2 attention variants other than the default scale are not exported in place")
        gpt2 = model.transformer
        self.wte, self.wpe, self.ln_f, self.lm_head = gpt2.wte, gpt2.wpe, gpt2.ln_f, model.lm_head
        self.blocks = torch.nn.ModuleList(GPT2BlockInPlace(b, config.num_attention_heads) for b in gpt2.h)
        self.mixed = mixed

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *rest: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        prompt, past = split_inputs(rest, self.mixed)
        rows = self.wte(input_ids) + self.wpe(position_ids)
        prompts = None if prompt is None else EmbeddedPrompts(*prompt, self.wte(prompt[0]) + self.wpe(prompt[2]))
        parts = StepParts.of(input_ids, attention_mask, rows, prompts)
        hidden, caches = flatten(rows, None if prompts is None else prompts.hidden), []
        for i, block in enumerate(self.blocks):
            hidden, present = block(hidden, layer_caches(past, i, self.mixed), parts)
            caches.append(present)
        return present_outputs(self.lm_head(self.ln_f(parts.last_tokens(hidden))), caches)


class LlamaBlockInPlace(torch.nn.Module):
    """One Llama block (HF's LlamaDecoderLayer) around GroupQueryAttention: RMSNorm, the three
    projections with RoPE on query and key (HF's own apply_rotary_pos_emb), grouped-query
    attention over n_kv_head key/value heads, SwiGLU."""

    def __init__(self, layer: torch.nn.Module, n_head: int, n_kv_head: int, head_dim: int) -> None:
        super().__init__()
        attention = layer.self_attn
        self.input_layernorm, self.post_attention_layernorm = layer.input_layernorm, layer.post_attention_layernorm
        self.q_proj, self.k_proj, self.v_proj = attention.q_proj, attention.k_proj, attention.v_proj
        self.o_proj, self.mlp = attention.o_proj, layer.mlp
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim

    def forward(
        self,
        hidden: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        caches: tuple[torch.Tensor, ...],
        parts: StepParts,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        x = self.input_layernorm(hidden)
        batch, seq = x.shape[:2]
        query = self.q_proj(x).view(batch, seq, self.n_head, self.head_dim).transpose(1, 2)
        key = self.k_proj(x).view(batch, seq, self.n_kv_head, self.head_dim).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, *rope)
        qkv = torch.cat([query.transpose(1, 2).flatten(2), key.transpose(1, 2).flatten(2), self.v_proj(x)], dim=-1)
        attended, present = attend(qkv, caches, parts, self.n_head, self.n_kv_head)
        hidden = hidden + self.o_proj(attended)
        hidden = hidden + self.mlp(self.post_attention_layernorm(hidden))
        return hidden, present


class LlamaDecoderInPlace(torch.nn.Module):
    """A Llama-family decoder block by block around GroupQueryAttention, `ragged` (and `mixed`)
    like GPT2DecoderInPlace (the same lengths from the masks, the same last-token logits); RoPE's
    angles come from the position ids through the model's own rotary embedding."""

    kv_cache = KV_RAGGED

    def __init__(self, model: PreTrainedModel, mixed: bool = False) -> None:
        super().__init__()
        config, body = model.config, model.model
        n_kv_head, head_dim = kv_shape(config)
        self.embed_tokens, self.rotary_emb = body.embed_tokens, body.rotary_emb
        self.norm, self.lm_head = body.norm, model.lm_head
        self.blocks = torch.nn.ModuleList(
            LlamaBlockInPlace(layer, config.num_attention_heads, n_kv_head, head_dim) for layer in body.layers
        )
        self.mixed = mixed

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *rest: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        prompt, past = split_inputs(rest, self.mixed)
        rows = self.embed_tokens(input_ids)
        prompts = None if prompt is None else EmbeddedPrompts(*prompt, self.embed_tokens(prompt[0]))
        parts = StepParts.of(input_ids, attention_mask, rows, prompts)
        hidden = flatten(rows, None if prompts is None else prompts.hidden)
        positions = flatten(position_ids[..., None], None if prompts is None else prompts.position_ids[..., None])
        rope = self.rotary_emb(hidden, positions[..., 0])
        caches = []
        for i, block in enumerate(self.blocks):
            hidden, present = block(hidden, rope, layer_caches(past, i, self.mixed), parts)
            caches.append(present)
        return present_outputs(self.lm_head(self.norm(parts.last_tokens(hidden))), caches)


WRAPPERS: dict[str, type[GPT2DecoderInPlace] | type[LlamaDecoderInPlace]] = {
    "gpt2": GPT2DecoderInPlace,
    "llama": LlamaDecoderInPlace,
}


def kv_cache_kind(model: PreTrainedModel) -> str:
    """How the exported graph treats its KV cache (the manifest's `Variant.kv_cache`)."""
    return WRAPPERS[architecture(model)].kv_cache


def sample_inputs(
    model: PreTrainedModel, mixed: bool, batch: int = 2, past: int = 3, seq: int = 4
) -> tuple[torch.Tensor, ...]:
    """Tracing inputs with a past and a left-padded row (and for a mixed graph, prompts of other
    sizes, one right-padded), so no shape- or padding-specific shortcut (empty cache, all-ones
    mask, two parts of one size) can be baked into the traced graph."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, past + seq, dtype=torch.long)
    attention_mask[0, :2] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    n_kv_head, head_dim = kv_shape(config)
    n_layer = config.num_hidden_layers
    kv = [torch.randn(batch, n_kv_head, past, head_dim, generator=generator) for _ in range(2 * n_layer)]
    if not mixed:
        return (input_ids, attention_mask, position_ids, *kv)
    prompts, prompt_seq = batch + 1, seq + 1
    prompt_ids = torch.randint(0, config.vocab_size, (prompts, prompt_seq), generator=generator)
    prompt_mask = torch.ones(prompts, prompt_seq, dtype=torch.long)
    prompt_mask[1, 3:] = 0
    prompt_positions = torch.arange(prompt_seq).expand(prompts, -1)
    prompt_kv = [torch.zeros(prompts, n_kv_head, prompt_seq, head_dim) for _ in range(2 * n_layer)]
    return (input_ids, attention_mask, position_ids, prompt_ids, prompt_mask, prompt_positions, *kv, *prompt_kv)


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


def fill_optional_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """GroupQueryAttention's inputs in their places: (qkv, past_key, past_value, seqlens_k,
    total, bias) as traced become query=qkv, key and value empty (packed in the query),
    then past, seqlens_k, total, cos_cache, sin_cache and position_ids empty (no rotary), bias."""
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention" and node.domain == "com.microsoft" and len(node.input) == 6:
            qkv, past_key, past_value, seqlens_k, total, bias = node.input
            del node.input[:]
            node.input.extend([qkv, "", "", past_key, past_value, seqlens_k, total, "", "", "", bias])
    return model


def export_decoder(model: PreTrainedModel, path: Path | str, opset: int = OPSET, mixed: bool = False) -> Path:
    """Export the FP32 decoder graph to `path` and check it with the ONNX checker. `mixed`: the
    graph that also prefills joining prompts (contract/manifest.py, a variant's `mixed_file`)."""
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
    # An in-place cache's past and present are one buffer: both have its capacity in columns.
    dynamic_axes |= {name: {0: "batch", 2: "capacity"} for name in [*past_names(n_layer), *present_names(n_layer)]}
    if mixed:
        prompt, prompt_cache = PROMPT_INPUTS, [*prompt_past_names(n_layer), *prompt_present_names(n_layer)]
        inputs = [*inputs[:3], *prompt, *inputs[3:], *prompt_past_names(n_layer)]
        outputs += prompt_present_names(n_layer)
        dynamic_axes |= {name: {0: "prompts", 1: "prompt_seq"} for name in prompt} | {LOGITS: {0: "rows"}}  # B + J
        dynamic_axes |= {name: {0: "prompts", 2: "prompt_capacity"} for name in prompt_cache}
    # eval() matters twice: no dropout, and torch.onnx.export restores the wrapper's own
    # training flag on the way out, so a training-mode wrapper would leave the model training.
    decoder = WRAPPERS[architecture(model)](model, mixed).eval()
    # The tracer warns about every Python branch on a shape; tracing with a past and a padded
    # row picks the general branch, and verification runs other shapes against PyTorch.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose (see top)
        torch.onnx.export(
            decoder,
            sample_inputs(model, mixed),
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            custom_opsets={"com.microsoft": 1},
            do_constant_folding=True,
            dynamo=False,
        )
    graph = fill_optional_inputs(gemm_to_matmul(onnx.load(str(path))))
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


KV_DTYPE_NAMES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT8: "int8"}


def kv_dtype(path: Path | str) -> str:
    """The dtype of the graph's KV cache at its boundary (the manifest's `Variant.kv_dtype`)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    first = past_names(1)[0]
    return KV_DTYPE_NAMES[next(v for v in graph.input if v.name == first).type.tensor_type.elem_type]


def io_shapes(path: Path | str) -> dict[str, list[str | int]]:
    """Every graph input's and output's dims: the axis name where dynamic, the size where fixed."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        value.name: [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in [*graph.input, *graph.output]
    }
