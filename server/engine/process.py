"""The engine in a process of its own (`engine_process`, on by default), as vLLM's V1 engine core.

Why: the engine thread's Python (scheduling, sampling, detokenizing) and the HTTP side's
(uvicorn, validation, tokenizing, SSE) take turns on one GIL when they share a process; a
quarter of a core of request handling beside the engine cost the tiny default 22-27% of its
tokens/s (bench/engine.md, "Where the tiny default's time goes over HTTP"). In a process of
its own the engine never waits for the API's Python, and a crash in a kernel (a segfault, the
OOM killer) leaves a server that fails its requests with a 500 and says `engine_failed` on
/readyz instead of vanishing.

The server process keeps everything the API touches: admission tickets and drain
(`EngineBase`), the metrics registry, and a sink per request. Two pipes cross over:
- to the engine: `("submit", request)` (the request without its sink), `("abort", id)`, `("stop",)`;
- back: `("loaded", variant, provider)` or `("error", ...)` once, `("ready",)` after warm-up,
  `("failed", reason)`, and `("batch", metric_ops, events)` with everything produced since
  the last one, sent at the top of each loop iteration and before each forward (where the
  one-process engine's events would be on their way too) when it holds an event, so a step
  of 32 rows costs one message, not 32, and a step that only updated metrics none (the
  updates wait up to METRICS_DELAY_S for an event: one message a token cost a lone request
  that does not stream 10% of its latency, bench/engine.md, step 19).
The heartbeat is a shared double the engine writes every iteration, so /readyz sees a hung
engine without a message. The scheduler's metrics are recorded in the engine process
(`RecordedMetrics`) and replayed on the server's registry before the batch's events are
delivered, so a client that has its answer finds it counted on /metrics, as in one process.
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any, cast

from prometheus_client.metrics import MetricWrapperBase
from tokenizers import Tokenizer

from contract.manifest import BundleError, load_manifest
from server.config import Settings
from server.engine.engine import Engine, EngineBase, build_engine
from server.engine.request import Event, GenerationRequest, RequestDone, RequestFailed, new_error_id
from server.log import configure_logging
from server.metrics import Metrics

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 300.0  # loading the bundle and building ORT's sessions, in the engine process
POLL_S = 0.1  # how often the engine process's main thread checks its engine thread
# Longest a metric update waits for an event to travel with (Outbox.flush); an idle engine
# beats every IDLE_WAIT_S (engine.py), so /metrics lags a working engine by ~0.1 s at most (a
# hung one's last updates wait until it moves again; /readyz sees the hang by its heartbeat).
METRICS_DELAY_S = 0.05

# one scheduler metric update: Metrics attribute, label values, method (observe, inc, set), value
MetricOp = tuple[str, tuple[str, ...], str, float]


class EngineStartError(RuntimeError):
    """The engine process could not load the bundle (other than a BundleError); the message
    names the exception it raised there, as in "InvalidProtobuf: ..."."""


def _no_sink(event: Event) -> None:
    """Stands in for a request's sink on its way to the engine process (a closure does not pickle)."""


# --- the engine process's side ---------------------------------------------------------------


class _RecordedSeries:
    __slots__ = ("_key", "_ops")

    def __init__(self, ops: list[MetricOp], key: tuple[str, tuple[str, ...]]) -> None:
        self._ops = ops
        self._key = key

    def observe(self, value: float) -> None:
        self._ops.append((*self._key, "observe", value))

    def inc(self, amount: float = 1.0) -> None:
        self._ops.append((*self._key, "inc", amount))

    def set(self, value: float) -> None:
        self._ops.append((*self._key, "set", value))


class _RecordedFamily:
    __slots__ = ("_name", "_ops")

    def __init__(self, ops: list[MetricOp], name: str) -> None:
        self._ops = ops
        self._name = name

    def labels(self, *values: str) -> _RecordedSeries:
        return _RecordedSeries(self._ops, (self._name, values))


class RecordedMetrics:
    """Stands in for `Metrics` in the engine process: every metric the scheduler updates
    (`metrics.<name>.labels(...).observe/inc/set`) is recorded as a `MetricOp` for `replay`."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.ops: list[MetricOp] = []

    def __getattr__(self, name: str) -> _RecordedFamily:
        if name.startswith("_"):  # copy, pickle and friends probe for dunders: not metrics
            raise AttributeError(name)
        return _RecordedFamily(self.ops, name)


class Outbox:
    """The engine process's messages to the server. The engine thread's sinks and metrics
    append here; `beat` (the engine's `on_beat`) sends what one loop iteration produced and
    publishes the heartbeat. `send` is also called from the main thread, hence the lock."""

    def __init__(self, connection: Connection, heartbeat: Any, metrics: RecordedMetrics) -> None:
        self.connection = connection
        self.heartbeat = heartbeat  # multiprocessing.Value("d") shared with the server
        self.metrics = metrics
        self.events: list[tuple[str, Event]] = []
        self._ready_sent = False
        self._lock = threading.Lock()
        self._sent_at = 0.0  # when flush last sent

    def sink(self, request_id: str) -> functools.partial[None]:
        return functools.partial(self._event, request_id)

    def _event(self, request_id: str, event: Event) -> None:
        self.events.append((request_id, event))

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self.connection.send(message)

    def beat(self, engine: Engine) -> None:
        self.heartbeat.value = engine.heartbeat
        if engine.warmed_up and not self._ready_sent:
            self._ready_sent = True
            self.send(("ready",))
        self.flush()

    def flush(self) -> None:
        """Send what is pending if it holds an event, or metric updates that have waited
        METRICS_DELAY_S. A step that only updated metrics (every step of a request that does not
        stream) is not worth a message: its updates ride with the next event, which carries all
        that came before it, so a client holding its answer still finds it counted."""
        now = time.monotonic()
        if self.events or (self.metrics.ops and now - self._sent_at >= METRICS_DELAY_S):
            # send pickles at once, so the lists can be emptied in place after it (the scheduler's
            # series hold `metrics.ops` itself: it is cleared, never replaced)
            self.send(("batch", self.metrics.ops, self.events))
            self.metrics.ops.clear()
            self.events.clear()
            self._sent_at = now


def run_engine_process(
    settings: Settings, model_name: str, requests: Connection, events: Connection, heartbeat: Any
) -> None:
    """The engine process's main: load, report, then relay the server's messages to the
    engine thread until told to stop or the server goes away (its pipe closes)."""
    # The server drains on SIGTERM and then stops us; Ctrl-C in a terminal reaches the whole
    # process group, and this process must not die before the server has failed its requests.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(settings.log_level)
    metrics = RecordedMetrics(model_name)
    outbox = Outbox(events, heartbeat, metrics)
    try:
        manifest = load_manifest(settings.bundle)
        tokenizer = Tokenizer.from_file(str(settings.bundle / manifest.tokenizer_file))
        # RecordedMetrics has every attribute the scheduler reads from a Metrics (see its docstring)
        engine = build_engine(settings, manifest, tokenizer, cast(Metrics, metrics))
    except Exception as e:  # the server reports it and exits 2; nothing here writes to stderr
        outbox.send(("error", type(e).__name__, str(e), isinstance(e, BundleError)))
        return
    engine.on_beat = outbox.beat  # each loop iteration, and before each forward: what came so far
    engine.scheduler.before_forward = outbox.flush
    outbox.send(("loaded", engine.variant, engine.provider))
    engine.start()
    while True:
        if requests.poll(POLL_S):
            try:
                message = requests.recv()
            except EOFError:  # the server is gone
                break
            if message[0] == "submit":
                request: GenerationRequest = message[1]
                engine.submit(replace(request, sink=outbox.sink(request.request_id)))
            elif message[0] == "abort":
                engine.abort(message[1])
            elif message[0] == "stop":
                break
        if not engine.running():  # warm-up failed, or the loop itself died
            if engine.failure is not None:
                outbox.send(("failed", engine.failure))
            break
    engine.stop()


# --- the server's side --------------------------------------------------------------------------


class EngineProcess(EngineBase):
    """The server's handle on the engine process: the same doors as `Engine`.

    Constructing it starts the process and waits until the bundle is loaded (raising
    `BundleError` or `EngineStartError` as building an `Engine` here would); `start` begins
    delivering its events."""

    def __init__(self, settings: Settings, model_name: str, metrics: Metrics) -> None:
        super().__init__(settings.capacity, settings.heartbeat_timeout_s)
        self.metrics = metrics
        self._sinks: dict[str, Callable[[Event], None]] = {}  # request id -> its sink, until its last event
        self._send_lock = threading.Lock()
        self._series: dict[tuple[str, tuple[str, ...]], Any] = {}  # replay's label lookups, once each
        self._stopping = False
        self._reader = threading.Thread(target=self._read, name="engine-events", daemon=True)
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        child_requests, self._requests = context.Pipe(duplex=False)
        self._events, child_events = context.Pipe(duplex=False)
        self._heartbeat = context.Value("d", time.monotonic(), lock=False)
        self._process = context.Process(
            target=run_engine_process,
            args=(settings, model_name, child_requests, child_events, self._heartbeat),
            name="promptgen-engine",
            daemon=True,
        )
        self._process.start()
        atexit.register(self.stop)  # an app dropped without its lifespan's stop must not hang the exit
        child_requests.close()  # ours closed: the engine process sees EOF when this process dies
        child_events.close()
        self._await_loaded()
        assert self._process.pid is not None
        metrics.watch_engine_process(self._process.pid)

    def _await_loaded(self) -> None:
        message: tuple[Any, ...] = ("error", "EngineStartError", "the engine process did not load in time", False)
        try:
            if self._events.poll(LOAD_TIMEOUT_S):
                message = self._events.recv()
        except EOFError:
            message = ("error", "EngineStartError", f"the engine process exited ({self._exit_code()})", False)
        if message[0] == "loaded":
            self.variant, self.provider = message[1], message[2]
            return
        self._process.kill()
        self._stopping = True
        atexit.unregister(self.stop)
        _, kind, text, bundle_error = message
        raise BundleError(text) if bundle_error else EngineStartError(f"{kind}: {text}")

    def _exit_code(self) -> str:
        self._process.join(1.0)
        return f"exit code {self._process.exitcode}"

    # --- the doors -------------------------------------------------------------------------

    def start(self) -> None:
        self._reader.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the engine process (it ignores SIGTERM, see run_engine_process). Also run at
        interpreter exit, before multiprocessing's own exit handler would wait for it."""
        if self._stopping:
            return
        self._stopping = True
        atexit.unregister(self.stop)
        self._send(("stop",))
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(1.0)
        if self._reader.is_alive():
            self._reader.join(1.0)

    def submit(self, request: GenerationRequest) -> None:
        self._sinks[request.request_id] = request.sink
        if not self._send(("submit", replace(request, sink=_no_sink))):
            reason = self.failure or "the engine process is gone"
            self._deliver(request.request_id, RequestFailed("internal", f"engine error: {reason}"))

    def abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    def heartbeat_age(self) -> float:
        return time.monotonic() - self._heartbeat.value

    def alive(self) -> bool:
        return self._process.is_alive() and self.heartbeat_age() < self.heartbeat_timeout_s

    def _send(self, message: tuple[Any, ...]) -> bool:
        """False when the engine process is gone."""
        try:
            with self._send_lock:
                self._requests.send(message)
            return True
        except (BrokenPipeError, ConnectionResetError, OSError):
            return False

    # --- the events thread ------------------------------------------------------------
    # A thread of its own rather than the event loop's add_reader: in turn on the same machine
    # it served GPT-2 small one request at a time streamed in 231/244 ms against 246/270 ms,
    # and the tiny default at 100 requests/s with p50 49/51 ms against 54/53 (bench/engine.md,
    # step 16): its unpickling and delivery run while the loop waits on its sockets.

    def _read(self) -> None:
        while True:
            try:
                message = self._events.recv()
            except (EOFError, OSError):
                break
            if message[0] == "batch":
                self._replay(message[1])
                for request_id, event in message[2]:
                    self._deliver(request_id, event)
            elif message[0] == "ready":
                self.warmed_up = True
            elif message[0] == "failed":
                self.failure = message[1]
        if not self._stopping:
            self._engine_gone()

    def _replay(self, ops: list[MetricOp]) -> None:
        for name, labels, method, value in ops:
            series = self._series.get((name, labels))
            if series is None:
                family: MetricWrapperBase = getattr(self.metrics, name)
                series = self._series[(name, labels)] = family.labels(*labels)
            getattr(series, method)(value)

    def _deliver(self, request_id: str, event: Event) -> None:
        final = isinstance(event, RequestDone | RequestFailed)
        sink = self._sinks.pop(request_id, None) if final else self._sinks.get(request_id)
        if sink is None:
            return
        try:
            sink(event)
        except Exception:  # its client and event loop are gone: not the engine's concern
            log.debug("dropped an event for request %s", request_id)

    def _engine_gone(self) -> None:
        """The engine process died (a crashed kernel, the OOM killer): fail what it held."""
        reason = f"the engine process exited ({self._exit_code()})"
        if self.failure is None:
            self.failure = reason
        error_id = new_error_id()
        log.error("engine process gone; failing its requests", extra={"reason": reason, "error_id": error_id})
        for request_id in list(self._sinks):
            failure = RequestFailed("internal", f"engine error: {reason} (error id {error_id})", error_id)
            self._deliver(request_id, failure)
