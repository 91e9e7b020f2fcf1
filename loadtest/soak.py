"""`python -m loadtest soak`: minutes of open-loop load, judged minute by minute.

Every window (a minute by default) reports its p50/p99 latency, errors, throughput and the
server's resident memory, scraped from its /metrics (`process_resident_memory_bytes`, plus
`promptgen_engine_process_resident_memory_bytes` where the engine runs in a process of its own;
parsed with prometheus_client's own parser) at the window's end. The run passes when, after the
warm-up windows: no request failed, no window's p99 exceeds `--p99-tolerance` times the median
window p99 (latency stays flat: no queue building up, no slow leak of work), and resident
memory grew less than `--max-rss-growth` from the end of warm-up (no leak). Issue 12's bar:
0 errors, p99 stable, RSS growth under 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtest.client import Result
from loadtest.report import percentiles_ms, write_json
from loadtest.run import Load, UsageError, add_load_arguments, drive, load_from_args, positive

RSS_METRIC = "process_resident_memory_bytes"
ENGINE_RSS_METRIC = "promptgen_engine_process_resident_memory_bytes"  # server/engine/process.py


async def resident_memory(client: httpx.AsyncClient, url: str) -> float | None:
    """The server's RSS in bytes, its engine process's included, or None when /metrics does
    not answer or lacks the server's series."""
    try:
        text = (await client.get(f"{url}/metrics")).text
    except httpx.HTTPError:
        return None
    found = {
        sample.name: float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in (RSS_METRIC, ENGINE_RSS_METRIC)
    }
    return found[RSS_METRIC] + found.get(ENGINE_RSS_METRIC, 0.0) if RSS_METRIC in found else None


async def watch_memory(url: str, window_s: float, windows: int) -> list[float | None]:
    """RSS at the end of each window, on the soak's clock (started with the load)."""
    samples: list[float | None] = []
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=10.0) as client:
        samples.append(await resident_memory(client, url))  # before the load: the baseline
        for i in range(1, windows + 1):
            await asyncio.sleep(max(0.0, start + i * window_s - time.perf_counter()))
            samples.append(await resident_memory(client, url))
    return samples


async def soak_async(load: Load, window_s: float) -> tuple[list[Result], list[float | None]]:
    windows = int(round(load.duration_s / window_s))
    results, rss = await asyncio.gather(drive(load), watch_memory(load.url, window_s, windows))
    return results, rss


def window_rows(results: list[Result], rss: list[float | None], window_s: float) -> list[dict[str, Any]]:
    rows = []
    for i in range(len(rss) - 1):
        inside = [r for r in results if i * window_s <= r.start_s < (i + 1) * window_s]
        ok = [r for r in inside if r.ok]
        latency = percentiles_ms([r.latency_s for r in ok])
        memory = rss[i + 1]
        rows.append(
            {
                "window": i + 1,
                "requests": len(inside),
                "errors": len(inside) - len(ok),
                "p50_ms": latency["p50"],
                "p99_ms": latency["p99"],
                "tokens_per_s": round(sum(r.tokens for r in ok) / window_s, 1),
                "rss_mb": round(memory / 2**20, 1) if memory is not None else None,
            }
        )
    return rows


def verdict(rows: list[dict[str, Any]], warmup_windows: int, p99_tolerance: float, max_growth: float) -> dict[str, Any]:
    """Pass/fail of each criterion, judged on the windows after warm-up (errors: on every window)."""
    after = rows[warmup_windows:]
    errors = sum(r["errors"] for r in rows)
    p99s = [r["p99_ms"] for r in after if r["requests"]]
    median_p99 = statistics.median(p99s) if p99s else float("nan")
    worst_p99_ratio = max(p99s) / median_p99 if p99s else float("nan")
    rss = [r["rss_mb"] for r in after]
    baseline = rows[warmup_windows - 1]["rss_mb"] if warmup_windows else rows[0]["rss_mb"]
    growth = (max(rss) - baseline) / baseline if rss and None not in rss and baseline else float("nan")
    checks = {
        "no_errors": errors == 0,
        "p99_stable": worst_p99_ratio <= p99_tolerance,  # NaN (no data) fails
        "rss_flat": growth < max_growth,
    }
    return {
        **checks,
        "passed": all(checks.values()),
        "errors": errors,
        "median_window_p99_ms": median_p99,
        "worst_window_p99_ratio": round(worst_p99_ratio, 3),
        "rss_baseline_mb": baseline,
        "rss_growth": round(growth, 4),
    }


def print_soak(rows: list[dict[str, Any]], result: dict[str, Any], warmup_windows: int) -> None:
    print(f"{'window':>6} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'tok/s':>8} {'RSS MB':>8}")
    for row in rows:
        mark = "  (warm-up)" if row["window"] <= warmup_windows else ""
        print(
            f"{row['window']:>6} {row['requests']:>9} {row['errors']:>7} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}"
            f" {row['tokens_per_s']:>8.1f} {row['rss_mb'] if row['rss_mb'] is not None else '-':>8}{mark}"
        )
    print(
        f"errors {result['errors']} ({'ok' if result['no_errors'] else 'FAIL'}); "
        f"worst window p99 / median {result['worst_window_p99_ratio']} ({'ok' if result['p99_stable'] else 'FAIL'}); "
        f"RSS growth after warm-up {result['rss_growth']:.1%} ({'ok' if result['rss_flat'] else 'FAIL'})"
    )
    print("SOAK PASSED" if result["passed"] else "SOAK FAILED")


def run(args: argparse.Namespace) -> int:
    positive("--minutes", args.minutes)
    positive("--window-s", args.window_s)
    windows = int(round(args.minutes * 60 / args.window_s))
    if not 0 <= args.warmup_windows < windows:
        raise UsageError(f"--warmup-windows must leave at least one of the {windows} windows to judge")
    args.duration = windows * args.window_s
    args.requests = int(args.rate * args.duration * 2) + 100  # bounded, far above what Poisson sends
    args.warmup_s = 0.0  # warm-up is judged by window (--warmup-windows), not cut from the results
    load = load_from_args(args, args.rate)
    results, rss = asyncio.run(soak_async(load, args.window_s))
    if rss[0] is None:
        raise UsageError(f"{load.url}/metrics has no {RSS_METRIC}: cannot judge memory")
    rows = window_rows(results, rss, args.window_s)
    result = verdict(rows, args.warmup_windows, args.p99_tolerance, args.max_rss_growth)
    print_soak(rows, result, args.warmup_windows)
    if args.json:
        rss_before = round(rss[0] / 2**20, 1)  # before any load: what warm-up added is visible too
        write_json(args.json, {**load.meta(), "window_s": args.window_s, "rss_before_mb": rss_before, "windows": rows,
                               "verdict": result})  # fmt: skip
    return 0 if result["passed"] else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("soak", help="minutes of open-loop load; per-minute p50/p99, errors and RSS")
    add_load_arguments(parser, requests=None, duration=None, concurrency=8)  # derived from --rate and --minutes
    parser.add_argument("--rate", type=float, required=True, help="Poisson arrivals per second (~70%% of saturation)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--window-s", type=float, default=60.0, help="one line of figures per window")
    parser.add_argument("--warmup-windows", type=int, default=1, help="windows left out of the p99 and RSS checks")
    parser.add_argument("--p99-tolerance", type=float, default=1.5, help="most a window's p99 may exceed the median")
    parser.add_argument("--max-rss-growth", type=float, default=0.10, help="most RSS may grow after warm-up")
    parser.add_argument("--json", help="also write windows and verdict as JSON to this file")
    parser.set_defaults(func=run)
