"""In-process scheduler benchmarks behind bench/engine.md's saturation section (no HTTP).

    python bench/scheduler.py rebuilds BUNDLE [--lag 2] [--requests 192] [--no-retain] [--hold | --no-hold]
                                              [--no-mix] [--no-spin] [--device-sampling on] [--threads auto]
    python bench/scheduler.py unloaded BUNDLE [--requests 3] [--new-tokens 48] [--no-mix] [--no-spin] [--threads auto]
    python bench/scheduler.py kernels
    python bench/scheduler.py burst BUNDLE [--budgets 0 64 128 256] [--no-mix] [--no-spin]
    python bench/scheduler.py topp
    python bench/scheduler.py sampling BUNDLE [--steps 200]
    python bench/scheduler.py sideload BUNDLE [--ms 1.2] [--rate 210] [--seconds 8]
    python bench/scheduler.py mixed BUNDLE [--prompts 4] [--prompt-len 25]
    python bench/scheduler.py profile BUNDLE [--variant int8] [--batch 32] [--prompt-len 13] [--steps 30]
                                             [--columns 20 60]
    python bench/scheduler.py forward BUNDLE [--batches 1 32] [--columns 20 60] [--repeats 600]
    python bench/scheduler.py openloop BUNDLE [--rates 4 8 16] [--seconds 20] [--warmup-s 2]
    python bench/scheduler.py freeslots BUNDLE
    python bench/scheduler.py weights [--rows 1 8 25 32] [--dynamic-only]
    python bench/scheduler.py skipnorm BUNDLE

- rebuilds: a closed loop of 32 requests (20-word t2i prompts, 30-48 new tokens, temperature
  0.8, top_p 0.95) where each finished request's replacement arrives `--lag` steps later (the
  HTTP round trip): tokens/s, the mean time to first token, cache rebuilds and in-place joins,
  and the time each took, how many columns the cache spans for how many real tokens per row, and
  the mean forward of a decode step and of a join step (the mixed graph) against the rest of a step.
  `--no-hold` / `--hold`: a lone joiner is admitted at once even when the batch is nearly full, or
  waits for company (scheduler.HOLD_ABOVE) even where joiners are prefilled in the decode step
  (by default it waits only where they are not).
- unloaded: one request at a time through the engine as the server builds it (`build_engine`):
  per request, ms per decode step after its prefill and ORT's share of it; then one JSON line with
  the medians, which `make bench` runs in a process of its own and puts beside the HTTP figures in
  bench/RESULTS.md. (Before 2026-12-05 21:00 UTC it built its own runner, a new Scheduler per
  request, and counted the prefill as a step.)
- kernels: ORT's dynamic INT8 MatMul on one GPT-2 small MLP weight at batch 1/8/32,
  GroupQueryAttention over a GPT-2 small batch of 32 ragged rows (12 layers) with the cache in
  fp32, fp16 and int8 and with padded query chunks, numpy reading 49 of C columns per row (the
  gap effect), and the host's read bandwidth (needs onnx).
- burst: 8 streams decode, then 24 requests arrive at once, five times per prefill budget
  (`max_prefill_tokens`): the running streams' longest gap (median over the bursts) and the
  burst's mean time to first token.
- --no-mix: a bundle with a mixed graph (contract/manifest.py, `mixed_file`) prefills joiners in
  a forward of their own, as one without does, so one bundle measures both.
- --no-spin: ORT's workers sleep between operators instead of spinning through a forward
  (runtime/onnx_runner.py says why they spin).
- --device-sampling on: sample in the runner's ONNX sampler graph (runtime/sampler_graph.py), on
  the CPU too, instead of the host sampler (auto: on CUDA only, as the server does).
- --threads N: ORT's intra-op threads (default `auto`, as the server: one for a model under 64 MB,
  runtime/onnx_runner.py: choose_intra_op_threads; 0: ORT's default).
- mixed: a join step's forwards at batch 1, 8 and 32 (the batch's decode step and the joiners'
  prefill apart, against one forward of the mixed graph), best of 15 each; and the decode step
  through the mixed graph beside a one-token prompt: what every step would cost if the mixed
  graph served all steps (docs/architecture.md says why it does not); and a decode step right
  after a mixed one against one after a decode step (the two sessions' own weight copies).
- profile: ONNX Runtime's per-node profile of a decode step of `--batch` rows beside the same step
  with a `--prompt-len` prompt mixed in: where a join step's extra time goes. `--variant fp32`:
  the same with the cache in fp32 (the prompt's attention against the int8 cache's). `--columns LO
  HI`: the rows' prefilled lengths are drawn from [LO, HI) (what a node costs that does not
  depend on the columns it reads: `--columns 2 6`).
- forward: the mean time of one decode forward of each `--batches` size (ragged rows of
  `--columns` prefilled tokens, the same step `--repeats` times after 5 to warm up), nothing
  else: a kernel's change in the step, run in turn with the commit before (`GLIBC_TUNABLES`
  and other process settings too).
- openloop: the engine's own latency under load, with no HTTP and no client on the cores:
  requests (48 new tokens) arrive as a Poisson process at each `--rate` for `--seconds` into the
  scheduler, which steps whenever it has work. Per rate: p50 / p90 / p99 latency from arrival to
  the last token (requests due in the first `--warmup-s` left out), the p99 against the unloaded
  p50 (one request at a time, measured first: the issue's tail goal), the mean live rows per
  step, the cache rebuilds and in-place joins with their time, and the forwards as `rebuilds` gives them.
- freeslots: what a free slot (a row of length 0 left by a finished request, kept for the next
  join to be written into in place) costs a decode step: the step of B rows of which the first L
  are live (41 columns each), for B / L = 8 / 8, 16 / 8, 16 / 16, 32 / 16, 32 / 32, best of 15,
  taken in turn (a ragged INT8 bundle).
- topp: the host top-p sampler on 32 rows of 7,106 tokens, flat and peaked, by either sort, and
  the C draw (runtime/top_p.c) on AVX-512 and scalar, where the library is built; their
  row sums in float64 and by `row_mass`; the candidates' sort by np.lexsort and by the sampler's
  rule (an int64 key past KEY_SORT_FROM tokens) at 100 / 1,000 / 5,000 tokens.
- sideload: a closed loop of 32 alone, then beside a second thread that does `--rate` chunks of
  `--ms` of work a second, in pure Python (it holds the GIL, as the HTTP side's request handling
  does) or hashing (the same CPU, the GIL released): tokens/s each way, twice. What the HTTP
  layer's Python costs the engine in one process (bench/engine.md, steps 13-14).
- sampling: the host sampler (`sample`: bans, temperature, top-p, the draw) on the bundle's own
  logits: a closed loop of 32 records `--steps` decode steps' logits and rows, then each step is
  sampled again from a fresh generator per row, from warm memory, on its first 1, 8 and all 32
  rows, in the logits array as Sampler.run does (`scratch`, since 878acb6; before it, `sample`
  took its own copy): ms per call, best of 3 passes.
- weights: ORT's two INT8 weight kernels (export/variants.py's `dynamic` and `blockwise`) on 48
  MLP-shaped MatMuls at 1, 8, 25 and 32 rows (`--rows`). On an AMX machine the dynamic kernel's
  time steps up past each multiple of 16 rows (`--rows 1 16 17 32 33 --dynamic-only`): it computes
  in tiles of 16 rows, and their arithmetic adds to the weight read instead of overlapping it.
  `ours`: the dynamic graph with our MatMulInt8 (runtime/matmul_kernel.py) in, where it is built.
- skipnorm: a decode step of the bundle's INT8 graph against a copy whose residual Add +
  LayerNorm pairs are fused into ORT's SkipLayerNormalization (tried, not kept).
Run it alone on the machine (two busy processes on two cores slow each other).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

# `python bench/scheduler.py` puts bench/ on the path, not its checkout: the project's packages
# would come from wherever it is installed (an editable install of another checkout), and a
# before/after pair run from two git worktrees would time the same code twice.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from tokenizers import Tokenizer

from contract.command import prompt_ids
from contract.manifest import load_manifest
from contract.positions import position_offset
from loadtest.roofline import best_seconds
from runtime import attention_kernel, custom_ops, matmul_kernel, top_p_kernel
from runtime import sampler as sampler_module
from runtime.allocator import retain_freed_memory
from runtime.kv_cache import BatchCache
from runtime.onnx_runner import OnnxRunner, Prompts
from runtime.padding import pad
from runtime.sampler import (
    Row,
    SamplingParams,
    _by_row_most_likely_first,
    _draw_by_buckets,
    _draw_from_sorted_candidates,
    _sample_nucleus,
    make_generator,
    row_mass,
)
from server.config import Settings
from server.engine import scheduler as scheduler_module
from server.engine.engine import build_engine
from server.engine.request import Event, GenerationRequest, RequestDone
from server.engine.scheduler import Scheduler
from server.metrics import Metrics

INTENTS = ("holiday sale in paris", "summer hiking boots", "coffee shop opening")


# the runner's options: --no-mix (a `mixed` bundle's joiners prefill in a forward of their own),
# --no-spin (ORT's workers sleep between operators), --device-sampling (the sampler graph on the CPU too),
# --threads (ORT's intra-op threads), --attention-kernel (runtime/attention_kernel.py),
# --matmul-kernel (runtime/matmul_kernel.py)
RUNNER_OPTIONS: dict[str, Any] = {
    "mixed_prefill": True,
    "spinning": True,
    "device_sampling": "auto",
    "intra_op_threads": "auto",
    "attention_kernel": "auto",
    "matmul_kernel": "auto",
}


def load(bundle: Path, retain: bool = True) -> tuple[OnnxRunner, Tokenizer]:
    before, start = resident_mb(), time.perf_counter()
    runner = OnnxRunner(bundle, variant="int8", provider="cpu", **RUNNER_OPTIONS)
    made_s = time.perf_counter() - start
    if retain:  # as the server does, after the runner (runtime/allocator.py); --no-retain measures without it
        retain_freed_memory()
    print(
        f"{bundle}: kv_cache {runner.variant.kv_cache}, mixed prefill {runner.mixed_prefill}, "
        f"attention kernel {runner.attention_kernel}, matmul kernel {runner.matmul_kernel}, "
        f"the runner made in {made_s:.2f} s and resident in {resident_mb() - before:.0f} MB"
    )
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


def time_forwards(runner: OnnxRunner, counts: Counter[str], seconds: Counter[str]) -> None:
    """Times each of the runner's forwards into `counts` and `seconds`, a decode step's apart from
    a join step's (the mixed graph: the batch's step and the joiners' prefill), for `forwards`."""
    decode = timed("decode forward", counts, seconds, runner.forward)
    join = timed("join forward", counts, seconds, runner.forward)

    def split(*args: Any, **kwargs: Any) -> Any:
        mixed = len(args) > 4 and args[4] is not None or kwargs.get("prompts") is not None
        return (join if mixed else decode)(*args, **kwargs)

    runner.forward = split  # type: ignore[method-assign]


def forwards(counts: Counter[str], seconds: Counter[str], wall: float, steps: int) -> str:
    """Where `steps` steps over `wall` seconds went, from time_forwards' counts."""
    each = {name: seconds[name] / max(1, counts[name]) * 1e3 for name in ("decode forward", "join forward")}
    rest = (wall - seconds["decode forward"] - seconds["join forward"]) / max(1, steps) * 1e3
    return (
        f"decode forwards {counts['decode forward']} at {each['decode forward']:.2f} ms, join forwards "
        f"{counts['join forward']} at {each['join forward']:.2f} ms; the rest (sampling, the cache's writes, "
        f"the scheduler, idle waits) {rest:.2f} ms a step"
    )


def rebuilds(bundle: Path, lag: int, total: int, retain: bool, hold: bool | None) -> None:
    runner, tokenizer = load(bundle, retain)
    counts: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    scheduler_module.rebuild = timed("rebuild", counts, seconds, scheduler_module.rebuild)
    scheduler_module.write_in_place = timed("in_place", counts, seconds, scheduler_module.write_in_place)
    time_forwards(runner, counts, seconds)
    done: list[int] = []
    lengths = np.random.default_rng(0)
    metrics = Metrics("bench")
    scheduler = Scheduler(runner, tokenizer, metrics, max_batch_size=32)
    if hold is not None:
        scheduler.hold_joiners = hold
    print(f"  a lone joiner waits for company: {scheduler.hold_joiners}")

    def add(i: int) -> None:
        sink = lambda e: done.append(i) if isinstance(e, RequestDone) else None  # noqa: E731
        scheduler.add(request(runner, tokenizer, i, int(lengths.integers(30, 49)), sink))

    for sent in range(32):
        add(sent)
    sent, steps, pending = 32, 0, deque[int]()
    start = time.perf_counter()
    span: list[tuple[int, float]] = []  # per step: the cache's columns, the live rows' mean real tokens
    while len(done) < total:
        before = len(done)
        scheduler.step()
        steps += 1
        live = [i for i, s in enumerate(scheduler.rows) if s is not None]
        if live:
            span.append((scheduler.cache.columns, float(scheduler.cache.mask[live].sum(axis=1).mean())))
        pending.extend([steps + lag] * (len(done) - before))
        while pending and pending[0] <= steps and sent < total + 32:
            pending.popleft()
            add(sent)
            sent += 1
    wall = time.perf_counter() - start
    sample = metrics.registry.get_sample_value
    tokens = sample("promptgen_generated_tokens_total", {"model": "bench"}) or 0
    ttft = (sample("promptgen_time_to_first_token_seconds_sum", {"model": "bench"}) or 0) / max(
        1, sample("promptgen_time_to_first_token_seconds_count", {"model": "bench"}) or 0
    )
    print(f"lag {lag}: {tokens / wall:.0f} tokens/s, {steps} steps in {wall:.1f} s, mean TTFT {ttft * 1e3:.0f} ms")
    columns, real = np.mean(span, axis=0)
    layout = "ragged" if scheduler.cache.ragged else "left-padded"
    print(f"  cache ({layout}): {columns:.1f} columns per step for {real:.1f} real tokens per live row")
    for name in ("rebuild", "in_place"):
        print(f"  {name}: {counts[name]} calls, {seconds[name]:.2f} s")
    print(f"  {forwards(counts, seconds, wall, steps)}")


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
    logits = {scale: rng.normal(0, scale, (32, 7106)).astype(np.float32) / 0.8 for scale in (1.0, 2.5, 4.0)}
    rows = {
        "flat": rng.dirichlet(np.full(7106, 5.0), size=32).astype(np.float32),
        "peaked": rng.dirichlet(np.full(7106, 0.02), size=32).astype(np.float32),
        **{f"logits N(0, {s:g})": np.exp(z - z.max(axis=1, keepdims=True)) for s, z in logits.items()},
    }
    for name, probs in rows.items():
        top_p, u = np.full(32, 0.95), rng.random(32)
        mass = top_p * probs.sum(axis=1, dtype=np.float64)
        every = np.flatnonzero(probs >= 0)
        step = ms(lambda p=probs, t=top_p, v=u: _sample_nucleus(p, t, v))
        bucketed = ms(lambda p=probs, m=mass, v=u: _draw_by_buckets(p, m, v))
        flat = ms(lambda p=probs, e=every, m=mass, v=u: _draw_from_sorted_candidates(p, e, m, v))
        print(f"{name}: top-p step {step:.1f} ms; by buckets {bucketed:.1f} ms, one flat sort {flat:.1f} ms")
        if top_p_kernel.function() is not None:  # the C draw (runtime/top_p.c), and its scalar passes
            total = row_mass(probs)
            c = [ms(lambda p=probs, t=top_p, m=total, v=u: top_p_kernel.draw(p, t, m, v), 200)]
            os.environ["PROMPTGEN_TOP_P_PORTABLE"] = "1"
            c.append(ms(lambda p=probs, t=top_p, m=total, v=u: top_p_kernel.draw(p, t, m, v), 200))
            del os.environ["PROMPTGEN_TOP_P_PORTABLE"]
            wide = "AVX-512" if top_p_kernel.vectorized() else "scalar (no AVX-512 here)"
            print(f"  in C: {c[0]:.2f} ms ({wide}), {c[1]:.2f} ms scalar")
        print(f"  row sums: float64 {ms(lambda p=probs: p.sum(axis=1, dtype=np.float64)) * 1e3:.0f} us, "
              f"row_mass (float32) {ms(lambda p=probs: row_mass(p)) * 1e3:.0f} us")  # fmt: skip
    # The candidates' sort: np.lexsort against the int64 key (_by_row_most_likely_first, past
    # KEY_SORT_FROM tokens), on tokens of 32 rows given row by row.
    for size in (100, 1000, 5000):
        p = rng.random(size).astype(np.float32)
        row_of = np.sort(rng.integers(0, 32, size))
        lexsort = ms(lambda p=p, r=row_of: np.lexsort((-p, r)), 200) * 1e3
        keyed = ms(lambda p=p, r=row_of: _by_row_most_likely_first(r, p), 200) * 1e3
        print(f"sorting {size:,} tokens: np.lexsort {lexsort:.1f} us, by the sampler's rule {keyed:.1f} us")


def sampling(bundle: Path, steps: int, evict_mb: int) -> None:
    """The host sampler on `steps` recorded steps of 32 rows, timed on their first 1, 8 and 32
    rows. `evict_mb`: before each call, read that many MB (a GPT-2 small forward reads ~91 MB of
    weights), so that the sampler's code and data are as cold as after a forward."""
    runner, tokenizer = load(bundle)
    recorded: list[tuple[np.ndarray, list[Row], np.ndarray | None]] = []
    record = sampler_module.sample

    def recording(
        logits: np.ndarray,
        rows: list[Row],
        never: np.ndarray | None = None,
        logits_rows: np.ndarray | None = None,
        scratch: bool = False,
    ) -> np.ndarray:
        if len(recorded) < steps and len(rows) == 32:  # copied before the sampler may work in them
            state = [Row(r.params, r.generator, list(r.generated), list(r.banned), list(r.never)) for r in rows]
            recorded.append((logits.copy() if logits_rows is None else logits[logits_rows], state, never))
        return record(logits, rows, never, logits_rows, scratch)

    sampler_module.sample = recording
    scheduler = Scheduler(runner, tokenizer, Metrics("bench"), max_batch_size=32)
    sent = 0
    while len(recorded) < steps:
        while len(scheduler.active) + len(scheduler.waiting) < 32:  # a finished request's replacement arrives at once
            scheduler.add(request(runner, tokenizer, sent, 48, lambda e: None))
            sent += 1
        scheduler.step()
    sampler_module.sample = record
    warm = np.empty_like(recorded[0][0])
    evictor = np.ones(evict_mb * 2**20 // 4, np.float32)
    for rows in (1, 8, 32):
        best = np.inf
        for _ in range(3):
            total = 0.0
            for k, (logits, state, never) in enumerate(recorded):
                warm[...] = logits  # as the forward leaves them: just written, in cache
                fresh = [
                    Row(r.params, make_generator(k, i), r.generated, r.banned, r.never) for i, r in enumerate(state)
                ]
                if evict_mb:  # the rows exist before a forward; its logits are written at its end
                    evictor.sum()
                    warm[...] = logits
                start = time.perf_counter()
                record(warm[:rows], fresh[:rows], never, scratch=True)  # in the forward's logits, as Sampler.run
                total += time.perf_counter() - start
            best = min(best, total / len(recorded))
        after = f", each after reading {evict_mb} MB" if evict_mb else ""
        print(f"{rows} rows: {best * 1e3:.3f} ms per call over {len(recorded)} recorded steps{after}")


def sideload(bundle: Path, ms: float, rate: float, seconds: float) -> None:
    runner, tokenizer = load(bundle)
    block = memoryview(os.urandom(1 << 16))

    def work(kind: str, stop: threading.Event, busy: list[float]) -> None:
        due = time.perf_counter()
        while not stop.is_set():
            due += 1 / rate
            start = time.perf_counter()
            while time.perf_counter() < start + ms / 1e3:
                if kind == "python":
                    sum(range(200))  # bytecode: the GIL is held
                else:
                    hashlib.sha256(block).digest()  # hashlib releases the GIL over 2 KB
            busy[0] += time.perf_counter() - start
            time.sleep(max(0.0, due - time.perf_counter()))

    def closed_loop(duration: float) -> float:
        scheduler = Scheduler(runner, tokenizer, Metrics("bench"), max_batch_size=32)
        sent = tokens = 0
        start = time.perf_counter()
        while time.perf_counter() - start < duration:
            while len(scheduler.active) + len(scheduler.waiting) < 32:
                scheduler.add(request(runner, tokenizer, sent, 48, lambda e: None))
                sent += 1
            scheduler.step()
            tokens += sum(s is not None for s in scheduler.rows)
        return tokens / (time.perf_counter() - start)

    closed_loop(2)  # warm-up
    for kind in ("alone", "python", "hashing") * 2:
        stop, busy = threading.Event(), [0.0]
        side = threading.Thread(target=work, args=(kind, stop, busy), daemon=True)
        if kind != "alone":
            side.start()
        start = time.perf_counter()
        tokens_per_s = closed_loop(seconds)
        share = busy[0] / (time.perf_counter() - start)
        stop.set()
        if kind != "alone":
            side.join()
        print(f"{kind}: {tokens_per_s:,.0f} tokens/s, the side thread busy {share:.0%} of the time")


def unloaded(bundle: Path, requests: int, new_tokens: int) -> None:
    """One request at a time through the engine built as the server builds it (`build_engine`,
    the runner options above): per request, ms per decode step after its prefill and ORT's share;
    then one JSON line with the medians (what `make bench` reads)."""
    manifest = load_manifest(bundle)
    tokenizer = Tokenizer.from_file(str(bundle / manifest.tokenizer_file))
    settings = Settings(
        bundle=bundle,
        variant="int8",
        provider="cpu",
        mixed_prefill=RUNNER_OPTIONS["mixed_prefill"],
        ort_spinning=RUNNER_OPTIONS["spinning"],
        device_sampling=RUNNER_OPTIONS["device_sampling"],
        intra_op_threads=RUNNER_OPTIONS["intra_op_threads"],
        attention_kernel=RUNNER_OPTIONS["attention_kernel"],
        matmul_kernel=RUNNER_OPTIONS["matmul_kernel"],
    )
    scheduler = build_engine(settings, manifest, tokenizer, Metrics("unloaded")).scheduler
    runner = scheduler.runner
    print(f"{bundle}: attention kernel {runner.attention_kernel}, matmul kernel {runner.matmul_kernel}")
    steps_ms: list[float] = []
    forward_ms: list[float] = []
    for i in range(requests + 1):  # the first warms up
        events: list[Event] = []
        scheduler.add(request(runner, tokenizer, i, new_tokens, events.append))
        scheduler.step()  # its prefill
        ort, steps, start = 0.0, 0, time.perf_counter()
        while not any(isinstance(e, RequestDone) for e in events):
            scheduler.step()
            ort, steps = ort + runner.last_run_s, steps + 1
        wall = time.perf_counter() - start
        if i and steps:
            steps_ms.append(1000 * wall / steps)
            forward_ms.append(1000 * ort / steps)
            print(f"request {i}: {steps_ms[-1]:.2f} ms per decode step over {steps}, ORT {100 * ort / wall:.0f}%")
    figures = {"requests": len(steps_ms), "step_ms": float(np.median(steps_ms)),
               "forward_ms": float(np.median(forward_ms)), "intra_op_threads": runner.intra_op_threads}  # fmt: skip
    print(json.dumps(figures))


def openloop(bundle: Path, rates: list[float], seconds: float, warmup_s: float) -> None:
    runner, tokenizer = load(bundle)
    counts: Counter[str] = Counter()
    spent: Counter[str] = Counter()
    scheduler_module.rebuild = timed("rebuild", counts, spent, scheduler_module.rebuild)
    scheduler_module.write_in_place = timed("in_place", counts, spent, scheduler_module.write_in_place)
    time_forwards(runner, counts, spent)

    def run(arrivals: np.ndarray) -> tuple[np.ndarray, float, int]:
        """Latency (s) of each request, from its arrival on the run's clock to its last token;
        the mean live rows per step; the steps."""
        scheduler = Scheduler(runner, tokenizer, Metrics("bench"), max_batch_size=32)
        finished = np.full(len(arrivals), np.nan)
        start = time.perf_counter()

        def sink(i: int) -> Callable[[Event], None]:
            def on_event(event: Event) -> None:
                if isinstance(event, RequestDone):
                    finished[i] = time.perf_counter() - start

            return on_event

        due, steps, rows = 0, 0, 0
        while due < len(arrivals) or scheduler.has_work():
            now = time.perf_counter() - start
            while due < len(arrivals) and arrivals[due] <= now:
                scheduler.add(request(runner, tokenizer, due, 48, sink(due)))
                due += 1
            if scheduler.has_work():
                scheduler.step()
                steps += 1
                rows += sum(s is not None for s in scheduler.rows)
            elif due < len(arrivals):
                time.sleep(max(0.0, arrivals[due] - (time.perf_counter() - start)))
        return finished - arrivals, rows / max(1, steps), steps

    run(np.zeros(4))  # warm-up
    unloaded_p50 = float(np.median(run(np.arange(5) * 0.6)[0]))  # 0.6 s apart: one at a time
    print(f"unloaded (one request at a time): p50 {unloaded_p50 * 1e3:.0f} ms")
    for rate in rates:
        counts.clear()
        spent.clear()
        gaps = np.random.default_rng(1).exponential(1 / rate, int(rate * seconds * 2) + 10)
        arrivals = np.cumsum(gaps)
        arrivals = arrivals[arrivals < seconds]
        began = time.perf_counter()
        latency, mean_rows, steps = run(arrivals)
        wall = time.perf_counter() - began
        kept = latency[arrivals >= warmup_s] * 1e3
        p50, p90, p99 = np.percentile(kept, [50, 90, 99])
        print(
            f"rate {rate:g}/s: {kept.size} requests, p50 / p90 / p99 {p50:.0f} / {p90:.0f} / {p99:.0f} ms, "
            f"p99 {p99 / (unloaded_p50 * 1e3):.1f}x the unloaded p50; {mean_rows:.1f} live rows per step over "
            f"{steps} steps; {counts['rebuild']} rebuilds ({spent['rebuild'] * 1e3:.0f} ms), "
            f"{counts['in_place']} in-place joins ({spent['in_place'] * 1e3:.0f} ms)"
        )
        print(f"  {forwards(counts, spent, wall, steps)}")


def freeslots(bundle: Path) -> None:
    runner, _ = load(bundle)
    if not runner.ragged_rows:
        raise SystemExit(f"{bundle}: free slots are rows of length 0 only in a ragged cache")

    def decode_step(batch: int, live_rows: int) -> Callable[[], Any]:
        """A cache of `batch` rows (a 25-token prompt and 16 steps each), then one decode step's
        inputs where rows past `live_rows` are free: the in-place step rewrites the same column
        at every call, so it can be timed again and again."""
        prompts = np.random.default_rng(batch).integers(0, runner.vocab_size, (batch, 25)).tolist()
        input_ids, mask, positions = pad(prompts, runner.eos_token_id)
        _, past = runner.forward(input_ids, mask, positions, runner.empty_past(batch))
        cache, every_row = BatchCache(past, mask, ragged=True), np.ones(batch, bool)
        tokens = np.full((batch, 1), runner.eos_token_id, np.int64)
        for _ in range(16):
            step_mask = cache.step_mask(every_row)
            _, present = runner.forward(tokens, step_mask, cache.positions(), cache.past)
            cache.advance(present, step_mask, every_row)
        live = np.arange(batch) < live_rows
        cache.advance(cache.past, cache.mask, live)  # the rows past `live_rows` finished: length 0
        step_mask, positions = cache.step_mask(live), cache.positions()
        return lambda: runner.forward(tokens, step_mask, positions, cache.past)

    shapes = [(8, 8), (16, 8), (16, 16), (32, 16), (32, 32)]
    best = interleaved_best({f"{b} rows, {live} live": decode_step(b, live) for b, live in shapes}, 15)
    for name, ms in best.items():
        print(f"{name}: {ms:.2f} ms per decode step")


def mixed(bundle: Path, prompts: int, prompt_len: int) -> None:
    """One join step's forwards (INT8): the batch's decode step and the joiners' prefill apart
    (two forwards, what a bundle without a mixed graph does) against one mixed forward; and the
    decode step through the mixed graph beside a one-token prompt (one graph for every step); and
    a decode step right after a mixed one against right after another decode step (each session
    holds its own prepacked weights, so a mixed step pushes the decode session's out of cache)."""
    runner, _ = load(bundle)
    if not runner.mixed_prefill:
        raise SystemExit(f"{bundle} has no mixed graph for its int8 variant")
    rng = np.random.default_rng(0)
    joining = pad(rng.integers(0, runner.vocab_size, (prompts, prompt_len)).tolist(), runner.eos_token_id, right=True)
    token = np.ones((1, 1), np.int64)
    for batch in (1, 8, 32):
        step = ragged_step(runner, rng, batch)
        forwards = {
            "decode": lambda s=step: runner.forward(*s),
            "prefill": lambda: runner.forward(*joining, runner.empty_past(prompts)),
            "mixed": lambda s=step: runner.forward(*s, Prompts(*joining, runner.empty_past(prompts))),
            "beside": lambda s=step: runner.forward(*s, Prompts(token, token, token - 1, runner.empty_past(1))),
        }
        ms = interleaved_best(forwards, 15)
        after_decode = interleaved_best({"decode": forwards["decode"]}, 15)["decode"]
        after_mixed = interleaved_best({"mixed": forwards["mixed"], "decode": forwards["decode"]}, 15)["decode"]
        print(
            f"batch {batch} + {prompts} prompts of {prompt_len}: decode {ms['decode']:.2f} ms + prefill "
            f"{ms['prefill']:.2f} ms = {ms['decode'] + ms['prefill']:.2f} ms apart, {ms['mixed']:.2f} ms mixed; "
            f"the decode step through the mixed graph beside a one-token prompt {ms['beside']:.2f} ms; "
            f"a decode step after a decode step {after_decode:.2f} ms, after a mixed one {after_mixed:.2f} ms"
        )


def ragged_step(
    runner: OnnxRunner, rng: np.random.Generator, batch: int, columns: tuple[int, int] = (20, 60)
) -> tuple[Any, ...]:
    """The inputs of a decode step for `batch` ragged rows of `columns` (low, high: 20-59 by
    default) prefilled tokens. Each run of it rewrites the same new column of each row, so
    repeating it leaves the cache as it was."""
    rows = [rng.integers(0, runner.vocab_size, int(n)).tolist() for n in rng.integers(*columns, batch)]
    input_ids, mask, positions = pad(rows, runner.eos_token_id, right=True)
    _, past = runner.forward(input_ids, mask, positions, runner.empty_past(batch))
    cache = BatchCache(past, mask, True)
    return np.full((batch, 1), 5), cache.step_mask(np.ones(batch, bool)), cache.positions(), cache.past


def forward(bundle: Path, batches: list[int], columns: tuple[int, int], repeats: int) -> None:
    """The mean time of a decode forward of `batch` ragged rows, for each batch: see the module
    docstring."""
    runner, _ = load(bundle)
    rng = np.random.default_rng(0)
    for batch in batches:
        step = ragged_step(runner, rng, batch, columns)
        for _ in range(5):
            runner.forward(*step)
        start = time.perf_counter()
        for _ in range(repeats):
            runner.forward(*step)
        ms = 1000 * (time.perf_counter() - start) / repeats
        print(f"batch {batch}, rows of {columns[0]}-{columns[1] - 1} columns: {ms:.2f} ms a forward")


def profile(bundle: Path, variant: str, batch: int, prompt_len: int, steps: int, columns: tuple[int, int]) -> None:
    """ONNX Runtime's own profile of `variant` (int8: its cache in int8; fp32: in fp32) for a
    decode step of `batch` ragged rows and the same step with a `prompt_len`-token prompt
    prefilled in it (the mixed graph), run in turn: ms per step by node, a node's copies in every
    layer added up (`blocks.#`). Profiling adds its own overhead: compare the two columns, not
    these times with unprofiled ones."""
    import re
    import tempfile
    from collections import defaultdict

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        options = {**RUNNER_OPTIONS, "profile_prefix": f"{tmp}/ort"}
        start = time.perf_counter()
        runner = OnnxRunner(bundle, variant=variant, provider="cpu", **options)
        made_s = time.perf_counter() - start
        print(f"{bundle} {variant}: matmul kernel {runner.matmul_kernel}, the runner made in {made_s:.2f} s")
        if not runner.mixed_prefill:
            raise SystemExit(f"{bundle} has no mixed graph for its {variant} variant")
        step = ragged_step(runner, rng, batch, columns)
        prompt = pad([rng.integers(0, runner.vocab_size, prompt_len).tolist()], runner.eos_token_id, right=True)
        for _ in range(steps + 5):  # the first 5 of each are left out: allocations, first touches
            runner.forward(*step)
            runner.forward(*step, Prompts(*prompt, runner.empty_past(1)))
        columns = {}
        for name, session in (("decode", runner.session), ("mixed", runner.mixed_session)):
            assert session is not None
            events = json.loads(Path(session.end_profiling()).read_text())
            first = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][5]["ts"]
            by_node: dict[str, float] = defaultdict(float)
            for e in events:
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first:
                    by_node[re.sub(r"\d+", "#", e["name"].removesuffix("_kernel_time"))] += e["dur"] / 1e3 / steps
            columns[name] = by_node
    print(f"{variant}: {batch} rows, and a prompt of {prompt_len} in the mixed step: ms per step, {steps} steps each")
    print(f"  {'all kernels':44s} {sum(columns['decode'].values()):7.2f} {sum(columns['mixed'].values()):7.2f}")
    nodes = sorted(  # the costliest in either step first: a node of one step only shows too
        set(columns["decode"]) | set(columns["mixed"]), key=lambda n: -max(c.get(n, 0.0) for c in columns.values())
    )
    for node in nodes[:16]:
        print(f"  {node[:44]:44s} {columns['decode'].get(node, 0.0):7.2f} {columns['mixed'].get(node, 0.0):7.2f}")


def interleaved_best(forwards: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Each call's fastest time in ms, the calls taken in turn (after one warm-up each), so that
    the machine's drift over the run falls on all of them alike."""
    best = dict.fromkeys(forwards, float("inf"))
    for repeat in range(repeats + 1):
        for name, forward in forwards.items():
            start = time.perf_counter()
            forward()
            if repeat:
                best[name] = min(best[name], 1e3 * (time.perf_counter() - start))
    return best


def kernels() -> None:
    """The kernels under a GPT-2 small decode step, alone (needs `onnx`): ORT's dynamic INT8
    MatMul on one MLP weight by batch, GroupQueryAttention over a batch of 32 by the cache's
    dtype, and the host's read bandwidth."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def session(graph: Any, ours: bool = False) -> ort.InferenceSession:
        """`ours`: our int8 attention kernel in place of GroupQueryAttention (runtime/attention_kernel.py)."""
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        model = helper.make_model(graph, opset_imports=opsets)
        if ours:
            built = custom_ops.library()
            if built is None or not attention_kernel.with_kernel(model):
                raise SystemExit("our kernels are not built: python -m runtime.custom_ops --build")
            options.register_custom_ops_library(str(built))
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    k, n = 768, 3072
    weights = [numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w"),
               numpy_helper.from_array(np.full(n, 0.01, np.float32), "s"),
               numpy_helper.from_array(np.zeros(n, np.int8), "z")]  # fmt: skip
    node = helper.make_node("DynamicQuantizeMatMul", ["a", "w", "s", "z"], ["y"], domain="com.microsoft")
    io = ([helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", k])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])])  # fmt: skip
    matmul = session(helper.make_graph([node], "dqmm", *io, initializer=weights))
    for m in (1, 8, 32):
        a = rng.normal(size=(m, k)).astype(np.float32)
        ms = 1000 * best_seconds(lambda a=a: matmul.run(None, {"a": a}), 20)
        print(f"DynamicQuantizeMatMul {m} x {k} x {n}: {ms:.3f} ms, {2 * m * k * n / ms / 1e6:.0f} GOP/s")
    for cache in ("fp32", "fp16", "int8"):
        ms = 1000 * attention_seconds(cache, session, rng)
        print(f"GroupQueryAttention, cache {cache}: {ms:.2f} ms for 12 layers x 32 rows of 20-80 columns")
    for _ in range(2):  # in turn: ORT's kernel against ours on the same int8 cache
        theirs = 1000 * attention_seconds("int8", session, rng)
        ours = 1000 * attention_seconds("int8", lambda graph: session(graph, ours=True), rng)
        print(f"int8 cache, 12 layers x 32 rows: GroupQueryAttention {theirs:.2f} ms, our AttentionInt8 {ours:.2f} ms")
    for chunk in (8, 16):
        ms = 1000 * attention_seconds("fp32", session, rng, chunk)
        print(f"GroupQueryAttention, cache fp32, queries padded to {chunk} (query_seqlens 1): {ms:.2f} ms")
    # Reading the first 49 columns of 4,608 chunks [C, 64] (12 layers x 384 rows x heads): the
    # columns a row holds are contiguous, the gap after them breaks the prefetcher's stream.
    for columns in (49, 50, 52, 64, 128):
        chunks = rng.random((4608, columns, 64)).astype(np.float32)
        used, out = chunks[:, :49, :], np.empty((4608, 64), np.float32)
        seconds = best_seconds(lambda used=used, out=out: np.add.reduce(used, axis=1, out=out), 7)
        print(f"numpy, 49 of {columns} columns per chunk: {used.nbytes / seconds / 1e9:.1f} GB/s")
    block = np.ones(512 * 2**20 // 8)
    seconds = best_seconds(block.sum, 5)
    print(f"read bandwidth (one thread, numpy sum of 512 MB): {block.nbytes / seconds / 1e9:.1f} GB/s")


def attention_seconds(cache: str, session: Callable[[Any], Any], rng: np.random.Generator, chunk: int = 1) -> float:
    """GroupQueryAttention as a GPT-2 small decode step runs it: 12 layers, each with its own cache
    buffer (32 rows of GPT-2 small do not fit the CPU's caches), 32 rows of 20-80 columns in 128
    (a ragged batch), past and present bound to one buffer (written in place). The cache in
    fp32, fp16 (the activations too: the kernel's half type is all or nothing), or int8 with
    per-channel scales and a bias of zeros (export/kv_int8.py; the kernel `session` may swap in
    ours). `chunk` > 1: each row's query is a right-padded chunk of
    that many rows with one real token (the op's `query_seqlens` input), as a decode row would be in
    a step shared with a prompt of that length."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    b, heads, dim, capacity, layers = 32, 12, 64, 128, 12
    dtype, np_dtype = (TensorProto.FLOAT16, np.float16) if cache == "fp16" else (TensorProto.FLOAT, np.float32)
    cache_type = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "int8": TensorProto.INT8}[cache]
    quantized = cache == "int8"

    def inputs_of(layer: int) -> list[str]:
        names = ["qkv", "", "", f"k{layer}", f"v{layer}", "seqlens", "total"] + [""] * 10
        if quantized:
            names[10] = "bias"  # all zeros, as a ragged decode step's: the int8 graphs always have it
            names[12:14] = ["scale", "scale"]  # k_scale, v_scale
        if chunk > 1:
            names[16] = "query_seqlens"
        while not names[-1]:
            names.pop()
        return names

    attributes = dict(kv_cache_bit_width=8, k_quant_type="PER_CHANNEL", v_quant_type="PER_CHANNEL")
    nodes = [
        helper.make_node(
            "GroupQueryAttention",
            inputs_of(i),
            [f"out{i}", f"k{i}_out", f"v{i}_out"],
            domain="com.microsoft",
            num_heads=heads,
            kv_num_heads=heads,
            **(attributes if quantized else {}),
        )
        for i in range(layers)
    ]
    ports = [f"{kv}{i}" for i in range(layers) for kv in "kv"]
    inputs = [
        helper.make_tensor_value_info("qkv", dtype, [b, chunk, 3 * heads * dim]),
        helper.make_tensor_value_info("seqlens", TensorProto.INT32, [b]),
        helper.make_tensor_value_info("total", TensorProto.INT32, [1]),
        *[helper.make_tensor_value_info(port, cache_type, [b, heads, capacity, dim]) for port in ports],
    ]
    if chunk > 1:
        inputs.append(helper.make_tensor_value_info("query_seqlens", TensorProto.INT32, [b]))
    if quantized:
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, [b, 1, chunk, None]))
    outputs = [helper.make_tensor_value_info(f"out{i}", dtype, None) for i in range(layers)]
    outputs += [helper.make_tensor_value_info(f"{port}_out", cache_type, None) for port in ports]
    scale = [numpy_helper.from_array(np.full((1, heads, 1, dim), 0.02, np.float32), "scale")] if quantized else []
    attention = session(helper.make_graph(nodes, "gqa", inputs, outputs, initializer=scale))
    lengths = np.random.default_rng(1).integers(20, 81, b)  # the same rows for every dtype
    binding = attention.io_binding()
    binding.bind_cpu_input("qkv", rng.random((b, chunk, 3 * heads * dim)).astype(np_dtype))
    if chunk > 1:
        binding.bind_cpu_input("query_seqlens", np.ones(b, np.int32))
    binding.bind_cpu_input("seqlens", (lengths - 1).astype(np.int32))
    binding.bind_cpu_input("total", np.array([lengths.max()], np.int32))
    if quantized:
        binding.bind_cpu_input("bias", np.zeros((b, 1, chunk, lengths.max()), np.float32))
    buffers = []
    for port in ports:
        values = (
            rng.integers(-100, 100, (b, heads, capacity, dim)) if quantized else rng.random((b, heads, capacity, dim))
        )
        buffers.append(ort.OrtValue.ortvalue_from_numpy(values.astype(np.int8 if quantized else np_dtype)))
        binding.bind_ortvalue_input(port, buffers[-1])
        binding.bind_ortvalue_output(f"{port}_out", buffers[-1])
    for i in range(layers):
        binding.bind_output(f"out{i}")
    return best_seconds(lambda: attention.run_with_iobinding(binding), 20)


def weight_kernels(rows: list[int], dynamic_only: bool) -> None:
    """ORT's two INT8 weight kernels as export/variants.py makes them, on 48 MatMuls shaped like
    GPT-2 small's MLP (768 x 3,072 and back; 113 MB of int8 weights, more than the caches hold):
    `dynamic` (DynamicQuantizeMatMul, the INT8 variant's) against `blockwise` (MatMulNBits, 8-bit
    weights in blocks, int8 activations: the pretrained student's), and `ours` (the dynamic graph
    with our MatMulInt8, runtime/matmul_kernel.py, where the library is built), by rows, best of
    15 in turn."""
    import tempfile

    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper, save

    from export.variants import BLOCKWISE, DYNAMIC, to_int8

    def spinning() -> Any:
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        return options

    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for i in range(48):
        k, n = (768, 3072) if i % 2 == 0 else (3072, 768)
        weights.append(numpy_helper.from_array((0.02 * rng.standard_normal((k, n))).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"], name=f"mm{i}"))
        x = f"y{i}"
    io = ([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 768])],
          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["m", 768])])  # fmt: skip
    graph = helper.make_graph(nodes, "chain", *io, initializer=weights)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "chain.onnx"
        save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(fp32))
        sessions = {}
        for scheme in (DYNAMIC,) if dynamic_only else (DYNAMIC, BLOCKWISE):
            path = to_int8(fp32, Path(tmp) / f"{scheme}.onnx", scheme)
            sessions[scheme] = ort.InferenceSession(str(path), spinning(), providers=["CPUExecutionProvider"])
            if scheme == DYNAMIC and (built := custom_ops.library()) is not None:
                options = spinning()
                options.register_custom_ops_library(str(built))
                rewrites = [matmul_kernel.with_kernel]
                sessions["ours"], _ = custom_ops.kernel_session(path, options, ["CPUExecutionProvider"], rewrites)
        for m in rows:
            a = rng.normal(size=(m, 768)).astype(np.float32)
            runs = {name: lambda s=s, a=a: s.run(None, {"x": a}) for name, s in sessions.items()}
            ms = interleaved_best(runs, 15)
            print(f"{m:2d} rows: " + ", ".join(f"{name} {t:.2f} ms" for name, t in ms.items()))


def skip_layer_norm(model: Any) -> int:
    """Rewrites each LayerNormalization fed by a residual Add (no constant input) into ORT's
    SkipLayerNormalization, in place, where the Add was (its sum, output 3, feeds the Add's other
    consumers, some of which come before the LayerNorm). Returns how many."""
    from onnx import helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    place = {id(node): i for i, node in enumerate(graph.node)}
    constants = {init.name for init in graph.initializer}
    users: dict[str, int] = Counter(name for node in graph.node for name in node.input)
    fused: dict[int, Any] = {}
    gone: set[int] = set()
    for norm in graph.node:
        add = producer.get(norm.input[0]) if norm.op_type == "LayerNormalization" else None
        if add is None or add.op_type != "Add" or any(name in constants for name in add.input):
            continue
        if any(n not in constants and place[id(producer[n])] > place[id(add)] for n in norm.input[1:3]):
            continue  # gamma or beta computed after the Add: the fused node could not stand there
        epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        outputs = [norm.output[0], "", "", add.output[0]] if users[add.output[0]] > 1 else [norm.output[0]]
        inputs = [*add.input, *norm.input[1:3]]
        fused[id(add)] = helper.make_node(
            "SkipLayerNormalization", inputs, outputs, name=f"{norm.name}_skip", domain="com.microsoft", epsilon=epsilon
        )
        gone.add(id(norm))
    nodes = [fused.get(id(node), node) for node in graph.node if id(node) not in gone]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(fused)


def skipnorm(bundle: Path) -> None:
    """The bundle's INT8 graph against a copy with its residual Add + LayerNorm pairs fused into
    SkipLayerNormalization (skip_layer_norm): one decode step at batch 1, 8 and 32, best of 15
    in turn. Tried for bench/engine.md, step 12, and not kept."""
    import shutil
    import tempfile

    import onnx

    runner, _ = load(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "bundle"
        shutil.copytree(bundle, copy)
        graph = onnx.load(str(copy / runner.variant.file))
        print(f"fused {skip_layer_norm(graph)} LayerNorms")
        onnx.checker.check_model(graph)
        onnx.save(graph, str(copy / runner.variant.file))  # the manifest's hash is the source's: checked there
        options = {**RUNNER_OPTIONS, "mixed_prefill": False}
        fused = OnnxRunner(copy, variant="int8", provider="cpu", manifest=runner.manifest, **options)
        rng = np.random.default_rng(0)
        for batch in (1, 8, 32):
            steps = {}
            for name, r in (("plain", runner), ("fused", fused)):
                rows = [rng.integers(0, r.vocab_size, int(n)).tolist() for n in rng.integers(20, 60, batch)]
                input_ids, mask, positions = pad(rows, r.eos_token_id, right=True)
                _, past = r.forward(input_ids, mask, positions, r.empty_past(batch))
                cache = BatchCache(past, mask, True)
                step = (np.full((batch, 1), 5), cache.step_mask(np.ones(batch, bool)), cache.positions(), cache.past)
                steps[name] = lambda r=r, step=step: r.forward(*step)
            ms = interleaved_best(steps, 15)
            print(f"batch {batch}: decode step {ms['plain']:.2f} ms plain, {ms['fused']:.2f} ms fused")


def resident_mb() -> float:
    """This process's resident memory (VmRSS), MB."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def threads(text: str) -> int | str:
    """--threads: `auto` or a count (0: ORT's default)."""
    if text == "auto":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"auto or a number of threads, not {text!r}")
    return int(text)


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
    holding = r.add_mutually_exclusive_group()
    holding.add_argument("--hold", dest="hold", action="store_true", default=None, help="hold lone joiners (_hold)")
    holding.add_argument("--no-hold", dest="hold", action="store_false", help="admit at once")
    u = sub.add_parser("unloaded")
    u.add_argument("bundle", type=Path)
    u.add_argument("--requests", type=int, default=3)
    u.add_argument("--new-tokens", type=int, default=48)
    sub.add_parser("kernels")
    b = sub.add_parser("burst")
    b.add_argument("bundle", type=Path)
    b.add_argument("--budgets", type=int, nargs="+", default=[0, 64, 128, 256])
    sub.add_parser("topp")
    sl = sub.add_parser("sideload")
    sl.add_argument("bundle", type=Path)
    sl.add_argument("--ms", type=float, default=1.2, help="each chunk of side work, ms")
    sl.add_argument("--rate", type=float, default=210, help="chunks per second")
    sl.add_argument("--seconds", type=float, default=8)
    sa = sub.add_parser("sampling")
    sa.add_argument("bundle", type=Path)
    sa.add_argument("--steps", type=int, default=200)
    sa.add_argument("--evict-mb", type=int, default=0, help="read this many MB before each call (a cold cache)")
    w = sub.add_parser("weights")
    w.add_argument("--rows", type=int, nargs="+", default=[1, 8, 25, 32])
    w.add_argument("--dynamic-only", action="store_true", help="time DynamicQuantizeMatMul alone")
    sk = sub.add_parser("skipnorm")
    sk.add_argument("bundle", type=Path)
    pr = sub.add_parser("profile")
    pr.add_argument("bundle", type=Path)
    pr.add_argument("--variant", choices=("int8", "fp32"), default="int8")
    pr.add_argument("--batch", type=int, default=32)
    pr.add_argument("--prompt-len", type=int, default=13)
    pr.add_argument("--steps", type=int, default=30)
    fw = sub.add_parser("forward")
    fw.add_argument("bundle", type=Path)
    fw.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    fw.add_argument("--repeats", type=int, default=600)
    for command in (pr, fw):
        command.add_argument(
            "--columns", type=int, nargs=2, default=(20, 60), metavar=("LO", "HI"), help="rows' lengths in [LO, HI)"
        )
    m = sub.add_parser("mixed")
    m.add_argument("bundle", type=Path)
    m.add_argument("--prompts", type=int, default=4)
    m.add_argument("--prompt-len", type=int, default=25)
    o = sub.add_parser("openloop")
    o.add_argument("bundle", type=Path)
    o.add_argument("--rates", type=float, nargs="+", default=[4, 8, 16], help="arrivals per second")
    o.add_argument("--seconds", type=float, default=20, help="arrivals over this long, per rate")
    o.add_argument("--warmup-s", type=float, default=2, help="leave out requests due in the first S seconds")
    f = sub.add_parser("freeslots")
    f.add_argument("bundle", type=Path)
    for command in (r, u, b, o, m, pr, fw):
        command.add_argument(
            "--attention-kernel", choices=("auto", "on", "off"), default="auto", help="our int8 attention kernel"
        )
        command.add_argument(
            "--matmul-kernel", choices=("auto", "on", "off"), default="auto", help="our INT8 weight MatMul"
        )
    for command in (r, u, b, o):
        command.add_argument("--no-mix", dest="mix", action="store_false", help="joiners prefill on their own")
        command.add_argument("--no-spin", dest="spin", action="store_false", help="ORT's workers sleep between ops")
        command.add_argument(
            "--device-sampling", choices=("auto", "on", "off"), default="auto", help="the runner's sampler graph"
        )
        command.add_argument("--threads", type=threads, default="auto", help="ORT's intra-op threads: auto or N")
    args = parser.parse_args()
    RUNNER_OPTIONS.update(
        mixed_prefill=getattr(args, "mix", True),
        spinning=getattr(args, "spin", True),
        device_sampling=getattr(args, "device_sampling", "auto"),
        intra_op_threads=getattr(args, "threads", "auto"),
        attention_kernel=getattr(args, "attention_kernel", "auto"),
        matmul_kernel=getattr(args, "matmul_kernel", "auto"),
    )
    print(f"load average at start: {load_average()}")
    if args.command == "rebuilds":
        rebuilds(args.bundle, args.lag, args.requests, args.retain, args.hold)
    elif args.command == "unloaded":
        unloaded(args.bundle, args.requests, args.new_tokens)
    elif args.command == "kernels":
        kernels()
    elif args.command == "mixed":
        mixed(args.bundle, args.prompts, args.prompt_len)
    elif args.command == "profile":
        profile(args.bundle, args.variant, args.batch, args.prompt_len, args.steps, tuple(args.columns))
    elif args.command == "forward":
        forward(args.bundle, args.batches, tuple(args.columns), args.repeats)
    elif args.command == "weights":
        weight_kernels(args.rows, args.dynamic_only)
    elif args.command == "skipnorm":
        skipnorm(args.bundle)
    elif args.command == "sideload":
        sideload(args.bundle, args.ms, args.rate, args.seconds)
    elif args.command == "sampling":
        sampling(args.bundle, args.steps, args.evict_mb)
    elif args.command == "freeslots":
        freeslots(args.bundle)
    elif args.command == "openloop":
        openloop(args.bundle, args.rates, args.seconds, args.warmup_s)
    elif args.command == "burst":
        burst(args.bundle, args.budgets)
    else:
        topp()
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
