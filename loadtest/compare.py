"""`python -m loadtest compare a.json b.json`: two run reports side by side, with b/a ratios.

For a before/after of one change: the same mix and load against the old and the new server.
A ratio above 1 is better for throughput and worse for latency; the table says which is which.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from loadtest.report import PERCENTILES, load_label
from loadtest.run import UsageError

# (label, path into the report, higher is better)
ROWS: list[tuple[str, tuple[str, ...], bool]] = [
    ("generated tokens/s", ("tokens_per_s",), True),
    ("requests/s", ("requests_per_s",), True),
    *[(f"latency p{q:g} ms", ("latency_ms", f"p{q:g}"), False) for q in PERCENTILES],
    *[(f"ttft p{q:g} ms", ("ttft_ms", f"p{q:g}"), False) for q in PERCENTILES],
]


def read_report(path: str) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not JSON: {e.msg}") from None
    if not isinstance(report, dict) or not {"latency_ms", "tokens_per_s", "errors"} <= set(report):
        raise UsageError(f"{path} is not a loadtest report (write one with `run --json`)")
    return report


def lookup(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return float(value)


def comparison(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, float | None, float | None, str]]:
    """Rows of (metric, a, b, verdict): b/a as a ratio, marked better or worse past 5%."""
    rows: list[tuple[str, float | None, float | None, str]] = []
    for label, path, higher_is_better in ROWS:
        x, y = lookup(a, path), lookup(b, path)
        if x is None and y is None:
            continue
        verdict = ""
        if x and y is not None and not (math.isnan(x) or math.isnan(y)):
            ratio = y / x
            better = ratio > 1.05 if higher_is_better else ratio < 0.95
            worse = ratio < 0.95 if higher_is_better else ratio > 1.05
            verdict = f"{ratio:.2f}x" + (" better" if better else " worse" if worse else "")
        rows.append((label, x, y, verdict))
    errors = (sum(a["errors"].values()), sum(b["errors"].values()))
    rows.append(("errors", float(errors[0]), float(errors[1]), "worse" if errors[1] > errors[0] else ""))
    return rows


def run(args: argparse.Namespace) -> int:
    a, b = read_report(args.a), read_report(args.b)
    print(f"a: {args.a} ({load_label(a)}, {a['requests']} requests)")
    print(f"b: {args.b} ({load_label(b)}, {b['requests']} requests)")
    if load_label(a) != load_label(b):
        print("note: the two runs offered different loads; compare with care")
    print(f"{'metric':<22}{'a':>12}{'b':>12}  b/a")
    for label, x, y, verdict in comparison(a, b):
        cells = [f"{v:>12.1f}" if v is not None else f"{'-':>12}" for v in (x, y)]
        print(f"{label:<22}{cells[0]}{cells[1]}  {verdict}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", help="two run reports side by side, with ratios")
    parser.add_argument("a", help="the baseline report (JSON from `run --json`)")
    parser.add_argument("b", help="the report to compare with it")
    parser.set_defaults(func=run)
