"""Killing `generate` at any moment loses at most its in-flight requests; re-running resumes exactly.

Each run is a real subprocess talking to a real chat-completions server on loopback,
whose answers depend only on the prompt, so an interrupted-then-resumed run must end
with the same set of records as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chat_server import ChatServer

from training.records import iter_records, shard_paths

REPO = Path(__file__).resolve().parents[1]
INTENTS = [f"{adjective} {thing}" for adjective in ("cozy", "vintage", "summer", "rustic") for thing in
           ("reading nook", "coffee shop", "wedding invitation", "road trip", "bakery logo")]  # fmt: skip
TASKS = ("t2i_prompt", "title")
REQUESTS = len(INTENTS) * len(TASKS)


def command(server: ChatServer, intents: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "training.generate", "--out", str(out), "--teacher", "openai",
        "--base-url", server.base_url, "--model", server.model, "--intents", str(intents),
        "--tasks", *TASKS, "--per-intent", "3", "--concurrency", "2",
    ]  # fmt: skip


def committed(out: Path) -> int:
    return sum(
        line.startswith(b"{") and b'"commit"' in line for p in shard_paths(out) for line in p.read_bytes().splitlines()
    )


def comparable(out: Path) -> set[str]:
    """Records without their timestamp: what must match between runs."""
    return {json.dumps({k: v for k, v in r.items() if k != "created_at"}, sort_keys=True) for r in iter_records(out)}


def default_ctrl_c() -> None:
    """In the child, before Python starts: ctrl-c as a terminal delivers it. A test run started in
    the background of a non-interactive shell (`make test &`) has SIGINT ignored, children inherit
    that, and Python then leaves it ignored: generate would not see the ctrl-c and would finish
    (exit 0). That is right for a user's `nohup` run, and not what this test asks about."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_after(cmd: list[str], out: Path, sig: signal.Signals, requests: int) -> subprocess.CompletedProcess[str]:
    """Run generate and send `sig` once `requests` requests are committed (others are in flight)."""
    process = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_ctrl_c
    )
    deadline = time.monotonic() + 60
    while committed(out) < requests:
        assert process.poll() is None and time.monotonic() < deadline, "generate ended before it could be killed"
        time.sleep(0.01)
    os.kill(process.pid, sig)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def server() -> ChatServer:
    with ChatServer(delay=0.05) as chat:  # ~40 requests/s at concurrency 2: a run lasts long enough to kill
        yield chat


@pytest.fixture(scope="module")
def uninterrupted(server: ChatServer, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    root = tmp_path_factory.mktemp("uninterrupted")
    intents = root / "intents.txt"
    intents.write_text("\n".join(INTENTS))
    subprocess.run(command(server, intents, root / "samples"), cwd=REPO, check=True, capture_output=True)
    records = comparable(root / "samples")
    assert len(records) == REQUESTS * 3
    return records


# kill -9 after two seeded-random numbers of committed requests (a failure re-runs the same), ctrl-c after a third
KILL_POINTS = sorted(random.Random(5).sample(range(1, REQUESTS * 2 // 3), 2))


@pytest.mark.parametrize(
    ("sig", "after"),
    [*((signal.SIGKILL, k) for k in KILL_POINTS), (signal.SIGINT, REQUESTS // 3)],
    ids=[*(f"kill-9-after-{k}" for k in KILL_POINTS), "ctrl-c"],
)
def test_interrupted_run_resumes_to_the_same_records(
    server: ChatServer, uninterrupted: set[str], tmp_path: Path, sig: signal.Signals, after: int
) -> None:
    intents = tmp_path / "intents.txt"
    intents.write_text("\n".join(INTENTS))
    out = tmp_path / "samples"
    cmd = command(server, intents, out)

    killed = interrupt_after(cmd, out, sig, after)
    if sig == signal.SIGINT:
        assert killed.returncode == 130, (killed.stdout[-800:], killed.stderr[-1500:])
        assert "interrupted: re-run the same command to resume" in killed.stdout
    else:
        assert killed.returncode == -signal.SIGKILL
    done_before = committed(out)
    assert 0 < done_before < REQUESTS

    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({done_before} requests already done)" in resumed.stderr
    assert comparable(out) == uninterrupted  # no loss
    lines = [json.loads(line) for p in shard_paths(out) for line in p.read_text().splitlines()]
    record_ids = [line["id"] for line in lines if "commit" not in line]
    assert len(record_ids) == len(set(record_ids)) == len(uninterrupted)  # no duplicate ever written
    assert committed(out) == REQUESTS

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "0 requests, 0 records" in again.stdout  # a finished run is a no-op
