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
Output: tokens [R] int64; -1 (sampler.py's NO_TOKEN) for a row whose logits hold a NaN or +inf,
or no finite value, as the host sampler answers for it.

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
        const("no_token", [-1]),
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
        helper.make_node("Where", ["is_sampled", "sampled", "greedy"], ["chosen"]),
        # rows with nothing to sample from: a NaN or +inf anywhere, or no finite logit at all.
        # Counted, not found by max: whether ReduceMax and ArgMax propagate NaN is up to the kernel.
        helper.make_node("IsNaN", ["x"], ["is_nan"]),
        helper.make_node("IsInf", ["x"], ["is_pos_inf"], detect_negative=0),
        helper.make_node("Or", ["is_nan", "is_pos_inf"], ["is_bad"]),
        helper.make_node("Cast", ["is_bad"], ["is_bad_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["is_bad_f"], ["any_bad"], axes=[1], keepdims=0),
        helper.make_node("Greater", ["any_bad", "zero_f"], ["has_bad"]),
        helper.make_node("ReduceMax", ["x"], ["row_max"], axes=[1], keepdims=0),
        helper.make_node("IsInf", ["row_max"], ["none_finite"], detect_positive=0),
        helper.make_node("Or", ["has_bad", "none_finite"], ["broken"]),
        helper.make_node("Where", ["broken", "no_token", "chosen"], [SAMPLER_OUTPUT]),
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
    "CAgSCXByb21wdGdlbjqJEwotEgVheGlzMSIIQ29uc3RhbnQqGgoFdmFsdWUqDggBEAc6AQFCBWF4aXMxoAEECikSA29uZSIIQ29u"
    "c3RhbnQqGAoFdmFsdWUqDAgBEAc6AQFCA29uZaABBAouEgR0aW55IghDb25zdGFudCocCgV2YWx1ZSoQCAEQASIEvTeGNUIEdGlu"
    "eaABBAoyEgZ6ZXJvX2YiCENvbnN0YW50Kh4KBXZhbHVlKhIIARABIgQAAAAAQgZ6ZXJvX2agAQQKLxIGemVyb19pIghDb25zdGFu"
    "dCobCgV2YWx1ZSoPCAEQBzoBAEIGemVyb19poAEECj4SDGJhbm5lZF9sb2dpdCIIQ29uc3RhbnQqJAoFdmFsdWUqGAgBEAEiBChr"
    "bs5CDGJhbm5lZF9sb2dpdKABBAo8Eghub190b2tlbiIIQ29uc3RhbnQqJgoFdmFsdWUqGggBEAc6Cv///////////wFCCG5vX3Rv"
    "a2VuoAEECi8KCmFsbF9sb2dpdHMKBHJvd3MSBmxvZ2l0cyIGR2F0aGVyKgsKBGF4aXMYAKABAgogCgt0ZW1wZXJhdHVyZQoEdGlu"
    "eRIGdF9zYWZlIgNNYXgKIQoGdF9zYWZlCgVheGlzMRIFdF9jb2wiCVVuc3F1ZWV6ZQocCgZsb2dpdHMKBXRfY29sEgZzY2FsZWQi"
    "A0RpdgoWCgZsb2dpdHMSBXNoYXBlIgVTaGFwZQooCgVzaGFwZQoDb25lEgV2b2NhYiIGR2F0aGVyKgsKBGF4aXMYAKABAgo6CgVz"
    "aGFwZRIFemVyb3MiD0NvbnN0YW50T2ZTaGFwZSoZCgV2YWx1ZSoNCAEQASIEAAAAAEIBeqABBAovCgpiYW5uZWRfaWRzCgZ6ZXJv"
    "X2kSCWlzX2Jhbm5lZCIOR3JlYXRlck9yRXF1YWwKJwoKYmFubmVkX2lkcwoGemVyb19pEgxiYW5uZWRfaW5kZXgiA01heAo3Cglp"
    "c19iYW5uZWQKDGJhbm5lZF9sb2dpdAoGemVyb19mEg1iYW5uZWRfdmFsdWVzIgVXaGVyZQpdCgV6ZXJvcwoMYmFubmVkX2luZGV4"
    "Cg1iYW5uZWRfdmFsdWVzEgRiaWFzIg9TY2F0dGVyRWxlbWVudHMqCwoEYXhpcxgBoAECKhMKCXJlZHVjdGlvbiIDYWRkoAEDCh0K"
    "BnNjYWxlZAoEYmlhcxIIeF9iYW5uZWQiA0FkZAoeCgh4X2Jhbm5lZAoKdm9jYWJfYmlhcxIBeCIDQWRkCksKAXgKBXZvY2FiEgZz"
    "b3J0ZWQSBW9yZGVyIgRUb3BLKgsKBGF4aXMYAaABAioOCgdsYXJnZXN0GAGgAQIqDQoGc29ydGVkGAGgAQIKIQoGc29ydGVkEgFw"
    "IgdTb2Z0bWF4KgsKBGF4aXMYAaABAgoTCgFwCgNvbmUSAWMiBkN1bVN1bQoTCgFjCgFwEgZiZWZvcmUiA1N1YgokCgV0b3BfcAoF"
    "YXhpczESCXRvcF9wX2NvbCIJVW5zcXVlZXplCh8KBmJlZm9yZQoJdG9wX3BfY29sEgRrZWVwIgRMZXNzCh4KBGtlZXAKAXAKBnpl"
    "cm9fZhIEa2VwdCIFV2hlcmUKGwoEa2VwdAoDb25lEgZrZXB0X2MiBkN1bVN1bQowCgRrZXB0CgVheGlzMRIFdG90YWwiCVJlZHVj"
    "ZVN1bSoPCghrZWVwZGltcxgBoAECCiIKB3VuaWZvcm0KBWF4aXMxEgV1X2NvbCIJVW5zcXVlZXplChsKBXVfY29sCgV0b3RhbBIG"
    "dGFyZ2V0IgNNdWwKJAoGa2VwdF9jCgZ0YXJnZXQSBWJlbG93IgtMZXNzT3JFcXVhbAohCgViZWxvdxIHYmVsb3dfaSIEQ2FzdCoJ"
    "CgJ0bxgHoAECCjMKB2JlbG93X2kKBWF4aXMxEgVjb3VudCIJUmVkdWNlU3VtKg8KCGtlZXBkaW1zGAGgAQIKFwoFdm9jYWIKA29u"
    "ZRIEbGFzdCIDU3ViChkKBWNvdW50CgRsYXN0EgVpbmRleCIDTWluCjMKBW9yZGVyCgVpbmRleBIGcGlja2VkIg5HYXRoZXJFbGVt"
    "ZW50cyoLCgRheGlzGAGgAQIKIQoGcGlja2VkCgVheGlzMRIHc2FtcGxlZCIHU3F1ZWV6ZQoxCgF4EgZncmVlZHkiBkFyZ01heCoL"
    "CgRheGlzGAGgAQIqDwoIa2VlcGRpbXMYAKABAgoqCgt0ZW1wZXJhdHVyZQoGemVyb19mEgppc19zYW1wbGVkIgdHcmVhdGVyCiwK"
    "CmlzX3NhbXBsZWQKB3NhbXBsZWQKBmdyZWVkeRIGY2hvc2VuIgVXaGVyZQoSCgF4EgZpc19uYW4iBUlzTmFOCi4KAXgSCmlzX3Bv"
    "c19pbmYiBUlzSW5mKhYKD2RldGVjdF9uZWdhdGl2ZRgAoAECCiAKBmlzX25hbgoKaXNfcG9zX2luZhIGaXNfYmFkIgJPcgojCgZp"
    "c19iYWQSCGlzX2JhZF9mIgRDYXN0KgkKAnRvGAGgAQIKPAoIaXNfYmFkX2YSB2FueV9iYWQiCVJlZHVjZU1heCoLCgRheGVzQAGg"
    "AQcqDwoIa2VlcGRpbXMYAKABAgojCgdhbnlfYmFkCgZ6ZXJvX2YSB2hhc19iYWQiB0dyZWF0ZXIKNQoBeBIHcm93X21heCIJUmVk"
    "dWNlTWF4KgsKBGF4ZXNAAaABByoPCghrZWVwZGltcxgAoAECCjUKB3Jvd19tYXgSC25vbmVfZmluaXRlIgVJc0luZioWCg9kZXRl"
    "Y3RfcG9zaXRpdmUYAKABAgoiCgdoYXNfYmFkCgtub25lX2Zpbml0ZRIGYnJva2VuIgJPcgopCgZicm9rZW4KCG5vX3Rva2VuCgZj"
    "aG9zZW4SBnRva2VucyIFV2hlcmUSB3NhbXBsZXJaKQoKYWxsX2xvZ2l0cxIbChkIARIVCgoSCGFsbF9yb3dzCgcSBXZvY2FiWhcK"
    "BHJvd3MSDwoNCAcSCQoHEgViYXRjaFoeCgt0ZW1wZXJhdHVyZRIPCg0IARIJCgcSBWJhdGNoWhgKBXRvcF9wEg8KDQgBEgkKBxIF"
    "YmF0Y2haGgoHdW5pZm9ybRIPCg0IARIJCgcSBWJhdGNoWicKCmJhbm5lZF9pZHMSGQoXCAcSEwoHEgViYXRjaAoIEgZiYW5uZWRa"
    "HQoKdm9jYWJfYmlhcxIPCg0IARIJCgcSBXZvY2FiYhkKBnRva2VucxIPCg0IBxIJCgcSBWJhdGNoQgQKABAR"
)
