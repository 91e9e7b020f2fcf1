"""Teacher samples on disk: the record schema and a sharded, append-only JSONL store.

A store is a directory of shards `shard-00000.jsonl`, `shard-00001.jsonl`, ... Each line is
JSON. Lines come in blocks, one block per teacher request: the request's accepted records,
then one commit line that names the request and carries its bookkeeping (rejects by
reason, tokens, retries). A block is written with a single `write` call, and a record
counts only once its commit line is on disk, so a run killed at any moment (SIGINT or
SIGKILL) leaves at worst a torn block at the end of the last shard. The next writer cuts
that tail off and re-asks the lost request; readers simply ignore it.

Every record is identified by `record_id(task, intent, output)`, a hash of normalised
text, so the same output for the same intent is stored once however often a teacher
writes it (the writer skips ids it already holds, and `iter_records` de-duplicates
again for safety).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.command import normalize_text

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
TEACHER_KINDS = ("procedural", "openai", "hf")
SHARD_GLOB = "shard-*.jsonl"
SHARD_MAX_LINES = 50_000  # small enough to open in an editor, large enough to keep the file count low
LOCK_FILE = ".lock"

# field -> type every record must carry; extra fields (target, request, domain...) are allowed.
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "id": str,
    "task": str,
    "intent": str,
    "split": str,
    "output": str,
    "teacher": dict,
    "prompt_hash": str,
    "seed": int,
    "created_at": str,
}


class RecordError(ValueError):
    """A record that does not follow the schema."""


def dedup_key(text: str) -> str:
    """Case- and whitespace-insensitive identity of a text (intents and outputs alike)."""
    return normalize_text(text).casefold()


def record_id(task: str, intent: str, output: str) -> str:
    key = "\x1f".join((task, dedup_key(intent), dedup_key(output)))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise RecordError naming every way `record` breaks the schema."""
    problems = []
    for name, kind in REQUIRED_FIELDS.items():
        if name not in record:
            problems.append(f"missing {name}")
        elif not isinstance(record[name], kind) or isinstance(record[name], bool):
            problems.append(f"{name} is {type(record[name]).__name__}, not {getattr(kind, '__name__', kind)}")
    if problems:
        raise RecordError("; ".join(problems))
    if record["schema_version"] != SCHEMA_VERSION:
        raise RecordError(f"schema_version {record['schema_version']} is not {SCHEMA_VERSION}")
    if record["split"] not in SPLITS:
        raise RecordError(f"split {record['split']!r} is not one of {SPLITS}")
    teacher = record["teacher"]
    if teacher.get("kind") not in TEACHER_KINDS or not isinstance(teacher.get("model"), str):
        raise RecordError(f"teacher {teacher!r} needs kind in {TEACHER_KINDS} and a model name")
    if not normalize_text(record["output"]) or not normalize_text(record["intent"]):
        raise RecordError("empty intent or output")
    if record["output"] != normalize_text(record["output"]):
        raise RecordError("output is not cleaned (stray whitespace)")
    expected = record_id(record["task"], record["intent"], record["output"])
    if record["id"] != expected:
        raise RecordError(f"id {record['id']} does not match its content ({expected})")


def shard_paths(samples_dir: Path) -> list[Path]:
    return sorted(Path(samples_dir).glob(SHARD_GLOB))


def _read_blocks(path: Path) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any], int]]:
    """(records, commit line, byte offset just after the commit) for each complete block of a shard."""
    pending: list[dict[str, Any]] = []
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            if not raw.endswith(b"\n"):
                return  # a torn last line: the block it belongs to never committed
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                pending = []  # garbage can only be a torn write followed by a resumed one; drop that block
                continue
            if "commit" in line:
                yield pending, line, offset
                pending = []
            else:
                pending.append(line)


def iter_records(samples_dir: Path) -> Iterator[dict[str, Any]]:
    """Every committed, schema-valid record of a store, each id once, in write order."""
    seen: set[str] = set()
    for path in shard_paths(samples_dir):
        for records, _, _ in _read_blocks(path):
            for record in records:
                try:
                    validate_record(record)
                except RecordError:
                    continue
                if record["id"] not in seen:
                    seen.add(record["id"])
                    yield record


@dataclass
class StoreTotals:
    """What a store holds, summed over its commit lines (all runs so far)."""

    requests: int = 0
    records: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: Counter[str] = field(default_factory=Counter)

    def add(self, commit: Mapping[str, Any]) -> None:
        self.requests += 1
        self.records += int(commit.get("records", 0))
        self.rejects.update(commit.get("rejects", {}))
        self.prompt_tokens += int(commit.get("prompt_tokens", 0))
        self.completion_tokens += int(commit.get("completion_tokens", 0))
        self.retries.update(commit.get("retries", {}))


class RecordStore:
    """The single writer of a samples directory (an exclusive lock keeps a second one out).

    Use as a context manager: opening cuts torn tails and loads which requests are done
    and which record ids exist, so a resumed run asks only for what is missing.
    """

    def __init__(self, samples_dir: Path, shard_max_lines: int = SHARD_MAX_LINES) -> None:
        self.dir = Path(samples_dir)
        self.shard_max_lines = shard_max_lines
        self.done_requests: set[str] = set()
        self.ids: set[str] = set()
        self.totals = StoreTotals()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._shard_index = 0
        self._shard_lines = 0

    def __enter__(self) -> RecordStore:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.dir / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RecordError(f"another generate run is writing to {self.dir}") from None
        self._recover()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _recover(self) -> None:
        shards = shard_paths(self.dir)
        for path in shards:
            committed_end = 0
            lines = 0
            for records, commit, end in _read_blocks(path):
                for record in records:
                    if record.get("schema_version") != SCHEMA_VERSION:
                        raise RecordError(
                            f"{path} holds schema version {record.get('schema_version')}, this code writes "
                            f"{SCHEMA_VERSION}: use a new --out directory"
                        )
                    self.ids.add(record["id"])
                self.done_requests.add(commit["commit"])
                self.totals.add(commit)
                committed_end = end
                lines += len(records) + 1
            if path.stat().st_size != committed_end:
                os.truncate(path, committed_end)  # the torn block of a killed run: its request is asked again
            self._shard_lines = lines
        self._shard_index = len(shards) - 1 if shards else 0
        if shards and self._shard_lines >= self.shard_max_lines:
            self._shard_index += 1
            self._shard_lines = 0

    def _shard_fd(self) -> int:
        if self._fd is not None and self._shard_lines >= self.shard_max_lines:
            os.close(self._fd)
            self._fd = None
            self._shard_index += 1
            self._shard_lines = 0
        if self._fd is None:
            path = self.dir / f"shard-{self._shard_index:05d}.jsonl"
            self._fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        return self._fd

    def commit(self, request_key: str, records: list[dict[str, Any]], commit: Mapping[str, Any]) -> list[dict]:
        """Append one request's records and its commit line; returns the records actually written.

        Records whose id the store already holds are skipped (counted as `duplicate`
        rejects), so re-asking a request after a crash never writes a duplicate.
        """
        if request_key in self.done_requests:
            return []
        fresh = []
        rejects = Counter(commit.get("rejects", {}))
        for record in records:
            if record["id"] in self.ids:
                rejects["duplicate"] += 1
                continue
            validate_record(record)
            self.ids.add(record["id"])
            fresh.append(record)
        line = {**commit, "schema_version": SCHEMA_VERSION, "commit": request_key, "records": len(fresh)}
        line["rejects"] = dict(rejects)
        block = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [*fresh, line])
        fd = self._shard_fd()
        data = block.encode("utf-8")
        while data:  # one write per block in practice: a kill tears at most this block
            data = data[os.write(fd, data) :]
        self._shard_lines += len(fresh) + 1
        self.done_requests.add(request_key)
        self.totals.add(line)
        return fresh
