"""`python -m training <command>`: every training stage behind one CLI.

Each stage module registers its own subcommand (`add_parser`) so its flags live next
to its code; this file only lists the stages in pipeline order.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Pipeline order: generate -> score -> train -> eval (-> compare reports).
STAGES = ("training.generate", "training.score", "training.train", "training.evaluate", "training.compare")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in STAGES:
        importlib.import_module(name).add_parser(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
