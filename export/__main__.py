"""`python -m export <command>`: checkpoint -> verified ONNX bundle, and checks on bundles.

    python -m export bundle --checkpoint DIR --out DIR [--variants fp32,int8,fp16]
    python -m export verify BUNDLE [--checkpoint DIR]

Exit codes: 0 all variants passed; 1 a variant failed verification (the reason is printed,
the variant is left out of the manifest); 2 bad input (missing checkpoint, tampered bundle).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from export.verify import MIN_INT8_AGREEMENT

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # export never downloads anything


def variant_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def run_bundle(args: argparse.Namespace) -> int:
    from export.bundle import build_bundle

    result = build_bundle(args.checkpoint, args.out, args.variants, args.int8_min_agreement, args.name)
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
    agreement = {
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
    bundle.set_defaults(func=run_bundle)

    verify = subparsers.add_parser("verify", help="re-check a bundle's hashes and every variant's outputs")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--checkpoint", type=Path, help="check against PyTorch (default: against the fp32 graph)")
    verify.add_argument("--int8-min-agreement", **agreement)
    verify.set_defaults(func=run_verify)

    args = parser.parse_args(argv)
    from contract.manifest import BundleError
    from export.bundle import ExportError

    try:
        return int(args.func(args))
    except (BundleError, ExportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
