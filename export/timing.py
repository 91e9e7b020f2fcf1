"""Latency of one runner: prefill and per-step decode, medians after a warm-up.

Torch-free, so the GPU check runs it in a serving image (onnxruntime-gpu, no torch).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from runtime.decode import generate
from runtime.runner import Runner


@dataclass
class Timing:
    runner: str
    batch: int
    prefill_ms: float
    step_ms: float

    @property
    def tokens_per_s(self) -> float:
        return self.batch * 1000 / self.step_ms


def time_runner(name: str, runner: Runner, batch: int, prompt_len: int, steps: int, repeats: int) -> Timing:
    """Forward times only, through the runtime's decode loop (greedy, no EOS stop)."""
    rng = np.random.default_rng(batch)
    prompts = rng.integers(0, runner.vocab_size, (batch, prompt_len)).tolist()
    # Warm-up through both paths first: first calls pay for allocations and kernel selection.
    generate(runner, prompts, 3, eos_id=None)
    prefill_seconds = [generate(runner, prompts, 1, eos_id=None).forward_s[0] for _ in range(repeats)]
    step_seconds = generate(runner, prompts, steps + 1, eos_id=None).forward_s[1:]
    return Timing(name, batch, 1000 * statistics.median(prefill_seconds), 1000 * statistics.median(step_seconds))
