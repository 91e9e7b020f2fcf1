"""The GPU check: the FP16 variant on the CUDA execution provider, KV cache kept on the device.

    python -m export gpu-check --bundle DIR [--out gpu_check.md]

1. Prints `onnxruntime.get_available_providers()`, the versions and the device; stops there
   (exit 3) when this onnxruntime has no CUDA provider.
2. Parity: FP16 on CUDA vs FP32 on the CPU, teacher-forced on FP32's greedy tokens over the
   verification prompts (the same checks as export's: no NaN/Inf, relative logit error
   <= 1e-2, greedy identical on the fixed prompts). On the CPU provider FP16 only rounds
   weights; this is where its arithmetic is checked.
3. Per-step decode latency (and prefill) at batch 1, 16, 64, 256 with IO binding: inputs
   go in from the host, past/present stay on the device as OrtValues, only logits come back.

Torch-free: it runs in the GPU serving image. Needs the bundle's fp16 and fp32 variants.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from contract.manifest import load_manifest
from export.timing import time_runner
from export.verify import check_variant, prompt_sets, summary
from runtime.onnx_runner import OnnxRunner

CUDA = "CUDAExecutionProvider"
PROVIDERS = {"cuda": CUDA, "cpu": "CPUExecutionProvider"}
NO_CUDA_EXIT = 3


def device_name() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi unavailable ({e})"


def run_gpu_check(args: argparse.Namespace) -> int:
    lines = [f"# GPU check: FP16 on the {PROVIDERS[args.device]} with IO binding", ""]

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"- onnxruntime.get_available_providers(): {ort.get_available_providers()}")
    say(f"- onnxruntime {ort.__version__} ({ort.get_device()}), numpy {np.__version__}")
    say(f"- device: {device_name()}")
    if PROVIDERS[args.device] not in ort.get_available_providers():
        say("- no CUDA execution provider in this onnxruntime: nothing more to check")
        Path(args.out).write_text("\n".join(lines) + "\n")
        return NO_CUDA_EXIT

    bundle = Path(args.bundle)
    manifest = load_manifest(bundle)
    runner = OnnxRunner(bundle, "fp16", args.device, manifest=manifest)
    if runner.provider != PROVIDERS[args.device]:
        say(f"- error: ORT fell back to {runner.provider} for the fp16 variant")
        Path(args.out).write_text("\n".join(lines) + "\n")
        return 1
    fp16 = runner  # its forward keeps the KV cache on the device between steps, as in serving
    reference = OnnxRunner(bundle, "fp32", "cpu", manifest=manifest)
    tokenizer = Tokenizer.from_file(str(bundle / manifest.tokenizer_file))
    started = time.perf_counter()
    sets = prompt_sets(reference, tokenizer, manifest.command, manifest.model)
    result = check_variant("fp16", fp16, sets, int8_min_agreement=0.0)
    say(f"- parity vs FP32 on CPU ({time.perf_counter() - started:.1f} s): {summary(f'fp16 ({args.device})', result)}")

    say("")
    say("| batch | prefill ms | decode ms/step | tokens/s |")
    say("|---|---|---|---|")
    for batch in args.batches:
        timing = time_runner(f"fp16 {args.device}", fp16, batch, args.prompt_len, args.steps, args.repeats)
        say(f"| {batch} | {timing.prefill_ms:.2f} | {timing.step_ms:.2f} | {timing.tokens_per_s:.0f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0 if result["passed"] else 1
