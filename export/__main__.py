"""`python -m export <command>`: checkpoint -> verified ONNX bundle, and checks on bundles.

    python -m export bundle --checkpoint DIR --out DIR [--variants fp32,int8,fp16]
    python -m export verify BUNDLE [--checkpoint DIR]
    python -m export bench [--preset small | --checkpoint DIR] [--out bench/export.md]
    python -m export engine-bench --source CHECKPOINT [--batches 1,8,32] [--ort-profile] [--no-spin]
    python -m export gpu-check --bundle DIR [--out gpu_check.md]
    python -m export torch-gpu-check --checkpoint DIR [--out torch_gpu_check.md]

Exit codes: 0 all variants passed; 1 a variant failed verification (the reason is printed,
the variant is left out of the manifest); 2 bad input (missing checkpoint, tampered bundle).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from export.verify import MIN_INT8_AGREEMENT

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # export never downloads anything


def variant_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def run_bench(args: argparse.Namespace) -> int:
    from export.bench_decode import run_bench as bench

    return bench(args)


def run_engine_bench(args: argparse.Namespace) -> int:
    from export.engine_bench import run_engine_bench as engine_bench

    return engine_bench(args)


def run_gpu_check(args: argparse.Namespace) -> int:
    from export.gpu_check import run_gpu_check as gpu_check

    return gpu_check(args)


def run_torch_gpu_check(args: argparse.Namespace) -> int:
    from export.torch_gpu_check import run_torch_gpu_check as torch_gpu_check

    return torch_gpu_check(args)


def run_bundle(args: argparse.Namespace) -> int:
    from export.bundle import ExportError, build_bundle

    try:
        result = build_bundle(
            args.checkpoint, args.out, args.variants, args.int8_min_agreement, args.name, args.kv_int8
        )
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for variant, reasons in result.failures.items():
        print(f"error: variant {variant} failed verification and was left out: {'; '.join(reasons)}", file=sys.stderr)
    if result.bundle_dir is None:
        print("error: no variant passed verification; no bundle was written", file=sys.stderr)
    return 1 if result.failures else 0


def run_verify(args: argparse.Namespace) -> int:
    from export.verify import verify_bundle

    results = verify_bundle(args.bundle, args.checkpoint, args.int8_min_agreement)
    failed = {v: r["failures"] for v, r in results.items() if not r["passed"]}
    for variant, reasons in failed.items():
        print(f"error: variant {variant} failed verification: {'; '.join(reasons)}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    agreement: dict[str, Any] = {
        "type": float,
        "default": MIN_INT8_AGREEMENT,
        "help": "minimum INT8 next-token agreement with the reference on the fixed prompts "
        "(meaningful only for a trained model; pass 0 for a random-init one)",
    }

    bundle = subparsers.add_parser("bundle", help="export a checkpoint to a verified ONNX bundle")
    bundle.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint directory")
    bundle.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced if it exists)")
    bundle.add_argument("--variants", type=variant_list, default=("fp32", "int8", "fp16"), help="comma-separated")
    bundle.add_argument("--name", help="bundle name in the manifest (default: the checkpoint directory's name)")
    bundle.add_argument("--int8-min-agreement", **agreement)
    bundle.add_argument(
        "--kv-int8",
        choices=("on", "off"),
        default="on",
        help="a GPT-2 model's int8 variant keeps its KV cache in int8 (default: on)",
    )
    bundle.set_defaults(func=run_bundle)

    verify = subparsers.add_parser("verify", help="re-check a bundle's hashes and every variant's outputs")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--checkpoint", type=Path, help="check against PyTorch (default: against the fp32 graph)")
    verify.add_argument("--int8-min-agreement", **agreement)
    verify.set_defaults(func=run_verify)

    bench = subparsers.add_parser("bench", help="prefill/decode latency of each variant on CPU -> markdown")
    source = bench.add_mutually_exclusive_group()
    source.add_argument("--preset", default="small", help="random-init model of this preset (default: small)")
    source.add_argument("--checkpoint", type=Path, help="a trained checkpoint instead of a random-init preset")
    bench.add_argument("--bundle", type=Path, help="an existing bundle of that checkpoint (default: export one)")
    bench.add_argument("--work", type=Path, default=Path("artifacts/bench"), help="where built models go")
    bench.add_argument("--batches", type=int_list, default=(1, 4, 16, 64), help="comma-separated")
    bench.add_argument("--threads", type=int, default=2)
    bench.add_argument("--prompt-len", type=int, default=16)
    bench.add_argument("--steps", type=int, default=16, help="decode steps timed per batch")
    bench.add_argument("--repeats", type=int, default=3, help="prefill runs timed per batch")
    bench.add_argument("--out", type=Path, default=Path("bench/export.md"))
    bench.set_defaults(func=run_bench)

    engine = subparsers.add_parser("engine-bench", help="prefill/decode steps through the serving code, profiled")
    engine.add_argument("--source", type=Path, required=True, help="a trained tiny checkpoint")
    engine.add_argument("--models", type=variant_list, default=("tiny", "small"), help="comma-separated: tiny,small")
    engine.add_argument("--work", type=Path, default=Path("artifacts/engine_bench"), help="where bundles go")
    engine.add_argument("--rebuild", action="store_true", help="re-export the bundles (after a graph change)")
    engine.add_argument("--variant", default="int8")
    engine.add_argument("--gate", type=float, default=MIN_INT8_AGREEMENT, help="INT8 gate for the tiny export")
    engine.add_argument("--batches", type=int_list, default=(1, 8, 32), help="comma-separated")
    engine.add_argument("--threads", type=int, default=2)
    engine.add_argument(
        "--no-spin", action="store_true", help="ORT's workers sleep between operators (the old default)"
    )
    engine.add_argument("--prompt-len", type=int, default=16)
    engine.add_argument("--steps", type=int, default=32, help="decode steps timed per batch")
    engine.add_argument("--ort-profile", action="store_true", help="ORT's per-operator time of the decode steps")
    engine.set_defaults(func=run_engine_bench)

    gpu = subparsers.add_parser("gpu-check", help="FP16 on CUDA with IO binding: parity vs FP32 CPU, latency")
    gpu.add_argument("--bundle", type=Path, required=True, help="a bundle with fp16 and fp32 variants")
    gpu.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of the same script")
    gpu.add_argument("--batches", type=int_list, default=(1, 16, 64, 256), help="comma-separated")
    gpu.add_argument("--prompt-len", type=int, default=16)
    gpu.add_argument("--steps", type=int, default=32, help="decode steps timed per batch")
    gpu.add_argument("--repeats", type=int, default=5, help="prefill runs timed per batch")
    gpu.add_argument("--out", type=Path, default=Path("gpu_check.md"), help="the report, as markdown")
    gpu.set_defaults(func=run_gpu_check)

    torch_gpu = subparsers.add_parser(
        "torch-gpu-check", help="the checkpoint in FP16 on CUDA under PyTorch: parity vs FP32 CPU, decode loop"
    )
    torch_gpu.add_argument("--checkpoint", type=Path, required=True, help="a trained checkpoint")
    torch_gpu.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run")
    torch_gpu.add_argument("--batches", type=int_list, default=(1, 16, 64, 256), help="comma-separated")
    torch_gpu.add_argument("--prompt-len", type=int, default=16)
    torch_gpu.add_argument("--steps", type=int, default=32, help="decode steps timed per batch")
    torch_gpu.add_argument("--out", type=Path, default=Path("torch_gpu_check.md"), help="the report, as markdown")
    torch_gpu.set_defaults(func=run_torch_gpu_check)

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the bench report quotes its own command
    from contract.manifest import BundleError

    try:
        return int(args.func(args))
    except (BundleError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
