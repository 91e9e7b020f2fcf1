"""Issue 12, reliability and security: the real server on loopback, one test per case.

Every bad request gets a 4xx JSON body `{"error": {"type", "message", "param"}}`, never
a 5xx; keys guard every route but the probes; a broken bundle refuses to start with a
one-line reason; a failed forward fails only its batch; a hung or dead engine turns
/readyz to 503. Faults come from the server's own test hook (`fault_inject`,
server/engine/faults.py), not from mocks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import ServerProcess, free_port
from tokenizers import Tokenizer

from contract.command import encode_text, prompt_ids
from contract.manifest import MANIFEST_FILE, load_manifest
from server.config import Settings
from tests.poisoned_bundle import poisoned_bundle

TASK = "title"
GOOD: dict[str, Any] = {"task": TASK, "input": "holiday sale", "max_new_tokens": 8, "seed": 3, "temperature": 1.0}


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("hardening") / "server.log"
    process = ServerProcess(tiny_bundle, log, variant="fp32", max_batch_size=16, intra_op_threads=1)
    yield process
    process.stop()


def raw_post(client: httpx.Client, route: str, body: bytes, content_type: str = "application/json") -> httpx.Response:
    return client.post(route, content=body, headers={"Content-Type": content_type})


def assert_error(response: httpx.Response, status: int, type: str, param: str | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == type, error
    assert error["param"] == param, error
    assert error["message"]


# --- 1. input -------------------------------------------------------------------------

NATIVE = "/v1/generate"
OPENAI = "/v1/completions"
COMPLETION = {"prompt": "holiday sale", "max_tokens": 4, "task": TASK}
# (route, raw body, status, type, param)
BAD_BODIES = {
    "whitespace input": (NATIVE, json.dumps({**GOOD, "input": " \t\n "}), 422, "invalid_request", "input"),
    "empty input": (NATIVE, json.dumps({**GOOD, "input": ""}), 422, "invalid_request", "input"),
    "NaN temperature": (
        NATIVE,
        '{"task": "title", "input": "x", "temperature": NaN}',
        400,
        "invalid_json",
        "temperature",
    ),
    "Infinity top_p": (NATIVE, '{"task": "title", "input": "x", "top_p": Infinity}', 400, "invalid_json", "top_p"),
    "-Infinity length": (
        NATIVE,
        '{"task": "title", "input": "x", "controls": {"length": -Infinity}}',
        400,
        "invalid_json",
        "controls.length",
    ),
    "control character": (NATIVE, json.dumps({**GOOD, "input": "sale\u0007now"}), 422, "invalid_request", "input"),
    "lone surrogate": (NATIVE, '{"task": "title", "input": "sale \\ud800"}', 422, "invalid_request", "input"),
    "deep nesting": (
        NATIVE,
        '{"task": "title", "input": "x", "stop": ' + "[" * 40 + "]" * 40 + "}",
        400,
        "invalid_json",
        "stop",
    ),
    "recursion-deep nesting": (NATIVE, "[" * 30_000 + "]" * 30_000, 400, "invalid_json", None),
    "not JSON": (NATIVE, '{"task": "title", "input": ', 400, "invalid_json", None),
    "unknown field native": (NATIVE, json.dumps({**GOOD, "bogus": 1}), 422, "invalid_request", "bogus"),
    "unknown control": (
        NATIVE,
        json.dumps({**GOOD, "controls": {"colour": "red"}}),
        422,
        "invalid_request",
        "controls.colour",
    ),
    "n over its limit": (NATIVE, json.dumps({**GOOD, "n": 17}), 422, "invalid_request", "n"),
    "max_new_tokens over": (
        NATIVE,
        json.dumps({**GOOD, "max_new_tokens": 5000}),
        422,
        "invalid_request",
        "max_new_tokens",
    ),
    "five stop strings": (NATIVE, json.dumps({**GOOD, "stop": list("abcde")}), 422, "invalid_request", "stop"),
    "long stop string": (NATIVE, json.dumps({**GOOD, "stop": "x" * 65}), 422, "invalid_request", "stop"),
    "timeout over schema": (NATIVE, json.dumps({**GOOD, "timeout": 4000}), 422, "invalid_request", "timeout"),
    "timeout over server": (NATIVE, json.dumps({**GOOD, "timeout": 301}), 400, "invalid_request", "timeout"),
    "n over batch": (NATIVE, json.dumps({**GOOD, "n": 16, "max_new_tokens": 1}), None, None, None),
    "whitespace prompt": (OPENAI, json.dumps({**COMPLETION, "prompt": "   "}), 422, "invalid_request", "prompt"),
    "NaN in completions": (OPENAI, '{"prompt": "x", "temperature": NaN}', 400, "invalid_json", "temperature"),
    "unknown field openai": (OPENAI, json.dumps({**COMPLETION, "bogus": 1}), 422, "invalid_request", "bogus"),
    "n over completions": (OPENAI, json.dumps({**COMPLETION, "n": 99}), 422, "invalid_request", "n"),
    # the limits above hold on /v1/completions too (the same SamplingFields)
    "max_tokens over": (OPENAI, json.dumps({**COMPLETION, "max_tokens": 5000}), 422, "invalid_request", "max_tokens"),
    "five stop strings completions": (
        OPENAI,
        json.dumps({**COMPLETION, "stop": list("abcde")}),
        422,
        "invalid_request",
        "stop",
    ),
    "timeout over server completions": (
        OPENAI,
        json.dumps({**COMPLETION, "timeout": 301}),
        400,
        "invalid_request",
        "timeout",
    ),
    "unknown control completions": (
        OPENAI,
        json.dumps({**COMPLETION, "controls": {"colour": "red"}}),
        422,
        "invalid_request",
        "controls.colour",
    ),
    "control in prompt": (
        OPENAI,
        json.dumps({**COMPLETION, "prompt": ["a\u001bb"]}),
        422,
        "invalid_request",
        "prompt.0",
    ),
}


@pytest.mark.parametrize("case", [c for c in BAD_BODIES if BAD_BODIES[c][2] is not None])
def test_a_bad_body_is_a_clear_4xx(client: httpx.Client, case: str) -> None:
    route, body, status, type, param = BAD_BODIES[case]
    assert status is not None and type is not None
    assert_error(raw_post(client, route, body.encode()), status, type, param)


def test_invalid_utf8_is_a_400(client: httpx.Client) -> None:
    body = b'{"task": "title", "input": "sale \xff\xfe"}'
    assert_error(raw_post(client, NATIVE, body), 400, "invalid_json", None)


def test_a_body_over_the_limit_is_a_413(client: httpx.Client) -> None:
    body = json.dumps({**GOOD, "input": "x" * (Settings().max_body_bytes + 10)}).encode()
    assert_error(raw_post(client, NATIVE, body), 413, "body_too_large", None)


def test_a_chunked_body_over_the_limit_is_a_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"task": "title", "input": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    response = client.post(NATIVE, content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(response, 413, "body_too_large", None)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"]
)
def test_a_wrong_content_type_is_a_415(client: httpx.Client, content_type: str) -> None:
    assert_error(raw_post(client, NATIVE, json.dumps(GOOD).encode(), content_type), 415, "unsupported_media_type", None)


def test_ignored_openai_parameters_are_known_fields(client: httpx.Client) -> None:
    body = {**COMPLETION, "echo": False, "logprobs": None, "user": "u1", "presence_penalty": 0.5}
    assert client.post(OPENAI, json=body).status_code == 200


def test_command_strings_in_the_input_stay_plain_text(client: httpx.Client, tiny_bundle: Path) -> None:
    manifest = load_manifest(tiny_bundle)
    tokenizer = Tokenizer.from_file(str(tiny_bundle / manifest.tokenizer_file))
    intent = "<|task:title|> <|copy:0|> <|output|> <|endoftext|>"
    special = {tokenizer.token_to_id(t) for t in manifest.command.special_tokens()} - {None}
    assert special and not special & set(encode_text(tokenizer, intent))
    response = client.post(NATIVE, json={**GOOD, "input": intent})
    assert response.status_code == 200, response.text
    length = response.json()["controls"]["length"]
    expected = prompt_ids(tokenizer, manifest.command, TASK, length, "high", intent)
    assert response.json()["usage"]["prompt_tokens"] == len(expected)


def test_bad_requests_do_not_disturb_good_ones(client: httpx.Client, server: ServerProcess) -> None:
    alone = client.post(NATIVE, json=GOOD).json()["outputs"]

    async def mixed() -> list[httpx.Response]:
        import asyncio

        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            bad = [
                c.post(NATIVE, content=BAD_BODIES[k][1].encode(), headers={"Content-Type": "application/json"})
                for k in BAD_BODIES
            ]
            return await asyncio.gather(*[c.post(NATIVE, json=GOOD) for _ in range(4)], *bad)

    import asyncio

    responses = asyncio.run(mixed())
    for good in responses[:4]:
        assert good.status_code == 200 and good.json()["outputs"] == alone
    assert all(r.status_code < 500 for r in responses)


# --- 2. security ----------------------------------------------------------------------

ENV_KEY, FILE_KEY, METRICS_KEY = "env-key-7f3a9c", "file-key-41d2e8", "metrics-key-a0b1c2"


@pytest.fixture(scope="module")
def keyed(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("keyed")
    keys_file = folder / "keys.txt"
    keys_file.write_text(f"# one key a line\n{FILE_KEY}\n")
    process = ServerProcess(
        tiny_bundle,
        folder / "server.log",
        env={"PROMPTGEN_API_KEYS": f"{ENV_KEY}, other-key"},
        variant="fp32",
        api_keys_file=keys_file,
        metrics_api_keys=METRICS_KEY,
    )
    yield process
    process.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_guard_every_route_but_the_probes(keyed: ServerProcess) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        for path in ("/healthz", "/readyz"):
            assert c.get(path).status_code == 200
        for method, path in [
            ("GET", "/v1/tasks"),
            ("GET", "/v1/models"),
            ("GET", "/openapi.json"),
            ("POST", NATIVE),
            ("POST", OPENAI),
        ]:
            for headers in ({}, bearer("wrong"), {"Authorization": ENV_KEY}):
                response = c.request(method, path, json=GOOD, headers=headers)
                assert_error(response, 401, "unauthorized", None)
                assert response.headers["www-authenticate"] == "Bearer"
        assert c.post(NATIVE, json=GOOD, headers=bearer(ENV_KEY)).status_code == 200
        assert c.post(NATIVE, json=GOOD, headers=bearer(FILE_KEY)).status_code == 200
        assert c.get("/v1/tasks", headers=bearer("other-key")).status_code == 200


def test_metrics_has_its_own_keys(keyed: ServerProcess) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=bearer(ENV_KEY)).status_code == 401
        assert c.get("/metrics", headers=bearer(METRICS_KEY)).status_code == 200


def test_keys_and_request_text_stay_out_of_the_logs(keyed: ServerProcess) -> None:
    marker = "zebra-umbrella-quartz"
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        assert c.post(NATIVE, json={**GOOD, "input": marker}, headers=bearer(ENV_KEY)).status_code == 200
        c.post(NATIVE, json=GOOD, headers=bearer("a-wrong-key-xyz"))
    time.sleep(0.2)
    log = keyed.log_path.read_text()
    assert '"route": "/v1/generate"' in log  # the request was logged, without its text
    for secret in (ENV_KEY, FILE_KEY, METRICS_KEY, "a-wrong-key-xyz", marker):
        assert secret not in log


def test_cors_is_off_by_default(client: httpx.Client) -> None:
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    preflight = client.options(NATIVE, headers=headers)
    assert "access-control-allow-origin" not in preflight.headers
    assert (
        "access-control-allow-origin" not in client.get("/v1/tasks", headers={"Origin": "https://evil.example"}).headers
    )


def test_the_server_binds_loopback_by_default() -> None:
    assert Settings.model_fields["host"].default == "127.0.0.1"
    assert "PROMPTGEN_HOST=0.0.0.0" in (Path(__file__).parents[1] / "Dockerfile").read_text()  # only the image opens up


REJECTED = "promptgen_rejected_requests_total"


def rejections(process: ServerProcess) -> dict[tuple[str, str], float]:
    """(status, reason) -> count, from /metrics as prometheus_client parses it."""
    return {
        (dict(labels)["status"], dict(labels)["reason"]): value
        for (name, labels), value in process.metrics().items()
        if name == REJECTED
    }


def test_every_kind_of_rejection_is_counted(tiny_bundle: Path, tmp_path: Path) -> None:
    """One refusal of each kind against a server with keys and room for one request; the
    guard's and the key check's refusals happen in middleware, before any route."""
    process = ServerProcess(
        tiny_bundle,
        tmp_path / "server.log",
        env={"PROMPTGEN_API_KEYS": ENV_KEY},
        variant="fp32",
        max_batch_size=1,
        max_queue=0,
        fault_inject="hang@2",  # the first request holds the only slot for good: the next one is a 429
    )
    try:
        assert rejections(process) == {}
        with httpx.Client(base_url=process.url, timeout=30, headers=bearer(ENV_KEY)) as c:
            assert c.post(NATIVE, json=GOOD, headers={"Authorization": ""}).status_code == 401
            too_large = json.dumps({**GOOD, "input": "x" * (Settings().max_body_bytes + 10)})
            assert raw_post(c, NATIVE, too_large.encode()).status_code == 413
            assert raw_post(c, NATIVE, json.dumps(GOOD).encode(), "text/plain").status_code == 415
            assert raw_post(c, NATIVE, BAD_BODIES["NaN temperature"][1].encode()).status_code == 400
            assert c.post(NATIVE, json={**GOOD, "bogus": 1}).status_code == 422
            assert c.post(NATIVE, json={**GOOD, "task": "no_such_task"}).status_code == 400
            assert c.get("/no/such/route").status_code == 404
            # admitted, then the engine hangs at its first decode step
            threading.Thread(target=post_quietly, args=(process.url, bearer(ENV_KEY)), daemon=True).start()
            deadline = time.monotonic() + 10
            while sum(v for (name, _), v in process.metrics().items() if name == "promptgen_requests_running") < 1:
                assert time.monotonic() < deadline, "the first request was never admitted"
                time.sleep(0.05)
            assert c.post(NATIVE, json=GOOD).status_code == 429
        assert rejections(process) == {
            ("401", "unauthorized"): 1,
            ("413", "body_too_large"): 1,
            ("415", "unsupported_media_type"): 1,
            ("400", "invalid_json"): 1,
            ("422", "invalid_request"): 1,
            ("400", "unknown_task"): 1,
            ("404", "not_found"): 1,
            ("429", "overloaded"): 1,
        }
    finally:
        process.stop()


# --- 3. faults ------------------------------------------------------------------------


def start_and_fail(bundle: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "server", "serve", "--bundle", str(bundle), "--port", str(free_port())]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def copy_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def fp32_file(bundle: Path) -> Path:
    return bundle / load_manifest(bundle, verify_hashes=False).variant("fp32").file


def truncate(bundle: Path) -> None:
    path = fp32_file(bundle)
    path.write_bytes(path.read_bytes()[:1000])


def tamper(bundle: Path) -> None:
    path = fp32_file(bundle)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def unloadable_onnx(bundle: Path) -> None:
    """Garbage under a matching hash: the manifest is right about the file, ORT cannot load it."""
    from contract.manifest import sha256_file

    for variant in load_manifest(bundle, verify_hashes=False).variants:
        (bundle / variant.file).write_bytes(b"not an onnx model")
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    for entry in manifest["variants"]:
        entry["sha256"] = sha256_file(bundle / entry["file"])
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))


BROKEN = {
    "missing": lambda b: __import__("shutil").rmtree(b),
    "no manifest": lambda b: (b / MANIFEST_FILE).unlink(),
    "manifest not JSON": lambda b: (b / MANIFEST_FILE).write_text("{"),
    "truncated model": truncate,
    "tampered model": tamper,
    "ONNX that does not load": unloadable_onnx,
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_bundle_refuses_to_start(tiny_bundle: Path, tmp_path: Path, case: str) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path)
    BROKEN[case](bundle)
    result = start_and_fail(bundle)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("server: cannot"), result.stderr[-2000:]


def log_entries(path: Path) -> list[dict[str, Any]]:
    """The server's JSON log lines (server/log.py)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def assert_logged_with(log_path: Path, error_id: str) -> None:
    """The engine's line (with the traceback) and the request's line both carry the id."""
    logged = {e["msg"]: e for e in log_entries(log_path) if e.get("error_id") == error_id}
    assert set(logged) == {"engine step failed; failing its batch", "request"}, logged
    assert "InjectedFault" in logged["engine step failed; failing its batch"]["exc"]
    assert logged["request"]["status"] == 500


@pytest.mark.parametrize("engine_process", [True, False])
def test_a_failed_forward_fails_only_its_batch(tiny_bundle: Path, tmp_path: Path, engine_process: bool) -> None:
    # forward 1: the first request's prefill; 2: its first decode step, which raises
    process = ServerProcess(
        tiny_bundle, tmp_path / "server.log", variant="fp32", fault_inject="raise@2", engine_process=engine_process
    )
    try:
        with httpx.Client(base_url=process.url, timeout=30) as c:
            failed = c.post(NATIVE, json=GOOD)
            assert_error(failed, 500, "internal_error", None)
            error_id = failed.json()["error"]["id"]  # a field of its own, not only inside the message
            assert re.fullmatch(r"[0-9a-f]{16}", error_id) and error_id in failed.json()["error"]["message"]
            assert c.get("/readyz").status_code == 200
            assert c.post(NATIVE, json=GOOD).status_code == 200
            stream = c.post(NATIVE, json={**GOOD, "stream": True})
            assert stream.status_code == 200 and "event: done" in stream.text
        time.sleep(0.2)  # the log lines are written by the server process
        assert_logged_with(process.log_path, error_id)
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("variant", "settings"),
    [("fp32", {}), ("fp16", {"provider": "cpu", "device_sampling": "on"})],  # fp16: the GPU's sampler graph
)
def test_a_request_given_non_finite_logits_fails_alone_with_a_model_error(
    tiny_bundle: Path, tmp_path: Path, variant: str, settings: dict[str, str]
) -> None:
    """One request's logits are NaN (its intent holds a token whose embedding is NaN,
    tests/poisoned_bundle.py; on a GPU, an fp16 overflow would do it). That request answers 500
    `model_error`, whole or streamed, with an id that is in the log; the request prefilled with it
    in the same forward gets the text it gets alone; the server stays ready; the failures are
    counted."""
    pytest.importorskip("onnx")
    manifest = load_manifest(tiny_bundle)
    tokenizer = Tokenizer.from_file(str(tiny_bundle / manifest.tokenizer_file))
    bad = {**GOOD, "input": "zebra parade"}
    good_pieces = set(encode_text(tokenizer, " " + GOOD["input"]))  # the rest of a prompt is command tokens
    poison = next(t for t in encode_text(tokenizer, " " + bad["input"]) if t not in good_pieces)
    bundle = poisoned_bundle(tiny_bundle, tmp_path / "bundle", variant, poison)
    # a window long enough that two requests sent together share one prefill forward
    process = ServerProcess(bundle, tmp_path / "server.log", variant=variant, batch_window_ms=500, **settings)
    try:
        with httpx.Client(base_url=process.url, timeout=30) as c:
            alone = c.post(NATIVE, json=GOOD)
            assert alone.status_code == 200, alone.text
            answers: dict[str, httpx.Response] = {}
            threads = [
                threading.Thread(target=lambda name=name, body=body: answers.update({name: c.post(NATIVE, json=body)}))
                for name, body in (("good", GOOD), ("bad", bad))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert answers["good"].status_code == 200 and answers["good"].json()["outputs"] == alone.json()["outputs"]
            assert_error(answers["bad"], 500, "model_error", None)
            error = answers["bad"].json()["error"]
            assert "not finite" in error["message"] and error["id"] in error["message"]
            streamed = c.post(NATIVE, json={**bad, "stream": True})
            event, data = streamed.text.strip().split("\n\n")[-1].split("\n")
            streamed_error = json.loads(data.removeprefix("data:"))["error"]
            assert event == "event: error" and streamed_error["type"] == "model_error"
            assert streamed_error["status"] == 500 and streamed_error["id"] != error["id"]
            assert c.get("/readyz").status_code == 200
            assert c.post(NATIVE, json=GOOD).json()["outputs"] == alone.json()["outputs"]
        counted = {labels: v for (name, labels), v in process.metrics().items() if name == "promptgen_requests_total"}
        assert sum(v for labels, v in counted.items() if ("reason", "model_error") in labels) == 2
        time.sleep(0.2)  # the log lines are written by the server process
        logged = [e for e in log_entries(process.log_path) if e.get("error_id") == error["id"]]
        assert {e["msg"] for e in logged} == {"non-finite logits; failing the request", "request"}, logged
    finally:
        process.stop()


def post_quietly(url: str, headers: dict[str, str] | None = None) -> None:
    """A request into a hung or dead engine: it never gets an answer before the server is stopped."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{url}{NATIVE}", json={**GOOD, "timeout": 2}, headers=headers, timeout=30)


def test_a_failed_forward_spares_requests_that_wait(tiny_bundle: Path, tmp_path: Path) -> None:
    """Batch size 1: a long streamed request runs; a second one queues behind it; the
    running one's 100th forward raises. The stream ends with an `error` event, the queued
    request was not in that batch and gets its 200."""
    process = ServerProcess(
        tiny_bundle, tmp_path / "server.log", variant="fp32", max_batch_size=1, fault_inject="raise@100"
    )
    long = {**GOOD, "max_new_tokens": 110, "controls": {"length": 32, "enforce_length": True}, "stream": True}

    async def run() -> tuple[str, httpx.Response]:
        import asyncio

        async with httpx.AsyncClient(base_url=process.url, timeout=30) as c:
            queued: asyncio.Task[httpx.Response] | None = None
            text = ""
            async with c.stream("POST", NATIVE, json=long) as stream:
                async for line in stream.aiter_lines():
                    text += line + "\n"
                    if queued is None and line == "event: delta":
                        queued = asyncio.create_task(c.post(NATIVE, json=GOOD))
            assert queued is not None
            return text, await queued

    try:
        import asyncio

        text, queued = asyncio.run(run())
        events = text.split("\n\n")
        error = next(json.loads(e.split("data: ", 1)[1]) for e in events if e.startswith("event: error"))["error"]
        assert error["type"] == "internal_error" and error["status"] == 500, error
        assert re.fullmatch(r"[0-9a-f]{16}", error["id"]), error  # the stream's error event carries the id too
        assert queued.status_code == 200, queued.text
        time.sleep(0.2)
        assert_logged_with(process.log_path, error["id"])
    finally:
        process.stop()


def test_a_request_to_a_hung_engine_fails_at_its_deadline_plus_the_backstop(tiny_bundle: Path, tmp_path: Path) -> None:
    """The engine enforces deadlines; when it hangs, the server's backstop (one timer a request,
    BACKSTOP_S past its deadline) answers 504 for it, whole or streamed, and counts it."""
    process = ServerProcess(tiny_bundle, tmp_path / "server.log", variant="fp32", fault_inject="hang@2")
    answers: dict[str, Any] = {}

    def ask(stream: bool) -> None:
        started = time.monotonic()
        body = {**GOOD, "timeout": 1, "stream": stream}
        response = httpx.post(f"{process.url}{NATIVE}", json=body, timeout=30)
        answers[f"stream={stream}"] = (response, time.monotonic() - started)

    try:
        threads = [threading.Thread(target=ask, args=(stream,)) for stream in (False, True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        whole, whole_s = answers["stream=False"]
        assert whole.status_code == 504 and whole.json()["error"]["type"] == "deadline_exceeded"
        streamed, streamed_s = answers["stream=True"]
        assert streamed.status_code == 200  # the stream had started: its failure is its last event
        event, data = streamed.text.strip().split("\n\n")[-1].split("\n")
        assert (
            event == "event: error" and json.loads(data.removeprefix("data:"))["error"]["type"] == "deadline_exceeded"
        )
        assert 5.5 < whole_s < 15 and 5.5 < streamed_s < 15  # the 1 s deadline, then the 5 s backstop
        counted = {labels: v for (name, labels), v in process.metrics().items() if name == "promptgen_requests_total"}
        assert sum(v for labels, v in counted.items() if ("status", "504") in labels) == 2
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("mode", "engine_process", "status"),
    [
        ("hang", True, "engine_stalled"),
        ("hang", False, "engine_stalled"),
        # a thread that ended is only silent; a process that ended is known to be gone
        ("exit", True, "engine_failed"),
        ("exit", False, "engine_stalled"),
    ],
)
def test_a_hung_or_dead_engine_fails_readyz(
    tiny_bundle: Path, tmp_path: Path, mode: str, engine_process: bool, status: str
) -> None:
    process = ServerProcess(
        tiny_bundle,
        tmp_path / "server.log",
        variant="fp32",
        fault_inject=f"{mode}@2",
        heartbeat_timeout_s=1,
        engine_process=engine_process,
    )
    try:
        with httpx.Client(base_url=process.url, timeout=30) as c:
            threading.Thread(target=post_quietly, args=(process.url,), daemon=True).start()
            started = time.monotonic()
            while c.get("/readyz").status_code == 200:
                assert time.monotonic() - started < 5, "/readyz still 200 after the heartbeat timeout"
                time.sleep(0.1)
            assert c.get("/readyz").json()["status"] == status
            # liveness: a stalled engine may come back; a failed one needs the restart it asks for
            assert c.get("/healthz").status_code == (503 if status == "engine_failed" else 200)
    finally:
        process.stop()


def engine_pid(process: ServerProcess) -> int:
    """The server's engine process: the child multiprocessing spawned (another child is its
    resource tracker)."""
    server = process.process.pid
    children = Path(f"/proc/{server}/task/{server}/children").read_text().split()
    (child,) = [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return int(child)


def test_a_killed_engine_process_fails_its_requests_and_readyz(tiny_bundle: Path, tmp_path: Path) -> None:
    """SIGKILL (the OOM killer, a crashed kernel) to the engine process mid-stream: the stream
    ends with a 500 error event at once, later requests get a 500 rather than waiting for their
    deadline, /readyz and /healthz say engine_failed (so an orchestrator restarts the pod), and
    the server itself stays up to say so."""
    process = ServerProcess(tiny_bundle, tmp_path / "server.log", variant="fp32", max_batch_size=1)
    long = {**GOOD, "max_new_tokens": 110, "controls": {"length": 32}, "stream": True, "timeout": 60}
    try:
        pid = engine_pid(process)
        with httpx.Client(base_url=process.url, timeout=30) as c:
            assert c.post(NATIVE, json=GOOD).status_code == 200
            started = time.monotonic()
            text, killed = "", False
            with c.stream("POST", NATIVE, json=long) as stream:
                for line in stream.iter_lines():
                    text += line + "\n"
                    if line == "event: delta" and not killed:
                        os.kill(pid, signal.SIGKILL)
                        killed = True
            assert time.monotonic() - started < 10, "the stream waited for its deadline"
            error = json.loads(text.split("event: error\ndata: ", 1)[1].split("\n", 1)[0])["error"]
            assert error["type"] == "internal_error" and "engine process exited" in error["message"], error
            assert re.fullmatch(r"[0-9a-f]{16}", error["id"]), error
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "engine_failed", ready.text
            assert "exit code -9" in ready.json()["reason"]
            health = c.get("/healthz")  # the liveness probe asks for the restart that mends it
            assert health.status_code == 503 and health.json()["status"] == "engine_failed", health.text
            after = c.post(NATIVE, json={**GOOD, "timeout": 60})
            assert_error(after, 500, "internal_error", None)
        time.sleep(0.2)
        gone = [e for e in log_entries(process.log_path) if e.get("error_id") == error["id"]]
        assert {e["msg"] for e in gone} == {"engine process gone; failing its requests", "request"}, gone
    finally:
        process.stop()


def test_the_engine_process_never_outlives_the_server(tiny_bundle: Path, tmp_path: Path) -> None:
    """kill -9 to the server: its engine process (which ignores SIGTERM and SIGINT) sees its
    pipe close and exits, rather than holding the model's memory and cores as an orphan."""
    process = ServerProcess(tiny_bundle, tmp_path / "server.log")
    try:
        pid = engine_pid(process)
        process.process.kill()
        process.process.wait(10)
        deadline = time.monotonic() + 10
        while (stat := Path(f"/proc/{pid}/stat")).exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the engine process outlived the server"
            time.sleep(0.05)
    finally:
        process.stop()


def running(process: ServerProcess) -> float:
    return sum(v for (name, _), v in process.metrics().items() if name == "promptgen_requests_running")


def test_a_slow_stream_reader_stalls_no_one_and_gets_all_its_text(client: httpx.Client, server: ServerProcess) -> None:
    """A stream of 16 long samples whose client stops reading after its first bytes: the
    engine serves others meanwhile and finishes the stream's samples; the waiting deltas
    are merged (server/api/event_buffer.py), so the request never holds more than 2n+1
    events; then the client reads everything, and it is the same text as unstreamed.
    On /v1/completions, whose chunks (~170 bytes a token) overflow the socket and
    uvicorn's write buffer long before the samples end, so the reader surely falls behind."""
    n = 16
    request = {**COMPLETION, "n": n, "max_tokens": 100, "seed": 3, "temperature": 1.0}
    body = json.dumps({**request, "stream": True})
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    slow.connect(("127.0.0.1", server.port))
    # HTTP/1.0: the stream ends when the server closes, so the test needs no chunked decoding
    head = f"POST {OPENAI} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    slow.sendall(f"{head}X-Request-ID: slow-reader\r\n\r\n{body}".encode())
    try:
        received = slow.recv(64)  # the stream has started; now it is read no further for a while
        for _ in range(3):
            started = time.monotonic()
            assert client.post(NATIVE, json=GOOD).status_code == 200
            assert time.monotonic() - started < 5
        assert client.get("/readyz").status_code == 200
        deadline = time.monotonic() + 30
        while running(server) > 0:  # the engine finishes the slow stream's samples without its reader
            assert time.monotonic() < deadline, "the engine did not finish the slow stream"
            time.sleep(0.1)
        while chunk := slow.recv(65536):
            received += chunk
    finally:
        slow.close()

    events = [e.removeprefix("data: ") for e in received.decode().split("\r\n\r\n", 1)[1].split("\n\n") if e]
    assert events[-1] == "[DONE]"
    choices = [json.loads(e)["choices"][0] for e in events[:-1]]
    streamed = {i: "".join(c["text"] for c in choices if c["index"] == i) for i in range(n)}
    assert sorted(c["index"] for c in choices if c["finish_reason"]) == list(range(n))  # every sample ended
    unstreamed = {c["index"]: c["text"] for c in client.post(OPENAI, json=request).json()["choices"]}
    # same seed, same text: nothing lost (ends compared without their whitespace, as the stream's own events frame them)
    assert {i: text.strip() for i, text in streamed.items()} == {i: text.strip() for i, text in unstreamed.items()}
    time.sleep(0.2)
    logged = next(e for e in log_entries(server.log_path) if e.get("request_id") == "slow-reader")
    assert logged["deltas_merged"] > 0, logged  # the reader did fall behind
    assert logged["events_buffered_max"] <= 2 * n + 1, logged
