"""The record schema and the sharded append-only store: validation, torn tails, de-duplication."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.records import (
    SCHEMA_VERSION,
    RecordError,
    RecordStore,
    iter_records,
    record_id,
    shard_paths,
    validate_record,
)


def make_record(intent: str = "holiday sale", output: str = "Holiday Sale Now", split: str = "train") -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "id": record_id("title", intent, output),
        "task": "title",
        "intent": intent,
        "split": split,
        "output": output,
        "teacher": {"kind": "procedural", "model": "procedural-v1"},
        "prompt_hash": "0123abcd",
        "seed": 7,
        "created_at": "2026-01-01T00:00:00+00:00",
    }


def test_valid_record_passes() -> None:
    validate_record(make_record())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"split": "dev"}, "split"),
        ({"schema_version": 99}, "schema_version"),
        ({"seed": "7"}, "seed is str"),
        ({"seed": True}, "seed is bool"),
        ({"teacher": {"kind": "gpt", "model": "x"}}, "teacher"),
        ({"output": "  Holiday  Sale Now"}, "not cleaned"),
        ({"output": "Something Else"}, "does not match"),
        ({"intent": ""}, "empty"),
    ],
)
def test_invalid_records_are_refused(change: dict, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        validate_record({**make_record(), **change})


def test_missing_fields_are_all_named() -> None:
    record = make_record()
    del record["prompt_hash"], record["created_at"]
    with pytest.raises(RecordError, match="missing prompt_hash; missing created_at"):
        validate_record(record)


def test_id_ignores_case_and_whitespace_only() -> None:
    assert record_id("title", "Holiday  Sale", "Big Sale") == record_id("title", "holiday sale", " big   sale ")
    assert record_id("title", "holiday sale", "big sale") != record_id("tags", "holiday sale", "big sale")
    assert record_id("title", "holiday sale", "big sale") != record_id("title", "holiday sale", "big sales")


def test_store_commits_blocks_and_skips_known_ids(tmp_path: Path) -> None:
    with RecordStore(tmp_path) as store:
        written = store.commit("req-1", [make_record(output="A One"), make_record(output="B Two")], {"rejects": {}})
        assert len(written) == 2
        again = store.commit("req-2", [make_record(output="a one"), make_record(output="C Three")], {"rejects": {}})
        assert [r["output"] for r in again] == ["C Three"]  # "a one" is "A One" again
        assert store.commit("req-1", [make_record(output="D Four")], {}) == []  # a committed request is not redone
    assert [r["output"] for r in iter_records(tmp_path)] == ["A One", "B Two", "C Three"]
    with RecordStore(tmp_path) as store:
        assert store.done_requests == {"req-1", "req-2"}
        assert store.totals.records == 3 and store.totals.rejects["duplicate"] == 1


def test_torn_tail_is_ignored_by_readers_and_cut_by_the_next_writer(tmp_path: Path) -> None:
    with RecordStore(tmp_path) as store:
        store.commit("req-1", [make_record(output="A One")], {})
    shard = shard_paths(tmp_path)[0]
    complete = shard.read_bytes()
    # A killed run: one whole record line of an uncommitted block, then half a line.
    torn = json.dumps(make_record(output="B Two")) + "\n" + json.dumps(make_record(output="C Three"))[:30]
    shard.write_bytes(complete + torn.encode())

    assert [r["output"] for r in iter_records(tmp_path)] == ["A One"]  # uncommitted lines never count
    with RecordStore(tmp_path) as store:
        assert shard.read_bytes() == complete  # recovery cut the torn block off
        assert store.done_requests == {"req-1"}
        store.commit("req-2", [make_record(output="B Two")], {})
    assert [r["output"] for r in iter_records(tmp_path)] == ["A One", "B Two"]


def test_invalid_lines_are_skipped_by_readers(tmp_path: Path) -> None:
    shard = tmp_path / "shard-00000.jsonl"
    bad = {**make_record(output="B Two"), "split": "everything"}
    lines = [make_record(output="A One"), bad, {"schema_version": SCHEMA_VERSION, "commit": "r", "records": 2}]
    shard.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [r["output"] for r in iter_records(tmp_path)] == ["A One"]


def test_shards_rotate_and_resume_in_the_last_one(tmp_path: Path) -> None:
    with RecordStore(tmp_path, shard_max_lines=4) as store:
        for i in range(5):
            store.commit(f"req-{i}", [make_record(output=f"Out {i} A"), make_record(output=f"Out {i} B")], {})
    assert len(shard_paths(tmp_path)) == 3  # 3 lines per block: a new shard once one holds >= 4 lines
    with RecordStore(tmp_path, shard_max_lines=4) as store:
        store.commit("req-5", [make_record(output="Out 5 A")], {})  # appended to the last shard (3 lines)
        store.commit("req-6", [make_record(output="Out 6 A")], {})  # which is now full: a fourth shard
    assert len(shard_paths(tmp_path)) == 4
    assert len(list(iter_records(tmp_path))) == 12


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    with RecordStore(tmp_path), pytest.raises(RecordError, match="another generate run"), RecordStore(tmp_path):
        pass


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    old = {**make_record(), "schema_version": 0}
    (tmp_path / "shard-00000.jsonl").write_text(json.dumps(old) + "\n" + json.dumps({"commit": "r"}) + "\n")
    with pytest.raises(RecordError, match="schema version 0"), RecordStore(tmp_path):
        pass
