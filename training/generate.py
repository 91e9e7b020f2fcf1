"""`python -m training generate`: ask a teacher for outputs for every (task, intent), store them.

One request per (task, intent) asks for `--per-intent` outputs spread over the task's
length range and over the three relevance styles, so every intent contributes short
and long, on-topic and off-topic samples. Outputs are cleaned, checked against the
task's validity rules and de-duplicated; rejects are counted by reason. The store is
append-only and commits per request: re-running the same command skips committed
requests, so an interrupted run resumes where it stopped and never writes a duplicate.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from contract.command import count_words
from training.intents import CorpusError, Intent, load_intents
from training.records import SCHEMA_VERSION, RecordError, RecordStore, record_id
from training.tasks import STYLES, TASKS_DIR, TaskError, TaskSpec, load_tasks
from training.teachers import Completion, Request, Target, Teacher, TeacherError, add_teacher_arguments, build_teacher
from training.teachers.parsing import reject_reason

DEFAULT_PER_INTENT = 1  # one output per (task, intent) asked
# Each intent is asked for 2 of the 4 tasks by default: ~21,000 intents x 2 = ~42k samples, scored in
# about 2 minutes, all the first run's 8 minutes of training get through (~1,500 steps of 32 are
# ~48k examples) and every intent is still in the data. All 4 (85k samples) cost 2 more minutes of
# scoring for -0.02..+0.09 of relevance at `high` per task (bench/realistic.md, part 5).
DEFAULT_TASKS_PER_INTENT = 2
DEFAULT_SEED = 0


def request_seed(seed: int, task: str, intent: str) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{task}\x1f{intent}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def plan_targets(task: TaskSpec, n: int, rng: random.Random) -> tuple[Target, ...]:
    """n targets: lengths stratified over the task's range (one per stratum), styles balanced."""
    low, high = task.target_words
    span = high - low + 1
    lengths = [min(high, low + int(span * (k + rng.random()) / n)) for k in range(n)]
    offset = rng.randrange(len(STYLES))
    styles = [STYLES[(k + offset) % len(STYLES)] for k in range(n)]
    rng.shuffle(styles)  # which length gets which style varies by intent, so every pairing occurs
    return tuple(Target(words, style) for words, style in zip(lengths, styles, strict=True))


def intent_tasks(tasks: Sequence[str], intent: str, count: int, seed: int) -> set[str]:
    """The `count` tasks (all when 0) an intent is asked for: drawn per intent from a seeded RNG,
    so every intent stays in the data, each task gets about its share, and asking for more
    tasks later keeps the ones already drawn (a run with a larger count only adds requests)."""
    if not count or count >= len(tasks):
        return set(tasks)
    order = sorted(tasks)
    random.Random(request_seed(seed, "\x1etasks", intent)).shuffle(order)
    return set(order[:count])


def build_requests(
    tasks: dict[str, TaskSpec],
    intents: list[Intent],
    teacher: Teacher,
    per_intent: int,
    seed: int,
    tasks_per_intent: int = 0,
) -> list[Request]:
    requests = []
    asked = {i.text: intent_tasks(list(tasks), i.text, tasks_per_intent, seed) for i in intents}
    for task in tasks.values():
        prompt_hash = teacher.prompt_hash(task)
        for intent in intents:
            if task.name not in asked[intent.text]:
                continue
            request_rng_seed = request_seed(seed, task.name, intent.text)
            targets = plan_targets(task, per_intent, random.Random(request_rng_seed))
            identity = [teacher.kind, teacher.model, prompt_hash, task.name, intent.text, request_rng_seed]
            identity.append([[t.words, t.style] for t in targets])
            key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]
            requests.append(Request(key, task, intent.text, intent.domain, targets, request_rng_seed))
    return requests


@dataclass
class RunStats:
    """What this run did (the store keeps totals over all runs)."""

    requests: int = 0
    failed: int = 0  # requests the teacher gave up on after its retries: asked again by the next run
    records: int = 0
    words: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, completion: Completion, written: list[dict[str, Any]], rejects: Counter[str]) -> None:
        self.requests += 1
        self.records += len(written)
        self.words += sum(count_words(r["output"]) for r in written)
        self.rejects.update(rejects)
        self.retries.update(completion.retries)
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens


def to_records(
    completion: Completion, teacher: Teacher, prompt_hash: str, split: str
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The valid, distinct records of one completion, and its rejects by reason."""
    request = completion.request
    rejects: Counter[str] = Counter()
    if completion.malformed:
        rejects["malformed_reply"] += completion.malformed
    wanted = len(request.targets)
    extra = completion.extra + max(0, len(completion.outputs) - wanted)
    if extra:
        rejects["extra"] += extra
    if missing := max(0, wanted - len(completion.outputs)) + sum(o is None for o in completion.outputs[:wanted]):
        rejects["missing"] += missing
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    records: list[dict[str, Any]] = []
    ids: set[str] = set()
    for output, target in zip(completion.outputs, request.targets, strict=False):
        if output is None:
            continue  # counted as missing above
        reason = reject_reason(request.task, output)
        rid = record_id(request.task.name, request.intent, output)
        if reason is None and rid in ids:
            reason = "duplicate"
        if reason:
            rejects[reason] += 1
            continue
        ids.add(rid)
        records.append(
            {
                "schema_version": SCHEMA_VERSION,
                "id": rid,
                "task": request.task.name,
                "intent": request.intent,
                "domain": request.domain,
                "split": split,
                "output": output,
                "target": {"words": target.words, "style": target.style},
                "teacher": {"kind": teacher.kind, "model": teacher.model},
                "prompt_hash": prompt_hash,
                "seed": request.seed,
                "request": request.key,
                "created_at": created_at,
            }
        )
    return records, rejects


async def run_generation(
    teacher: Teacher, requests: list[Request], splits: dict[str, str], store: RecordStore, stats: RunStats
) -> None:
    pending = [r for r in requests if r.key not in store.done_requests]
    hashes = {r.task.name: teacher.prompt_hash(r.task) for r in pending}
    with tqdm(total=len(requests), initial=len(requests) - len(pending), desc="generate", unit="req") as bar:
        async for completion in teacher.complete(iter(pending)):
            request = completion.request
            if completion.failed:
                stats.failed += 1
                stats.retries.update(completion.retries)
                bar.update(1)
                continue
            records, rejects = to_records(completion, teacher, hashes[request.task.name], splits[request.intent])
            commit = {
                "rejects": dict(rejects),
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "retries": dict(completion.retries),
            }
            written = store.commit(request.key, records, commit)
            rejects["duplicate"] += len(records) - len(written)  # ids an earlier request already stored
            stats.add(completion, written, +rejects)  # unary +: drop zero counts
            bar.update(1)
            bar.set_postfix(records=stats.records, rejects=sum(stats.rejects.values()), refresh=False)


def format_summary(stats: RunStats, store: RecordStore, interrupted: bool) -> str:
    elapsed = max(time.perf_counter() - stats.started, 1e-9)
    totals = store.totals
    lines = [
        ("interrupted: re-run the same command to resume" if interrupted else "done")
        + f" in {elapsed:.1f}s: {stats.requests} requests, {stats.records} records"
        + f" ({stats.records / elapsed:.1f} records/s, {stats.requests / elapsed:.2f} requests/s)",
        f"  failed requests (left for the next run): {stats.failed}",
        f"  rejects by reason: {dict(stats.rejects.most_common()) or 'none'}",
        f"  retries by reason: {dict(stats.retries.most_common()) or 'none'}",
        f"  tokens: {stats.prompt_tokens} prompt, {stats.completion_tokens} completion; output words: {stats.words}",
        f"  store {store.dir}: {totals.records} records from {totals.requests} requests,"
        f" rejects {dict(totals.rejects.most_common()) or 'none'},"
        f" retries {dict(totals.retries.most_common()) or 'none'}",
    ]
    return "\n".join(lines)


def select_intents(intents: list[Intent], limit: int | None) -> list[Intent]:
    """`limit` intents spread evenly over the corpus (so every domain and split stays represented)."""
    if not limit or limit >= len(intents):
        return intents
    step = len(intents) / limit
    return [intents[int(i * step)] for i in range(limit)]


def generate(args: argparse.Namespace) -> int:
    try:
        if args.per_intent < 1 or (args.limit_intents is not None and args.limit_intents < 1):
            raise TaskError("--per-intent and --limit-intents must be at least 1")
        if args.tasks_per_intent < 0:
            raise TaskError("--tasks-per-intent must be 0 (every task) or more")
        tasks = load_tasks(args.tasks, args.tasks_dir)
        intents = select_intents(load_intents(args.intents), args.limit_intents)
        teacher = build_teacher(args)
    except (TaskError, CorpusError, TeacherError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    requests = build_requests(tasks, intents, teacher, args.per_intent, args.seed, args.tasks_per_intent)
    splits = {i.text: i.split for i in intents}
    stats = RunStats()
    interrupted = False
    try:
        with RecordStore(args.out) as store:
            print(
                f"{teacher.kind} teacher {teacher.model}: {len(tasks)} tasks x {len(intents)} intents x"
                f" {args.per_intent} outputs -> {args.out} ({len(store.done_requests)} requests already done)",
                file=sys.stderr,
            )
            try:
                asyncio.run(_generate(teacher, requests, splits, store, stats))
            except KeyboardInterrupt:
                interrupted = True
            print(format_summary(stats, store, interrupted))
    except (TeacherError, RecordError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if interrupted:
        return 130
    if stats.failed:
        print(f"error: {stats.failed} requests failed after all retries; re-run the same command", file=sys.stderr)
        return 1
    return 0


async def _generate(
    teacher: Teacher, requests: list[Request], splits: dict[str, str], store: RecordStore, stats: RunStats
) -> None:
    try:
        await teacher.check()
        await run_generation(teacher, requests, splits, store, stats)
    finally:
        await teacher.aclose()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="ask a teacher for samples (resumable)", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/data/samples"), help="samples directory (shards)")
    parser.add_argument("--tasks", nargs="+", default=None, help="task names (default: every task in training/tasks)")
    parser.add_argument("--tasks-dir", type=Path, default=TASKS_DIR, help="folder of task files (*.toml)")
    parser.add_argument("--intents", type=Path, default=None, help="intent file (default: the shipped corpus)")
    parser.add_argument("--limit-intents", type=int, default=None, help="use N intents spread over the corpus")
    parser.add_argument("--per-intent", type=int, default=DEFAULT_PER_INTENT, help="outputs asked per (task, intent)")
    parser.add_argument(
        "--tasks-per-intent",
        type=int,
        default=DEFAULT_TASKS_PER_INTENT,
        help="ask each intent for this many of the tasks, drawn per intent (0: every task)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="base seed of targets and procedural outputs")
    add_teacher_arguments(parser)
    parser.set_defaults(func=generate)


def main(argv: list[str] | None = None) -> int:
    """`python -m training.generate ...`: the same command without importing the other stages (torch)."""
    parser = argparse.ArgumentParser(prog="python -m training")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["generate", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
