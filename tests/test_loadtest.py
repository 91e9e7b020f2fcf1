"""The load-test CLI against the real server on a loopback port."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import ServerProcess, free_port

from loadtest.run import percentile


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tiny_bundle, tmp_path_factory.mktemp("loadtest") / "server.log", max_queue=4)
    yield process
    process.stop()


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "loadtest", "run", "--quiet", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (50, 90, 99, 100)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([7.0], 99) == 7.0


def test_report_counts_every_request_and_orders_percentiles(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = loadtest("--url", server.url, "--requests", "12", "--concurrency", "3", "--length", "4", "8",
                      "--max-new-tokens", "8", "24", "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "p50" in result.stdout and "tokens/s" in result.stdout
    report = json.loads(out.read_text())
    assert report["requests"] == report["ok"] == 12
    assert report["errors"] == {}
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert 0 < report["generated_tokens"] <= 12 * 24
    assert report["tokens_per_s"] > 0


def test_overload_is_reported_as_errors_by_status(server: ServerProcess, tmp_path: Path) -> None:
    # admission = max_batch_size (32) + max_queue (4): 64 concurrent long requests overflow it
    out = tmp_path / "report.json"
    result = loadtest("--url", server.url, "--requests", "64", "--concurrency", "64", "--n", "1",
                      "--max-new-tokens", "100", "--json", str(out))  # fmt: skip
    report = json.loads(out.read_text())
    assert result.returncode == 0
    assert report["ok"] + sum(report["errors"].values()) == 64
    assert report["errors"].get("429 overloaded", 0) > 0


def test_unreachable_server_is_a_one_line_error_with_exit_2() -> None:
    result = loadtest("--url", f"http://127.0.0.1:{free_port()}", "--requests", "1")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("loadtest: cannot reach")
    assert len(result.stderr.strip().splitlines()) == 1
