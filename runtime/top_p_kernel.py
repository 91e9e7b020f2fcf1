"""The host sampler's top-p draw in C (top_p.c), called through ctypes, where the install built our
library (runtime/custom_ops.py). runtime/sampler.py calls `draw` when `function()` finds it, and
its numpy draw otherwise: the two give the same token to float64 rounding (top_p.c says when they
can differ; tests/test_top_p_kernel.py draws both)."""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

from runtime.custom_ops import library


@functools.cache
def function() -> Any | None:
    """The library's `top_p_draw`, or None where the library is not built."""
    path = library()
    if path is None:
        return None
    draw = ctypes.CDLL(str(path)).top_p_draw
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    draw.argtypes = [pointer, size, size, pointer, pointer, pointer, pointer]
    draw.restype = ctypes.c_int
    return draw


def vectorized() -> bool:
    """Whether the draw's passes over a row run on AVX-512 here (where the CPU has it; the
    environment variable PROMPTGEN_TOP_P_PORTABLE=1 asks for the scalar C)."""
    path = library()
    return path is not None and bool(ctypes.CDLL(str(path)).top_p_vectorized())


def draw(probs: np.ndarray, top_p: np.ndarray, total: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """One token per row of `probs` [R, V] (float32, >= 0, each row's largest 1: exp(z - max z)):
    the row's top-p draw with its `top_p`, `total` (sampler.row_mass) and `uniform` in [0, 1)."""
    kernel = function()
    assert kernel is not None, "top_p_draw needs our library: see runtime/custom_ops.py"
    probs = np.ascontiguousarray(probs, np.float32)
    rows, vocab = probs.shape
    columns = [np.ascontiguousarray(np.broadcast_to(c, (rows,)), np.float64) for c in (top_p, total, uniform)]
    tokens = np.empty(rows, np.int64)
    if kernel(probs.ctypes.data, rows, vocab, *(c.ctypes.data for c in columns), tokens.ctypes.data) != 0:
        raise MemoryError("top_p_draw could not allocate its workspace")
    return tokens
