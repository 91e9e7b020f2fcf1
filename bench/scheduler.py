"""In-process scheduler benchmarks behind bench/engine.md's saturation section (no HTTP).

    python bench/scheduler.py rebuilds BUNDLE [--lag 2] [--requests 192] [--no-retain]
    python bench/scheduler.py burst BUNDLE [--budgets 0 64 128 256]
    python bench/scheduler.py topp

- rebuilds: a closed loop of 32 requests (20-word t2i prompts, 30-48 new tokens, temperature
  0.8, top_p 0.95) where each finished request's replacement arrives `--lag` steps later (the
  HTTP round trip): tokens/s, cache rebuilds and in-place joins, and the time each took.
- burst: 8 streams decode, then 24 requests arrive at once, five times per prefill budget
  (`max_prefill_tokens`): the running streams' longest gap (median over the bursts) and the
  burst's mean time to first token.
- topp: the host top-p sampler on 32 rows of 7,106 tokens, flat and peaked, by either sort.
Run it alone on the machine (two busy processes on two cores slow each other).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from contract.command import prompt_ids
from contract.positions import position_offset
from runtime.allocator import retain_freed_memory
from runtime.onnx_runner import OnnxRunner
from runtime.sampler import SamplingParams, _draw_by_buckets, _draw_from_sorted_candidates, _sample_nucleus
from server.engine import scheduler as scheduler_module
from server.engine.request import Event, GenerationRequest, RequestDone
from server.engine.scheduler import Scheduler
from server.metrics import Metrics

INTENTS = ("holiday sale in paris", "summer hiking boots", "coffee shop opening")


def load(bundle: Path, retain: bool = True) -> tuple[OnnxRunner, Tokenizer]:
    if retain:  # as the server does (runtime/allocator.py); --no-retain measures without it
        retain_freed_memory()
    runner = OnnxRunner(bundle, variant="int8", provider="cpu")
    return runner, Tokenizer.from_file(str(bundle / runner.manifest.tokenizer_file))


def request(
    runner: OnnxRunner, tokenizer: Tokenizer, i: int, new_tokens: int, sink: Callable[[Event], None]
) -> GenerationRequest:
    ids = prompt_ids(tokenizer, runner.manifest.command, "t2i_prompt", 20, "high", INTENTS[i % len(INTENTS)])
    params = SamplingParams(temperature=0.8, top_p=0.95)
    # as the API builds it (server/api/generation.py): the tiny default counts its output
    # positions down from `words`, after the prompt's offset
    offset = position_offset(runner.manifest.command, len(ids))
    return GenerationRequest(
        f"r{i}", ids, 1, params, max_new_tokens=new_tokens, sink=sink, seed=i, words=20, position_offset=offset
    )


def timed(name: str, counts: Counter[str], seconds: Counter[str], function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = function(*args, **kwargs)
        seconds[name] += time.perf_counter() - start
        counts[name] += 1
        return result

    return wrapper


def rebuilds(bundle: Path, lag: int, total: int, retain: bool) -> None:
    runner, tokenizer = load(bundle, retain)
    counts: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    scheduler_module.rebuild = timed("rebuild", counts, seconds, scheduler_module.rebuild)
    scheduler_module.write_in_place = timed("in_place", counts, seconds, scheduler_module.write_in_place)
    done: list[int] = []
    lengths = np.random.default_rng(0)
    metrics = Metrics("bench")
    scheduler = Scheduler(runner, tokenizer, metrics, max_batch_size=32)

    def add(i: int) -> None:
        sink = lambda e: done.append(i) if isinstance(e, RequestDone) else None  # noqa: E731
        scheduler.add(request(runner, tokenizer, i, int(lengths.integers(30, 49)), sink))

    for sent in range(32):
        add(sent)
    sent, steps, pending = 32, 0, deque[int]()
    start = time.perf_counter()
    while len(done) < total:
        before = len(done)
        scheduler.step()
        steps += 1
        pending.extend([steps + lag] * (len(done) - before))
        while pending and pending[0] <= steps and sent < total + 32:
            pending.popleft()
            add(sent)
            sent += 1
    wall = time.perf_counter() - start
    tokens = metrics.registry.get_sample_value("promptgen_generated_tokens_total", {"model": "bench"}) or 0
    print(f"lag {lag}: {tokens / wall:.0f} tokens/s, {steps} steps in {wall:.1f} s")
    for name in ("rebuild", "in_place"):
        print(f"  {name}: {counts[name]} calls, {seconds[name]:.2f} s")


def burst(bundle: Path, budgets: list[int]) -> None:
    runner, tokenizer = load(bundle)
    warm_up = True
    for budget in [budgets[0], *budgets]:  # the first pass warms ORT up and is not printed
        worst, ttft, steps = [], [], []
        for _ in range(5):
            scheduler = Scheduler(runner, tokenizer, Metrics("bench"), max_batch_size=32, max_prefill_tokens=budget)
            for i in range(8):
                scheduler.add(request(runner, tokenizer, i, 48, lambda e: None))
            scheduler.step()
            scheduler.step()
            arrival = time.perf_counter()
            arrivals = [request(runner, tokenizer, 100 + i, 8, lambda e: None) for i in range(24)]
            for r in arrivals:
                scheduler.add(r)
            first: dict[str, float] = {}
            gaps, last = [], arrival
            for _ in range(6):
                scheduler.step()
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
                for r in arrivals:
                    admitted = scheduler.active.get(r.request_id)
                    if r.request_id not in first and admitted is not None and admitted.first_token_at is not None:
                        first[r.request_id] = now - arrival
            worst.append(max(gaps))
            steps += gaps
            ttft.append(float(np.mean(list(first.values()))))
        if warm_up:
            warm_up = False
            continue
        print(
            f"budget {budget}: running streams' longest gap {np.median(worst) * 1e3:.0f} ms "
            f"(median step {np.median(steps) * 1e3:.0f} ms), burst mean TTFT {np.mean(ttft) * 1e3:.0f} ms"
        )


def topp() -> None:
    rng = np.random.default_rng(0)

    def ms(function: Callable[[], Any], n: int = 20) -> float:
        function()
        start = time.perf_counter()
        for _ in range(n):
            function()
        return (time.perf_counter() - start) / n * 1e3

    # Dirichlet rows, and the softmax of normal logits at temperature 0.8 (a random-init
    # model's are near N(0, 1): flat; a trained one's are peaked).
    logits = {scale: rng.normal(0, scale, (32, 7106)).astype(np.float32) / 0.8 for scale in (1.0, 4.0)}
    rows = {
        "flat": rng.dirichlet(np.full(7106, 5.0), size=32).astype(np.float32),
        "peaked": rng.dirichlet(np.full(7106, 0.02), size=32).astype(np.float32),
        **{f"logits N(0, {s:g})": np.exp(z - z.max(axis=1, keepdims=True)) for s, z in logits.items()},
    }
    for name, probs in rows.items():
        top_p, u = np.full(32, 0.95), rng.random(32)
        mass = top_p * probs.sum(axis=1, dtype=np.float64)
        every = probs >= 0
        step = ms(lambda p=probs, t=top_p, v=u: _sample_nucleus(p, t, v))
        bucketed = ms(lambda p=probs, m=mass, v=u: _draw_by_buckets(p, m, v))
        flat = ms(lambda p=probs, e=every, m=mass, v=u: _draw_from_sorted_candidates(p, e, m, v))
        print(f"{name}: top-p step {step:.1f} ms; by buckets {bucketed:.1f} ms, one flat sort {flat:.1f} ms")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rebuilds")
    r.add_argument("bundle", type=Path)
    r.add_argument("--lag", type=int, default=2)
    r.add_argument("--requests", type=int, default=192)
    r.add_argument("--no-retain", dest="retain", action="store_false", help="leave glibc's allocator as it is")
    b = sub.add_parser("burst")
    b.add_argument("bundle", type=Path)
    b.add_argument("--budgets", type=int, nargs="+", default=[0, 64, 128, 256])
    sub.add_parser("topp")
    args = parser.parse_args()
    print(f"load average at start: {load_average()}")
    if args.command == "rebuilds":
        rebuilds(args.bundle, args.lag, args.requests, args.retain)
    elif args.command == "burst":
        burst(args.bundle, args.budgets)
    else:
        topp()
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
