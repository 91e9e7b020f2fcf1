"""`python -m training score`: measure the rewards every teacher sample achieved.

Reads the teacher's samples (training.records), adds `words` (the length reward) and
`relevance` (all-MiniLM-L6-v2 cosine of intent and output) to each, and writes one
JSON line per sample. Scores are cached by record id in the output file itself: a
re-run scores only the records that are new (or whose text changed).

Kill-safe (issue 12): while a run is in progress each scored batch is appended to a
journal (`<out>.partial`); the output is written to a temporary file and renamed into
place, and only then is the journal removed. A run killed at any moment leaves the old
output whole and at worst a torn last journal line, which the next run cuts off; that
run re-scores only what the journal lacks and ends with the same file an uninterrupted
run writes (tests/test_hardening_pipeline.py kills the real CLI to check it).
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
    """Scored records from a JSONL file; a line torn by a kill is skipped, not fatal."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def journal_path(out: Path) -> Path:
    """Where scores land batch by batch while a run is in progress (removed when it ends)."""
    return out.with_name(out.name + ".partial")


def cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline (a kill mid-append). Left in place, the next
    append would continue that line, and the torn fragment would spoil a good record."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def score_records(
    records: Iterable[dict[str, Any]],
    embedder: Embedder | None,
    cached: Iterable[dict[str, Any]] = (),
    journal: Path | None = None,
    batch_size: int = SCORE_BATCH,
) -> tuple[list[dict[str, Any]], int]:
    """Records with `id`, `words` and `relevance` added; returns (records, how many were newly scored).

    `embedder` may be None when everything is cached (so a no-op re-run loads no model).
    Each scored batch is appended to `journal`, so a killed run loses one batch at most.
    """
    cache = {_cache_key(r): r["relevance"] for r in cached if "relevance" in r}
    scored = []
    for record in records:
        record = dict(record)
        record["id"] = record_id(record)
        record["words"] = length_reward(record["output"])
        scored.append(record)
    todo = [r for r in scored if _cache_key(r) not in cache]
    todo.sort(key=lambda r: len(r["output"]))  # batches of similar length pad little
    if todo and embedder is None:
        embedder = Embedder()
    with tqdm(total=len(todo), desc="relevance", unit="sample", disable=not todo) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            # Each batch encodes its own texts, none carried over: a resumed run's batches are the
            # uninterrupted run's last ones (`todo`'s order is the same), so are their scores.
            values = embedder.relevance([r["intent"] for r in batch], [r["output"] for r in batch], cached=False)  # type: ignore[union-attr]  # set above whenever there is anything to score
            lines = []
            for record, value in zip(batch, values, strict=True):
                cache[_cache_key(record)] = round(float(value), 6)
                lines.append(
                    {k: record[k] for k in ("id", "intent", "output")} | {"relevance": cache[_cache_key(record)]}
                )
            if journal:
                with open(journal, "a", encoding="utf-8") as f:
                    f.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
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
    if args.batch_size < 1:
        print(f"error: --batch-size must be at least 1, not {args.batch_size}", file=sys.stderr)
        return 2
    if not samples.exists():
        print(f"error: no samples at {samples} (run `python -m training generate` first)", file=sys.stderr)
        return 2
    journal = journal_path(out)
    cut_torn_tail(journal)
    cached = [r for path in (out, journal) if path.is_file() for r in read_scored(path)]
    records = list(iter_records(samples))
    if not records:
        print(f"error: {samples} holds no records", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    scored, new = score_records(records, None, cached, journal, args.batch_size)
    write_jsonl(scored, out)
    journal.unlink(missing_ok=True)
    print(f"scored {len(scored)} records ({new} new, {len(scored) - new} from cache) -> {out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("score", help="add length and relevance rewards to the teacher samples")
    parser.add_argument("--samples", default="artifacts/data/samples", help="the generated samples directory")
    parser.add_argument("--out", default="artifacts/data/scored.jsonl", help="scored records (JSON lines)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=SCORE_BATCH,
        help="records per embedding call and journal write (a kill loses at most one batch)",
    )
    parser.set_defaults(func=run)
