"""A run's results summarised: percentiles of latency and TTFT, throughput, errors by kind."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from loadtest.client import Result

PERCENTILES = (50, 90, 99, 99.9)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of samples at or below it.
    (With fewer than 1,000 samples p99.9 is the maximum: say how many samples a figure rests on.)"""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(round(q * len(sorted_values) / 100, 9)))  # round: 99.9 * 1000 / 100 is not 999.0
    return sorted_values[min(rank, len(sorted_values)) - 1]


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    values = sorted(s * 1000 for s in seconds)
    out = {f"p{q:g}": round(percentile(values, q), 2) for q in PERCENTILES}
    out["mean"] = round(statistics.fmean(values), 2) if values else float("nan")
    return out


def error_key(result: Result) -> str:
    return f"{result.status} {result.error}".strip()


def summarize(results: list[Result], warmup_s: float, meta: dict[str, Any]) -> dict[str, Any]:
    """The report of one run. Requests due in the first `warmup_s` seconds are left out of every
    figure (caches, allocator and thread pools warm up there); throughput is the measured
    requests' tokens over the time from the first measured request's start to the last's end."""
    measured = [r for r in results if r.start_s >= warmup_s]
    ok = [r for r in measured if r.ok]
    ends, starts = [r.start_s + r.latency_s for r in measured], [r.start_s for r in measured]
    window = max(ends) - min(starts) if measured else 0.0
    tokens = sum(r.tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    return {
        **meta,
        "requests": len(measured),
        "warmup_requests": len(results) - len(measured),
        "wall_s": round(window, 3),
        "ok": len(ok),
        "errors": dict(Counter(error_key(r) for r in measured if not r.ok)),
        "latency_ms": percentiles_ms([r.latency_s for r in ok]),
        "ttft_ms": percentiles_ms(ttfts) if ttfts else None,
        "streamed": len(ttfts),
        "requests_per_s": round(len(ok) / window, 2) if window > 0 else 0.0,
        "tokens_per_s": round(tokens / window, 1) if window > 0 else 0.0,
        "generated_tokens": tokens,
    }


def load_label(report: dict[str, Any]) -> str:
    if report.get("rate") is not None:
        return f"open loop, Poisson {report['rate']:g} req/s"
    return f"closed loop, concurrency {report.get('concurrency')}"


def print_report(report: dict[str, Any]) -> None:
    lat, ttft = report["latency_ms"], report.get("ttft_ms")
    warm = f" (+{report['warmup_requests']} warm-up)" if report.get("warmup_requests") else ""
    print(f"requests     {report['requests']}{warm}, {load_label(report)}, in {report['wall_s']:.2f} s")
    print(f"ok / errors  {report['ok']} / {sum(report['errors'].values())} {report['errors'] or ''}")
    print("latency ms   " + "  ".join(f"{k} {v:.1f}" for k, v in lat.items()))
    if ttft:
        print(f"ttft ms      {'  '.join(f'{k} {v:.1f}' for k, v in ttft.items())}  ({report['streamed']} streamed)")
    print(f"throughput   {report['requests_per_s']:.2f} req/s  {report['tokens_per_s']:.1f} generated tokens/s")


def write_json(path: Path | str, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
