"""`python -m loadtest bench`: every server side by side on the same checkpoint, one at a time,
written to bench/RESULTS.md (loadtest/results.py) with the JSON and latency-vs-load PNGs beside it.

For each model (tiny default student, GPT-2 small) and each system (the naive transformers
server, CTranslate2 behind the same wrapper, ours with batching off and with continuous
batching, INT8 and FP32), one server (ours: its HTTP and engine processes) owns the cores while
the load generator drives it: unloaded (one request at a time), saturation (closed loop), then open-loop Poisson loads
at fractions of that saturation. CTranslate2 is also timed in-process at static batches, and
the machine's roofline is measured first. Bounded: every phase has a duration, a request count
and a per-request timeout.

The peers get their best thread count, not a default: on a 2-core machine CTranslate2 on two
threads served one request at a time at a fifth of its one-thread speed (bench/engine.md, step
18). So each peer server first runs a short closed loop at one thread and at one per core, and
is measured at the faster; CTranslate2 in-process is timed at both per batch and the faster is
kept. Ours runs at its own default (`intra_op_threads=auto`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtest import roofline
from loadtest.mix import default_mix
from loadtest.models import BenchModel, prepare
from loadtest.report import write_json
from loadtest.results import SYSTEM_KEYS, write_results
from loadtest.run import Load, UsageError, run_load

# One request shape for every system: a 20-word t2i prompt with a 48-token budget, the eight
# default intents in turn (a random-init model always spends the whole budget).
BENCH_TASK, BENCH_WORDS, BENCH_BUDGET = "t2i_prompt", 20, 48


@dataclass
class Phases:
    unloaded_requests: int
    unloaded_s: float  # at most this long: a slow baseline answers fewer
    saturation_s: float
    open_s: float
    warmup_s: float
    fractions: tuple[float, ...]  # open-loop loads, as fractions of the measured saturation
    static_batches: tuple[int, ...]  # CTranslate2 in-process
    calibrate_s: float  # each thread count's closed loop, for the peers (best_threads)


FULL = Phases(unloaded_requests=40, unloaded_s=15.0, saturation_s=15.0, open_s=12.0, warmup_s=3.0,
              fractions=(0.25, 0.5, 1.0), static_batches=(1, 16, 32), calibrate_s=5.0)  # fmt: skip
QUICK = Phases(unloaded_requests=3, unloaded_s=15.0, saturation_s=3.0, open_s=3.0, warmup_s=0.5, fractions=(0.5,),
               static_batches=(1, 4), calibrate_s=1.0)  # fmt: skip


@dataclass
class System:
    key: str
    label: str
    command: list[str]  # without --port
    streams: bool  # ours streams (TTFT); the baselines answer whole
    concurrency: int  # clients that saturate it
    threads_flag: str | None = None  # a peer's thread-count flag: measured at its best (best_threads)
    figures: dict[str, Any] = field(default_factory=dict)


def systems(model: BenchModel) -> list[System]:
    py = sys.executable
    ours = [py, "-m", "server", "serve", "--bundle", str(model.bundle), "--max-queue", "256"]
    baseline = [py, "-m", "loadtest.baseline", "--checkpoint", str(model.checkpoint)]
    out = [System("naive", "transformers generate(), fp32, one request at a time", baseline, False, 4, "--threads")]
    if model.ct2 is not None:
        ct2 = [*baseline, "--backend", "ctranslate2", "--ct2-model", str(model.ct2)]
        out.append(System("ct2", "CTranslate2 INT8 behind the same wrapper", ct2, False, 4, "--threads"))
    out += [
        System("ours_off", "ours INT8, batching off (max batch 1)",
               [*ours, "--variant", "int8", "--max-batch-size", "1"], True, 4),
        System("ours_int8", "ours INT8, continuous batching (max batch 32)",
               [*ours, "--variant", "int8", "--max-batch-size", "32"], True, 32),
        System("ours_fp32", "ours FP32, continuous batching (max batch 32)",
               [*ours, "--variant", "fp32", "--max-batch-size", "32"], True, 32),
    ]  # fmt: skip
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(command: list[str], log: Path, timeout_s: float = 300.0) -> Iterator[str]:
    """A server subprocess on a loopback port, ready, then terminated: one at a time owns the cores."""
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen([*command, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited {process.returncode}; see {log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after {timeout_s:.0f} s; see {log}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def load(url: str, concurrency: int, rate: float | None, requests: int, duration: float, warmup: float,
         stream: bool) -> dict[str, Any]:  # fmt: skip
    specs = default_mix([BENCH_TASK], [BENCH_WORDS], [BENCH_BUDGET], stream=stream)
    return run_load(Load(url, specs, requests, duration, warmup, concurrency, rate, timeout_s=120.0))


def thread_counts() -> list[int]:
    """What a peer is tried at: one thread, and one per core."""
    return sorted({1, os.cpu_count() or 1})


def fastest(trial: dict[str, float]) -> int:
    """The thread count (a key of `trial`) with the most tokens/s."""
    return int(max(trial, key=lambda threads: trial[threads]))


def warm_up(url: str, system: System) -> None:
    load(url, 1, None, 2, 60.0, 0.0, system.streams)  # first requests pay for allocations: discarded


def best_threads(system: System, phases: Phases, log: Path) -> tuple[int, dict[str, float]]:
    """A peer's thread count that served it the most tokens/s in a short closed loop at its
    saturating concurrency, and each count's tokens/s."""
    assert system.threads_flag is not None
    trial: dict[str, float] = {}
    for threads in thread_counts():
        with serving([*system.command, system.threads_flag, str(threads)], log) as url:
            warm_up(url, system)
            report = load(url, system.concurrency, None, 100_000, phases.calibrate_s + phases.warmup_s,
                          phases.warmup_s, False)  # fmt: skip
        trial[str(threads)] = report["tokens_per_s"]
    return fastest(trial), trial


def measure_system(url: str, system: System, phases: Phases) -> dict[str, Any]:
    """Unloaded, saturation, then open loop at fractions of saturation, on one running server."""
    warm_up(url, system)
    figures: dict[str, Any] = {"load_before": os.getloadavg()}
    # Unloaded as every peer answers (whole), so the latencies compare and the tail ratio's p50 is
    # of the same kind of request as the open-loop p99; where the server streams, a second run
    # of streamed requests gives the time to first token (and what streaming adds).
    figures["unloaded"] = load(url, 1, None, phases.unloaded_requests, phases.unloaded_s, 0.0, False)
    if system.streams:
        figures["unloaded_stream"] = load(url, 1, None, phases.unloaded_requests, phases.unloaded_s, 0.0, True)
    sat = load(url, system.concurrency, None, 100_000, phases.saturation_s + phases.warmup_s,
               phases.warmup_s, False)  # fmt: skip
    figures["saturation"] = sat
    figures["open"] = []
    for fraction in phases.fractions:
        rate = max(sat["requests_per_s"] * fraction, 0.05)
        report = load(url, 256, rate, 100_000, phases.open_s + phases.warmup_s, phases.warmup_s, False)
        report["fraction"] = fraction
        figures["open"].append(report)
    figures["load_after"] = os.getloadavg()
    return figures


def inprocess(bundle: Path, requests: int) -> dict[str, Any] | None:
    """Ours without HTTP, one request at a time, in a process of its own (`python
    bench/scheduler.py unloaded`: the engine as the server builds it): ms per decode step and ORT's
    forward in it. None where the checkout's bench/ is not there (an installed package)."""
    script = Path(__file__).resolve().parents[1] / "bench" / "scheduler.py"
    if not script.is_file():
        return None
    command = [sys.executable, str(script), "unloaded", str(bundle), "--requests", str(max(requests, 1)),
               "--new-tokens", str(BENCH_BUDGET)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    figures: dict[str, Any] = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    return figures


def ct2_static(model: BenchModel, batches: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """CTranslate2 in-process, no HTTP: generated tokens/s at static batch sizes (its best case),
    each batch at each thread count (`thread_trial`) and at the fastest (`threads`)."""
    if model.ct2 is None:
        return {}
    import ctranslate2
    from tokenizers import Tokenizer

    from contract.command import EOS_TOKEN, CommandSpec, prompt_ids, special_ids
    from loadtest.mix import DEFAULT_INTENTS

    generators = {t: ctranslate2.Generator(str(model.ct2), device="cpu", intra_threads=t) for t in thread_counts()}
    vocabulary: list[str] = json.loads((model.ct2 / "vocabulary.json").read_text())
    tokenizer = Tokenizer.from_file(str(model.checkpoint / "tokenizer.json"))
    spec = CommandSpec.from_dict(json.loads((model.checkpoint / "udrl.json").read_text())["command"])
    eos = vocabulary[special_ids(tokenizer, [EOS_TOKEN])[0]]
    prompts = [[vocabulary[i] for i in prompt_ids(tokenizer, spec, BENCH_TASK, BENCH_WORDS, "high", intent)]
               for intent in DEFAULT_INTENTS]  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    for batch in batches:
        starts = [prompts[i % len(prompts)] for i in range(batch)]
        trial: dict[str, float] = {}
        for threads, generator in generators.items():

            def generate(starts: list[list[str]] = starts, generator: Any = generator) -> Any:
                return generator.generate_batch(
                    starts, max_length=BENCH_BUDGET, sampling_topk=0, sampling_topp=0.95, sampling_temperature=0.8,
                    include_prompt_in_result=False, end_token=eos,
                )  # fmt: skip

            generate()  # warm-up
            start = time.perf_counter()
            results = generate()
            seconds = time.perf_counter() - start
            trial[str(threads)] = round(sum(len(r.sequences[0]) for r in results) / seconds, 1)
        best = fastest(trial)
        out[str(batch)] = {"tokens_per_s": trial[str(best)], "threads": best, "thread_trial": trial}
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("onnxruntime", "torch", "transformers", "ctranslate2", "numpy", "fastapi", "uvicorn"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def run(args: argparse.Namespace) -> int:
    phases = QUICK if args.quick else FULL
    work, out = Path(args.work), Path(args.out)
    if args.rewrite:  # the Markdown again from the figures already measured: no server is run
        write_results(json.loads(out.with_suffix(".json").read_text()), out)
        print(f"rewrote {out} from {out.with_suffix('.json')}")
        return 0
    if not (Path(args.checkpoint) / "udrl.json").is_file():
        raise UsageError(f"--checkpoint {args.checkpoint} is not a checkpoint (no udrl.json); `make bundle` makes one")
    started = time.time()
    results: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "loadtest", *sys.argv[1:]]),
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": machine(),
        "versions": versions(),
        "load_at_start": os.getloadavg(),
        "roofline": roofline.measure(args.quick),
        "models": {},
    }
    print(f"roofline: {results['roofline']}", flush=True)
    for name in args.models:
        model = prepare(name, Path(args.checkpoint), Path(args.bundle), work)
        entry: dict[str, Any] = {"parameters": model.parameters, "bundle": str(model.bundle), "systems": {}}
        entry["ct2_static"] = ct2_static(model, phases.static_batches)
        if not args.systems or "ours_int8" in args.systems:
            entry["inprocess"] = inprocess(model.bundle, phases.unloaded_requests // 4)
            print(f"   ours in-process, one request at a time: {entry['inprocess']}", flush=True)
        for system in [s for s in systems(model) if not args.systems or s.key in args.systems]:
            print(f"== {name}: {system.label}", flush=True)
            log = work / "logs" / f"{name}_{system.key}.log"
            tuned: dict[str, Any] = {}
            if system.threads_flag is not None:
                threads, trial = best_threads(system, phases, log)
                system.command = [*system.command, system.threads_flag, str(threads)]
                tuned = {"threads": threads, "thread_trial": trial}
                print(f"   threads: {threads} (tokens/s by thread count: {trial})", flush=True)
            with serving(system.command, log) as url:
                figures = measure_system(url, system, phases)
            entry["systems"][system.key] = {"label": system.label, "command": shlex.join(system.command),
                                            "concurrency": system.concurrency, **tuned, **figures}  # fmt: skip
            sat = figures["saturation"]
            print(f"   saturation {sat['tokens_per_s']} tok/s, {sat['requests_per_s']} req/s", flush=True)
        results["models"][name] = entry
    results["minutes"] = round((time.time() - started) / 60, 1)
    results["load_at_end"] = os.getloadavg()
    write_json(out.with_suffix(".json"), results)
    write_results(results, out)
    print(f"wrote {out} ({results['minutes']} min)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="every server side by side; writes bench/RESULTS.md")
    parser.add_argument("--checkpoint", default="artifacts/checkpoint", help="the default student's checkpoint")
    parser.add_argument("--bundle", default="artifacts/bundle", help="its bundle (exported into --work if missing)")
    parser.add_argument("--models", nargs="+", default=["tiny", "small"], choices=("tiny", "small"))
    parser.add_argument("--work", default="artifacts/bench", help="built models, CTranslate2 conversions, logs")
    parser.add_argument("--out", default="bench/RESULTS.md", help="the Markdown report (JSON and PNGs beside it)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEM_KEYS, help="only these systems (default: all)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny loads, seconds per phase")
    parser.add_argument("--rewrite", action="store_true", help="only rewrite --out from its JSON (measures nothing)")
    parser.set_defaults(func=run)
