"""Latency of one runner: prefill and per-step decode, medians after a warm-up.

Torch-free, so the GPU check runs it in a serving image (onnxruntime-gpu, no torch).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from export.verify import empty_past, left_pad
from training.decoding import Runner


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
    rng = np.random.default_rng(batch)
    prompts = left_pad(rng.integers(0, runner.vocab_size, (batch, prompt_len)).tolist())

    def prefill() -> tuple[float, np.ndarray, list[np.ndarray]]:
        start = time.perf_counter()
        logits, past = runner.forward(*prompts, empty_past(runner, batch))
        return time.perf_counter() - start, logits, past

    def decode_steps(logits: np.ndarray, past: list[np.ndarray], count: int) -> list[float]:
        _, attention_mask, position_ids = prompts
        seconds = []
        for _ in range(count):
            input_ids = logits.argmax(-1).astype(np.int64)[:, None]
            attention_mask = np.concatenate([attention_mask, np.ones_like(input_ids)], axis=1)
            position_ids = position_ids[:, -1:] + 1
            start = time.perf_counter()
            logits, past = runner.forward(input_ids, attention_mask, position_ids, past)
            seconds.append(time.perf_counter() - start)
        return seconds

    # Warm-up through both paths first: first calls pay for allocations and kernel selection.
    _, logits, past = prefill()
    decode_steps(logits, past, 2)
    prefill_seconds = []
    for _ in range(repeats):
        seconds, logits, past = prefill()
        prefill_seconds.append(seconds)
    step_seconds = decode_steps(logits, past, steps)
    return Timing(name, batch, 1000 * statistics.median(prefill_seconds), 1000 * statistics.median(step_seconds))
