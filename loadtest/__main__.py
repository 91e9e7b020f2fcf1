"""`python -m loadtest <command>`: load generation against a running server.

Commands: run (one bounded run), sweep (latency against offered load), soak (minutes of load,
memory watched), compare (two reports side by side), bench (bench/RESULTS.md, every server
side by side). A usage mistake or an unreachable server is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from loadtest import bench, compare, run, soak, sweep
from loadtest.run import UsageError, fail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (run, sweep, soak, compare, bench):
        module.add_parser(subparsers)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        return fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
