"""`python -m training compare`: evaluation reports side by side, one markdown table per split.

For before/after tables and ablations (bench/): each `--report NAME=PATH` is a report.json
written by `python -m training eval`; rows are (task, model), columns the headline figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.evaluate import fmt

COLUMNS = (
    "within +/-2",
    "rel low",
    "rel medium",
    "rel high",
    "rising",
    "hard words intact (high)",
    "broken",
    "invalid",
)


def row(metrics: dict[str, Any]) -> list[str]:
    rel = metrics["relevance_by_level"]
    return [
        fmt(metrics["length"]["within_2"]),
        fmt(rel["low"]),
        fmt(rel["medium"]),
        fmt(rel["high"]),
        fmt(metrics["monotonic"]),
        fmt(metrics.get("hard_words_intact_top", {}).get("share")),
        fmt(metrics.get("broken_text_share")),
        fmt(metrics["invalid_share"]),
    ]


def compare_markdown(reports: dict[str, dict[str, Any]], splits: list[str] | None = None) -> str:
    """A table per split that every report has (or those named), tasks in the first report's order."""
    first = next(iter(reports.values()))
    names = splits or [s for s in first["splits"] if all(s in r["splits"] for r in reports.values())]
    lines: list[str] = []
    for split in names:
        lines += [f"### {split}", "", "| task | model | " + " | ".join(COLUMNS) + " |"]
        lines.append("|---|---|" + "---|" * len(COLUMNS))
        for task in ["all", *first["splits"][split]["by_task"]]:
            for name, report in reports.items():
                metrics = report["splits"][split]
                metrics = metrics if task == "all" else metrics["by_task"].get(task)
                if metrics is not None:
                    lines.append(f"| {task} | {name} | " + " | ".join(row(metrics)) + " |")
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    reports: dict[str, dict[str, Any]] = {}
    for item in args.report:
        name, sep, path = item.partition("=")
        if not sep or not name:
            print(f"error: --report takes NAME=PATH, got {item!r}", file=sys.stderr)
            return 2
        try:
            reports[name] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"error: cannot read the report {path}: {e}", file=sys.stderr)
            return 2
    missing = [s for s in args.split if any(s not in r["splits"] for r in reports.values())]
    if missing:
        print(f"error: split(s) {missing} are not in every report", file=sys.stderr)
        return 2
    print(compare_markdown(reports, args.split or None))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", help="evaluation reports side by side (markdown)")
    parser.add_argument("--report", action="append", required=True, help="NAME=PATH of a report.json (repeat)")
    parser.add_argument("--split", action="append", default=[], help="only these splits (repeat; default: all shared)")
    parser.set_defaults(func=run)
