"""A running server's own view of one load: its steps by phase (forward time, live rows), its CPU,
and the load generator's CPU, from the server's /metrics before and after one `python -m loadtest
run` against it (bench/engine.md, step 15).

    python bench/server_steps.py --url http://127.0.0.1:8000 -- --rate 16.3 --duration 20 \\
        --warmup-s 2 --max-connections 256 --task t2i_prompt --length 20 --max-new-tokens 48 \\
        --temperature 0.8 --seed 1 --stream --quiet

Everything after `--` goes to `python -m loadtest run --url URL`. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

PHASES = ("prefill", "decode", "mixed")


def scrape(url: str) -> dict[tuple[str, str], float]:
    """(sample name, phase or "") -> value, summed over the other labels (the model)."""
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            key = (sample.name, sample.labels.get("phase", ""))
            values[key] = values.get(key, 0.0) + sample.value
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the server under test")
    parser.add_argument("loadtest", nargs=argparse.REMAINDER, help="-- then `loadtest run` flags")
    args = parser.parse_args()
    flags = args.loadtest[1:] if args.loadtest[:1] == ["--"] else args.loadtest
    before, start = scrape(args.url), time.perf_counter()
    child_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "loadtest", "run", "--url", args.url, *flags], check=True)
    after_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, after = time.perf_counter() - start, scrape(args.url)
    delta = {key: value - before.get(key, 0.0) for key, value in after.items()}  # these only grow
    total_steps = total_forward = 0.0
    for phase in PHASES:
        steps = delta.get(("promptgen_forward_duration_seconds_count", phase), 0.0)
        if not steps:
            continue
        forward = delta.get(("promptgen_forward_duration_seconds_sum", phase), 0.0)
        rows = delta.get(("promptgen_batch_size_sum", phase), 0.0)
        total_steps, total_forward = total_steps + steps, total_forward + forward
        print(f"{phase}: {steps:.0f} steps, forward {1e3 * forward / steps:.2f} ms, {rows / steps:.1f} rows per step")
    if total_steps:
        print(f"all: {total_steps:.0f} steps in {wall:.1f} s, {1e3 * wall / total_steps:.2f} ms of wall and "
              f"{1e3 * total_forward / total_steps:.2f} ms of forward per step")  # fmt: skip
    generator = after_cpu.ru_utime + after_cpu.ru_stime - child_cpu.ru_utime - child_cpu.ru_stime
    server_cpu = delta.get(("process_cpu_seconds_total", ""), 0.0)
    engine_cpu = delta.get(("promptgen_engine_process_cpu_seconds_total", ""), 0.0)  # engine_process on
    print(
        f"CPU: the server {server_cpu:.1f} s, its engine process {engine_cpu:.1f} s, "
        f"the load generator {generator:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
