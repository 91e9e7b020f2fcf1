"""Our ONNX Runtime custom operators for the CPU provider, one C library: the int8 attention
kernel (attention_int8.c, attention_kernel.py) and the INT8 weight MatMul (matmul_int8.c,
matmul_kernel.py); the host sampler's top-p draw lives in it too (top_p.c, top_p_kernel.py, called
through ctypes). This module finds or builds the library and makes a session of a decoder graph
with the operators put in.

Bundles stay plain ONNX: the rewrite happens when a runner makes its sessions (`kernel_session`),
only on CPU, only for nodes the operators compute exactly, and only where the library was built.
setuptools builds it at install (pyproject.toml: `ext-modules`, optional: without a C compiler the
install goes on and ORT's own kernels serve). `python -m runtime.custom_ops` says whether it is
built and can build it in place.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import importlib.machinery
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    import onnx

HERE = Path(__file__).parent
SOURCES = [HERE / name for name in ("custom_ops.c", "attention_int8.c", "matmul_int8.c", "top_p.c")]
LIBRARY_STEM = "_custom_ops"  # the extension module name pyproject.toml builds
# -ffp-contract=off: a multiply then an add stay two roundings, as in ORT's own kernels (the
# MatMul's outputs are ORT's to the bit).
FLAGS = ["-O3", "-ffp-contract=off"]


def library() -> Path | None:
    """The built library beside this module, or None."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = HERE / (LIBRARY_STEM + suffix)
        if path.exists():
            return path
    return None


@functools.cache
def matmul_on_amx(path: Path) -> bool:
    """Whether the library's MatMulInt8 multiplies on AMX tiles on this machine (and the kernel
    lets this process use them). Elsewhere it runs portable C, slower than ORT's own kernel."""
    return bool(ctypes.CDLL(str(path)).matmul_int8_uses_amx())


class SharedWeights:
    """The packed weights of a runner's sessions, one buffer each for all of them.

    The decode graph and the mixed graph (a second session, run at the steps that admit
    requests) hold the same weights. Each session used to keep its own copy, so a mixed step
    pushed the decode session's weights out of the CPU's caches and the next decode step read
    them from memory again (bench/engine.md, step 24). `arrays` is filled by the MatMul rewrite
    (matmul_kernel.with_kernel names each packed weight by its content); `add_to` hands each to
    ORT with SessionOptions.add_initializer, which makes a session read the caller's buffer in
    place of the graph's copy. The buffers must outlive the sessions: the runner keeps this."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self._values: dict[str, ort.OrtValue] = {}

    def add_to(self, options: ort.SessionOptions) -> None:
        """Every array not yet handed to ORT, on `options` (the runner's sessions share theirs)."""
        for name, array in self.arrays.items():
            if name not in self._values:
                self._values[name] = ort.OrtValue.ortvalue_from_numpy(array)
                options.add_initializer(name, self._values[name])


def kernel_session(
    path: Path,
    options: ort.SessionOptions,
    providers: list[Any],
    rewrites: Sequence[Callable[[onnx.ModelProto], int]],
    shared: SharedWeights | None = None,
) -> tuple[ort.InferenceSession | None, list[int]]:
    """A session of the decoder graph at `path` after `rewrites` (each puts one operator in and
    says how many nodes it replaced; `options` must have loaded the library), and those counts.
    No session where nothing was replaced. The rewritten graph goes through a temporary file, not
    bytes: a session made from bytes held ~120 MB more of GPT-2 small's INT8 graph. `shared`:
    the weights the rewrites packed, read from there instead of the graph's copies."""
    import onnx

    model = onnx.load(str(path))
    counts = [rewrite(model) for rewrite in rewrites]
    if not any(counts):
        return None, counts
    if shared is not None:
        shared.add_to(options)
    with tempfile.TemporaryDirectory(prefix="promptgen-kernel-") as tmp:
        rewritten = Path(tmp) / path.name
        onnx.save(model, str(rewritten))
        del model
        return ort.InferenceSession(str(rewritten), options, providers=providers), counts


def build(compiler: str = "cc", out_dir: Path | None = None) -> Path:
    """Compile the library with `compiler` beside this module (what `pip install -e .` does
    through setuptools, for a checkout whose install had no compiler), or into `out_dir`."""
    out = (out_dir or HERE) / (LIBRARY_STEM + importlib.machinery.EXTENSION_SUFFIXES[0])
    command = [compiler, *FLAGS, "-fPIC", "-shared", "-Wall", "-o", str(out), *map(str, SOURCES), "-lm"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.custom_ops",
        description="Whether our CPU kernels are built (prints the library's path and whether its MatMul "
        "runs on AMX here), or build them (--build).",
    )
    parser.add_argument("--build", action="store_true", help="compile the library beside this module")
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
            print(f"error: {args.cc} failed to compile the kernels: {' '.join(first)}", file=sys.stderr)
            return 2
        return 0
    built = library()
    if built is None:
        print("not built: ONNX Runtime's own kernels serve (build: --build)", file=sys.stderr)
        return 1
    print(f"{built} (MatMulInt8 on AMX here: {'yes' if matmul_on_amx(built) else 'no'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
