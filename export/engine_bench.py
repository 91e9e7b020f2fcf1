"""The engine micro-benchmark: prefill and decode steps through the serving code, no HTTP.

    python -m export engine-bench --source CHECKPOINT [--batches 1,8,32] [--variant int8]

Two models, each exported once into `--work` (reused on later runs; `--rebuild` re-exports
after a graph change): `tiny`, the `--source` checkpoint itself (trained, so sampling sees
real distributions), and `small`, a random-init GPT-2 small (124M config) with the source's
compact tokenizer and command spec (speed does not depend on the weights; it samples with
temperature alone, see run_engine_bench).

Each (model, batch) runs what the scheduler runs (server/engine/scheduler.py: `_decode`):
a left-padded prefill with the bundle's sampling defaults, then `--steps` decode steps on
the batch KV cache (runtime/kv_cache.py), and prints the median of each part of a step
over the decode steps (the step is their sum):
- `ort`: inside `session.run_with_iobinding` (the graph, including any KV copy it does),
- `bind`: the rest of `OnnxRunner.forward` (binding, moving a full in-place buffer into a
  larger one, logits to numpy),
- `kv`: the cache's host bookkeeping (next mask, positions, `BatchCache.advance`),
- `sample`: the host sampler on the step's logits,
- `python`: whatever else the step loop spends.
`--ort-profile` adds ONNX Runtime's own per-operator profile of the decode steps (by op type),
which is where the graph's KV concatenation or fused attention shows up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contract.manifest import MANIFEST_FILE, GenerationDefaults, load_manifest
from export.bundle import build_bundle
from runtime.kv_cache import BatchCache
from runtime.onnx_runner import OnnxRunner
from runtime.padding import pad
from runtime.sampler import Row, SamplingParams, make_generator, sample
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.model import build_model

PARTS = ("ort", "bind", "kv", "sample", "python")


@dataclass
class StepProfile:
    model: str
    batch: int
    prefill_ms: float
    parts_ms: dict[str, float]  # median of each part over the decode steps

    @property
    def step_ms(self) -> float:
        return sum(self.parts_ms.values())

    @property
    def tokens_per_s(self) -> float:
        return self.batch * 1000 / self.step_ms


def small_checkpoint(source: Checkpoint, out_dir: Path) -> Path:
    """A random-init GPT-2 small with the source's tokenizer and command spec."""
    vocab = source.tokenizer.get_vocab_size()
    torch.manual_seed(0)
    model = build_model("small", vocab, int(source.model.config.eos_token_id)).eval()
    provenance = {"note": "random init from the small preset, for speed benchmarks only"}
    return save_checkpoint(Checkpoint(model, source.tokenizer, source.command, provenance=provenance), out_dir)


def ensure_bundle(checkpoint_dir: Path, bundle_dir: Path, variant: str, gate: float, rebuild: bool) -> Path:
    if rebuild or not (bundle_dir / MANIFEST_FILE).is_file():
        variants = tuple(dict.fromkeys(("fp32", variant)))  # fp32 always: the reference variant
        result = build_bundle(checkpoint_dir, bundle_dir, variants, int8_min_agreement=gate)
        if result.bundle_dir is None:
            raise SystemExit(f"export of {checkpoint_dir} failed: {result.failures}")
    return bundle_dir


def profile_steps(
    name: str, runner: OnnxRunner, batch: int, prompt_len: int, steps: int, params: SamplingParams
) -> StepProfile:
    """One prefill, then `steps` decode steps as the scheduler runs them, each part timed."""
    rng = np.random.default_rng(batch)
    prompts = rng.integers(0, runner.vocab_size, (batch, prompt_len)).tolist()
    rows = [Row(params, make_generator(0, i), generated=[], banned=[]) for i in range(batch)]
    eos = runner.eos_token_id
    input_ids, mask, positions = pad(prompts, eos)
    start = time.perf_counter()
    logits, present = runner.forward(input_ids, mask, positions, runner.empty_past(batch))
    tokens = sample(logits, rows, None)
    prefill_ms = 1000 * (time.perf_counter() - start)
    cache = BatchCache(present, mask)  # equal prompt lengths: left-padded and ragged are the same
    every_row = np.ones(batch, bool)
    parts: dict[str, list[float]] = defaultdict(list)
    t0 = time.perf_counter()
    for _ in range(steps):
        input_ids = tokens[:, None].astype(np.int64)
        positions = cache.positions()
        mask = cache.step_mask(every_row)
        t1 = time.perf_counter()
        logits, present = runner.forward(input_ids, mask, positions, cache.past)
        t2 = time.perf_counter()
        tokens = sample(logits, rows, None)
        t3 = time.perf_counter()
        cache.advance(present, mask, every_row)
        t4 = time.perf_counter()
        for row, token in zip(rows, tokens, strict=True):
            row.generated.append(int(token))
        t5 = time.perf_counter()  # the next step starts here: the loop's own Python is what is left
        parts["ort"].append(runner.last_run_s)
        parts["bind"].append(t2 - t1 - runner.last_run_s)
        parts["kv"].append(t1 - t0 + t4 - t3)
        parts["sample"].append(t3 - t2)
        parts["python"].append(t5 - t4)
        t0 = t5
    return StepProfile(name, batch, prefill_ms, {p: 1000 * statistics.median(parts[p]) for p in PARTS})


def ort_op_profile(
    bundle_dir: Path, variant: str, threads: int, spinning: bool, batch: int, prompt_len: int, steps: int
) -> str:
    """ONNX Runtime's per-operator time over `steps` decode steps, by op type, as one line."""
    with tempfile.TemporaryDirectory() as tmp:
        runner = OnnxRunner(
            bundle_dir, variant, "cpu", intra_op_threads=threads, spinning=spinning, profile_prefix=f"{tmp}/ort"
        )
        profile_steps("profile", runner, batch, prompt_len, steps, SamplingParams(0.0, 1.0))
        events = json.loads(Path(runner.session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    # The last `steps` runs are decode steps; keep the node events of those runs only.
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    first = runs[-steps]["ts"] if len(runs) >= steps else 0
    totals: dict[str, float] = defaultdict(float)
    for event in nodes:
        if event["ts"] >= first:
            totals[event["args"]["op_name"]] += event["dur"] / 1000 / steps
    ordered = sorted(totals.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{op} {ms:.2f}" for op, ms in ordered[:8])


def run_engine_bench(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    source = load_checkpoint(args.source)
    small_dir = work / "checkpoint_small"
    if not (small_dir / "udrl.json").is_file():
        small_checkpoint(source, small_dir)
    # (checkpoint, INT8 gate, trained): random init has no meaningful INT8 agreement (near-flat logits)
    models = {"tiny": (Path(args.source), args.gate, True), "small": (small_dir, 0.0, False)}
    spinning = not args.no_spin
    print(
        f"load average {os.getloadavg()}; {args.threads} threads, spinning {spinning}; variant {args.variant}",
        flush=True,
    )
    header = f"{'model':6} {'batch':>5} {'prefill':>8} {'step':>7} {'tok/s':>7} " + " ".join(f"{p:>7}" for p in PARTS)
    results = []
    for name in args.models:
        checkpoint_dir, gate, trained = models[name]
        bundle_dir = ensure_bundle(checkpoint_dir, work / f"bundle_{name}", args.variant, gate, args.rebuild)
        manifest = load_manifest(bundle_dir)
        defaults = GenerationDefaults.from_dict(manifest.generation)
        # Near-flat logits would send top-p into its full-sort fallback at every step, which a
        # trained model's do not: a random-init model samples with temperature alone.
        params = SamplingParams(defaults.temperature, defaults.top_p if trained else 1.0)
        runner = OnnxRunner(
            bundle_dir, args.variant, "cpu", intra_op_threads=args.threads, spinning=spinning, manifest=manifest
        )
        print(header, flush=True)
        for batch in args.batches:
            profile_steps(name, runner, batch, args.prompt_len, 4, params)  # warm-up: allocations, kernels
            result = profile_steps(name, runner, batch, args.prompt_len, args.steps, params)
            results.append(result)
            cells = " ".join(f"{result.parts_ms[p]:7.2f}" for p in PARTS)
            step = f"{result.prefill_ms:8.1f} {result.step_ms:7.2f} {result.tokens_per_s:7.0f}"
            print(f"{name:6} {batch:5d} {step} {cells}", flush=True)
            if args.ort_profile:
                line = ort_op_profile(
                    bundle_dir, args.variant, args.threads, spinning, batch, args.prompt_len, args.steps
                )
                print(f"    ORT ms per decode step by op: {line}", flush=True)
    print(f"load average {os.getloadavg()}", flush=True)
    return 0
