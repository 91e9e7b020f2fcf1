"""`python -m training score`: measure the rewards every teacher sample achieved.

Reads the teacher's samples (training.records), adds `words` (the length reward) and
`relevance` (all-MiniLM-L6-v2 cosine of intent and output) to each, and writes one
JSON line per sample. Scores are cached by record id in the output file itself: a
re-run scores only the records that are new (or whose text changed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from training.rewards import Embedder, length_reward

SCORE_BATCH = 512  # records per embedding call: big enough to batch well, small enough to show progress


def record_id(record: dict[str, Any]) -> str:
    """The record's own id, or a content hash for records that carry none."""
    if record.get("id"):
        return str(record["id"])
    key = json.dumps([record.get("task"), record.get("intent"), record.get("output"), record.get("teacher")])
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _cache_key(record: dict[str, Any]) -> tuple[str, str, str]:
    # The id alone is not enough: a regenerated record may reuse its id with new text.
    return record_id(record), str(record["intent"]), str(record["output"])


def read_scored(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score_records(
    records: Iterable[dict[str, Any]], embedder: Embedder | None, cached: Iterable[dict[str, Any]] = ()
) -> tuple[list[dict[str, Any]], int]:
    """Records with `id`, `words` and `relevance` added; returns (records, how many were newly scored).

    `embedder` may be None when everything is cached (so a no-op re-run loads no model).
    """
    cache = {_cache_key(r): r["relevance"] for r in cached if "relevance" in r}
    scored = []
    for record in records:
        record = dict(record)
        record["id"] = record_id(record)
        record["words"] = length_reward(record["output"])
        scored.append(record)
    todo = [r for r in scored if _cache_key(r) not in cache]
    if todo and embedder is None:
        embedder = Embedder()
    with tqdm(total=len(todo), desc="relevance", unit="sample", disable=not todo) as bar:
        for start in range(0, len(todo), SCORE_BATCH):
            batch = todo[start : start + SCORE_BATCH]
            values = embedder.relevance([r["intent"] for r in batch], [r["output"] for r in batch])  # type: ignore[union-attr]
            for record, value in zip(batch, values, strict=True):
                cache[_cache_key(record)] = round(float(value), 6)
            bar.update(len(batch))
    for record in scored:
        record["relevance"] = cache[_cache_key(record)]
    return scored, len(todo)


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)  # atomic: a killed run leaves the previous file intact


def run(args: argparse.Namespace) -> int:
    from training.records import iter_records

    samples, out = Path(args.samples), Path(args.out)
    if not samples.exists():
        print(f"error: no samples at {samples} (run `python -m training generate` first)", file=sys.stderr)
        return 2
    cached = read_scored(out) if out.is_file() else []
    records = list(iter_records(samples))
    if not records:
        print(f"error: {samples} holds no records", file=sys.stderr)
        return 2
    scored, new = score_records(records, None, cached)
    write_jsonl(scored, out)
    print(f"scored {len(scored)} records ({new} new, {len(scored) - new} from cache) -> {out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("score", help="add length and relevance rewards to the teacher samples")
    parser.add_argument("--samples", default="artifacts/data/samples", help="the generated samples directory")
    parser.add_argument("--out", default="artifacts/data/scored.jsonl", help="scored records (JSON lines)")
    parser.set_defaults(func=run)
