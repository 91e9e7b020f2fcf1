"""The engine: a dedicated thread that owns the model and runs the scheduler.

One engine thread per model: ONNX Runtime's own threads do the arithmetic. It runs in the
server's process (`Engine`) or, by default, in a process of its own behind the same doors
(server/engine/process.py: `EngineProcess`), so the HTTP side's Python and the engine's do
not take turns on one GIL. The asyncio side (API routes) talks to it through three
thread-safe doors, which `EngineBase` declares:
- `try_admit()` / `release()`: the admission bound (in flight + queued), checked before
  a request is even tokenised, so an overloaded server refuses cheaply;
- `submit()` / `abort()`: hand a request over, or take it back (client disconnected);
- events come back through each request's sink (its `api/event_buffer.py` EventBuffer),
  which never blocks the engine thread.
The loop beats a heartbeat every iteration, also when idle, so `/readyz` can tell a
live engine from a hung one.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

from tokenizers import Tokenizer

from contract.manifest import Manifest
from runtime import top_p_kernel
from runtime.allocator import retain_freed_memory
from runtime.decode import generate
from runtime.mixed_runner import MixedRunner
from runtime.onnx_runner import OnnxRunner
from server.config import Settings
from server.engine.faults import FaultInjector
from server.engine.request import GenerationRequest, new_error_id
from server.engine.scheduler import Scheduler
from server.metrics import Metrics

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05  # how often an idle loop wakes to beat its heartbeat


class EngineBase(ABC):
    """What the API sees of an engine, wherever it runs: the admission bound, drain, and
    the status /readyz reports."""

    def __init__(self, capacity: int, heartbeat_timeout_s: float) -> None:
        self.capacity = capacity  # requests in flight (running + queued) before 429
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._lock = threading.Lock()
        self._in_flight = 0
        self.draining = False
        self.warmed_up = False
        self.failure: str | None = None  # why the engine stopped, if it did
        self.variant = ""  # the bundle variant and ORT provider it runs, once loaded
        self.provider = ""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self, timeout: float = 5.0) -> None: ...

    @abstractmethod
    def submit(self, request: GenerationRequest) -> None: ...

    @abstractmethod
    def abort(self, request_id: str) -> None: ...

    @abstractmethod
    def heartbeat_age(self) -> float: ...

    @abstractmethod
    def alive(self) -> bool: ...

    def try_admit(self) -> bool:
        """Take one of `capacity` tickets; False when full or draining (then: 429/503)."""
        with self._lock:
            if self.draining or self._in_flight >= self.capacity:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def drain(self) -> None:
        """Stop admitting; what is in flight carries on."""
        with self._lock:
            self.draining = True

    def status(self) -> str:
        """What /readyz reports: ready, or why not."""
        if self.failure is not None:
            return "engine_failed"
        if self.draining:
            return "draining"
        if not self.warmed_up:
            return "warming_up"
        if not self.alive():
            return "engine_stalled"
        return "ready"


class Engine(EngineBase):
    """The engine thread in this process. `on_beat`, called on the engine thread at the top
    of every loop iteration (after the last one's events), is how the engine process sends
    a step's events and its heartbeat across (server/engine/process.py)."""

    def __init__(
        self,
        scheduler: Scheduler,
        capacity: int,
        heartbeat_timeout_s: float,
        on_beat: Callable[[Engine], None] | None = None,
    ) -> None:
        super().__init__(capacity, heartbeat_timeout_s)
        self.scheduler = scheduler
        self.variant = scheduler.runner.variant.name
        self.provider = scheduler.runner.provider
        self.on_beat = on_beat
        self._wakeup = threading.Condition(self._lock)
        self._inbox: deque[GenerationRequest] = deque()
        self._aborts: deque[str] = deque()
        self._stop = False
        self.heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)

    # --- called from the API (any thread) -------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._wakeup:
            self._stop = True
            self._wakeup.notify()
        self._thread.join(timeout)

    def submit(self, request: GenerationRequest) -> None:
        with self._wakeup:
            self._inbox.append(request)
            self._wakeup.notify()

    def abort(self, request_id: str) -> None:
        with self._wakeup:
            self._aborts.append(request_id)
            self._wakeup.notify()

    def heartbeat_age(self) -> float:
        return time.monotonic() - self.heartbeat

    def running(self) -> bool:
        """Whether the engine thread is still there (a hung one is; see `alive`)."""
        return self._thread.is_alive()

    def alive(self) -> bool:
        return self.running() and self.heartbeat_age() < self.heartbeat_timeout_s

    # --- the engine thread ----------------------------------------------------------

    def _warm_up(self) -> None:
        """A prefill and two decode steps through the runtime's decode loop (and its sampler,
        on the device when the runner samples there), so the first request does not pay for
        ORT's lazy initialisation (allocations, kernel selection)."""
        runner = self.scheduler.runner
        generate(runner, [[runner.eos_token_id] * 8], 3, eos_id=None)
        if runner.mixed_prefill:  # and the mixed graph's session, both of its parts
            generate(MixedRunner(runner), [[runner.eos_token_id] * 8], 3, eos_id=None)

    def _run(self) -> None:
        try:
            self._warm_up()
        except Exception as e:
            log.exception("engine warm-up failed")
            self.failure = f"warm-up failed: {type(e).__name__}: {e}"
            return  # the thread ends: /readyz says engine_failed
        self.warmed_up = True
        log.info("engine ready", extra={"host_top_p": "C" if top_p_kernel.function() is not None else "numpy"})
        scheduler = self.scheduler
        while True:
            self.heartbeat = time.monotonic()
            if self.on_beat is not None:
                self.on_beat(self)
            with self._wakeup:
                if self._stop:
                    break
                if not (self._inbox or self._aborts or scheduler.has_work()):
                    self._wakeup.wait(IDLE_WAIT_S)
                inbox, self._inbox = list(self._inbox), deque()
                aborts, self._aborts = list(self._aborts), deque()
            for request in inbox:
                scheduler.add(request)
            for request_id in aborts:
                scheduler.abort(request_id)
            wait = scheduler.window_wait(time.monotonic())
            if wait > 0:
                with self._wakeup:
                    self._wakeup.wait(wait)  # a new arrival wakes us to re-check the window
                continue
            if not scheduler.has_work():
                continue
            try:
                scheduler.step()
            except Exception as e:
                error_id = new_error_id()  # in the log line and in each failed request's 500 body
                log.exception("engine step failed; failing its batch", extra={"error_id": error_id})
                scheduler.fail_all(f"engine error: {type(e).__name__} (error id {error_id})", error_id)


def build_engine(settings: Settings, manifest: Manifest, tokenizer: Tokenizer, metrics: Metrics) -> Engine:
    """The runner, scheduler and engine thread `settings` ask for (not started)."""
    runner = OnnxRunner(
        settings.bundle,
        variant=settings.variant,
        provider=settings.provider,
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        manifest=manifest,
        device_sampling=settings.device_sampling,
        spinning=settings.ort_spinning,
        mixed_prefill=settings.mixed_prefill,
        attention_kernel=settings.attention_kernel,
        matmul_kernel=settings.matmul_kernel,
    )
    # After the runner, before the first cache buffers: rebuilds then reuse memory
    # (runtime/allocator.py), and what loading the graphs freed (our kernels' rewrite parses a
    # whole graph: runtime/custom_ops.py) goes back to the system instead.
    retain_freed_memory()
    scheduler = Scheduler(
        runner,
        tokenizer,
        metrics,
        max_batch_size=settings.max_batch_size,
        batch_window_s=settings.batch_window_ms / 1000,
        max_prefill_tokens=settings.max_prefill_tokens,
        faults=FaultInjector.parse(settings.fault_inject),
    )
    return Engine(scheduler, settings.capacity, settings.heartbeat_timeout_s)
