"""`python -m loadtest run`: N requests at a fixed concurrency against a running server.

Closed-loop load: C workers each send their next request as soon as the previous one
answers, which measures latency at that concurrency and the throughput it sustains.
Every request is bounded by a timeout and the run by its request count, so it always
stops by itself. Only the URL the user gives is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

DEFAULT_INTENTS = (
    "holiday sale",
    "cozy reading nook",
    "summer hiking trip",
    "minimalist home office",
    "vegan birthday cake",
    "retro gaming night",
    "spring wedding flowers",
    "electric car launch",
)


@dataclass
class Result:
    status: int  # HTTP status, or 0 when the request never got an answer
    latency_s: float
    tokens: int = 0
    error: str = ""


@dataclass
class Report:
    url: str
    requests: int
    concurrency: int
    wall_s: float
    ok: int
    errors: dict[str, int]
    latency_ms: dict[str, float]
    requests_per_s: float
    tokens_per_s: float
    generated_tokens: int
    body: dict[str, Any] = field(default_factory=dict)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of samples at or below it."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil without float error
    return sorted_values[min(rank, len(sorted_values)) - 1]


def completion_tokens(response: dict[str, Any]) -> int:
    usage = response.get("usage") or {}
    return int(usage.get("completion_tokens", 0))


async def fetch_tasks(client: httpx.AsyncClient, url: str) -> list[str]:
    response = await client.get(f"{url}/v1/tasks")
    response.raise_for_status()
    return [t["name"] if isinstance(t, dict) else t for t in response.json()["tasks"]]


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Result:
    start = time.perf_counter()
    try:
        response = await client.post(f"{url}/v1/generate", json=body)
    except httpx.HTTPError as e:
        return Result(status=0, latency_s=time.perf_counter() - start, error=type(e).__name__)
    latency = time.perf_counter() - start
    if response.status_code != 200:
        try:
            kind = response.json().get("error", {}).get("type", "")
        except (ValueError, AttributeError):
            kind = ""
        return Result(status=response.status_code, latency_s=latency, error=kind)
    return Result(status=200, latency_s=latency, tokens=completion_tokens(response.json()))


async def run_load(args: argparse.Namespace) -> Report:
    url = args.url.rstrip("/")
    timeout = httpx.Timeout(args.timeout)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        tasks = args.task or await fetch_tasks(client, url)
        # Every combination of task, intent, length and token budget, in a fixed order:
        # several --length / --max-new-tokens values make a mixed load of short and long
        # requests, the case where continuous batching pays.
        combos = itertools.product(tasks, DEFAULT_INTENTS, args.length, args.max_new_tokens)
        bodies = itertools.cycle(
            [
                {
                    "task": task,
                    "input": intent,
                    "controls": {"length": length, "relevance": args.relevance, "enforce_length": args.enforce_length},
                    "n": args.n,
                    "max_new_tokens": max_new_tokens,
                    "temperature": args.temperature,
                    "seed": seed,
                }
                for seed, (task, intent, length, max_new_tokens) in enumerate(combos)
            ]
        )
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for _ in range(args.requests):
            queue.put_nowait(next(bodies))
        results: list[Result] = []
        progress = tqdm(total=args.requests, desc="requests", unit="req", disable=args.quiet)

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                results.append(await one_request(client, url, body))
                progress.update()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - start
        progress.close()

    ok = [r for r in results if r.status == 200]
    latencies = sorted(r.latency_s * 1000 for r in ok)
    tokens = sum(r.tokens for r in ok)
    errors = Counter(f"{r.status} {r.error}".strip() for r in results if r.status != 200)
    return Report(
        url=url,
        requests=len(results),
        concurrency=args.concurrency,
        wall_s=round(wall, 3),
        ok=len(ok),
        errors=dict(errors),
        latency_ms={
            "p50": round(percentile(latencies, 50), 2),
            "p90": round(percentile(latencies, 90), 2),
            "p99": round(percentile(latencies, 99), 2),
            "mean": round(statistics.fmean(latencies), 2) if latencies else float("nan"),
        },
        requests_per_s=round(len(ok) / wall, 2),
        tokens_per_s=round(tokens / wall, 1),
        generated_tokens=tokens,
        body={
            "length": args.length,
            "relevance": args.relevance,
            "enforce_length": args.enforce_length,
            "n": args.n,
            "max_new_tokens": args.max_new_tokens,
        },
    )


def print_report(report: Report) -> None:
    lat = report.latency_ms
    print(f"requests     {report.requests} at concurrency {report.concurrency} in {report.wall_s:.2f} s")
    print(f"ok / errors  {report.ok} / {sum(report.errors.values())} {report.errors or ''}")
    print(f"latency ms   p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}  mean {lat['mean']:.1f}")
    print(f"throughput   {report.requests_per_s:.2f} req/s  {report.tokens_per_s:.1f} generated tokens/s")


def run(args: argparse.Namespace) -> int:
    if args.requests < 1 or args.concurrency < 1:
        print("loadtest: --requests and --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run_load(args))
    except httpx.HTTPError as e:
        print(f"loadtest: cannot reach {args.url}: {e}", file=sys.stderr)
        return 2
    print_report(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0 if report.ok else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="send N requests at a given concurrency and report latency")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--requests", type=int, default=200, help="total requests to send")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--task", action="append", help="task to use (repeatable; default: all from /v1/tasks)")
    parser.add_argument("--length", type=int, nargs="+", default=[20], help="requested length(s) in words, cycled")
    parser.add_argument("--enforce-length", action="store_true", help="ask the server to guarantee the length")
    parser.add_argument("--relevance", default="high", choices=("low", "medium", "high"))
    parser.add_argument("--n", type=int, default=1, help="outputs per request")
    parser.add_argument("--max-new-tokens", type=int, nargs="+", default=[64], help="token budget(s), cycled")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
