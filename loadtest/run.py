"""`python -m loadtest run`: one bounded load run against a running server.

Closed loop (`--concurrency C`) or open loop (`--rate R`, Poisson arrivals), the requests from
a mix file (`--mix`, loadtest/mix.py) or built from the server's tasks; the first `--warmup-s`
seconds are left out of every figure. Only the URL the user gives is contacted, every request
is bounded by a timeout and the run by `--requests` and `--duration`, so it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx
from tqdm import tqdm

from loadtest.arrivals import closed_loop, open_loop, poisson_arrivals
from loadtest.client import Result, send
from loadtest.mix import MixError, RequestSpec, default_mix, load_mix
from loadtest.report import print_report, summarize, write_json

KEEPALIVE_S = 2.0  # how long the client keeps an idle connection (drive)
# Connections per httpx client (drive): its pool walks every connection at each request's start
# and end, so 256 in one pool cost the open loop ~7 ms of CPU per request past the server's capacity.
POOL_CONNECTIONS = 16


class UsageError(Exception):
    """A mistake on the command line or an unusable target: one line on stderr, exit code 2."""


@dataclass
class Load:
    url: str
    specs: list[RequestSpec]
    requests: int  # most requests sent, warm-up included
    duration_s: float  # no request starts later than this
    warmup_s: float
    concurrency: int  # closed loop: clients; open loop: most connections open at once
    rate: float | None  # open loop arrivals per second; None: closed loop
    seed: int = 0
    timeout_s: float = 60.0
    temperature: float | None = None
    enforce_length: bool = False
    quiet: bool = True

    def meta(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "mode": "closed" if self.rate is None else "open",
            "concurrency": self.concurrency if self.rate is None else None,
            "rate": self.rate,
            "warmup_s": self.warmup_s,
            "mix_size": len(self.specs),
        }


async def drive(load: Load) -> list[Result]:
    """Send the load and collect every request's result (errors included)."""
    # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout closes them. At
    # httpx's default (also 5 s), a request sent on a connection the server is closing fails with
    # a ReadError that says nothing about the server (likely the 2 in 2,516 of the tiny default's
    # overload phase, bench/RESULTS.md of 2026-12-05 07:04).
    limits = httpx.Limits(
        max_connections=POOL_CONNECTIONS, max_keepalive_connections=POOL_CONNECTIONS, keepalive_expiry=KEEPALIVE_S
    )
    async with contextlib.AsyncExitStack() as stack:
        pools = [
            await stack.enter_async_context(httpx.AsyncClient(timeout=httpx.Timeout(load.timeout_s), limits=limits))
            for _ in range(-(-load.concurrency // POOL_CONNECTIONS))
        ]
        clock0 = time.perf_counter()
        # Requests beyond the connection limit wait here, not in httpx's pool: on every request
        # that starts or ends, httpcore walks all its waiting requests and, for each, all its
        # connections, so an open loop running past the server's capacity (thousands waiting)
        # spent its CPU there and stopped sending, and the server sat idle (bench/engine.md,
        # "the tiny model's overload row"). For the same walk, no pool holds more than
        # POOL_CONNECTIONS connections: a free slot is a pool with a connection to spare.
        slots: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for i in range(load.concurrency):
            slots.put_nowait(pools[i % len(pools)])

        async def fire(i: int, due: float) -> Result:
            body = load.specs[i % len(load.specs)].body(load.seed + i, load.temperature, load.enforce_length)
            client = await slots.get()
            try:
                return await send(client, load.url, body, due, clock0)
            finally:
                slots.put_nowait(client)

        if load.rate is None:
            progress = tqdm(total=load.requests, desc="requests", unit="req", disable=load.quiet)
            results = await closed_loop(fire, load.concurrency, load.requests, load.duration_s, progress.update)
        else:
            arrivals = poisson_arrivals(load.rate, load.requests, load.duration_s, load.seed)
            progress = tqdm(total=len(arrivals), desc="requests", unit="req", disable=load.quiet)
            results = await open_loop(fire, arrivals, progress.update)
        progress.close()
    return results


def run_load(load: Load) -> dict[str, Any]:
    return summarize(asyncio.run(drive(load)), load.warmup_s, load.meta())


def check_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError(f"--url must be http(s)://host[:port], got {url!r}")
    return url.rstrip("/")


def fetch_tasks(url: str, timeout: float) -> list[str]:
    """The server's tasks; also the preflight that turns an unreachable server into one line."""
    try:
        response = httpx.get(f"{url}/v1/tasks", timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as e:
        raise UsageError(f"cannot reach {url}: {e}") from None
    return [t["name"] if isinstance(t, dict) else t for t in response.json()["tasks"]]


def resolve_mix(args: argparse.Namespace, url: str) -> list[RequestSpec]:
    tasks = fetch_tasks(url, min(args.timeout, 10.0))
    if args.mix:
        try:
            return load_mix(args.mix)
        except MixError as e:
            raise UsageError(str(e)) from None
    unknown = sorted(set(args.task or []) - set(tasks))
    if unknown:
        raise UsageError(f"--task {unknown[0]}: the server has {', '.join(tasks)}")
    return default_mix(args.task or tasks, args.length, args.max_new_tokens, args.relevance, args.n, args.stream)


def positive(name: str, value: float) -> None:
    if not value > 0:  # also refuses NaN
        raise UsageError(f"{name} must be positive, got {value}")


def load_from_args(args: argparse.Namespace, rate: float | None) -> Load:
    """The Load the common options describe, at one rate (None: closed loop)."""
    positive("--requests", args.requests)
    positive("--duration", args.duration)
    positive("--concurrency", args.concurrency)
    positive("--timeout", args.timeout)
    positive("--max-connections", args.max_connections)
    if rate is not None:
        positive("--rate", rate)
    if args.warmup_s < 0 or args.warmup_s >= args.duration:
        raise UsageError("--warmup-s must be at least 0 and below --duration")
    url = check_url(args.url)
    return Load(
        url=url,
        specs=resolve_mix(args, url),
        requests=args.requests,
        duration_s=args.duration,
        warmup_s=args.warmup_s,
        concurrency=args.concurrency if rate is None else args.max_connections,
        rate=rate,
        seed=args.seed,
        timeout_s=args.timeout,
        temperature=args.temperature,
        enforce_length=args.enforce_length,
        quiet=args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    report = run_load(load_from_args(args, args.rate))
    print_report(report)
    if args.json:
        write_json(args.json, report)
    return 0 if report["ok"] else 1


def add_load_arguments(
    parser: argparse.ArgumentParser, requests: int | None, duration: float | None, concurrency: int
) -> None:
    """Options every load command shares: target, mix, sampling, and the bounds (count, duration,
    warm-up) unless the command derives them itself (requests and duration None)."""
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (default: loopback)")
    parser.add_argument("--mix", help="JSONL request mix (loadtest/mixes/sample.jsonl); default: built from the flags")
    if requests is not None and duration is not None:
        parser.add_argument("--requests", type=int, default=requests, help="most requests to send, warm-up included")
        parser.add_argument("--duration", type=float, default=duration, help="no request starts after this, seconds")
        parser.add_argument("--warmup-s", type=float, default=0.0, help="leave requests due in the first S seconds out")
    parser.add_argument("--concurrency", type=int, default=concurrency,
                        help="closed loop: requests in flight")  # fmt: skip
    parser.add_argument("--max-connections", type=int, default=256,
                        help="open loop: most requests in flight (later ones wait, and the wait counts)")  # fmt: skip
    parser.add_argument("--task", action="append", help="task to use (repeatable; default: all from /v1/tasks)")
    parser.add_argument("--length", type=int, nargs="+", default=[20], help="requested length(s) in words, cycled")
    parser.add_argument("--enforce-length", action="store_true", help="ask the server to guarantee the length")
    parser.add_argument("--relevance", default="high", choices=("low", "medium", "high"))
    parser.add_argument("--n", type=int, default=1, help="outputs per request")
    parser.add_argument("--stream", action="store_true", help="stream every request (measures TTFT)")
    parser.add_argument("--max-new-tokens", type=int, nargs="+", default=[64], help="token budget(s), cycled")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0, help="seeds the arrivals and each request's sampling")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="one bounded run, closed loop or open loop (--rate)")
    add_load_arguments(parser, requests=200, duration=300.0, concurrency=8)
    parser.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second (default: closed loop)")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.set_defaults(func=run)


def fail(message: str) -> int:
    print(f"loadtest: {message}", file=sys.stderr)
    return 2
