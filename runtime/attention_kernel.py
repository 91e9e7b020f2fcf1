"""Our int8 attention kernel (attention_int8.c) in place of ONNX Runtime's GroupQueryAttention.

The INT8 variant keeps its KV cache in int8 (export/kv_int8.py), and ONNX Runtime's
GroupQueryAttention reads it one (row, head) at a time through two tiny GEMM calls: at GPT-2
small's batch of 32 it was the largest single cost of a decode step (bench/engine.md, step 22).
`promptgen::AttentionInt8` computes the same thing (the same cache bytes, the same outputs to
float rounding) in one task per (row, key/value head). custom_ops.py builds the library and
makes sessions with the rewrite below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

DOMAIN = "promptgen"
OP_TYPE = "AttentionInt8"

# GroupQueryAttention's inputs the kernel takes (its 14 inputs as export/onnx_graph.py and
# export/kv_int8.py fill them: query (packed QKV), -, -, past_key, past_value, seqlens_k,
# total_sequence_length, -, -, -, attention_bias, -, k_scale, v_scale), in the kernel's order.
TAKEN = (0, 3, 4, 5, 6, 10, 12, 13)
EMPTY = (1, 2, 7, 8, 9, 11)  # key, value (packed in the query), cos, sin, position_ids, head_sink
ATTRIBUTES = {"kv_cache_bit_width": 8, "k_quant_type": b"PER_CHANNEL", "v_quant_type": b"PER_CHANNEL"}


def replaceable(node: onnx.NodeProto) -> bool:
    """A GroupQueryAttention node that the kernel computes exactly: int8 cache with per-channel
    scales, packed QKV, an additive bias, and nothing else (no rotary, softcap, local window,
    custom scale, smooth softmax or head sink)."""
    from onnx import helper

    if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft" or len(node.input) != 14:
        return False
    if any(node.input[i] for i in EMPTY) or not all(node.input[i] for i in TAKEN):
        return False
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if {k: attributes.get(k) for k in ATTRIBUTES} != ATTRIBUTES:
        return False
    return set(attributes) <= {"num_heads", "kv_num_heads", *ATTRIBUTES}


def with_kernel(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place: each replaceable GroupQueryAttention becomes AttentionInt8 on the
    same tensors. Returns how many were replaced."""
    from onnx import helper

    replaced = 0
    for node in model.graph.node:
        if not replaceable(node):
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        new = helper.make_node(
            OP_TYPE,
            [node.input[i] for i in TAKEN],
            list(node.output),
            name=f"{node.name}/{OP_TYPE}",  # the export's name kept, for profiles and errors
            domain=DOMAIN,
            num_heads=attributes["num_heads"],
            kv_num_heads=attributes["kv_num_heads"],
        )
        node.CopyFrom(new)
        replaced += 1
    if replaced and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return replaced
