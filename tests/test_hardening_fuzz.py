"""Fuzzing: schemathesis drives the real server from its own /openapi.json.

Every operation gets valid (positive) and schema-violating (negative) requests,
bounded in examples and time (FUZZ_SECONDS in all): no 5xx (but a 504 for a deadline
the request itself set too short), every status code and
body as the schema documents, every error a JSON `{"error": {"type", "message", "param"}}`.
Seeded (derandomized), so a failure reproduces.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_process import ServerProcess

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

FUZZ_SECONDS = 40.0
EXAMPLES_PER_OPERATION = 100
# schemathesis's not_a_server_error is replaced by check_error_json: a 504 is the documented
# answer to a deadline the client chose (the fuzzer sends `timeout: 5e-324`), not a fault
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    process = ServerProcess(tiny_bundle, log, variant="fp32", max_batch_size=16, intra_op_threads=1)
    yield process
    process.stop()


def check_error_json(response: Any) -> None:
    if response.status_code >= 500:
        assert response.status_code == 504 and "deadline_exceeded" in response.text, response.text
    if response.status_code >= 400:
        content_type = response.headers["content-type"]  # schemathesis keeps each header as a list
        assert content_type[0].startswith("application/json"), response.text
        error = response.json()["error"]
        assert isinstance(error["type"], str) and isinstance(error["message"], str) and "param" in error


def fuzz(operation: Any, mode: Any, url: str, stop_at: float) -> int:
    """Up to EXAMPLES_PER_OPERATION requests for one operation in one mode, until `stop_at`."""
    calls = 0

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal calls
        if time.monotonic() > stop_at:
            return
        response = case.call(base_url=url, timeout=30)
        calls += 1
        case.validate_response(response, checks=CHECKS)
        check_error_json(response)

    try:
        run()
    except Unsatisfiable:  # negative mode on an operation with no input (GET /healthz): nothing to break
        assert mode == GenerationMode.NEGATIVE
    return calls


def test_fuzz_the_schema(server: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    started = time.monotonic()
    deadline = started + FUZZ_SECONDS
    budget = FUZZ_SECONDS / (2 * len(operations))
    calls = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls += fuzz(operation, mode, server.url, min(deadline, time.monotonic() + budget))
    print(f"fuzz: {calls} requests over {len(operations)} operations in {time.monotonic() - started:.1f} s")
    assert calls >= 50
    assert time.monotonic() < deadline + 15, "fuzzing ran past its time bound"
