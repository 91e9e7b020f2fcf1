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

from runtime.graph_edit import consumers, without_unread

if TYPE_CHECKING:
    import onnx

DOMAIN = "promptgen"
OP_TYPE = "AttentionInt8"
MIXED_OP_TYPE = "AttentionInt8Mixed"  # a mixed step's two attention calls in one (join_parts)
# Nodes that only compute shapes and views: dropped where nothing reads them after join_parts.
VIEW_OPS = ("Shape", "Gather", "Unsqueeze", "Concat", "Slice", "Reshape", "Constant")

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
    join_parts(model)
    return replaced


def join_parts(model: onnx.ModelProto) -> int:
    """Rewrite a mixed graph's attention (export/onnx_graph.py: StepParts) in place: where the flat
    QKV is sliced into the batch's rows and the joining prompts, each reshaped, attended on its
    own cache by AttentionInt8 and flattened and concatenated again, one AttentionInt8Mixed node
    reads the flat QKV and writes the flat output. Each of those ~15 nodes a layer cost a
    dispatch at every join (bench/engine.md, step 24). Returns how many pairs were joined."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producer: dict[str, onnx.NodeProto] = {o: n for n in graph.node for o in n.output}
    readers = consumers(graph)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def made_by(name: str, op_type: str, domain: str = "") -> onnx.NodeProto | None:
        """The node of `op_type` that makes `name`, where one node reads it (and Shape nodes,
        which compute the shapes of the views this rewrite removes)."""
        node = producer.get(name)
        others = [n for n in readers.get(name, []) if n.op_type != "Shape"]
        if node is None or node.op_type != op_type or node.domain != domain or len(others) != 1:
            return None
        return node

    def part(name: str) -> tuple[onnx.NodeProto, ...] | None:
        """The chain that makes one part's flat output `name`, last node first: Reshape (flat)
        <- AttentionInt8 <- Reshape (the part's view) <- Slice (of the flat QKV)."""
        chain = []
        for op_type, domain in (("Reshape", ""), (OP_TYPE, DOMAIN), ("Reshape", ""), ("Slice", "")):
            node = made_by(name, op_type, domain)
            if node is None:
                return None
            chain.append(node)
            name = node.input[0]
        return tuple(chain)

    def sliced_on_axis_1(node: onnx.NodeProto, start: int | None) -> bool:
        values = [constants.get(name) for name in node.input[1:4]]
        axes, starts = values[2], values[0]
        if axes is None or axes.tolist() != [1]:
            return False
        return start is None or (starts is not None and starts.tolist() == [start])

    joined: dict[int, onnx.NodeProto] = {}  # id(concat) -> its replacement
    gone: set[int] = set()
    for concat in graph.node:
        axis = next((a.i for a in concat.attribute if a.name == "axis"), None)
        if concat.op_type != "Concat" or len(concat.input) != 2 or axis != 1:
            continue
        rows, prompts = part(concat.input[0]), part(concat.input[1])
        if rows is None or prompts is None:
            continue
        (_, row_attention, _, row_slice), (_, prompt_attention, _, prompt_slice) = rows, prompts
        same_source = row_slice.input[0] == prompt_slice.input[0]
        if not (same_source and sliced_on_axis_1(row_slice, 0) and sliced_on_axis_1(prompt_slice, None)):
            continue
        if row_attention.attribute != prompt_attention.attribute:
            continue
        joined[id(concat)] = helper.make_node(
            MIXED_OP_TYPE,
            [row_slice.input[0], *row_attention.input[1:], *prompt_attention.input[1:]],
            [concat.output[0], *row_attention.output[1:], *prompt_attention.output[1:]],
            name=f"{row_attention.name}/{MIXED_OP_TYPE}",
            domain=DOMAIN,
        )
        joined[id(concat)].attribute.extend(row_attention.attribute)
        gone.update(id(node) for node in (*rows, *prompts))
    if not joined:
        return 0
    kept = [joined.get(id(node), node) for node in graph.node if id(node) not in gone]
    kept = without_unread(kept, graph, VIEW_OPS)  # the shapes the removed reshapes were given
    made = {o for node in kept for o in node.output} | {i.name for i in graph.input} | set(constants)
    if any(name and name not in made for node in kept for name in node.input):
        return 0  # something else read what went (a Shape kept for another use): the graph as it was
    del graph.node[:]
    graph.node.extend(kept)
    return len(joined)
