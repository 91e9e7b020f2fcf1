"""What the runner's graph rewrites share (attention_kernel.py, matmul_kernel.py): who reads a
tensor, and dropping the nodes a rewrite left computing for nobody."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Each tensor's name -> the nodes that read it."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def without_unread(
    nodes: Sequence[onnx.NodeProto], graph: onnx.GraphProto, op_types: Sequence[str]
) -> list[onnx.NodeProto]:
    """`nodes` less those of `op_types` (ONNX's own domain) whose outputs nothing reads, neither
    a node nor the graph's outputs, until none is left: a chain that fed only a replaced node
    goes whole."""
    kept = list(nodes)
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for node in kept for name in node.input} | outputs
        unread = {id(n) for n in kept if n.op_type in op_types and not n.domain and not read & set(n.output)}
        if not unread:
            return kept
        kept = [node for node in kept if id(node) not in unread]
