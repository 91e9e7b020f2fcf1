"""The FP16 (CUDA) and INT8 (CPU) variants, derived from the FP32 graph.

FP16 uses onnxruntime.transformers.float16 (onnxconverter-common's converter failed on the
tied-embedding graph, docs/architecture.md). INT8 needs no calibration data; it is one of three
schemes, tried fastest first until one passes verification (bundle.py, INT8_SCHEMES):

- `dynamic`: ONNX Runtime's dynamic quantisation, weights int8 per output channel, each
  MatMul's input activations quantised on the fly *per tensor*. Fastest at batch 16 and up.
- `dynamic_keep_sensitive`: the same with the LM head and MLP down projections in FP32.
- `blockwise`: weights int8 in blocks of 32 along the input dimension, each block with its own
  scale (the MatMulNBits contrib op), activations quantised per block of 32 at run time
  (accuracy level 4). An activation outlier then coarsens only its own block. Llama-family
  models carry a few channels 100x larger than the rest, which per-tensor rounding turns into
  noise: SmolLM2-135M fine-tuned agreed with FP32 on 69% of next tokens under `dynamic`, 86%
  under `dynamic_keep_sensitive`, and 95% (9 flips beyond near-ties in 1,871) under
  `blockwise` (bench/pretrained.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from contract.manifest import LOGITS


@dataclass(frozen=True)
class VariantSpec:
    """The KV cache's dtype is not here: the graph says it (onnx_graph.kv_dtype). FP16's is fp16,
    half the cache's memory and traffic on the device; INT8's is fp32, or int8 (kv_int8.py)."""

    name: str
    dtype: str  # weights
    provider: str


VARIANTS = {
    "fp32": VariantSpec("fp32", "float32", "CPUExecutionProvider"),
    "int8": VariantSpec("int8", "int8", "CPUExecutionProvider"),
    # Logits stay fp32 (the contract): sampling wants full-precision softmax over a 50k vocabulary.
    "fp16": VariantSpec("fp16", "float16", "CUDAExecutionProvider"),
}

# LayerNorm's variance and Softmax's exponentials overflow or lose the small terms in fp16;
# Pow (GELU's x^3) overflows for |x| > 40. They are cheap next to the MatMuls, so they stay fp32.
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "Pow"]


def to_fp16(fp32_path: Path, out_path: Path) -> Path:
    model = convert_float_to_float16(
        onnx.load(str(fp32_path)),
        keep_io_types=[LOGITS],
        op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FP32,
    )
    onnx.save(model, str(out_path))
    return out_path


def int8_sensitive_matmuls(model: onnx.ModelProto) -> list[str]:
    """The MatMuls kept in FP32: the LM head and each MLP's down projection.

    Dynamic quantisation quantises a MatMul's *input activations* per tensor. The LM head
    decides between near-tied next tokens, and the MLP down projection reads the GELU
    output, whose heavy tail per-tensor int8 rounds away. On the trained tiny model,
    next-token agreement with FP32 was 98.18% with every MatMul in int8, 98.97% with the
    LM head kept, 99.29% with the LM head and the down projections kept (bench/export.md).
    """
    sensitive = ("lm_head", "/mlp/c_proj/", "/mlp/down_proj/")  # down projection: GPT-2's c_proj, Llama's down_proj
    matmuls = [node.name for node in model.graph.node if node.op_type == "MatMul"]
    return [name for name in matmuls if any(part in name for part in sensitive)]


DYNAMIC, DYNAMIC_KEEP_SENSITIVE, BLOCKWISE = "dynamic", "dynamic_keep_sensitive", "blockwise"
INT8_SCHEMES = (DYNAMIC, DYNAMIC_KEEP_SENSITIVE, BLOCKWISE)  # the order bundle.py tries them in
BLOCK_SIZE = 32  # inputs per weight scale in `blockwise`: 128 measured 93% agreement on SmolLM2, 32 95%
ACCURACY_INT8 = 4  # MatMulNBits' accuracy level 4: int8 activations (per block) and int32 accumulation


def to_int8(fp32_path: Path, out_path: Path, scheme: str = DYNAMIC) -> Path:
    """The INT8 graph under one of INT8_SCHEMES. `dynamic` is per output channel (99.8% vs
    99.3% per-tensor in docs/architecture.md's probe); all-int8 is the fast one (GPT-2 small:
    714 vs 417 tokens/s at batch 16 against `dynamic_keep_sensitive`)."""
    if scheme not in INT8_SCHEMES:
        raise ValueError(f"unknown int8 scheme {scheme!r}; choose one of {INT8_SCHEMES}")
    if scheme == BLOCKWISE:
        config = DefaultWeightOnlyQuantConfig(
            block_size=BLOCK_SIZE,
            is_symmetric=True,
            accuracy_level=ACCURACY_INT8,
            bits=8,
            quant_format=QuantFormat.QOperator,
        )
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_path)), algo_config=config)
        # It logs a line per graph node at INFO (thousands for a 30-layer model).
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out_path), use_external_data_format=False)
        return out_path
    model = onnx.load(str(fp32_path), load_external_data=False)
    quantize_dynamic(
        fp32_path,
        out_path,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=int8_sensitive_matmuls(model) if scheme == DYNAMIC_KEEP_SENSITIVE else [],
    )
    return out_path


# How each variant is made from the FP32 graph (FP32 is the export itself).
DERIVE = {"fp16": to_fp16, "int8": to_int8}
