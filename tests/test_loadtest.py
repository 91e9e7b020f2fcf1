"""The load-test CLI against the real server on a loopback port: behaviour (counts, warm-up,
streaming, files written, errors), never timing."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_process import ServerProcess, free_port

from contract.manifest import FORMAT_VERSION
from loadtest import run as run_module
from loadtest.arrivals import poisson_arrivals
from loadtest.client import Result
from loadtest.mix import MixError, default_mix, load_mix
from loadtest.models import export_bundle, exported_before
from loadtest.report import percentile
from loadtest.results import floors_ms
from loadtest.run import Load

SAMPLE_MIX = Path(__file__).resolve().parents[1] / "loadtest" / "mixes" / "sample.jsonl"


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tiny_bundle, tmp_path_factory.mktemp("loadtest") / "server.log", max_queue=4)
    yield process
    process.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest", *args], capture_output=True, text=True, timeout=300)


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return cli("run", "--quiet", *args)


def assert_usage_error(result: subprocess.CompletedProcess[str], starts: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith(f"loadtest: {starts}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (50, 90, 99, 100)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([7.0], 99) == 7.0
    assert percentile([float(v) for v in range(1, 1001)], 99.9) == 999.0


def test_poisson_arrivals_are_seeded_and_bounded() -> None:
    arrivals = poisson_arrivals(rate=50.0, requests=5000, duration_s=200.0, seed=1)
    assert arrivals == poisson_arrivals(rate=50.0, requests=5000, duration_s=200.0, seed=1)
    assert arrivals != poisson_arrivals(rate=50.0, requests=5000, duration_s=200.0, seed=2)
    assert len(arrivals) == 5000 and arrivals == sorted(arrivals)
    assert 0.9 / 50 < arrivals[-1] / len(arrivals) < 1.1 / 50  # mean gap 1/rate
    assert len(poisson_arrivals(rate=50.0, requests=5000, duration_s=2.0)) < 200  # the duration bounds it


def test_mix_file_is_validated_line_by_line(tmp_path: Path) -> None:
    specs = load_mix(SAMPLE_MIX)
    assert {s.task for s in specs} == {"title", "search_queries", "t2i_prompt"}
    assert any(s.stream for s in specs) and any(s.n > 1 for s in specs)
    bad = tmp_path / "bad.jsonl"
    for line, message in [
        ('{"task": "title", "intent": "x", "colour": 1}', "unknown field 'colour'"),
        ('{"task": "title"}', "'intent' must be"),
        ('{"task": "title", "intent": "x", "n": true}', "'n' must be a positive integer"),
        ("not json", "not JSON"),
    ]:
        bad.write_text('{"task": "title", "intent": "ok"}\n' + line + "\n")
        with pytest.raises(MixError, match=message) as error:
            load_mix(bad)
        assert f"{bad}:2" in str(error.value)


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


def test_in_flight_requests_stay_within_the_connection_limit_and_no_pool_holds_more_than_its_share(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open loop past the server's capacity: at most `--max-connections` requests in flight,
    spread over httpx clients of POOL_CONNECTIONS each (one big pool cost ~7 ms of CPU per request)."""
    in_flight: Counter[int] = Counter()  # id(client) -> requests in it now
    most: Counter[int] = Counter()
    real_send = run_module.send

    async def counting_send(client: httpx.AsyncClient, *args: object) -> Result:
        in_flight[id(client)] += 1
        most[id(client)] = max(most[id(client)], in_flight[id(client)])
        most[0] = max(most[0], sum(in_flight.values()))
        try:
            return await real_send(client, *args)  # type: ignore[arg-type]
        finally:
            in_flight[id(client)] -= 1

    monkeypatch.setattr(run_module, "send", counting_send)
    specs = default_mix(["t2i_prompt"], lengths=[4], max_new_tokens=[16])
    load = Load(server.url, specs, requests=120, duration_s=30, warmup_s=0, concurrency=40, rate=2000.0)
    results = asyncio.run(run_module.drive(load))
    assert len(results) == 120
    total = most.pop(0)
    assert total == 40  # the backlog kept every slot busy, and never more
    assert len(most) == 3 and max(most.values()) <= run_module.POOL_CONNECTIONS  # 40 over 3 pools


def test_open_loop_with_a_mix_excludes_warmup_and_times_first_tokens(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "open.json"
    result = loadtest("--url", server.url, "--mix", str(SAMPLE_MIX), "--rate", "20", "--duration", "2",
                      "--warmup-s", "0.5", "--seed", "3", "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    sent = len(poisson_arrivals(20.0, 200, 2.0, seed=3))  # the same seeded schedule the run used
    assert report["mode"] == "open" and report["rate"] == 20.0
    assert report["requests"] + report["warmup_requests"] == sent
    assert report["warmup_requests"] > 0 and report["ok"] == report["requests"]
    assert report["streamed"] > 0  # the sample mix streams some requests
    ttft, latency = report["ttft_ms"], report["latency_ms"]
    assert 0 < ttft["p50"] <= ttft["p90"] <= ttft["p99"] <= ttft["p99.9"]
    assert ttft["p50"] <= latency["p99.9"]
    assert "ttft ms" in result.stdout


def test_sweep_writes_reports_and_a_png_and_compare_reads_them(server: ServerProcess, tmp_path: Path) -> None:
    result = cli("sweep", "--quiet", "--url", server.url, "--mix", str(SAMPLE_MIX), "--rates", "4", "8",
                 "--duration", "1", "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    reports = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["rate"] for r in reports] == [4.0, 8.0]
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for i, report in enumerate(reports):
        (tmp_path / f"{i}.json").write_text(json.dumps(report))
    compared = cli("compare", str(tmp_path / "0.json"), str(tmp_path / "1.json"))
    assert compared.returncode == 0, compared.stderr
    assert "generated tokens/s" in compared.stdout and "latency p99.9 ms" in compared.stdout
    assert "x" in compared.stdout.splitlines()[-2]  # a b/a ratio


def test_server_exposes_its_resident_memory(server: ServerProcess) -> None:
    metrics = server.metrics()  # what a soak run watches: the server's and its engine process's
    assert metrics[("process_resident_memory_bytes", ())] > 0
    assert metrics[("promptgen_engine_process_resident_memory_bytes", ())] > 0


def test_soak_reports_each_window_with_the_servers_memory(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = cli("soak", "--quiet", "--url", server.url, "--mix", str(SAMPLE_MIX), "--rate", "10",
                 "--minutes", "0.05", "--window-s", "1", "--json", str(out))  # fmt: skip
    assert result.returncode in (0, 1), result.stderr  # pass/fail is timing: not judged here
    soak = json.loads(out.read_text())
    assert [w["window"] for w in soak["windows"]] == [1, 2, 3]
    assert all(w["rss_mb"] > 0 for w in soak["windows"])
    verdict = soak["verdict"]
    assert verdict["errors"] == 0 and verdict["no_errors"]
    assert set(verdict) >= {"p99_stable", "rss_flat", "passed", "rss_growth", "worst_window_p99_ratio"}
    assert ("SOAK PASSED" if verdict["passed"] else "SOAK FAILED") in result.stdout


def test_bench_quick_mode_wires_every_phase_into_results(tiny_checkpoint: Path, tiny_bundle: Path,
                                                         tmp_path: Path) -> None:  # fmt: skip
    # the harness's wiring, not its figures: a naive baseline and our server, seconds per phase
    # (CTranslate2 too where the optional `bench` extra is installed)
    systems = ["naive", "ours_int8"] + (["ct2"] if importlib.util.find_spec("ctranslate2") else [])
    out = tmp_path / "RESULTS.md"
    result = cli("bench", "--quick", "--models", "tiny", "--checkpoint", str(tiny_checkpoint),
                 "--bundle", str(tiny_bundle), "--work", str(tmp_path / "work"), "--out", str(out),
                 "--systems", *systems)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = out.read_text()
    assert "QUICK MODE" in text and "fp32 GEMM" in text and "GB/s" in text
    figures = json.loads(out.with_suffix(".json").read_text())
    assert figures["roofline"]["ort_int8_gemm_gops"] > 0  # the INT8 GEMM peak, measured
    assert figures["roofline"]["read_bandwidth_gbs"] > 0 and "memory read bandwidth" in text
    assert "INT8-GEMM compute floor" in text and "% of the roofline" in text
    assert "Tail: at 50% of saturation ours INT8's p99 is" in text  # the tail goal, as a ratio
    tiny = figures["models"]["tiny"]["systems"]
    assert set(tiny) == set(systems)
    for system in tiny.values():
        assert system["saturation"]["tokens_per_s"] > 0 and system["saturation"]["errors"] == {}
        assert [r["fraction"] for r in system["open"]] == [0.5]
        assert system["label"] in text
    # unloaded answered whole by every system; ours also streamed, for the TTFT
    assert all(s["unloaded"]["ttft_ms"] is None for s in tiny.values())
    assert tiny["ours_int8"]["unloaded_stream"]["ttft_ms"] is not None
    assert "unloaded_stream" not in tiny["naive"]
    alone = figures["models"]["tiny"]["inprocess"]  # ours without HTTP, a lone request's steps
    assert alone["requests"] >= 1 and alone["step_ms"] > alone["forward_ms"] > 0
    assert "Without HTTP (one request at a time through the engine's scheduler" in text
    # each peer is measured at the thread count that served it best in its trial, and says so
    counts = {str(t) for t in {1, os.cpu_count() or 1}}
    for key in set(systems) - {"ours_int8"}:
        peer = tiny[key]
        assert set(peer["thread_trial"]) == counts and all(v > 0 for v in peer["thread_trial"].values())
        assert str(peer["threads"]) == max(peer["thread_trial"], key=peer["thread_trial"].get)
        assert peer["command"].endswith(f"--threads {peer['threads']}")
        assert f"{peer['label']} ({peer['threads']} thread" in text
    assert "threads" not in tiny["ours_int8"]  # ours at its own default
    for batch in figures["models"]["tiny"].get("ct2_static", {}).values():  # each batch at each count, the fastest kept
        assert set(batch["thread_trial"]) == counts and batch["tokens_per_s"] == max(batch["thread_trial"].values())
        assert batch["tokens_per_s"] == batch["thread_trial"][str(batch["threads"])] > 0
    assert "x |" in text  # ratios against the naive baseline
    assert (tmp_path / "RESULTS_tiny.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_exports_again_a_bundle_of_an_older_format(tmp_path: Path) -> None:
    """A work folder's bundle from an older export is not measured as if it were this code's."""
    stale = tmp_path / "bundle"
    stale.mkdir()
    (stale / "manifest.json").write_text(json.dumps({"format_version": 3}))
    with pytest.raises(subprocess.CalledProcessError):  # the export runs (and fails: no checkpoint)
        export_bundle(tmp_path / "no_checkpoint", stale)
    assert not (stale / "manifest.json").exists()


def test_a_bundle_written_before_the_export_code_changed_counts_as_stale(tmp_path: Path) -> None:
    code, manifest = tmp_path / "export", tmp_path / "manifest.json"
    code.mkdir()
    (code / "onnx_graph.py").write_text("")
    manifest.write_text(json.dumps({"format_version": FORMAT_VERSION}))
    os.utime(code / "onnx_graph.py", (1_000, 1_000))
    assert not exported_before(manifest, code)
    os.utime(manifest, (500, 500))  # exported, then the export code changed
    assert exported_before(manifest, code)


def test_unreachable_server_is_a_one_line_error_with_exit_2() -> None:
    assert_usage_error(loadtest("--url", f"http://127.0.0.1:{free_port()}", "--requests", "1"), "cannot reach")


def test_usage_mistakes_are_one_line_errors_with_exit_2(server: ServerProcess, tmp_path: Path) -> None:
    assert_usage_error(loadtest("--url", "ftp://127.0.0.1"), "--url must be")
    assert_usage_error(loadtest("--url", server.url, "--rate", "0"), "--rate must be positive")
    assert_usage_error(loadtest("--url", server.url, "--mix", str(tmp_path / "none.jsonl")), "cannot read mix file")
    assert_usage_error(loadtest("--url", server.url, "--task", "nope"), "--task nope")
    assert_usage_error(cli("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")), "cannot read")
    assert_usage_error(cli("soak", "--url", server.url, "--rate", "5", "--minutes", "0.01"), "--warmup-windows")


def test_weight_floor_rests_on_the_read_bandwidth_of_all_cores() -> None:
    # 100M one-byte weights: 2 ms at 50 GB/s of reading; a result from before the read bandwidth
    # was measured falls back on its copy bandwidth (25 GB/s: 4 ms)
    roof = {"read_bandwidth_gbs": 50.0, "memory_bandwidth_gbs": 25.0, "ort_int8_gemm_gops": 1000.0}
    memory, compute, peak = floors_ms(100_000_000, 32, roof)
    assert (round(memory, 6), round(compute, 6), peak) == (2.0, 6.4, "INT8")
    del roof["read_bandwidth_gbs"]
    assert round(floors_ms(100_000_000, 1, roof)[0], 6) == 4.0
