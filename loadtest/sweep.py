"""`python -m loadtest sweep`: open-loop runs at several rates, their reports and a PNG of latency
percentiles against offered load. Past saturation the achieved rate stops following the offered
one and latency climbs: the knee of the curve is the server's usable capacity."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from loadtest.plot import plot_sweep
from loadtest.report import print_report, write_json
from loadtest.run import Load, UsageError, add_load_arguments, load_from_args, positive, run_load


def sweep(load: Load, rates: list[float]) -> list[dict[str, Any]]:
    reports = []
    for rate in rates:
        load.rate = rate
        report = run_load(load)
        print(f"== offered {rate:g} req/s")
        print_report(report)
        reports.append(report)
    return reports


def run(args: argparse.Namespace) -> int:
    if not args.rates:
        raise UsageError("--rates needs at least one rate")
    for rate in args.rates:
        positive("--rates", rate)
    load = load_from_args(args, args.rates[0])
    reports = sweep(load, sorted(args.rates))
    out = Path(args.out)
    write_json(out / "sweep.json", reports)
    png = plot_sweep({load.url: reports}, out / "sweep.png", "latency against offered load")
    print(f"wrote {out / 'sweep.json'} and {png}")
    return 0 if all(r["ok"] for r in reports) else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sweep", help="open-loop runs at several rates; JSON and a latency-vs-load PNG")
    add_load_arguments(parser, requests=2000, duration=20.0, concurrency=8)
    parser.add_argument("--rates", type=float, nargs="+", required=True, help="offered loads, requests/s")
    parser.add_argument("--out", default="artifacts/sweep", help="folder for sweep.json and sweep.png")
    parser.set_defaults(func=run)
