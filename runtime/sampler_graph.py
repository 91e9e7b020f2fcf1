"""The sampler as an ONNX graph, so that on a GPU the logits never leave the device:
the decoder's logits are bound straight into this graph and only the token ids [B]
come back to the host.

It does what the host sampler (sampler.py) does for rows without top-k or repetition penalty:
temperature (0: greedy), an EOS penalty (the length guarantee's mask), top-p over the
tokens sorted by probability, and one draw per row. The uniform draws are made on the
host by each request's own numpy Generator and passed in, so seeding works as on CPU.

Inputs: all_logits [B, V] (the decoder's output, on the device), rows [R] (which logits
row each sampled row reads), and per sampled row: temperature, top_p, uniform,
eos_penalty [R]; eos_id [1]; vocab_bias [V] (0, or -1e9 on tokens never to emit).
Output: tokens [R] int64.

The graph is stored below as serialised bytes: building it needs the `onnx` package,
which a serving install does not have. `build_sampler_graph()` rebuilds it (a test
checks the stored bytes are what it builds).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

SAMPLER_INPUTS = ("all_logits", "rows", "temperature", "top_p", "uniform", "eos_penalty", "eos_id", "vocab_bias")
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
        const("onehot_values", [0.0, 1.0], TensorProto.FLOAT),
        # the rows to sample from (a request's n samples share a prefill row; free slots are skipped)
        helper.make_node("Gather", ["all_logits", "rows"], ["logits"], axis=0),
        # temperature: divide (0 becomes a tiny positive number; those rows take the argmax below)
        helper.make_node("Max", ["temperature", "tiny"], ["t_safe"]),
        helper.make_node("Unsqueeze", ["t_safe", "axis1"], ["t_col"]),
        helper.make_node("Div", ["logits", "t_col"], ["scaled"]),
        # EOS penalty: add eos_penalty[b] to column eos_id (0, or -1e9 below the minimum length)
        helper.make_node("Shape", ["logits"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["vocab"], axis=0),
        helper.make_node("OneHot", ["eos_id", "vocab", "onehot_values"], ["eos_onehot"], axis=-1),
        helper.make_node("Unsqueeze", ["eos_penalty", "axis1"], ["penalty_col"]),
        helper.make_node("Mul", ["penalty_col", "eos_onehot"], ["bias"]),
        helper.make_node("Add", ["scaled", "bias"], ["x_eos"]),
        # tokens no output may contain (the command tokens): -1e9 in vocab_bias
        helper.make_node("Add", ["x_eos", "vocab_bias"], ["x"]),
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
        helper.make_tensor_value_info("eos_penalty", TensorProto.FLOAT, batch),
        helper.make_tensor_value_info("eos_id", TensorProto.INT64, [1]),
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
    "CAgSCXByb21wdGdlbjrsDQotEgVheGlzMSIIQ29uc3RhbnQqGgoFdmFsdWUqDggBEAc6AQFCBWF4aXMxoAEECikSA29uZSIIQ29u"
    "c3RhbnQqGAoFdmFsdWUqDAgBEAc6AQFCA29uZaABBAouEgR0aW55IghDb25zdGFudCocCgV2YWx1ZSoQCAEQASIEvTeGNUIEdGlu"
    "eaABBAoyEgZ6ZXJvX2YiCENvbnN0YW50Kh4KBXZhbHVlKhIIARABIgQAAAAAQgZ6ZXJvX2agAQQKRBINb25laG90X3ZhbHVlcyII"
    "Q29uc3RhbnQqKQoFdmFsdWUqHQgCEAEiCAAAAAAAAIA/Qg1vbmVob3RfdmFsdWVzoAEECi8KCmFsbF9sb2dpdHMKBHJvd3MSBmxv"
    "Z2l0cyIGR2F0aGVyKgsKBGF4aXMYAKABAgogCgt0ZW1wZXJhdHVyZQoEdGlueRIGdF9zYWZlIgNNYXgKIQoGdF9zYWZlCgVheGlz"
    "MRIFdF9jb2wiCVVuc3F1ZWV6ZQocCgZsb2dpdHMKBXRfY29sEgZzY2FsZWQiA0RpdgoWCgZsb2dpdHMSBXNoYXBlIgVTaGFwZQoo"
    "CgVzaGFwZQoDb25lEgV2b2NhYiIGR2F0aGVyKgsKBGF4aXMYAKABAgpICgZlb3NfaWQKBXZvY2FiCg1vbmVob3RfdmFsdWVzEgpl"
    "b3Nfb25laG90IgZPbmVIb3QqFAoEYXhpcxj///////////8BoAECCiwKC2Vvc19wZW5hbHR5CgVheGlzMRILcGVuYWx0eV9jb2wi"
    "CVVuc3F1ZWV6ZQokCgtwZW5hbHR5X2NvbAoKZW9zX29uZWhvdBIEYmlhcyIDTXVsChoKBnNjYWxlZAoEYmlhcxIFeF9lb3MiA0Fk"
    "ZAobCgV4X2VvcwoKdm9jYWJfYmlhcxIBeCIDQWRkCksKAXgKBXZvY2FiEgZzb3J0ZWQSBW9yZGVyIgRUb3BLKgsKBGF4aXMYAaAB"
    "AioOCgdsYXJnZXN0GAGgAQIqDQoGc29ydGVkGAGgAQIKIQoGc29ydGVkEgFwIgdTb2Z0bWF4KgsKBGF4aXMYAaABAgoTCgFwCgNv"
    "bmUSAWMiBkN1bVN1bQoTCgFjCgFwEgZiZWZvcmUiA1N1YgokCgV0b3BfcAoFYXhpczESCXRvcF9wX2NvbCIJVW5zcXVlZXplCh8K"
    "BmJlZm9yZQoJdG9wX3BfY29sEgRrZWVwIgRMZXNzCh4KBGtlZXAKAXAKBnplcm9fZhIEa2VwdCIFV2hlcmUKGwoEa2VwdAoDb25l"
    "EgZrZXB0X2MiBkN1bVN1bQowCgRrZXB0CgVheGlzMRIFdG90YWwiCVJlZHVjZVN1bSoPCghrZWVwZGltcxgBoAECCiIKB3VuaWZv"
    "cm0KBWF4aXMxEgV1X2NvbCIJVW5zcXVlZXplChsKBXVfY29sCgV0b3RhbBIGdGFyZ2V0IgNNdWwKJAoGa2VwdF9jCgZ0YXJnZXQS"
    "BWJlbG93IgtMZXNzT3JFcXVhbAohCgViZWxvdxIHYmVsb3dfaSIEQ2FzdCoJCgJ0bxgHoAECCjMKB2JlbG93X2kKBWF4aXMxEgVj"
    "b3VudCIJUmVkdWNlU3VtKg8KCGtlZXBkaW1zGAGgAQIKFwoFdm9jYWIKA29uZRIEbGFzdCIDU3ViChkKBWNvdW50CgRsYXN0EgVp"
    "bmRleCIDTWluCjMKBW9yZGVyCgVpbmRleBIGcGlja2VkIg5HYXRoZXJFbGVtZW50cyoLCgRheGlzGAGgAQIKIQoGcGlja2VkCgVh"
    "eGlzMRIHc2FtcGxlZCIHU3F1ZWV6ZQoxCgF4EgZncmVlZHkiBkFyZ01heCoLCgRheGlzGAGgAQIqDwoIa2VlcGRpbXMYAKABAgoq"
    "Cgt0ZW1wZXJhdHVyZQoGemVyb19mEgppc19zYW1wbGVkIgdHcmVhdGVyCiwKCmlzX3NhbXBsZWQKB3NhbXBsZWQKBmdyZWVkeRIG"
    "dG9rZW5zIgVXaGVyZRIHc2FtcGxlclopCgphbGxfbG9naXRzEhsKGQgBEhUKChIIYWxsX3Jvd3MKBxIFdm9jYWJaFwoEcm93cxIP"
    "Cg0IBxIJCgcSBWJhdGNoWh4KC3RlbXBlcmF0dXJlEg8KDQgBEgkKBxIFYmF0Y2haGAoFdG9wX3ASDwoNCAESCQoHEgViYXRjaFoa"
    "Cgd1bmlmb3JtEg8KDQgBEgkKBxIFYmF0Y2haHgoLZW9zX3BlbmFsdHkSDwoNCAESCQoHEgViYXRjaFoUCgZlb3NfaWQSCgoICAcS"
    "BAoCCAFaHQoKdm9jYWJfYmlhcxIPCg0IARIJCgcSBXZvY2FiYhkKBnRva2VucxIPCg0IBxIJCgcSBWJhdGNoQgQKABAR"
)
