"""Batch KV cache surgery as an ONNX graph, so that on a GPU the cache never leaves the
device when requests join or leave the batch (kv_cache.py does it with numpy on CPU).

For one past/present tensor it computes
    concat(pad(running[keep], running_pads), pad(joining[join_rows] * joining_scale, joining_pads))
where the pads only touch the columns axis (negative: trim), and `joining_scale` is the
joining rows' attention mask (0 on padding), which zeroes their padding columns.

Stored as serialised bytes per KV dtype, like sampler_graph.py, because building it
needs the `onnx` package that a serving install does not have.
"""

from __future__ import annotations

import base64

CACHE_OUTPUT = "merged"
OPSET = 17


def build_cache_graph(kv_dtype: str) -> bytes:
    """The graph's ModelProto bytes for float32 or float16 KV (needs `onnx`)."""
    import onnx
    from onnx import TensorProto, helper

    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[kv_dtype]
    kv = ["rows", "heads", "columns", "head_dim"]
    nodes = [
        helper.make_node("Gather", ["running", "keep"], ["kept"], axis=0),
        helper.make_node("Pad", ["kept", "running_pads"], ["kept_padded"], mode="constant"),
        helper.make_node("Gather", ["joining", "join_rows"], ["joined"], axis=0),
        helper.make_node("Mul", ["joined", "joining_scale"], ["joined_clean"]),
        helper.make_node("Pad", ["joined_clean", "joining_pads"], ["joined_padded"], mode="constant"),
        helper.make_node("Concat", ["kept_padded", "joined_padded"], [CACHE_OUTPUT], axis=0),
    ]
    inputs = [
        helper.make_tensor_value_info("running", elem, kv),
        helper.make_tensor_value_info("keep", TensorProto.INT64, ["kept"]),
        helper.make_tensor_value_info("running_pads", TensorProto.INT64, [8]),
        helper.make_tensor_value_info("joining", elem, ["joining_rows", "heads", "joining_columns", "head_dim"]),
        helper.make_tensor_value_info("join_rows", TensorProto.INT64, ["joined"]),
        helper.make_tensor_value_info("joining_scale", elem, ["joined", 1, "joining_columns", 1]),
        helper.make_tensor_value_info("joining_pads", TensorProto.INT64, [8]),
    ]
    outputs = [
        helper.make_tensor_value_info(CACHE_OUTPUT, elem, ["merged_rows", "heads", "merged_columns", "head_dim"])
    ]
    graph = helper.make_graph(nodes, "kv_cache_surgery", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="promptgen")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def cache_graph(kv_dtype: str) -> bytes:
    return base64.b64decode(CACHE_ONNX[kv_dtype])


CACHE_ONNX: dict[str, str] = {
    "float32": (
        "CAgSCXByb21wdGdlbjrXBQoqCgdydW5uaW5nCgRrZWVwEgRrZXB0IgZHYXRoZXIqCwoEYXhpcxgAoAECCjsKBGtlcHQKDHJ1bm5p"
        "bmdfcGFkcxILa2VwdF9wYWRkZWQiA1BhZCoTCgRtb2RlIghjb25zdGFudKABAwoxCgdqb2luaW5nCglqb2luX3Jvd3MSBmpvaW5l"
        "ZCIGR2F0aGVyKgsKBGF4aXMYAKABAgoqCgZqb2luZWQKDWpvaW5pbmdfc2NhbGUSDGpvaW5lZF9jbGVhbiIDTXVsCkUKDGpvaW5l"
        "ZF9jbGVhbgoMam9pbmluZ19wYWRzEg1qb2luZWRfcGFkZGVkIgNQYWQqEwoEbW9kZSIIY29uc3RhbnSgAQMKOQoLa2VwdF9wYWRk"
        "ZWQKDWpvaW5lZF9wYWRkZWQSBm1lcmdlZCIGQ29uY2F0KgsKBGF4aXMYAKABAhIQa3ZfY2FjaGVfc3VyZ2VyeVo5CgdydW5uaW5n"
        "Ei4KLAgBEigKBhIEcm93cwoHEgVoZWFkcwoJEgdjb2x1bW5zCgoSCGhlYWRfZGltWhYKBGtlZXASDgoMCAcSCAoGEgRrZXB0WhoK"
        "DHJ1bm5pbmdfcGFkcxIKCggIBxIECgIICFpJCgdqb2luaW5nEj4KPAgBEjgKDhIMam9pbmluZ19yb3dzCgcSBWhlYWRzChESD2pv"
        "aW5pbmdfY29sdW1ucwoKEghoZWFkX2RpbVodCglqb2luX3Jvd3MSEAoOCAcSCgoIEgZqb2luZWRaPAoNam9pbmluZ19zY2FsZRIr"
        "CikIARIlCggSBmpvaW5lZAoCCAEKERIPam9pbmluZ19jb2x1bW5zCgIIAVoaCgxqb2luaW5nX3BhZHMSCgoICAcSBAoCCAhiRgoG"
        "bWVyZ2VkEjwKOggBEjYKDRILbWVyZ2VkX3Jvd3MKBxIFaGVhZHMKEBIObWVyZ2VkX2NvbHVtbnMKChIIaGVhZF9kaW1CBAoAEBE="
    ),
    "float16": (
        "CAgSCXByb21wdGdlbjrXBQoqCgdydW5uaW5nCgRrZWVwEgRrZXB0IgZHYXRoZXIqCwoEYXhpcxgAoAECCjsKBGtlcHQKDHJ1bm5p"
        "bmdfcGFkcxILa2VwdF9wYWRkZWQiA1BhZCoTCgRtb2RlIghjb25zdGFudKABAwoxCgdqb2luaW5nCglqb2luX3Jvd3MSBmpvaW5l"
        "ZCIGR2F0aGVyKgsKBGF4aXMYAKABAgoqCgZqb2luZWQKDWpvaW5pbmdfc2NhbGUSDGpvaW5lZF9jbGVhbiIDTXVsCkUKDGpvaW5l"
        "ZF9jbGVhbgoMam9pbmluZ19wYWRzEg1qb2luZWRfcGFkZGVkIgNQYWQqEwoEbW9kZSIIY29uc3RhbnSgAQMKOQoLa2VwdF9wYWRk"
        "ZWQKDWpvaW5lZF9wYWRkZWQSBm1lcmdlZCIGQ29uY2F0KgsKBGF4aXMYAKABAhIQa3ZfY2FjaGVfc3VyZ2VyeVo5CgdydW5uaW5n"
        "Ei4KLAgKEigKBhIEcm93cwoHEgVoZWFkcwoJEgdjb2x1bW5zCgoSCGhlYWRfZGltWhYKBGtlZXASDgoMCAcSCAoGEgRrZXB0WhoK"
        "DHJ1bm5pbmdfcGFkcxIKCggIBxIECgIICFpJCgdqb2luaW5nEj4KPAgKEjgKDhIMam9pbmluZ19yb3dzCgcSBWhlYWRzChESD2pv"
        "aW5pbmdfY29sdW1ucwoKEghoZWFkX2RpbVodCglqb2luX3Jvd3MSEAoOCAcSCgoIEgZqb2luZWRaPAoNam9pbmluZ19zY2FsZRIr"
        "CikIChIlCggSBmpvaW5lZAoCCAEKERIPam9pbmluZ19jb2x1bW5zCgIIAVoaCgxqb2luaW5nX3BhZHMSCgoICAcSBAoCCAhiRgoG"
        "bWVyZ2VkEjwKOggKEjYKDRILbWVyZ2VkX3Jvd3MKBxIFaGVhZHMKEBIObWVyZ2VkX2NvbHVtbnMKChIIaGVhZF9kaW1CBAoAEBE="
    ),
}
