"""The PyTorch GPU check: the student's FP16 numerics and decode loop on CUDA, under PyTorch.

    python -m export torch-gpu-check --checkpoint DIR [--device cuda] [--out torch_gpu_check.md]

For a GPU host without onnxruntime-gpu, where `gpu-check` (the FP16 ONNX variant on ORT's
CUDA provider) cannot run. It measures what PyTorch can:

1. Parity: the checkpoint cast to FP16 on the device against FP32 on the CPU, by export's own
   FP16 checks (export/verify.py: no NaN/Inf, relative logit error <= 1e-2, greedy identical
   on the fixed prompts except near-ties), through the runtime's decode loop. The FP32 CPU
   logits are the ones the FP16 ONNX variant is checked against, so this is the FP16
   arithmetic check the CPU provider cannot give (it computes an FP16 graph in FP32).
2. The decode loop kept on the device: greedy steps with the model's own KV cache, no host
   copy but the step's token ids, in FP16 and FP32, at each batch; medians of synchronised
   step times after a warm-up.

Exit 0 parity passed; 1 it failed; 2 bad input; 3 no CUDA device for --device cuda.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel

from export.bundle import model_info
from export.gpu_check import NO_CUDA_EXIT, device_name
from export.verify import check_variant, prompt_sets, summary
from training.checkpoint import load_checkpoint
from training.model import cache_argument
from training.torch_runner import TorchRunner


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def device_decode_ms(
    model: PreTrainedModel, batch: int, prompt_len: int, steps: int, device: torch.device
) -> tuple[float, float]:
    """(prefill ms, median decode ms per step) of greedy decoding with the cache on the device."""
    generator = torch.Generator().manual_seed(batch)
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=generator).to(device)
    cache_name = cache_argument(model)
    prefill_ms: list[float] = []
    step_ms: list[float] = []
    for _ in range(2):  # the first pass is the warm-up: allocations and kernel selection
        synchronize(device)
        start = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True)
        cache = getattr(out, cache_name)
        ids = out.logits[:, -1].argmax(-1, keepdim=True)
        synchronize(device)
        prefill_ms.append(1000 * (time.perf_counter() - start))
        step_ms.clear()
        for _ in range(steps):
            start = time.perf_counter()
            out = model(input_ids=ids, use_cache=True, **{cache_name: cache})
            ids = out.logits[:, -1].argmax(-1, keepdim=True)
            synchronize(device)
            step_ms.append(1000 * (time.perf_counter() - start))
    return prefill_ms[-1], statistics.median(step_ms)


def run_torch_gpu_check(args: argparse.Namespace) -> int:
    lines = [f"# PyTorch GPU check: the student in FP16 on {args.device}", ""]

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    def write() -> None:
        Path(args.out).write_text("\n".join(lines) + "\n")

    import transformers

    say(f"- torch {torch.__version__}, transformers {transformers.__version__}, device: {device_name()}")
    if args.device == "cuda" and not torch.cuda.is_available():
        say("- no CUDA device visible to torch: nothing more to check")
        write()
        return NO_CUDA_EXIT
    checkpoint = load_checkpoint(args.checkpoint)
    device = torch.device(args.device)
    info = model_info(checkpoint)
    n_params = sum(p.numel() for p in checkpoint.model.parameters())
    say(f"- checkpoint {args.checkpoint}: {info.architecture}, {n_params / 1e6:.1f}M parameters, {info.n_layer} layers")

    fp16 = copy.deepcopy(checkpoint.model).half()
    reference = TorchRunner(checkpoint.model, "cpu")
    started = time.perf_counter()
    sets = prompt_sets(reference, checkpoint.tokenizer, checkpoint.command, info)
    result = check_variant("fp16", TorchRunner(fp16, args.device), sets, int8_min_agreement=0.0)
    say(f"- parity vs FP32 on CPU ({time.perf_counter() - started:.1f} s): {summary(f'fp16 ({args.device})', result)}")

    say("")
    say(f"Decode loop on {args.device}, cache on the device, prompt {args.prompt_len}, {args.steps} steps:")
    say("")
    say("| batch | fp16 prefill ms | fp16 ms/step | fp16 tokens/s | fp32 ms/step | fp32 tokens/s |")
    say("|---|---|---|---|---|---|")
    fp32 = checkpoint.model.to(args.device)
    fp16 = fp16.to(args.device)
    for batch in args.batches:
        prefill, half_step = device_decode_ms(fp16, batch, args.prompt_len, args.steps, device)
        _, full_step = device_decode_ms(fp32, batch, args.prompt_len, args.steps, device)
        say(
            f"| {batch} | {prefill:.2f} | {half_step:.2f} | {batch * 1000 / half_step:.0f} "
            f"| {full_step:.2f} | {batch * 1000 / full_step:.0f} |"
        )
    write()
    return 0 if result["passed"] else 1
