"""Ours without HTTP: one request at a time through the engine's scheduler, built as the server
builds it (`build_engine` with the server's default settings, INT8 on the CPU), in a process of its
own as the engine process is. `make bench` reports it beside the HTTP figures, so RESULTS.md says
how much of a lone request's time per token is ORT's forward, how much the engine's host work
(sampling, scheduling, detokenizing), and so what HTTP and the prefill add.

    python -m loadtest.inprocess BUNDLE [--requests 10] [--new-tokens 48]   # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from contract.command import prompt_ids
from contract.manifest import load_manifest
from contract.positions import position_offset
from loadtest.mix import DEFAULT_INTENTS
from runtime.onnx_runner import OnnxRunner
from runtime.sampler import SamplingParams
from server.config import Settings
from server.engine.engine import build_engine
from server.engine.request import Event, GenerationRequest, RequestDone
from server.metrics import Metrics

TASK, WORDS = "t2i_prompt", 20  # the bench's request shape (loadtest/bench.py)


def lone_request(
    runner: OnnxRunner,
    tokenizer: Tokenizer,
    i: int,
    new_tokens: int,
    sink: Callable[[Event], None],
    intents: Sequence[str] = DEFAULT_INTENTS,
) -> GenerationRequest:
    """Request i (seed i, intent i of `intents` in turn) as the API builds it
    (server/api/generation.py), temperature 0.8 and top_p 0.95: the tiny default counts its
    output positions down from the command's words, after the prompt's offset."""
    ids = prompt_ids(tokenizer, runner.manifest.command, TASK, WORDS, "high", intents[i % len(intents)])
    offset = position_offset(runner.manifest.command, len(ids))
    params = SamplingParams(temperature=0.8, top_p=0.95)
    return GenerationRequest(
        f"r{i}", ids, 1, params, max_new_tokens=new_tokens, sink=sink, seed=i, words=WORDS, position_offset=offset
    )


def lone_request_steps(bundle: Path, requests: int, new_tokens: int) -> dict[str, Any]:
    """`requests` lone requests after one to warm up: the median ms per scheduler step after the
    prefill, and of ORT's forward in it."""
    manifest = load_manifest(bundle)
    tokenizer = Tokenizer.from_file(str(bundle / manifest.tokenizer_file))
    settings = Settings(bundle=bundle, variant="int8", provider="cpu")
    scheduler = build_engine(settings, manifest, tokenizer, Metrics("inprocess")).scheduler
    runner = scheduler.runner
    steps_ms: list[float] = []
    forward_ms: list[float] = []
    for i in range(requests + 1):
        events: list[Event] = []
        scheduler.add(lone_request(runner, tokenizer, i, new_tokens, events.append))
        scheduler.step()  # its prefill
        ort, steps, start = 0.0, 0, time.perf_counter()
        while not any(isinstance(e, RequestDone) for e in events):
            scheduler.step()
            ort, steps = ort + runner.last_run_s, steps + 1
        if i and steps:  # the first warms up
            steps_ms.append(1000 * (time.perf_counter() - start) / steps)
            forward_ms.append(1000 * ort / steps)
    return {
        "requests": len(steps_ms),
        "step_ms": statistics.median(steps_ms),
        "forward_ms": statistics.median(forward_ms),
        "intra_op_threads": runner.intra_op_threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.inprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    print(json.dumps(lone_request_steps(args.bundle, args.requests, args.new_tokens)))


if __name__ == "__main__":
    main()
