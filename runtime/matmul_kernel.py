"""Our INT8 weight MatMul (matmul_int8.c) in place of ONNX Runtime's dynamic-quantization
subgraph, on CPUs with AMX.

export/variants.py quantizes each weight MatMul of the INT8 variant with ORT's quantize_dynamic,
which writes DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul (by the two scales), and the
projection's bias Add follows. ORT fuses that into DynamicQuantizeMatMul; `promptgen::MatMulInt8`
computes the same outputs to the last bit with the products on AMX tiles (bench/engine.md, step
23). The weight is packed here, when a session is made, into the operator's tile layout; the
bundle on disk keeps the plain graph.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from runtime.graph_edit import consumers, without_unread

if TYPE_CHECKING:
    import onnx

DOMAIN = "promptgen"
OP_TYPE = "MatMulInt8"
OP_TYPE_ADD = "MatMulInt8Add"  # the same, then a residual input added (a block's skip connection)
BLOCK = 16  # columns per packed block (matmul_int8.c)
DEPTH = 64  # rows of K per tile product
ALIGN = 64  # a packed weight starts on a cache line: each tile row is one line, never two


def pack(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An int8 weight [K, N] in the operator's layout [Np/16, Kp/4, 64] (K and N padded with zeros
    to multiples of 64 and 16; block b, row group g holds columns 16b..16b+15, each with its rows
    4g..4g+3 side by side), and its column sums (int32 [Np])."""
    k, n = weight.shape
    kp, np_ = -(-k // DEPTH) * DEPTH, -(-n // BLOCK) * BLOCK
    padded = np.zeros((kp, np_), np.int8)
    padded[:k, :n] = weight
    blocks = padded.reshape(kp // 4, 4, np_ // BLOCK, BLOCK).transpose(2, 0, 3, 1)
    packed = aligned_empty((np_ // BLOCK, kp // 4, 4 * BLOCK))
    packed[...] = blocks.reshape(packed.shape)
    return packed, padded.sum(axis=0, dtype=np.int32)


def aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """An int8 array of `shape` whose data starts on an ALIGN-byte boundary (numpy's own start
    16 bytes past one). ORT copies an initializer of the graph into its own aligned buffer; a
    shared one (SharedWeights) it reads where it is."""
    size = int(np.prod(shape))
    raw = np.empty(size + ALIGN, np.int8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + size].reshape(shape)


def packed_name(weight: np.ndarray) -> str:
    """A packed weight's initializer name, from its content: the decode graph and the mixed graph
    hold the same weights, so their packed copies get the same names and one buffer serves both
    sessions (SharedWeights)."""
    digest = hashlib.blake2b(weight.tobytes(), digest_size=12)
    digest.update(str(weight.shape).encode())
    return f"{DOMAIN}/packed_weight/{digest.hexdigest()}"


@dataclass
class Match:
    """One quantized MatMul of the graph: the nodes the operator replaces and what it needs."""

    x: str  # the float input DynamicQuantizeLinear quantizes
    output: str  # the float result (after the bias Add where there is one)
    weight: np.ndarray  # int8 [K, N]
    weight_scale: np.ndarray  # float32 [N]
    bias: np.ndarray | None  # float32 [N]
    replaced: list[onnx.NodeProto]  # MatMulInteger, Cast, the output Mul, the Adds where fused
    name: str
    residual: str | None = None  # the tensor a following Add adds to the result, where fused


def matches(model: onnx.ModelProto) -> list[Match]:
    """The MatMulInteger subgraphs that the operator computes exactly: activations from a
    DynamicQuantizeLinear, a constant int8 weight with zero points 0, the result cast to float and
    multiplied by (activation scale x constant weight scale), and nothing else reading between."""
    from onnx import numpy_helper

    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers = consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    typed = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}

    def dims(name: str) -> list[int | str] | None:
        """A tensor's shape as the graph declares it (a static size or a symbol per axis)."""
        info = typed.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in info.type.tensor_type.shape.dim]

    def same_rows(residual: str, x: str, n: int) -> bool:
        """Whether the graph says `residual` has the MatMul's result shape (x's leading axes, n):
        the operator adds it element by element, where an Add would also broadcast."""
        r, lead = dims(residual), dims(x)
        if r is None or lead is None or len(r) != len(lead) or r[-1] != n:
            return False
        pairs = zip(r[:-1], lead[:-1], strict=True)
        return all(a == b or (isinstance(a, str) and a and isinstance(b, str) and b) for a, b in pairs)

    def only_consumer(name: str, op_type: str) -> onnx.NodeProto | None:
        found = readers.get(name, [])
        if len(found) != 1 or found[0].op_type != op_type or found[0].domain or name in graph_outputs:
            return None
        return found[0]

    def constant(name: str) -> np.ndarray | None:
        # The exporter shares equal initializers (e.g. a random model's zero biases) via Identity.
        while name not in constants and name in producer and producer[name].op_type == "Identity":
            name = producer[name].input[0]
        return numpy_helper.to_array(constants[name]) if name in constants else None

    found = []
    for mm in graph.node:
        if mm.op_type != "MatMulInteger" or mm.domain or len(mm.input) != 4:
            continue
        quantize = producer.get(mm.input[0])
        weight, weight_zero = constant(mm.input[1]), constant(mm.input[3])
        if quantize is None or quantize.op_type != "DynamicQuantizeLinear":
            continue
        if list(quantize.output[::2]) != [mm.input[0], mm.input[2]]:  # its codes and its scale, read here
            continue
        if weight is None or weight.dtype != np.int8 or weight.ndim != 2 or weight_zero is None or weight_zero.any():
            continue
        cast = only_consumer(mm.output[0], "Cast")
        if cast is None or next(a.i for a in cast.attribute if a.name == "to") != 1:  # to float
            continue
        out_mul = only_consumer(cast.output[0], "Mul")
        if out_mul is None:
            continue
        scale_name = out_mul.input[1] if out_mul.input[0] == cast.output[0] else out_mul.input[0]
        scale_mul = producer.get(scale_name)
        if scale_mul is None or scale_mul.op_type != "Mul" or quantize.output[1] not in scale_mul.input:
            continue
        weight_scale = constant(next(i for i in scale_mul.input if i != quantize.output[1]))
        n = weight.shape[1]
        if weight_scale is None or weight_scale.dtype != np.float32 or weight_scale.size not in (1, n):
            continue
        replaced, output, bias = [mm, cast, out_mul], out_mul.output[0], None
        add = only_consumer(out_mul.output[0], "Add")
        if add is not None:
            other = constant(add.input[1] if add.input[0] == out_mul.output[0] else add.input[0])
            if other is not None and other.dtype == np.float32 and other.shape == (n,):
                replaced, output, bias = [*replaced, add], add.output[0], other
        # A residual Add next (an output projection's): another computed tensor added to the
        # result, in the operator's last pass over it instead of a pass of its own. The
        # operator checks that it has the result's shape.
        residual = None
        add = only_consumer(output, "Add")
        if add is not None:
            other_name = add.input[1] if add.input[0] == output else add.input[0]
            if other_name != output and constant(other_name) is None and same_rows(other_name, quantize.input[0], n):
                replaced, output, residual = [*replaced, add], add.output[0], other_name
        scales = np.broadcast_to(weight_scale.reshape(-1), (n,)).astype(np.float32)
        found.append(Match(quantize.input[0], output, weight, scales, bias, replaced, mm.name, residual))
    return found


def with_kernel(model: onnx.ModelProto, shared: dict[str, np.ndarray] | None = None) -> int:
    """Rewrite `model` in place: each matched subgraph becomes one MatMulInt8 node (at the place
    of its last node), with the weight packed; what no node reads any more (the quantize and scale
    nodes, the int8 weight) goes. Returns how many were replaced. `shared` collects the packed
    weights by name (packed_name), one array per distinct weight, for SharedWeights."""
    from onnx import helper, numpy_helper

    found = matches(model)
    if not found:
        return 0
    graph = model.graph
    gone: set[int] = set()
    new_at: dict[int, onnx.NodeProto] = {}
    present = {t.name for t in graph.initializer}
    for match in found:
        k, n = match.weight.shape
        weight_name = packed_name(match.weight)
        known = shared.get(weight_name) if shared is not None else None
        if known is None:
            packed, sums = pack(match.weight)
        else:  # packed for the other graph already: only the column sums are made again
            packed, sums = known, np.pad(match.weight.sum(axis=0, dtype=np.int32), (0, known.shape[0] * BLOCK - n))
        if shared is not None:
            shared[weight_name] = packed
        names = [weight_name, *(f"{match.name}/{part}" for part in ("column_sums", "weight_scale", "bias"))]
        bias = match.bias if match.bias is not None else np.zeros(n, np.float32)
        for name, value in zip(names, (packed, sums, match.weight_scale, bias), strict=True):
            if name not in present:  # a weight used twice is packed and stored once
                graph.initializer.append(numpy_helper.from_array(value, name))
                present.add(name)
        op_type, inputs = (
            (OP_TYPE, [match.x, *names]) if match.residual is None else (OP_TYPE_ADD, [match.x, *names, match.residual])
        )
        node = helper.make_node(
            op_type, inputs, [match.output], name=f"{match.name}/{op_type}", domain=DOMAIN, n=n, k=k
        )
        gone.update(id(r) for r in match.replaced)
        new_at[id(match.replaced[-1])] = node
    kept = [new_at.get(id(node), node) for node in graph.node if id(node) not in gone or id(node) in new_at]
    # Quantize, scale and Identity nodes nobody reads any more, then initializers nobody reads.
    kept = without_unread(kept, graph, ("DynamicQuantizeLinear", "Mul", "Identity"))
    del graph.node[:]
    graph.node.extend(kept)
    read = {name for node in kept for name in node.input}
    initializers = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return len(found)
