"""Our INT8 weight MatMul (runtime/matmul_int8.c) against ONNX Runtime's own kernel for the
subgraph quantize_dynamic writes: the same outputs to the bit, on AMX tiles and in portable C,
for every shape the graphs give it; the rewrite takes what it computes and nothing else; a
runner with it decodes as one without, logits and all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from contract.manifest import BundleError
from export.variants import DYNAMIC, to_int8
from runtime.custom_ops import matmul_on_amx
from runtime.decode import generate
from runtime.kv_cache import BatchCache
from runtime.matmul_kernel import ALIGN, matches, pack, with_kernel
from runtime.onnx_runner import OnnxRunner, Prompts
from runtime.padding import pad
from tests.poisoned_bundle import edited_bundle

CPU = ["CPUExecutionProvider"]


@pytest.fixture(params=["amx", "portable"])
def path_kind(request: pytest.FixtureRequest, kernel_library: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each parity test on both code paths: AMX where this CPU has it, and the portable C
    (PROMPTGEN_MATMUL_INT8_PORTABLE, read when a session registers the library)."""
    if request.param == "amx" and not matmul_on_amx(kernel_library):
        pytest.skip("this CPU has no AMX: the portable run covers the operator")
    if request.param == "portable":
        monkeypatch.setenv("PROMPTGEN_MATMUL_INT8_PORTABLE", "1")
    yield request.param


def quantized_matmul(
    tmp_path: Path, k: int, n: int, rank: int, bias: bool, seed: int = 0, residual: bool = False
) -> Path:
    """One MatMul (and its bias Add) quantized by export/variants.py's dynamic scheme, as the INT8
    variant's projections are; `residual`: then an input r added to it, as a block's skip
    connection adds its output projection's result."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array((0.05 * rng.standard_normal((k, n))).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="proj")]
    initializers = [weight]
    if bias:
        initializers.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", ["mm", "b"], ["biased"], name="bias"))
    last = "biased" if bias else "mm"
    if residual:
        nodes.append(helper.make_node("Add", ["r", last], ["skip"], name="residual"))  # the residual first, as GPT-2's
        last = "skip"
    nodes[-1].output[0] = "y"
    leading = ["batch", "seq"][: rank - 1]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*leading, k])]
    if residual:
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [*leading, n]))
    graph = helper.make_graph(
        nodes,
        "projection",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*leading, n])],
        initializer=initializers,
    )
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(fp32))
    return to_int8(fp32, tmp_path / "int8.onnx", DYNAMIC)


def sessions(
    path: Path, kernel_library: Path, op_type: str = "MatMulInt8"
) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    """ORT's session of the graph, and one with the operator in."""
    model = onnx.load(str(path))
    assert with_kernel(model) == 1
    assert [node.op_type for node in model.graph.node] == [op_type]  # the Adds fused, DQL gone
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(kernel_library))
    ours = ort.InferenceSession(model.SerializeToString(), options, providers=CPU)
    return ort.InferenceSession(str(path), providers=CPU), ours


@pytest.mark.parametrize(
    ("k", "n", "shape", "bias", "residual"),
    [
        (768, 3072, (1, 768), True, False),  # GPT-2 small's MLP, one decode row
        (768, 2304, (32, 768), True, False),  # its QKV at batch 32
        (3072, 768, (33, 3072), True, True),  # its MLP's output and skip connection, a third row tile
        (768, 768, (1, 768), True, True),  # its attention's output projection, one row
        (64, 48, (2, 130, 64), False, False),  # a prompt chunk over ROW_CHUNK rows, rank 3, no bias
        (100, 37, (3, 100), True, False),  # K and N off the tile sizes: padded columns and rows
        (100, 37, (2, 3, 100), False, True),  # the same with a residual and no bias
        (256, 5000, (5, 256), False, False),  # a vocabulary-wide head: many column groups
    ],
)
def test_outputs_are_ort_s_to_the_bit(
    tmp_path: Path,
    kernel_library: Path,
    path_kind: str,
    k: int,
    n: int,
    shape: tuple[int, ...],
    bias: bool,
    residual: bool,
) -> None:
    graph = quantized_matmul(tmp_path, k, n, len(shape), bias, residual=residual)
    theirs, ours = sessions(graph, kernel_library, "MatMulInt8Add" if residual else "MatMulInt8")
    rng = np.random.default_rng(1)
    skip = {"r": rng.standard_normal((*shape[:-1], n)).astype(np.float32)} if residual else {}
    for x in (
        rng.standard_normal(shape).astype(np.float32),
        np.abs(rng.standard_normal(shape)).astype(np.float32) + 0.5,  # all positive: zero point 0
        -np.abs(rng.standard_normal(shape)).astype(np.float32),  # all negative: zero point 255
        np.zeros(shape, np.float32),  # no range: scale 1
        (rng.standard_normal(shape) * 1e4).astype(np.float32),
    ):
        expected, got = theirs.run(None, {"x": x, **skip})[0], ours.run(None, {"x": x, **skip})[0]
        assert got.shape == expected.shape == (*shape[:-1], n)
        np.testing.assert_array_equal(got, expected)


def test_an_empty_batch_gives_an_empty_output(tmp_path: Path, kernel_library: Path) -> None:
    _, ours = sessions(quantized_matmul(tmp_path, 64, 32, 2, True), kernel_library)
    assert ours.run(None, {"x": np.zeros((0, 64), np.float32)})[0].shape == (0, 32)


def test_pack_puts_each_column_s_four_rows_side_by_side() -> None:
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (70, 20), dtype=np.int8)
    packed, sums = pack(weight)
    assert packed.shape == (2, 32, 64) and sums.shape == (32,)  # N 20 -> 32, K 70 -> 128
    for b, g, j, i in [(0, 0, 0, 0), (1, 3, 2, 1), (0, 17, 15, 1), (1, 16, 3, 3)]:
        row, column = 4 * g + i, 16 * b + j
        expected = weight[row, column] if row < 70 and column < 20 else 0
        assert packed[b, g, 4 * j + i] == expected
    np.testing.assert_array_equal(sums[:20], weight.sum(axis=0, dtype=np.int32))
    assert not sums[20:].any()


def test_the_rewrite_takes_only_what_the_operator_computes(tmp_path: Path) -> None:
    path = quantized_matmul(tmp_path, 64, 32, 2, True)

    def fresh() -> onnx.ModelProto:
        return onnx.load(str(path))

    assert len(matches(fresh())) == 1
    nonzero = fresh()  # a weight zero point the operator does not take
    for tensor in nonzero.graph.initializer:
        if tensor.name.endswith("zero_point") and tensor.data_type == TensorProto.INT8:
            tensor.CopyFrom(numpy_helper.from_array(np.ones(32, np.int8), tensor.name))
    assert matches(nonzero) == []
    read_between = fresh()  # someone else reads the integer product
    integer = next(node.output[0] for node in read_between.graph.node if node.op_type == "MatMulInteger")
    read_between.graph.output.append(helper.make_tensor_value_info(integer, TensorProto.INT32, None))
    assert matches(read_between) == []
    varying_scale = fresh()  # the weight scale a graph input, not a constant
    scale = next(t for t in varying_scale.graph.initializer if t.name.endswith("_scale"))
    varying_scale.graph.initializer.remove(scale)
    varying_scale.graph.input.append(helper.make_tensor_value_info(scale.name, TensorProto.FLOAT, [32]))
    assert matches(varying_scale) == []
    # A residual Add is taken only where the graph says the residual has the result's shape:
    # an Add also broadcasts (a [32] row added to every row), which the operator does not.
    (tmp_path / "skip").mkdir()
    skip_path = quantized_matmul(tmp_path / "skip", 64, 32, 2, True, residual=True)
    assert [m.residual for m in matches(onnx.load(str(skip_path)))] == ["r"]
    for shape in ([32], [1, 32], None):
        broadcast = onnx.load(str(skip_path))
        r = next(i for i in broadcast.graph.input if i.name == "r")
        r.CopyFrom(helper.make_tensor_value_info("r", TensorProto.FLOAT, shape))
        assert [(m.residual, m.output) for m in matches(broadcast)] == [(None, "biased")], shape
    model = fresh()
    assert with_kernel(model) == 1
    left = {t.name for t in model.graph.initializer}
    assert not any(name.endswith("_quantized") for name in left)  # the int8 weight lives on packed only
    assert any(o.domain == "promptgen" for o in model.opset_import)
    onnx.checker.check_model(model)


def test_a_runner_with_the_kernel_decodes_as_one_without(kernel_library: Path, tiny_bundle: Path) -> None:
    ours_runner = OnnxRunner(tiny_bundle, "int8", "cpu", matmul_kernel="on")
    plain = OnnxRunner(tiny_bundle, "int8", "cpu", matmul_kernel="off")
    assert ours_runner.matmul_kernel and not plain.matmul_kernel
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, plain.vocab_size, n).tolist() for n in (4, 9, 13, 2)]
    ours = generate(ours_runner, prompts, 24, plain.eos_token_id, keep_logits=True)
    theirs = generate(plain, prompts, 24, plain.eos_token_id, keep_logits=True)
    assert ours.generations == theirs.generations
    assert ours.logits is not None and theirs.logits is not None
    np.testing.assert_array_equal(ours.logits, theirs.logits)  # the same arithmetic: bit for bit


def test_the_decode_and_mixed_sessions_read_one_copy_of_the_packed_weights(
    kernel_library: Path, tiny_bundle: Path
) -> None:
    """The mixed graph holds the decode graph's weights: the runner packs each once, on a cache
    line, and both sessions read that buffer (zeroing it changes what each computes)."""
    runner = OnnxRunner(tiny_bundle, "int8", "cpu", matmul_kernel="on")
    assert runner.mixed_prefill and runner.matmul_kernel
    decode_graph = onnx.load(str(tiny_bundle / runner.variant.file), load_external_data=False)
    assert len(runner.shared_weights.arrays) == len(matches(decode_graph))  # none added by the mixed graph
    assert all(a.ctypes.data % ALIGN == 0 for a in runner.shared_weights.arrays.values())

    ids, mask, positions = pad([[4, 5, 6, 7], [8, 9]], runner.eos_token_id, right=True)
    _, past = runner.forward(ids, mask, positions, runner.empty_past(2))
    cache = BatchCache(past, mask, True)
    step = (np.full((2, 1), 5), cache.step_mask(np.ones(2, bool)), cache.positions(), cache.past)

    def logits() -> tuple[np.ndarray, np.ndarray]:
        decode, _ = runner.forward(*step)  # each run rewrites the same new column: repeatable
        joiner = Prompts(*pad([[4, 5, 6]], runner.eos_token_id, right=True), runner.empty_past(1))
        mixed, _ = runner.forward(*step, joiner)
        return np.array(decode), np.array(mixed)

    decode, mixed = logits()
    np.testing.assert_array_equal(logits()[0], decode)
    for packed in runner.shared_weights.arrays.values():
        packed[...] = 0
    zeroed_decode, zeroed_mixed = logits()
    assert not np.array_equal(zeroed_decode, decode) and not np.array_equal(zeroed_mixed, mixed)


def test_the_kernel_is_used_only_where_it_serves(
    kernel_library: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # auto: ours where the CPU has AMX, ORT's elsewhere (the portable C is slower than ORT's)
    assert OnnxRunner(tiny_bundle, "int8", "cpu").matmul_kernel == matmul_on_amx(kernel_library)
    assert not OnnxRunner(tiny_bundle, "fp32", "cpu").matmul_kernel  # float weights: nothing to replace
    with pytest.raises(BundleError, match="matmul_kernel=on, but it serves INT8 weights on CPU"):
        OnnxRunner(tiny_bundle, "fp32", "cpu", matmul_kernel="on")
    monkeypatch.setattr("runtime.onnx_runner.custom_ops_library", lambda: None)  # an install without a compiler
    assert not OnnxRunner(tiny_bundle, "int8", "cpu").matmul_kernel
    with pytest.raises(BundleError, match="matmul_kernel=on, but our kernels are not built"):
        OnnxRunner(tiny_bundle, "int8", "cpu", matmul_kernel="on")


def test_int8_weights_the_kernel_does_not_compute_keep_ort_s(
    kernel_library: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    def nonzero_weight_zero_points(model: onnx.ModelProto) -> None:  # what the operator does not take
        for tensor in model.graph.initializer:
            if tensor.name.endswith("zero_point") and tensor.data_type == TensorProto.INT8:
                ones = np.ones(numpy_helper.to_array(tensor).shape, np.int8)
                tensor.CopyFrom(numpy_helper.from_array(ones, tensor.name))

    bundle = edited_bundle(tiny_bundle, tmp_path / "bundle", "int8", nonzero_weight_zero_points)
    assert not OnnxRunner(bundle, "int8", "cpu").matmul_kernel  # auto: ORT's kernel, and the runner says so
    with pytest.raises(BundleError, match="matmul_kernel=on, but no node"):
        OnnxRunner(bundle, "int8", "cpu", matmul_kernel="on")
