"""One generation call, from admission to its last event, shared by every route.

Order matters: admission first (a full server answers 429 before doing any work),
then the command is checked against the bundle and the input tokenised, then the
engine takes over. Whatever happens, `close()` runs once: it gives the admission
ticket back, counts the request in metrics and writes one log line.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from contract.command import CommandError, prompt_ids
from contract.copy import copy_table
from contract.positions import context_room, position_offset
from runtime.sampler import SamplingParams
from server.api.errors import ApiError, error_object
from server.api.event_buffer import EventBuffer
from server.api.schemas import Controls, SamplingFields
from server.api.sse import HEADERS, MEDIA_TYPE
from server.api.state import ServerState
from server.engine.request import Event, GenerationRequest, LengthBounds, RequestDone, RequestFailed, SampleDone

log = logging.getLogger("server.requests")
P = ParamSpec("P")
R = TypeVar("R")

MAX_STOP_STRINGS = 4
RETRY_AFTER_S = "1"
BACKSTOP_S = 5.0  # past a request's deadline, the server fails it if the engine has not
# how the engine's reasons for giving up map to HTTP (499: nginx's "client closed request")
FAILURES = {
    "deadline": (504, "deadline_exceeded"),
    "aborted": (499, "client_closed"),
    "internal": (500, "internal_error"),
    "model_error": (500, "model_error"),  # the model's logits were not finite (engine/scheduler.py)
}


def failure_error(failure: RequestFailed) -> tuple[int, dict[str, object]]:
    """The HTTP status and the `error` object of an engine failure, for a JSON answer and
    an SSE `error` event alike (with `id` when the engine logged one)."""
    status, kind = FAILURES.get(failure.reason, (500, "internal_error"))
    return status, error_object(kind, failure.message, error_id=failure.error_id)


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away. The body has been read by now, so the next
    ASGI message can only be `http.disconnect`."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _closes_on_error(
    method: Callable[Concatenate[GenerationCall, P], R],
) -> Callable[Concatenate[GenerationCall, P], R]:
    """A call that fails while being prepared gives its admission ticket back at once:
    a refused request must never keep a slot by accident."""

    @functools.wraps(method)
    def wrapper(call: GenerationCall, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(call, *args, **kwargs)
        except ApiError as e:
            call.close(e.status, e.type)
            raise
        except Exception:
            call.close(500, "internal_error")
            raise

    return wrapper


class GenerationCall:
    def __init__(self, state: ServerState, http_request: Request, route: str) -> None:
        self.state = state
        self.http_request = http_request
        self.route = route
        self.request_id: str = http_request.state.request_id  # the caller's, echoed back
        # The engine's key: callers may reuse a request id, the engine must never confuse two calls.
        self.engine_id = uuid.uuid4().hex
        self.started = time.monotonic()
        self.events_in: EventBuffer | None = None  # made in prepare(), on the event loop
        self.request: GenerationRequest | None = None
        self.done: RequestDone | None = None
        self.samples: list[SampleDone] = []
        self.log_fields: dict[str, Any] = {}
        self._closed = False
        self._backstop: asyncio.TimerHandle | None = None  # set in prepare(), cancelled in close()

    # --- admission and preparation ----------------------------------------------------

    @classmethod
    def admit(cls, state: ServerState, http_request: Request, route: str) -> GenerationCall:
        call = cls(state, http_request, route)
        engine = state.engine
        if engine.draining:
            call._record(503, "draining")
            raise ApiError(503, "draining", "the server is shutting down", {"Retry-After": RETRY_AFTER_S})
        if not engine.try_admit():
            call._record(429, "overloaded")
            raise ApiError(
                429,
                "overloaded",
                f"the server is at capacity ({engine.capacity} requests in flight or queued); retry later",
                {"Retry-After": RETRY_AFTER_S},
            )
        return call

    @_closes_on_error
    def prepare(
        self,
        task: str,
        intent: str,
        controls: Controls,
        n: int,
        sampling: SamplingFields,
        max_new_tokens: int | None,
        stream: bool,
    ) -> Controls:
        """Check the command against the bundle, tokenise, and hand the request to the
        engine. Returns the controls with defaults filled in (echoed in the response).
        Defaults come from the bundle (contract.manifest.GenerationDefaults), the only place
        they are set."""
        state = self.state
        spec = state.manifest.command
        defaults = state.manifest.defaults
        length = controls.length if controls.length is not None else spec.clamp_words(defaults.length, task)
        if n > state.settings.max_batch_size:
            raise ApiError(
                400, "n_too_large", f"n={n} exceeds the batch size {state.settings.max_batch_size}", param="n"
            )
        if sampling.timeout is not None and sampling.timeout > state.settings.max_request_timeout_s:
            limit = state.settings.max_request_timeout_s
            raise ApiError(400, "invalid_request", f"timeout is over this server's {limit} s", param="timeout")
        stop = [sampling.stop] if isinstance(sampling.stop, str) else list(sampling.stop or [])
        stop = [s for s in stop if s]
        if len(stop) > MAX_STOP_STRINGS:
            raise ApiError(400, "invalid_request", f"at most {MAX_STOP_STRINGS} stop strings", param="stop")

        try:  # the command is checked once, where it is turned into tokens
            ids = prompt_ids(state.tokenizer, spec, task, length, controls.relevance, intent)
        except CommandError as e:
            raise ApiError(400, e.kind, str(e)) from e
        copies = copy_table(state.tokenizer, intent, spec.copy_slots)
        offset = position_offset(spec, len(ids))
        room = context_room(spec, state.manifest.model.n_positions, len(ids))
        if room < 1:
            raise ApiError(
                400, "input_too_long", f"the input takes {len(ids)} tokens; the model's context is full", param="input"
            )
        asked_tokens = max_new_tokens if max_new_tokens is not None else defaults.max_new_tokens
        params = SamplingParams(
            temperature=sampling.temperature if sampling.temperature is not None else defaults.temperature,
            top_p=sampling.top_p if sampling.top_p is not None else defaults.top_p,
            top_k=sampling.top_k if sampling.top_k is not None else defaults.top_k,
            repetition_penalty=sampling.repetition_penalty,
        )
        bounds = None
        if controls.enforce_length:
            bounds = LengthBounds(max(1, length - controls.length_tolerance), length + controls.length_tolerance)
        settings = state.settings
        timeout = min(sampling.timeout or settings.request_timeout_s, settings.max_request_timeout_s)
        self.events_in = EventBuffer(asyncio.get_running_loop())
        self.request = GenerationRequest(
            request_id=self.engine_id,
            prompt_ids=ids,
            n=n,
            params=params,
            max_new_tokens=min(asked_tokens, room),
            sink=self.events_in.put,  # called on the engine thread
            seed=sampling.seed,
            stop=tuple(stop),
            length_bounds=bounds,
            copies=copies.expansions,
            never=copies.banned,
            position_offset=offset,
            words=length,
            stream=stream,
            deadline=self.started + timeout,
            arrival=self.started,
        )
        self.log_fields = {"task": task, "n": n, "length": length, "relevance": controls.relevance}
        if settings.log_request_text:
            self.log_fields["input"] = intent
        state.engine.submit(self.request)
        wait = max(self.request.deadline - time.monotonic() + BACKSTOP_S, 0.1)
        self._backstop = asyncio.get_running_loop().call_later(wait, self._engine_silent)
        return controls.model_copy(update={"length": length})

    # --- waiting for the engine -------------------------------------------------------

    async def _next_event(self) -> Event:
        """The next event. If the engine stops answering, the backstop timer set in `prepare`
        fails the request rather than let it hang."""
        assert self.events_in is not None
        return await self.events_in.get()

    def _engine_silent(self) -> None:
        """The backstop: BACKSTOP_S past the deadline (which the engine enforces itself) and the
        request is not done. One timer per request, not an `asyncio.wait_for` (a task and a
        timer) around every event a streamed request awaits."""
        assert self.events_in is not None
        self.state.engine.abort(self.engine_id)
        self.events_in.put(RequestFailed("deadline", "the engine did not answer before the deadline"))

    def _fail(self, failure: RequestFailed) -> ApiError:
        status, kind = FAILURES.get(failure.reason, (500, "internal_error"))
        self.close(status, kind, failure.error_id)
        return ApiError(status, kind, failure.message, error_id=failure.error_id)

    async def collect(self) -> tuple[list[SampleDone], RequestDone]:
        """Wait for the whole result, watching for the client going away meanwhile."""
        disconnect = asyncio.create_task(wait_for_disconnect(self.http_request))
        try:
            while True:
                event_task = asyncio.create_task(self._next_event())
                done, _ = await asyncio.wait({event_task, disconnect}, return_when=asyncio.FIRST_COMPLETED)
                if event_task not in done:
                    event_task.cancel()
                    self.state.engine.abort(self.engine_id)
                    raise self._fail(RequestFailed("aborted", "the client went away"))
                event = event_task.result()
                if isinstance(event, RequestFailed):
                    raise self._fail(event)
                if isinstance(event, SampleDone):
                    self.samples.append(event)
                elif isinstance(event, RequestDone):
                    self.done = event
                    self.close(200, "ok")
                    return sorted(self.samples, key=lambda s: s.index), event
        finally:
            disconnect.cancel()
            if not self._closed:  # cancelled (server shutting down) or a bug: free the slot anyway
                self.state.engine.abort(self.engine_id)
                self.close(500, "internal_error")

    async def events(self) -> AsyncIterator[Event]:
        """Every event in order, for streaming. If the client disconnects, Starlette
        cancels the stream: the request is aborted and its slot freed at the next step."""
        finished = False
        try:
            while True:
                event = await self._next_event()
                if isinstance(event, SampleDone):
                    self.samples.append(event)
                elif isinstance(event, RequestDone):
                    self.done = event
                elif isinstance(event, RequestFailed):
                    finished = True
                    status, kind = FAILURES.get(event.reason, (500, "internal_error"))
                    self.close(status, kind, event.error_id)
                yield event
                if isinstance(event, RequestDone | RequestFailed):
                    finished = True
                    self.close(200, "ok")
                    return
        finally:
            if not finished:
                self.abandon()

    def abandon(self) -> None:
        """The client is gone: stop generating and give the ticket back (no-op once closed)."""
        if not self._closed:
            self.state.engine.abort(self.engine_id)
            self.close(499, "client_closed")

    def stream_response(self, body: AsyncIterator[str]) -> StreamingResponse:
        """An SSE response that frees this call however it ends. A client that leaves
        before the first byte makes Starlette fail at `http.response.start`, before it
        ever starts `body`; a generator that never started never runs its `finally`, so
        the cleanup cannot live there alone."""
        return _EventStream(body, on_close=self.abandon)

    # --- the end --------------------------------------------------------------------

    def _record(self, status: int, reason: str, error_id: str | None = None) -> None:
        seconds = time.monotonic() - self.started
        self.state.metrics.observe_request(self.route, status, reason, seconds)
        fields = {
            "request_id": self.request_id,
            "route": self.route,
            "status": status,
            "reason": reason,
            "latency_ms": round(seconds * 1000, 2),
            **self.log_fields,
        }
        if error_id is not None:  # the engine's line with the traceback has the same error_id
            fields["error_id"] = error_id
        if self.done is not None:
            fields.update(prompt_tokens=self.done.prompt_tokens, completion_tokens=self.done.completion_tokens)
        if self.request is not None and self.request.stream and self.events_in is not None:
            # how far the reader fell behind: merged deltas, and the most events held at once (<= 2n+1)
            fields.update(events_buffered_max=self.events_in.high_water, deltas_merged=self.events_in.merged)
        if self.state.settings.log_request_text and self.samples:
            fields["outputs"] = [s.text for s in self.samples]
        log.info("request", extra=fields)

    def close(self, status: int, reason: str, error_id: str | None = None) -> None:
        """Once per admitted call: give the ticket back, count it, log it."""
        if self._closed:
            return
        self._closed = True
        if self._backstop is not None:
            self._backstop.cancel()
        self.state.engine.release()
        self._record(status, reason, error_id)


class _EventStream(StreamingResponse):
    def __init__(self, body: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(body, media_type=MEDIA_TYPE, headers=HEADERS)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
