"""Prefill and per-step decode latency of each bundle variant on CPU, next to PyTorch eager.

    python -m export bench --preset small --threads 2 --out bench/export.md

With `--preset`, a random-init GPT-2 of that preset (full GPT-2 vocabulary + command
tokens) is built from config and exported first: speed does not depend on the weights.
Its INT8 agreement threshold is off (a random-init model's logits are near-flat, so
agreement says nothing there); the export still checks FP32 and FP16 parity.

Each row: one left-padded batch of random `--prompt-len`-token prompts; prefill timed as
the median of `--repeats` runs with an empty past, then `--steps` decode steps through the
KV cache, the median step reported. The floors are docs/architecture.md's ceilings for this machine:
every fp32 weight and the KV cache read once per step from DRAM (~22 GB/s), and
2 FLOPs per weight per token at ~280 GFLOP/s.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from contract.command import CommandSpec, special_ids
from contract.manifest import MANIFEST_FILE, ModelInfo, load_manifest
from export.bundle import build_bundle
from export.timing import Timing, time_runner
from export.verify import MIN_INT8_AGREEMENT
from runtime.onnx_runner import OnnxRunner
from runtime.runner import Runner
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.model import build_model
from training.tokenizer import add_command_tokens, gpt2_tokenizer
from training.torch_runner import TorchRunner

DRAM_BYTES_PER_S = 22e9
FP32_FLOPS = 280e9
BENCH_TASKS = ("t2i_prompt", "search_queries", "title")


def random_checkpoint(preset: str, out_dir: Path) -> Path:
    """A random-init GPT-2 of `preset` with the full GPT-2 vocabulary plus command tokens."""
    spec = CommandSpec(tasks=BENCH_TASKS, relevance_edges={t: (0.3, 0.5) for t in BENCH_TASKS})
    tokenizer = add_command_tokens(gpt2_tokenizer(), spec.special_tokens())
    eos = special_ids(tokenizer, ["<|endoftext|>"])[0]
    torch.manual_seed(0)
    model = build_model(preset, tokenizer.get_vocab_size(), eos).eval()
    provenance = {"note": f"random init from the {preset} preset, for speed benchmarks only"}
    return save_checkpoint(Checkpoint(model, tokenizer, spec, provenance=provenance), out_dir)


def floors_ms(model: ModelInfo, params: int, batch: int, context: int) -> tuple[float, float]:
    """(memory floor, compute floor) of one fp32 decode step, in ms."""
    kv_bytes = 2 * model.n_layer * batch * context * model.n_embd * 4
    memory = (params * 4 + kv_bytes) / DRAM_BYTES_PER_S
    compute = 2 * params * batch / FP32_FLOPS
    return 1000 * memory, 1000 * compute


@dataclass
class BenchSetup:
    command: str
    name: str
    model: ModelInfo
    params: int
    threads: int
    prompt_len: int
    steps: int
    notes: list[str]
    load_average: float

    @property
    def context(self) -> int:
        """Mean KV length over the decode steps, for the memory floor."""
        return self.prompt_len + self.steps // 2


def markdown(setup: BenchSetup, timings: list[Timing]) -> str:
    runners = list(dict.fromkeys(t.runner for t in timings))
    batches = sorted({t.batch for t in timings})
    by_key = {(t.runner, t.batch): t for t in timings}
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("torch", "onnxruntime"))
    model = setup.model
    lines = [
        "# Export benchmark: prefill and decode latency per variant (CPU)",
        "",
        f"Command (single run): `{setup.command}`",
        "",
        f"- Model: {setup.name}, {setup.params / 1e6:.1f}M parameters, {model.n_layer} layers x {model.n_embd}, "
        f"vocabulary {model.vocab_size}.",
        f"- {setup.prompt_len}-token prompts, {setup.steps} decode steps (median step), {setup.threads} threads "
        f"(torch and ORT intra-op).",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores; {versions}; "
        f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average at start "
        f"{setup.load_average:.2f} (other processes on the cores slow every column alike).",
        "",
        "## Decode step: ms per step (tokens/s)",
        "",
        "| batch | floor fp32 mem / compute | " + " | ".join(runners) + " |",
        "|---|---|" + "---|" * len(runners),
    ]
    for batch in batches:
        memory, compute = floors_ms(model, setup.params, batch, setup.context)
        cells = [f"{by_key[r, batch].step_ms:.1f} ({by_key[r, batch].tokens_per_s:.0f})" for r in runners]
        lines.append(f"| {batch} | {memory:.1f} / {compute:.1f} | " + " | ".join(cells) + " |")
    lines += ["", f"## Prefill of {setup.prompt_len}-token prompts: ms per batch", ""]
    lines += ["| batch | " + " | ".join(runners) + " |", "|---|" + "---|" * len(runners)]
    for batch in batches:
        lines.append(f"| {batch} | " + " | ".join(f"{by_key[r, batch].prefill_ms:.1f}" for r in runners) + " |")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in setup.notes]
    return "\n".join(lines) + "\n"


def run_bench(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    load_average = os.getloadavg()[0]
    work = Path(args.work)
    checkpoint_dir = Path(args.checkpoint) if args.checkpoint else None
    notes = []
    if checkpoint_dir is None:
        checkpoint_dir = work / f"checkpoint_{args.preset}"
        if not (checkpoint_dir / "udrl.json").is_file():
            print(f"building a random-init {args.preset} checkpoint in {checkpoint_dir}", flush=True)
            random_checkpoint(args.preset, checkpoint_dir)
        notes.append(
            f"Random-init `{args.preset}` preset (speed does not depend on the weights); its INT8 agreement "
            "below is not a quality measure (near-flat logits), see the tests for INT8 on a trained model."
        )
    bundle_dir = Path(args.bundle) if args.bundle else work / f"bundle_{checkpoint_dir.name}"
    if not args.bundle and not (bundle_dir / MANIFEST_FILE).is_file():  # reuse the one built last time
        # Random init: INT8 agreement is meaningless there (near-flat logits), so its threshold is off.
        agreement = MIN_INT8_AGREEMENT if args.checkpoint else 0.0
        result = build_bundle(checkpoint_dir, bundle_dir, int8_min_agreement=agreement)
        if result.bundle_dir is None:
            print(f"error: export failed: {result.failures}", file=sys.stderr)
            return 1
    manifest = load_manifest(bundle_dir)
    checkpoint = load_checkpoint(checkpoint_dir)
    params = sum(p.numel() for p in checkpoint.model.parameters())  # tied LM head counted once

    runners: dict[str, Runner] = {"torch eager fp32": TorchRunner(checkpoint.model)}
    for variant in manifest.variants:
        label = f"ORT {variant.name}" + (" (CPU; made for CUDA)" if variant.provider != "CPUExecutionProvider" else "")
        runners[label] = OnnxRunner(bundle_dir, variant.name, "cpu", intra_op_threads=args.threads, manifest=manifest)
    timings = []
    jobs = [(name, batch) for batch in args.batches for name in runners]
    for name, batch in tqdm(jobs, desc="bench", unit="run"):
        timings.append(time_runner(name, runners[name], batch, args.prompt_len, args.steps, args.repeats))
        tqdm.write(f"{name} batch {batch}: prefill {timings[-1].prefill_ms:.1f} ms, step {timings[-1].step_ms:.1f} ms")
    for variant in manifest.variants:
        checks = variant.verification.get("checks", {}).get("fixed", {})
        notes.append(
            f"{variant.name} verification (fixed prompts): max abs logit diff vs PyTorch "
            f"{checks.get('max_abs_logit_diff', float('nan')):.2e}, next-token agreement "
            f"{checks.get('next_token_agreement', float('nan')):.2%}."
        )
    notes.append(
        "FP16 on the CPU provider runs with inserted casts and FP32 MatMuls: its CPU time is not "
        "its target speed. On a GPU host (onnxruntime-gpu): `python -m export gpu-check --bundle BUNDLE --out "
        "gpu_check.md` prints the providers and versions, checks FP16 on CUDA with IO binding against FP32 on "
        "the CPU and times batch 1/16/64/256. It has not been run yet: no GPU was available."
    )
    setup = BenchSetup(
        command="python -m export " + shlex.join(args.argv),
        name=manifest.name,
        model=manifest.model,
        params=params,
        threads=args.threads,
        prompt_len=args.prompt_len,
        steps=args.steps,
        notes=notes,
        load_average=load_average,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(markdown(setup, timings))
    print(f"wrote {args.out}", flush=True)
    return 0
