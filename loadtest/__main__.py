"""`python -m loadtest <command>`: load generation against a running server."""

from __future__ import annotations

import argparse
import sys

from loadtest import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    run.add_parser(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
