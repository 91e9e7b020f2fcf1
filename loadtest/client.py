"""One request to /v1/generate, timed: latency, time to first token (streaming), tokens generated."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Result:
    start_s: float  # when the request was due, on the run's clock (open loop: its arrival time)
    status: int  # HTTP status, or 0 when the request never got an answer
    latency_s: float  # from start_s to the last byte: an open-loop request that waited counts that wait
    ttft_s: float | None = None  # streaming only: from start_s to the first text delta
    tokens: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


def completion_tokens(response: dict[str, Any]) -> int:
    usage = response.get("usage") or {}
    return int(usage.get("completion_tokens", 0))


def error_type(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", {}).get("type", ""))
    except (ValueError, AttributeError):
        return ""


async def read_stream(response: httpx.Response, start: float) -> tuple[float | None, int, str, int]:
    """(ttft, tokens, error type, status) from an SSE body: `delta` events, then `done` with the
    usage, or an `error` event (a failure after the 200 was sent, e.g. a deadline)."""
    ttft: float | None = None
    event = ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            if event == "delta" and ttft is None:
                ttft = time.perf_counter() - start
            elif event == "done":
                return ttft, completion_tokens(json.loads(line[5:])), "", 200
            elif event == "error":
                error = json.loads(line[5:]).get("error", {})
                return ttft, 0, str(error.get("type", "stream_error")), int(error.get("status", 500))
    return ttft, 0, "stream_incomplete", 200


async def send(client: httpx.AsyncClient, url: str, body: dict[str, Any], start: float, clock0: float) -> Result:
    """POST one request; `start` is the perf_counter time it was due (latency counts from then,
    so an open-loop request held back by the client still pays for the wait), `clock0` the run's
    zero. Transport failures are results (status 0), never exceptions: one bad request must not
    end the run."""
    due = start - clock0
    try:
        if body.get("stream"):
            async with client.stream("POST", f"{url}/v1/generate", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    return Result(due, response.status_code, time.perf_counter() - start, error=error_type(response))
                ttft, tokens, error, status = await read_stream(response, start)
            return Result(due, status, time.perf_counter() - start, ttft, tokens, error)
        response = await client.post(f"{url}/v1/generate", json=body)
    except httpx.HTTPError as e:
        return Result(due, 0, time.perf_counter() - start, error=type(e).__name__)
    latency = time.perf_counter() - start
    if response.status_code != 200:
        return Result(due, response.status_code, latency, error=error_type(response))
    return Result(due, 200, latency, tokens=completion_tokens(response.json()))
