"""The `openai` teacher: any OpenAI-compatible chat-completions server (vLLM, TGI, Ollama, llama.cpp).

Requests run concurrently up to a bound; each has a timeout and is retried with
exponential backoff and jitter on 429, 5xx, timeouts, dropped connections and
malformed bodies, waiting at least what a Retry-After header asks. Retries are counted
by reason and end up in the run summary. A request that still fails after its last
retry is reported and left uncommitted, so the next run asks it again. An endpoint
that cannot be reached, refuses the API key, or does not serve the model stops the
run with a TeacherError before (or as soon as) it matters.

The API key is read from an environment variable and only ever sent in the
Authorization header: it is never printed, logged or stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from training.tasks import TaskSpec
from training.teachers.base import Completion, Request, Teacher, TeacherError
from training.teachers.parsing import align_outputs
from training.teachers.prompting import build_messages, template_hash

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 120.0  # a server asking for longer is treated as down for this request


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or an HTTP date), None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class RetryableError(Exception):
    """One failed attempt that is worth another try; `reason` keys the retry counter."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class OpenAITeacher(Teacher):
    kind = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        temperature: float = 0.9,
        max_tokens: int = 384,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        if concurrency < 1 or timeout <= 0 or max_retries < 0:
            raise TeacherError("--concurrency and --timeout must be positive and --max-retries not negative")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        headers = {"content-type": "application/json"}
        if api_key := os.environ.get(api_key_env):
            headers["authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout)
        self._jitter = random.Random()
        self.failed = 0  # requests given up after their last retry (left uncommitted)
        self._failures_in_a_row = 0  # so many that the endpoint must be down: stop instead of grinding on

    def prompt_hash(self, task: TaskSpec) -> str:
        return template_hash(task)

    async def check(self) -> None:
        """Fail fast if the server is unreachable, refuses us, or does not list the model."""
        url = f"{self.base_url}/models"
        try:
            response = await self._client.get(url)
        except httpx.HTTPError as error:
            raise TeacherError(f"cannot reach the teacher at {self.base_url} ({type(error).__name__})") from None
        if response.status_code in (401, 403):
            raise TeacherError(f"{self.base_url} refused the API key (HTTP {response.status_code})")
        if response.status_code != 200:
            return  # not every server lists models; an unknown model then fails on the first request
        try:
            served = [m["id"] for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            return
        if self.model not in served:
            raise TeacherError(f"model {self.model!r} is not served by {self.base_url}; it serves {served}")

    async def complete(self, requests: Iterator[Request]) -> AsyncIterator[Completion]:
        in_flight: set[asyncio.Task[Completion | None]] = set()
        exhausted = False
        try:
            while in_flight or not exhausted:
                while not exhausted and len(in_flight) < self.concurrency:
                    request = next(requests, None)
                    if request is None:
                        exhausted = True
                    else:
                        in_flight.add(asyncio.create_task(self._ask(request)))
                if not in_flight:
                    break
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    completion = task.result()  # a TeacherError stops the run here
                    if completion is not None:
                        yield completion
        finally:
            for task in in_flight:  # interrupted: in-flight requests are lost, by design
                task.cancel()

    async def _ask(self, request: Request) -> Completion | None:
        body = {
            "model": self.model,
            "messages": build_messages(request.task, request),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": request.seed,
        }
        retries: Counter[str] = Counter()
        for attempt in range(self.max_retries + 1):
            try:
                completion = await self._attempt(request, body, retries)
                self._failures_in_a_row = 0
                return completion
            except RetryableError as error:
                if attempt == self.max_retries:
                    break
                retries[error.reason] += 1
                await asyncio.sleep(self._delay(attempt, error.retry_after))
        self.failed += 1
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= max(3, self.concurrency):
            raise TeacherError(
                f"{self._failures_in_a_row} requests in a row failed after {self.max_retries} retries"
                f" ({dict(retries)} on the last): the teacher at {self.base_url} looks down"
            )
        return Completion(request=request, outputs=[], retries=retries, failed=True)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.backoff_max, self.backoff_base * 2**attempt)
        backoff *= 0.5 + self._jitter.random() / 2  # jitter: many clients retrying do not stampede together
        if retry_after is not None:
            return max(backoff, min(retry_after, MAX_RETRY_AFTER_S))
        return backoff

    async def _attempt(self, request: Request, body: dict[str, Any], retries: Counter[str]) -> Completion:
        try:
            response = await self._client.post(f"{self.base_url}/chat/completions", json=body)
        except httpx.TimeoutException:
            raise RetryableError("timeout") from None
        except httpx.TransportError:
            raise RetryableError("connection") from None
        status = response.status_code
        if status in RETRY_STATUSES:
            raise RetryableError(str(status), retry_after_seconds(response.headers.get("retry-after")))
        if status in (401, 403):
            raise TeacherError(f"{self.base_url} refused the API key (HTTP {status})")
        if status == 404:
            raise TeacherError(f"{self.base_url} has no chat completions for model {self.model!r} (HTTP 404)")
        if status != 200:
            raise TeacherError(f"{self.base_url} rejected a request with HTTP {status}: {response.text[:200]}")
        try:
            payload = response.json()
            content = payload["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("content is not text")
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
            raise RetryableError("malformed") from None
        outputs, extra = align_outputs(request.task, content, len(request.targets))
        if not any(outputs):
            raise RetryableError("empty_reply")
        usage = payload.get("usage") or {}
        return Completion(
            request=request,
            outputs=outputs,
            extra=extra,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            retries=retries,
        )

    async def aclose(self) -> None:
        await self._client.aclose()
