"""The `openai` teacher against a real chat-completions server on a loopback port."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from chat_server import ChatServer

from contract.command import count_words
from training import generate
from training.records import iter_records, shard_paths
from training.teachers.openai_compatible import retry_after_seconds

INTENTS = ["holiday sale", "cozy reading nook", "vegan birthday cake"]
SECRET = "sk-test-secret-do-not-print"


def write_intents(tmp_path: Path) -> Path:
    path = tmp_path / "intents.txt"
    path.write_text("\n".join(INTENTS) + "\n")
    return path


def run(tmp_path: Path, server: ChatServer, out: Path, *extra: str) -> int:
    return generate.main(
        [
            "--out", str(out), "--teacher", "openai", "--base-url", server.base_url, "--model", server.model,
            "--api-key-env", "TEST_TEACHER_KEY", "--intents", str(write_intents(tmp_path)),
            "--tasks", "t2i_prompt", "title", "--per-intent", "3", "--concurrency", "2", "--timeout", "0.5",
            *extra,
        ]
    )  # fmt: skip


def test_run_survives_429_500_timeouts_and_malformed_bodies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TEACHER_KEY", SECRET)
    with ChatServer(faults=["429", "500", "slow", "malformed"]) as server:
        started = time.perf_counter()
        assert run(tmp_path, server, tmp_path / "samples") == 0
        elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()

    records = list(iter_records(tmp_path / "samples"))
    assert len(records) == len(INTENTS) * 2 * 3  # every request answered despite the faults
    assert len({r["id"] for r in records}) == len(records)
    for record in records:
        assert record["teacher"] == {"kind": "openai", "model": "fake-llama"}
        lead = len(record["intent"].split()) if record["target"]["style"] == "high" else 1
        assert count_words(record["output"]) == max(record["target"]["words"], lead + 2)  # the line the server sent
        assert not record["output"].startswith(("1.", '"', "Here"))  # numbering, quotes, preamble stripped
        if record["target"]["style"] == "high":
            assert record["intent"] in record["output"]
    assert {k: server.served[k] for k in ("429", "500", "slow", "malformed")} == {
        "429": 1,
        "500": 1,
        "slow": 1,
        "malformed": 1,
    }
    assert "retries by reason: {" in out
    for reason in ("'429': 1", "'500': 1", "'timeout': 1", "'malformed': 1"):
        assert reason in out
    assert elapsed >= 1.0  # the 429's Retry-After: 1 was honoured
    assert all(auth == f"Bearer {SECRET}" for auth in server.authorization)
    assert SECRET not in out + err
    assert "tokens: 0 prompt" not in out  # usage was summed


def test_unreachable_endpoint_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = ChatServer()  # bound but never started, then closed: nothing listens on its port
    server._httpd.server_close()
    assert run(tmp_path, server, tmp_path / "samples") == 1
    assert "cannot reach the teacher" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ChatServer(model="llama-3-8b-instruct") as server:
        server.model = "llama-3-8b-instruct"
        code = generate.main(
            ["--out", str(tmp_path / "s"), "--teacher", "openai", "--base-url", server.base_url,
             "--model", "no-such-model", "--intents", str(write_intents(tmp_path))]
        )  # fmt: skip
    assert code == 1
    assert "'no-such-model' is not served" in capsys.readouterr().err
    assert not shard_paths(tmp_path / "s")


def test_request_failing_every_retry_is_left_for_the_next_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "samples"
    with ChatServer(faults=["500", "500"]) as server:
        code = run(tmp_path, server, out, "--max-retries", "1", "--concurrency", "1")
        assert code == 1  # one request gave up: reported, not committed
        assert "failed after all retries" in capsys.readouterr().err
        assert len(list(iter_records(out))) == (len(INTENTS) * 2 - 1) * 3
        assert run(tmp_path, server, out) == 0  # the re-run asks only the failed request
        assert "done in" in capsys.readouterr().out
    assert len(list(iter_records(out))) == len(INTENTS) * 2 * 3


def test_endpoint_going_down_mid_run_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ChatServer(faults=["ok"] + ["500"] * 50) as server:
        code = run(tmp_path, server, tmp_path / "samples", "--max-retries", "1")
    assert code == 1
    assert "looks down" in capsys.readouterr().err
    assert len(list(iter_records(tmp_path / "samples"))) == 3  # what was answered before is kept


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert 0.0 <= retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") < 1e-9  # a date in the past: no wait
