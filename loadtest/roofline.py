"""The machine's ceilings, measured where the bench runs: fp32 GEMM throughput (numpy and
torch), INT8 GEMM throughput (ONNX Runtime's MatMulInteger, the kernel family our INT8
variant runs) and memory bandwidth. A decode step reads every weight once, so at small batch
its floor is weight bytes / bandwidth; at large batch it is operations / GEMM peak. The bench
states its figures against these, not against a number from another machine."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` calls after one warm-up: the machine's ability, not its noise."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_gflops_numpy(n: int = 2048, repeats: int = 5) -> float:
    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    return 2 * n**3 / best_seconds(lambda: a @ b, repeats) / 1e9


def gemm_gflops_torch(n: int = 2048, repeats: int = 5) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    a, b = torch.rand(n, n), torch.rand(n, n)
    return 2 * n**3 / best_seconds(lambda: a @ b, repeats) / 1e9


def gemm_gops_int8(n: int = 2048, repeats: int = 5) -> float | None:
    """uint8 activations x int8 weights -> int32, the weights a constant of the graph (prepacked,
    as a model's are), on ONNX Runtime's CPU provider with its default threads. Needs `onnx` to
    build the one-node graph (a serving install has none: then None)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (n, n), dtype=np.uint8)
    return 2 * n**3 / best_seconds(lambda: session.run(None, {"a": a}), repeats) / 1e9


def memory_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Copy bandwidth (bytes read + bytes written per second) of an array far larger than the
    caches, the traffic pattern closest to streaming weights through the cores."""
    src = np.ones(megabytes * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    return 2 * src.nbytes / best_seconds(lambda: np.copyto(dst, src), repeats) / 1e9


def read_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Read bandwidth of all cores together: each sums its share of an array far larger than the
    caches in a thread of its own (numpy's reductions release the GIL). A decode step at small
    batch streams its weights with every core this way, so this, not one thread's copy, is its
    floor: GPT-2 small's INT8 step at batch 1 reads faster than one thread copies."""
    cores = os.cpu_count() or 1
    parts = np.array_split(np.ones(megabytes * 2**20 // 4, dtype=np.float32), cores)
    with ThreadPoolExecutor(cores) as pool:
        seconds = best_seconds(lambda: list(pool.map(np.sum, parts)), repeats)
    return sum(p.nbytes for p in parts) / seconds / 1e9


def measure(quick: bool = False) -> dict[str, Any]:
    n, mb = (1024, 128) if quick else (2048, 512)
    return {
        "numpy_fp32_gemm_gflops": round(gemm_gflops_numpy(n), 1),
        "torch_fp32_gemm_gflops": round(g, 1) if (g := gemm_gflops_torch(n)) is not None else None,
        "ort_int8_gemm_gops": round(g, 1) if (g := gemm_gops_int8(n)) is not None else None,
        "memory_bandwidth_gbs": round(memory_bandwidth_gbs(mb), 1),
        "read_bandwidth_gbs": round(read_bandwidth_gbs(mb), 1),
        "cores": os.cpu_count(),
        "gemm_n": n,
        "copy_mb": mb,
    }
