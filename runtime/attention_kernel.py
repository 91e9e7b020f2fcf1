"""Our int8 attention kernel for ONNX Runtime's CPU provider (attention_int8.c), and the graph
rewrite that puts it in place of GroupQueryAttention.

The INT8 variant keeps its KV cache in int8 (export/kv_int8.py), and ONNX Runtime's
GroupQueryAttention reads it one (row, head) at a time through two tiny GEMM calls: at GPT-2
small's batch of 32 it was the largest single cost of a decode step (bench/engine.md, step 22).
`promptgen::AttentionInt8` computes the same thing (the same cache bytes, the same outputs to
float rounding) in one task per (row, key/value head).

Bundles stay plain ONNX: the rewrite happens when a runner makes its sessions
(`kernel_session`), only on CPU, only for attention nodes whose attributes the kernel
implements, and only where the library was built. setuptools builds it at install
(pyproject.toml: `ext-modules`, optional: without a C compiler the install goes on and the
runner keeps GroupQueryAttention). `python -m runtime.attention_kernel` says whether it is
built and can build it in place.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxruntime as ort

if TYPE_CHECKING:
    import onnx

SOURCE = Path(__file__).with_name("attention_int8.c")
LIBRARY_STEM = "_attention_int8"  # the extension module name pyproject.toml builds
DOMAIN = "promptgen"
OP_TYPE = "AttentionInt8"

# GroupQueryAttention's inputs the kernel takes (its 14 inputs as export/onnx_graph.py and
# export/kv_int8.py fill them: query (packed QKV), -, -, past_key, past_value, seqlens_k,
# total_sequence_length, -, -, -, attention_bias, -, k_scale, v_scale), in the kernel's order.
TAKEN = (0, 3, 4, 5, 6, 10, 12, 13)
EMPTY = (1, 2, 7, 8, 9, 11)  # key, value (packed in the query), cos, sin, position_ids, head_sink
ATTRIBUTES = {"kv_cache_bit_width": 8, "k_quant_type": b"PER_CHANNEL", "v_quant_type": b"PER_CHANNEL"}


def library() -> Path | None:
    """The built kernel beside this module, or None."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = SOURCE.with_name(LIBRARY_STEM + suffix)
        if path.exists():
            return path
    return None


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


def kernel_session(path: Path, options: ort.SessionOptions, providers: list[Any]) -> ort.InferenceSession | None:
    """A session of the decoder graph at `path` with the kernel in place (`options` must have
    loaded the library); None where the graph has no attention node the kernel computes.
    The rewritten graph goes through a temporary file, not bytes: a session made from bytes
    held ~120 MB more of GPT-2 small's INT8 graph (253 against 136 MB resident)."""
    import onnx

    model = onnx.load(str(path))
    if not with_kernel(model):
        return None
    with tempfile.TemporaryDirectory(prefix="promptgen-kernel-") as tmp:
        rewritten = Path(tmp) / path.name
        onnx.save(model, str(rewritten))
        del model
        return ort.InferenceSession(str(rewritten), options, providers=providers)


def build(compiler: str = "cc", out_dir: Path | None = None) -> Path:
    """Compile the kernel with `compiler` beside this module (what `pip install -e .` does
    through setuptools, for a checkout whose install had no compiler), or into `out_dir`."""
    out = (out_dir or SOURCE.parent) / (LIBRARY_STEM + importlib.machinery.EXTENSION_SUFFIXES[0])
    command = [compiler, "-O3", "-fPIC", "-shared", "-Wall", "-o", str(out), str(SOURCE), "-lm"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.attention_kernel",
        description="Whether the int8 attention kernel is built (prints its path), or build it (--build).",
    )
    parser.add_argument("--build", action="store_true", help="compile it beside this module")
    parser.add_argument("--cc", default="cc", help="the C compiler (default: cc)")
    parser.add_argument(
        "--out", type=Path, help="build into this folder (default: beside this module, where runners look)"
    )
    args = parser.parse_args(argv)
    if args.build:
        try:
            print(build(args.cc, args.out))
        except FileNotFoundError:
            print(f"error: no C compiler {args.cc!r} on PATH; install one (Debian: gcc) or pass --cc", file=sys.stderr)
            return 2
        except subprocess.CalledProcessError as e:
            first = (e.stderr or "").strip().splitlines()[:1]
            print(f"error: {args.cc} failed to compile {SOURCE.name}: {' '.join(first)}", file=sys.stderr)
            return 2
        return 0
    built = library()
    if built is None:
        print("not built: GroupQueryAttention serves the int8 cache (build: --build)", file=sys.stderr)
        return 1
    print(built)
    return 0


if __name__ == "__main__":
    sys.exit(main())
