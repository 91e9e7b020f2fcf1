"""Our int8 attention kernel (runtime/attention_int8.c) against ONNX Runtime's own
GroupQueryAttention: the same cache bytes and the same outputs, on one-node graphs of every
shape our graphs give it, and a runner with it decodes as one without."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from contract.manifest import BundleError
from runtime import custom_ops
from runtime.attention_kernel import MIXED_OP_TYPE, OP_TYPE, replaceable, with_kernel
from runtime.decode import generate
from runtime.kv_cache import BatchCache
from runtime.onnx_runner import OnnxRunner, Prompts
from runtime.padding import pad
from tests.poisoned_bundle import edited_bundle

GQA_INT8 = {"kv_cache_bit_width": 8, "k_quant_type": "PER_CHANNEL", "v_quant_type": "PER_CHANNEL"}


def attention_graph(heads: int, kv_heads: int, head_size: int, capacity: int, seq: int) -> Any:
    """One GroupQueryAttention node as export/kv_int8.py leaves it: packed QKV, an int8 cache
    with per-channel scales, lengths and an additive bias."""
    rng = np.random.default_rng(3)
    names = ["qkv", "", "", "past_key", "past_value", "seqlens_k", "total", "", "", "", "bias", "", "ks", "vs"]
    node = helper.make_node(
        "GroupQueryAttention",
        names,
        ["out", "present_key", "present_value"],
        domain="com.microsoft",
        num_heads=heads,
        kv_num_heads=kv_heads,
        **GQA_INT8,
    )
    cache = [None, kv_heads, capacity, head_size]
    inputs = [
        helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [None, seq, (heads + 2 * kv_heads) * head_size]),
        helper.make_tensor_value_info("past_key", TensorProto.INT8, cache),
        helper.make_tensor_value_info("past_value", TensorProto.INT8, cache),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [None]),
        helper.make_tensor_value_info("total", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("bias", TensorProto.FLOAT, [None, 1, seq, None]),
    ]
    outputs = [
        helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("present_key", TensorProto.INT8, cache),
        helper.make_tensor_value_info("present_value", TensorProto.INT8, cache),
    ]
    scales = [
        numpy_helper.from_array((0.01 + 0.05 * rng.random((1, kv_heads, 1, head_size))).astype(np.float32), name)
        for name in ("ks", "vs")
    ]
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(
        helper.make_graph([node], "attention", inputs, outputs, initializer=scales), opset_imports=opsets
    )


def run(model: Any, feeds: dict[str, np.ndarray], kernel: Path | None, in_place: bool) -> list[np.ndarray]:
    """The graph's outputs, with the kernel in place of GroupQueryAttention when given. In place:
    present bound to the past's own buffers, as the runner binds them."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if kernel is not None:
        model = type(model).FromString(model.SerializeToString())
        assert with_kernel(model) == 1
        options.register_custom_ops_library(str(kernel))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    if not in_place:
        return [np.asarray(x) for x in session.run(None, feeds)]
    past = {name: ort.OrtValue.ortvalue_from_numpy(feeds[name].copy()) for name in ("past_key", "past_value")}
    binding = session.io_binding()
    for name, value in feeds.items():
        if name in past:
            binding.bind_ortvalue_input(name, past[name])
            binding.bind_ortvalue_output(name.replace("past", "present"), past[name])
        else:
            binding.bind_cpu_input(name, value)
    binding.bind_output("out")
    session.run_with_iobinding(binding)
    return [
        binding.get_outputs()[-1].numpy().copy(),
        past["past_key"].numpy().copy(),
        past["past_value"].numpy().copy(),
    ]


CASES = {
    # name: heads, kv heads, head size, capacity, sequence, each row's length after the call, first prompt
    "decode, ragged rows": (4, 4, 32, 40, 1, [7, 1, 33, 20, 40], False),
    "decode, grouped heads": (4, 2, 16, 24, 1, [5, 24, 11], False),
    "decode, head size 24 (portable path)": (3, 3, 24, 30, 1, [9, 30, 2], False),
    "first prompt, right-padded": (2, 2, 64, 16, 6, [6, 2, 4], True),
    "a chunk after a past (GroupQueryAttention takes one row)": (2, 2, 32, 20, 3, [14], False),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("in_place", [True, False], ids=["in place", "present apart"])
@pytest.mark.parametrize("masked", [False, True], ids=["no bias", "masked columns"])
def test_the_kernel_writes_the_cache_groupqueryattention_writes_and_attends_alike(
    kernel_library: Path, case: str, in_place: bool, masked: bool
) -> None:
    heads, kv_heads, head_size, capacity, seq, lengths, first = CASES[case]
    rng = np.random.default_rng(len(case) + 7 * masked)
    batch, total = len(lengths), seq if first else max(lengths)
    bias = np.zeros((batch, 1, seq, total), np.float32)
    if masked:  # left-padding style: some columns before each row's own are masked out
        bias[rng.random(bias.shape) < 0.2] = -10000.0
        bias[..., -1] = 0.0  # a row keeps at least its newest column
    feeds = {
        "qkv": rng.normal(size=(batch, seq, (heads + 2 * kv_heads) * head_size)).astype(np.float32),
        "past_key": rng.integers(-128, 128, (batch, kv_heads, capacity, head_size)).astype(np.int8),
        "past_value": rng.integers(-128, 128, (batch, kv_heads, capacity, head_size)).astype(np.int8),
        "seqlens_k": np.array(lengths, np.int32) - 1,
        "total": np.array([total], np.int32),
        "bias": bias,
    }
    model = attention_graph(heads, kv_heads, head_size, capacity, seq)
    theirs = run(model, feeds, None, in_place)
    ours = run(model, feeds, kernel_library, in_place)
    np.testing.assert_array_equal(ours[1], theirs[1], "the keys written")
    np.testing.assert_array_equal(ours[2], theirs[2], "the values written")
    out_theirs, out_ours = theirs[0], ours[0]
    if first:  # a right-padded prompt's padding positions are never read (their outputs are not used)
        real = np.arange(seq)[None, :] < np.array(lengths)[:, None]
        out_theirs, out_ours = out_theirs[real], out_ours[real]
    np.testing.assert_allclose(out_ours, out_theirs, rtol=1e-5, atol=1e-5)


def test_only_attention_the_kernel_computes_is_replaced() -> None:
    model = attention_graph(2, 2, 16, 8, 1)
    node = model.graph.node[0]
    assert replaceable(node)
    for name, value in [("do_rotary", 1), ("softcap", 30.0), ("local_window_size", 4), ("scale", 0.5)]:
        other = type(node).FromString(node.SerializeToString())
        other.attribute.append(helper.make_attribute(name, value))
        assert not replaceable(other), name
    fp32_cache = type(node).FromString(node.SerializeToString())
    del fp32_cache.attribute[:]
    fp32_cache.attribute.extend([helper.make_attribute("num_heads", 2), helper.make_attribute("kv_num_heads", 2)])
    assert not replaceable(fp32_cache)
    unpacked = type(node).FromString(node.SerializeToString())
    unpacked.input[1] = "key"
    assert not replaceable(unpacked)
    assert with_kernel(model) == 1 and model.graph.node[0].op_type == "AttentionInt8"
    assert any(o.domain == "promptgen" for o in model.opset_import)


def test_a_runner_with_the_kernel_decodes_as_one_without(kernel_library: Path, tiny_bundle: Path) -> None:
    with_kernel_runner = OnnxRunner(tiny_bundle, "int8", "cpu", attention_kernel="on")
    plain = OnnxRunner(tiny_bundle, "int8", "cpu", attention_kernel="off")
    assert with_kernel_runner.attention_kernel and not plain.attention_kernel
    assert with_kernel_runner.kv_dtype == np.int8
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, plain.vocab_size, n).tolist() for n in (4, 9, 13, 2)]
    ours = generate(with_kernel_runner, prompts, 24, plain.eos_token_id, keep_logits=True)
    theirs = generate(plain, prompts, 24, plain.eos_token_id, keep_logits=True)
    assert ours.logits is not None and theirs.logits is not None
    # The INT8 variant quantises activations per forward, so float rounding in attention can
    # move a logit by a quantisation step; the tokens and the logits' shape stay.
    assert ours.generations == theirs.generations
    np.testing.assert_allclose(ours.logits, theirs.logits, atol=0.05)


def test_a_mixed_step_attends_in_one_node_a_layer_and_writes_the_caches_the_plain_graph_writes(
    kernel_library: Path, tiny_bundle: Path
) -> None:
    """A mixed graph's two attention calls a layer (the batch's rows, the joining prompts) and the
    slices, reshapes and concat around them become one AttentionInt8Mixed; a step with two
    ragged rows and two joining prompts of their own lengths then writes both caches byte for
    byte as GroupQueryAttention does, and its logits agree."""
    ours = OnnxRunner(tiny_bundle, "int8", "cpu", attention_kernel="on")
    plain = OnnxRunner(tiny_bundle, "int8", "cpu", attention_kernel="off")
    assert ours.mixed_prefill and plain.mixed_prefill
    mixed = onnx.load(str(tiny_bundle / ours.variant.mixed_file))
    layers = sum(node.op_type == "GroupQueryAttention" for node in mixed.graph.node) // 2
    with_kernel(mixed)
    op_types = [node.op_type for node in mixed.graph.node]
    assert op_types.count(MIXED_OP_TYPE) == layers and OP_TYPE not in op_types
    assert "Slice" not in op_types[op_types.index(MIXED_OP_TYPE) - 3 : op_types.index(MIXED_OP_TYPE)]

    def step(runner: OnnxRunner) -> tuple[np.ndarray, list[np.ndarray]]:
        ids, mask, positions = pad([[4, 5, 6, 7, 8], [9, 10]], runner.eos_token_id, right=True)
        _, past = runner.forward(ids, mask, positions, runner.empty_past(2))
        cache = BatchCache(past, mask, True)
        joining = pad([[11, 12, 13], [14, 15, 16, 17, 18, 19]], runner.eos_token_id, right=True)
        prompts = Prompts(*joining, runner.empty_past(2))
        logits, present = runner.forward(np.full((2, 1), 5), cache.step_mask(np.ones(2, bool)), cache.positions(),
                                         cache.past, prompts)  # fmt: skip
        return np.array(logits), [np.array(runner.host_view(t)) for t in [*present, *prompts.past]]

    (ours_logits, ours_present), (plain_logits, plain_present) = step(ours), step(plain)
    assert len(ours_present) == len(plain_present) == 4 * layers  # the rows' caches, then the prompts'
    for got, expected in zip(ours_present, plain_present, strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(ours_logits, plain_logits, atol=0.05)


def test_the_kernel_is_used_only_where_it_serves(
    kernel_library: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert OnnxRunner(tiny_bundle, "int8", "cpu").attention_kernel  # auto, built: used
    assert not OnnxRunner(tiny_bundle, "fp32", "cpu").attention_kernel  # an fp32 cache: GroupQueryAttention
    with pytest.raises(BundleError, match="int8 KV cache on CPU"):
        OnnxRunner(tiny_bundle, "fp32", "cpu", attention_kernel="on")
    monkeypatch.setattr("runtime.onnx_runner.custom_ops_library", lambda: None)  # an install without a compiler
    assert not OnnxRunner(tiny_bundle, "int8", "cpu").attention_kernel
    with pytest.raises(BundleError, match="not built"):
        OnnxRunner(tiny_bundle, "int8", "cpu", attention_kernel="on")


def test_a_graph_whose_attention_the_kernel_does_not_compute_keeps_ort_s(
    kernel_library: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    def explicit_scale(model: onnx.ModelProto) -> None:  # an attribute the kernel does not implement
        for node in model.graph.node:
            if node.op_type == "GroupQueryAttention":
                node.attribute.append(helper.make_attribute("scale", 0.125))

    bundle = edited_bundle(tiny_bundle, tmp_path / "bundle", "int8", explicit_scale)
    runner = OnnxRunner(bundle, "int8", "cpu")
    assert not runner.attention_kernel  # auto: ORT's op serves it, and the runner says so
    assert runner.forward(*pad([[1, 2, 3]], runner.eos_token_id), runner.empty_past(1))[0].shape[0] == 1
    with pytest.raises(BundleError, match="attention_kernel=on, but no node"):
        OnnxRunner(bundle, "int8", "cpu", attention_kernel="on")


def test_the_build_command_builds_a_library_onnx_runtime_loads(tmp_path: Path) -> None:
    out = custom_ops.build(out_dir=tmp_path)
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(out))
    model = attention_graph(2, 2, 16, 8, 1)
    with_kernel(model)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    missing = subprocess.run(
        [sys.executable, "-m", "runtime.custom_ops", "--build", "--cc", "no-such-cc", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "no C compiler 'no-such-cc'" in missing.stderr
