"""The sampler as an ONNX graph, so that on a GPU the logits never leave the device:
the decoder's logits are bound straight into this graph and only the token ids [B]
come back to the host.

It does what the host sampler (sampler.py) does for rows without top-k or repetition penalty:
temperature (0: greedy), each row's banned tokens (EOS below the minimum length, copy tokens
its intent has no word for), top-p over the tokens sorted by probability, and one draw per
row. The uniform draws are made on the host by each request's own numpy Generator and passed
in, so seeding works as on CPU.

Inputs: all_logits [B, V] (the decoder's output, on the device), rows [R] (which logits
row each sampled row reads), and per sampled row: temperature, top_p, uniform [R] and
banned_ids [R, M] (token ids, -1 for none); vocab_bias [V] (0, or -1e9 on tokens never to emit).
Output: tokens [R] int64.

The graph is stored below as serialised bytes: building it needs the `onnx` package,
which a serving install does not have. `build_sampler_graph()` rebuilds it (a test
checks the stored bytes are what it builds).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

SAMPLER_INPUTS = ("all_logits", "rows", "temperature", "top_p", "uniform", "banned_ids", "vocab_bias")
SAMPLER_OUTPUT = "tokens"
OPSET = 17


def build_sampler_graph() -> bytes:
    """The graph's ModelProto bytes (needs `onnx`; only for regenerating SAMPLER_ONNX)."""
    import onnx
    from onnx import TensorProto, helper

    def const(name: str, value: Sequence[float], dtype: int = TensorProto.INT64) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, [len(value)], value))

    nodes = [
        const("axis1", [1]),
        const("one", [1]),
        const("tiny", [1e-6], TensorProto.FLOAT),
        const("zero_f", [0.0], TensorProto.FLOAT),
        const("zero_i", [0]),
        const("banned_logit", [-1e9], TensorProto.FLOAT),
        # the rows to sample from (a request's n samples share a prefill row; free slots are skipped)
        helper.make_node("Gather", ["all_logits", "rows"], ["logits"], axis=0),
        # temperature: divide (0 becomes a tiny positive number; those rows take the argmax below)
        helper.make_node("Max", ["temperature", "tiny"], ["t_safe"]),
        helper.make_node("Unsqueeze", ["t_safe", "axis1"], ["t_col"]),
        helper.make_node("Div", ["logits", "t_col"], ["scaled"]),
        # each row's banned ids: -1e9 scattered into a zero row (padding -1 adds 0 at column 0)
        helper.make_node("Shape", ["logits"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["vocab"], axis=0),
        helper.make_node(
            "ConstantOfShape", ["shape"], ["zeros"], value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0])
        ),
        helper.make_node("GreaterOrEqual", ["banned_ids", "zero_i"], ["is_banned"]),
        helper.make_node("Max", ["banned_ids", "zero_i"], ["banned_index"]),
        helper.make_node("Where", ["is_banned", "banned_logit", "zero_f"], ["banned_values"]),
        helper.make_node(
            "ScatterElements", ["zeros", "banned_index", "banned_values"], ["bias"], axis=1, reduction="add"
        ),
        helper.make_node("Add", ["scaled", "bias"], ["x_banned"]),
        # tokens no output may contain (the command tokens): -1e9 in vocab_bias
        helper.make_node("Add", ["x_banned", "vocab_bias"], ["x"]),
        # top-p over the whole vocabulary sorted by probability
        helper.make_node("TopK", ["x", "vocab"], ["sorted", "order"], axis=1, largest=1, sorted=1),
        helper.make_node("Softmax", ["sorted"], ["p"], axis=1),
        helper.make_node("CumSum", ["p", "one"], ["c"]),
        helper.make_node("Sub", ["c", "p"], ["before"]),
        helper.make_node("Unsqueeze", ["top_p", "axis1"], ["top_p_col"]),
        helper.make_node("Less", ["before", "top_p_col"], ["keep"]),
        helper.make_node("Where", ["keep", "p", "zero_f"], ["kept"]),
        # the draw: first index where the cumulative kept mass exceeds uniform * total
        helper.make_node("CumSum", ["kept", "one"], ["kept_c"]),
        helper.make_node("ReduceSum", ["kept", "axis1"], ["total"], keepdims=1),
        helper.make_node("Unsqueeze", ["uniform", "axis1"], ["u_col"]),
        helper.make_node("Mul", ["u_col", "total"], ["target"]),
        helper.make_node("LessOrEqual", ["kept_c", "target"], ["below"]),
        helper.make_node("Cast", ["below"], ["below_i"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["below_i", "axis1"], ["count"], keepdims=1),
        helper.make_node("Sub", ["vocab", "one"], ["last"]),
        helper.make_node("Min", ["count", "last"], ["index"]),
        helper.make_node("GatherElements", ["order", "index"], ["picked"], axis=1),
        helper.make_node("Squeeze", ["picked", "axis1"], ["sampled"]),
        # greedy rows
        helper.make_node("ArgMax", ["x"], ["greedy"], axis=1, keepdims=0),
        helper.make_node("Greater", ["temperature", "zero_f"], ["is_sampled"]),
        helper.make_node("Where", ["is_sampled", "sampled", "greedy"], [SAMPLER_OUTPUT]),
    ]
    batch = ["batch"]
    inputs = [
        helper.make_tensor_value_info("all_logits", TensorProto.FLOAT, ["all_rows", "vocab"]),
        helper.make_tensor_value_info("rows", TensorProto.INT64, batch),
        helper.make_tensor_value_info("temperature", TensorProto.FLOAT, batch),
        helper.make_tensor_value_info("top_p", TensorProto.FLOAT, batch),
        helper.make_tensor_value_info("uniform", TensorProto.FLOAT, batch),
        helper.make_tensor_value_info("banned_ids", TensorProto.INT64, ["batch", "banned"]),
        helper.make_tensor_value_info("vocab_bias", TensorProto.FLOAT, ["vocab"]),
    ]
    outputs = [helper.make_tensor_value_info(SAMPLER_OUTPUT, TensorProto.INT64, batch)]
    graph = helper.make_graph(nodes, "sampler", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="promptgen")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def sampler_graph() -> bytes:
    return base64.b64decode(SAMPLER_ONNX)


SAMPLER_ONNX = (
    "CAgSCXByb21wdGdlbjqgDwotEgVheGlzMSIIQ29uc3RhbnQqGgoFdmFsdWUqDggBEAc6AQFCBWF4aXMxoAEECikSA29uZSIIQ29u"
    "c3RhbnQqGAoFdmFsdWUqDAgBEAc6AQFCA29uZaABBAouEgR0aW55IghDb25zdGFudCocCgV2YWx1ZSoQCAEQASIEvTeGNUIEdGlu"
    "eaABBAoyEgZ6ZXJvX2YiCENvbnN0YW50Kh4KBXZhbHVlKhIIARABIgQAAAAAQgZ6ZXJvX2agAQQKLxIGemVyb19pIghDb25zdGFu"
    "dCobCgV2YWx1ZSoPCAEQBzoBAEIGemVyb19poAEECj4SDGJhbm5lZF9sb2dpdCIIQ29uc3RhbnQqJAoFdmFsdWUqGAgBEAEiBChr"
    "bs5CDGJhbm5lZF9sb2dpdKABBAovCgphbGxfbG9naXRzCgRyb3dzEgZsb2dpdHMiBkdhdGhlcioLCgRheGlzGACgAQIKIAoLdGVt"
    "cGVyYXR1cmUKBHRpbnkSBnRfc2FmZSIDTWF4CiEKBnRfc2FmZQoFYXhpczESBXRfY29sIglVbnNxdWVlemUKHAoGbG9naXRzCgV0"
    "X2NvbBIGc2NhbGVkIgNEaXYKFgoGbG9naXRzEgVzaGFwZSIFU2hhcGUKKAoFc2hhcGUKA29uZRIFdm9jYWIiBkdhdGhlcioLCgRh"
    "eGlzGACgAQIKOgoFc2hhcGUSBXplcm9zIg9Db25zdGFudE9mU2hhcGUqGQoFdmFsdWUqDQgBEAEiBAAAAABCAXqgAQQKLwoKYmFu"
    "bmVkX2lkcwoGemVyb19pEglpc19iYW5uZWQiDkdyZWF0ZXJPckVxdWFsCicKCmJhbm5lZF9pZHMKBnplcm9faRIMYmFubmVkX2lu"
    "ZGV4IgNNYXgKNwoJaXNfYmFubmVkCgxiYW5uZWRfbG9naXQKBnplcm9fZhINYmFubmVkX3ZhbHVlcyIFV2hlcmUKXQoFemVyb3MK"
    "DGJhbm5lZF9pbmRleAoNYmFubmVkX3ZhbHVlcxIEYmlhcyIPU2NhdHRlckVsZW1lbnRzKgsKBGF4aXMYAaABAioTCglyZWR1Y3Rp"
    "b24iA2FkZKABAwodCgZzY2FsZWQKBGJpYXMSCHhfYmFubmVkIgNBZGQKHgoIeF9iYW5uZWQKCnZvY2FiX2JpYXMSAXgiA0FkZApL"
    "CgF4CgV2b2NhYhIGc29ydGVkEgVvcmRlciIEVG9wSyoLCgRheGlzGAGgAQIqDgoHbGFyZ2VzdBgBoAECKg0KBnNvcnRlZBgBoAEC"
    "CiEKBnNvcnRlZBIBcCIHU29mdG1heCoLCgRheGlzGAGgAQIKEwoBcAoDb25lEgFjIgZDdW1TdW0KEwoBYwoBcBIGYmVmb3JlIgNT"
    "dWIKJAoFdG9wX3AKBWF4aXMxEgl0b3BfcF9jb2wiCVVuc3F1ZWV6ZQofCgZiZWZvcmUKCXRvcF9wX2NvbBIEa2VlcCIETGVzcwoe"
    "CgRrZWVwCgFwCgZ6ZXJvX2YSBGtlcHQiBVdoZXJlChsKBGtlcHQKA29uZRIGa2VwdF9jIgZDdW1TdW0KMAoEa2VwdAoFYXhpczES"
    "BXRvdGFsIglSZWR1Y2VTdW0qDwoIa2VlcGRpbXMYAaABAgoiCgd1bmlmb3JtCgVheGlzMRIFdV9jb2wiCVVuc3F1ZWV6ZQobCgV1"
    "X2NvbAoFdG90YWwSBnRhcmdldCIDTXVsCiQKBmtlcHRfYwoGdGFyZ2V0EgViZWxvdyILTGVzc09yRXF1YWwKIQoFYmVsb3cSB2Jl"
    "bG93X2kiBENhc3QqCQoCdG8YB6ABAgozCgdiZWxvd19pCgVheGlzMRIFY291bnQiCVJlZHVjZVN1bSoPCghrZWVwZGltcxgBoAEC"
    "ChcKBXZvY2FiCgNvbmUSBGxhc3QiA1N1YgoZCgVjb3VudAoEbGFzdBIFaW5kZXgiA01pbgozCgVvcmRlcgoFaW5kZXgSBnBpY2tl"
    "ZCIOR2F0aGVyRWxlbWVudHMqCwoEYXhpcxgBoAECCiEKBnBpY2tlZAoFYXhpczESB3NhbXBsZWQiB1NxdWVlemUKMQoBeBIGZ3Jl"
    "ZWR5IgZBcmdNYXgqCwoEYXhpcxgBoAECKg8KCGtlZXBkaW1zGACgAQIKKgoLdGVtcGVyYXR1cmUKBnplcm9fZhIKaXNfc2FtcGxl"
    "ZCIHR3JlYXRlcgosCgppc19zYW1wbGVkCgdzYW1wbGVkCgZncmVlZHkSBnRva2VucyIFV2hlcmUSB3NhbXBsZXJaKQoKYWxsX2xv"
    "Z2l0cxIbChkIARIVCgoSCGFsbF9yb3dzCgcSBXZvY2FiWhcKBHJvd3MSDwoNCAcSCQoHEgViYXRjaFoeCgt0ZW1wZXJhdHVyZRIP"
    "Cg0IARIJCgcSBWJhdGNoWhgKBXRvcF9wEg8KDQgBEgkKBxIFYmF0Y2haGgoHdW5pZm9ybRIPCg0IARIJCgcSBWJhdGNoWicKCmJh"
    "bm5lZF9pZHMSGQoXCAcSEwoHEgViYXRjaAoIEgZiYW5uZWRaHQoKdm9jYWJfYmlhcxIPCg0IARIJCgcSBXZvY2FiYhkKBnRva2Vu"
    "cxIPCg0IBxIJCgcSBWJhdGNoQgQKABAR"
)
