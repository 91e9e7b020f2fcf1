"""Iteration-level ("continuous") batching over one runner.

Each call to `step()` is one iteration:
1. drop requests that were aborted or ran past their deadline;
2. admit waiting requests into free slots (FIFO), prefill their prompts together
   (one row per request: the n samples of a request share that prefill) and sample
   each sample's first token. While rows are decoding, one step prefills at most
   `max_prefill_tokens` (padded) prompt tokens: a burst of arrivals joins over a few
   steps, each stalling the running rows for a bounded time, instead of in one long
   prefill they all wait for; and while the batch is nearly full, a lone arrival waits a few
   steps for others to share its prefill (HOLD_ABOVE);
3. finished rows free their slots; joining rows are written into free slots in place,
   or the batch KV cache is rebuilt (kv_cache.py);
4. one decode step for every running row, sample, and finish the rows that are done:
   they leave the batch before the next step, freeing their slots.
Where the runner has a mixed graph (runtime/onnx_runner.py, `mixed_prefill`) and rows are
decoding, 2 and 4 are one forward: the joiners' prompts are prefilled in the rows' decode step
(the weights read once), and their cache is placed (3) after it.
So a request that arrives while others are decoding joins at the next step, and a
short request submitted during a long one finishes first.

Only the engine thread touches a Scheduler; it is not thread-safe.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from contract.positions import countdown
from runtime.kv_cache import (
    BatchCache,
    can_write_in_place,
    empty_cache,
    first_used_column,
    keeps_spare_rows,
    leading_rows,
    move_row,
    rebuild,
    trims_free_rows,
    write_in_place,
)
from runtime.onnx_runner import OnnxRunner, Prompts
from runtime.padding import pad
from runtime.sampler import NO_TOKEN, Sampler, command_token_ids
from server.engine.faults import FaultInjector
from server.engine.request import Event, GenerationRequest, RequestDone, RequestFailed, new_error_id
from server.engine.sequence import Sequence
from server.metrics import Metrics

log = logging.getLogger(__name__)

TRIM_COLUMNS = 32  # this many leading all-padding columns are worth a rebuild to drop
# Free slots are dropped only after this many steps with free slots and no join: under load the next
# requests arrive within a few steps, and growing the batch back for them is a second copy of
# the whole cache (~40 ms for 32 rows of GPT-2 small), where a free slot costs one row's compute.
SHRINK_AFTER_STEPS = 8
# While the batch is nearly full (over HOLD_ABOVE of its rows decoding), a request that would
# join alone waits for company: it is admitted when HOLD_JOINERS rows wait, when the waiting rows
# fill the free slots, or after HOLD_STEPS steps. One prefill then serves several joiners; a
# GPT-2 small closed loop of 32 gained ~5% in-process (bench/engine.md, step 8). A
# batch below that (moderate load) admits at once, so its latency does not pay for it. Only
# where the prefill is a forward of its own (Scheduler._hold).
HOLD_ABOVE, HOLD_JOINERS, HOLD_STEPS = 3 / 4, 4, 4


# Joiners after their prefill, for _place: their cache, each sample's row in it, their samples.
Joined = tuple[BatchCache | None, np.ndarray | None, list[Sequence]]


@dataclass
class Admitted:
    """A request in the batch: its samples and its timing."""

    request: GenerationRequest
    sequences: list[Sequence]
    admitted_at: float
    first_token_at: float | None = None

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.sequences)


def emit(request: GenerationRequest, event: Event) -> None:
    """Events go to the API through the request's sink; a sink that fails (its client
    and event loop are gone) must not take the engine down."""
    try:
        request.sink(event)
    except Exception:
        log.debug("dropped an event for request %s", request.request_id)


class Scheduler:
    def __init__(
        self,
        runner: OnnxRunner,
        tokenizer: Tokenizer,
        metrics: Metrics,
        max_batch_size: int,
        batch_window_s: float = 0.0,
        max_prefill_tokens: int = 0,
        faults: FaultInjector | None = None,
    ) -> None:
        self.runner = runner
        self.faults = faults or FaultInjector()
        # Called before every forward. The engine process (server/engine/process.py) sends what
        # the step has produced so far (events, metric updates) here, so the server sees them
        # while the forward runs, as it would with the engine in the server's process.
        self.before_forward: Callable[[], None] | None = None
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.max_prefill_tokens = max_prefill_tokens  # 0: no bound
        self.waiting: deque[GenerationRequest] = deque()
        self.active: dict[str, Admitted] = {}
        self.rows: list[Sequence | None] = []  # row i of the cache is rows[i]; None: a free slot
        self.cache: BatchCache = empty_cache(runner)
        self.free_steps = 0  # consecutive steps with free slots and no request joining
        self.held_steps = 0  # consecutive steps a lone joiner has waited (HOLD_STEPS)
        self.hold_joiners = not runner.mixed_prefill  # whether a lone joiner may wait at all (_hold)
        self.sampler = Sampler(runner, command_token_ids(tokenizer, runner.manifest.command))
        self.countdown = countdown(runner.manifest.command, tokenizer)  # None: outputs count up
        # the per-step series, bound to this model once rather than looked up every step
        self._ttft = metrics.time_to_first_token.labels(metrics.model)
        self._inter_token = metrics.inter_token_latency.labels(metrics.model)
        self._generated = metrics.generated_tokens.labels(metrics.model)
        self._queued = metrics.queued.labels(metrics.model)
        self._running = metrics.running.labels(metrics.model)
        phases = ("prefill", "decode", "mixed")  # mixed: a decode step that also prefills joiners
        self._forward = {p: metrics.forward_time.labels(metrics.model, p) for p in phases}
        self._batch_size = {p: metrics.batch_size.labels(metrics.model, p) for p in phases}

    # --- bookkeeping ----------------------------------------------------------------

    def add(self, request: GenerationRequest) -> None:
        self.waiting.append(request)
        self._update_gauges()

    def has_work(self) -> bool:
        return bool(self.waiting or self.active)

    def abort(
        self,
        request_id: str,
        reason: str = "aborted",
        message: str = "the client went away",
        error_id: str | None = None,
    ) -> bool:
        """Stop a request wherever it is; its rows leave the batch at the next step."""
        for request in self.waiting:
            if request.request_id == request_id:
                self.waiting.remove(request)
                emit(request, RequestFailed(reason, message, error_id))
                self._update_gauges()
                return True
        admitted = self.active.get(request_id)
        if admitted is None:
            return False
        for sequence in admitted.sequences:
            if not sequence.finished:
                sequence.finish_reason = reason
        del self.active[request_id]
        emit(admitted.request, RequestFailed(reason, message, error_id))
        self._update_gauges()
        return True

    def expire(self, now: float) -> None:
        late = [r.request_id for r in self.waiting if r.deadline <= now]
        late += [rid for rid, a in self.active.items() if a.request.deadline <= now]
        for request_id in late:
            self.abort(request_id, "deadline", "the request's deadline passed before it finished")

    def fail_all(self, message: str, error_id: str) -> None:
        """After an engine error: fail the batch it hit and start from an empty one.
        Requests still waiting were not in it; they run at the next step."""
        for request_id in list(self.active):
            self.abort(request_id, "internal", message, error_id)
        self.rows = []
        self.cache = empty_cache(self.runner)

    def window_wait(self, now: float) -> float:
        """Seconds to wait before admitting, so that arrivals close together share one
        prefill. Only when nothing is running: a running batch must not be held up."""
        if not self.waiting or self.active or self.batch_window_s <= 0:
            return 0.0
        if sum(r.n for r in self.waiting) >= self.max_batch_size:
            return 0.0
        return max(0.0, self.waiting[0].arrival + self.batch_window_s - now)

    def _update_gauges(self) -> None:
        self._queued.set(len(self.waiting))
        self._running.set(len(self.active))

    # --- one iteration ----------------------------------------------------------------

    def step(self) -> None:
        now = time.monotonic()
        self.expire(now)
        joining = self._admit(now)
        self._free_finished()
        if joining and self.runner.mixed_prefill and any(s is not None for s in self.rows):
            self._place(*self._decode(joining))  # one forward: the batch's step and the joiners' prefill
        else:
            self._place(*(self._prefill(joining) if joining else (None, None, [])))
            if any(s is not None for s in self.rows):
                self._decode()
        self._finish()

    def _admit(self, now: float) -> list[Admitted]:
        running = sum(1 for s in self.rows if s is not None and not s.finished)
        free = self.max_batch_size - running
        if self._hold(running, free):
            self.held_steps += 1
            return []
        self.held_steps = 0
        # With nothing decoding there is no one to stall: fill the batch in one prefill.
        budget = self.max_prefill_tokens if running and self.max_prefill_tokens else None
        admitted: list[Admitted] = []
        longest = 0
        while self.waiting and self.waiting[0].n <= free:
            request = self.waiting[0]
            longest = max(longest, len(request.prompt_ids))
            # The prefill is left-padded: it costs its rows times its longest prompt. The first
            # request always joins, however long, so a long prompt cannot wait forever.
            if budget is not None and admitted and (len(admitted) + 1) * longest > budget:
                break
            self.waiting.popleft()
            free -= request.n
            sequences = [Sequence(request, i, self.tokenizer, self.runner.eos_token_id) for i in range(request.n)]
            admitted.append(Admitted(request, sequences, admitted_at=now))
            self.active[request.request_id] = admitted[-1]
            self.metrics.queue_time.labels(self.metrics.model).observe(now - request.arrival)
        self._update_gauges()
        return admitted

    def _hold(self, running: int, free: int) -> bool:
        """Whether the waiting requests wait one more step for company (HOLD_ABOVE). Never where
        joiners are prefilled in the decode step: the weight pass a group would share is the rows'
        anyway, and holding only delays (GPT-2 small, closed loop of 32: mean TTFT 70-74 ms held,
        42-44 ms not, the same tokens/s; bench/engine.md, step 11)."""
        if not self.hold_joiners:
            return False
        waiting = sum(r.n for r in self.waiting)
        if not waiting or running <= HOLD_ABOVE * self.max_batch_size or self.held_steps >= HOLD_STEPS:
            return False
        return waiting < min(HOLD_JOINERS, free)

    def _prompts(self, joining: list[Admitted]) -> tuple[Prompts, np.ndarray, list[Sequence]]:
        """The joiners' prompts padded to a common length (on the right where the cache's rows are
        ragged, kv_cache.py) with empty cache buffers, their samples, and each sample's prompt row:
        sample i of request r reads row r (n samples, one prefill)."""
        prompt_ids = [a.request.prompt_ids for a in joining]
        offsets = [a.request.position_offset for a in joining]
        padded = pad(prompt_ids, self.runner.eos_token_id, offsets, right=self.cache.ragged)
        new_rows = [s for a in joining for s in a.sequences]
        prompt_row = np.array([r for r, a in enumerate(joining) for _ in a.sequences], np.int64)
        self.metrics.prompt_tokens.labels(self.metrics.model).inc(sum(len(p) for p in prompt_ids))
        return Prompts(*padded, self.runner.empty_past(len(joining))), prompt_row, new_rows

    def _prefill(self, joining: list[Admitted]) -> Joined:
        """One forward over the new prompts alone."""
        prompts, prompt_row, new_rows = self._prompts(joining)
        inputs = (prompts.input_ids, prompts.attention_mask, prompts.position_ids, prompts.past)
        present = self._forward_and_sample("prefill", *inputs, new_rows, prompt_row)
        return BatchCache(present, prompts.attention_mask, self.cache.ragged), prompt_row, new_rows

    def _free_finished(self) -> None:
        """Finished rows free their slots (their columns stay until a joiner or a rebuild). Where
        the cache allows (kv_cache.trims_free_rows), the last live rows move into the free slots
        before them, so that free slots trail and the decode step leaves them out (_decode): a
        free slot in the step costs about what a live row does, a move one row's copy."""
        for i, sequence in enumerate(self.rows):
            if sequence is not None and sequence.finished:
                self.rows[i] = None
        if not trims_free_rows(self.runner, self.cache):
            return
        for target in [i for i, s in enumerate(self.rows) if s is None]:
            last = self._live_rows() - 1
            if last < target:
                break
            move_row(self.runner, self.cache, last, target)
            self.rows[target], self.rows[last] = self.rows[last], None

    def _live_rows(self) -> int:
        """The rows up to the last live one: what a decode step runs where free slots trail."""
        return max((i + 1 for i, s in enumerate(self.rows) if s is not None), default=0)

    def _place(self, joining: BatchCache | None, joining_rows: np.ndarray | None, new_rows: list[Sequence]) -> None:
        """Joining rows take free slots in place when they fit, else the batch is rebuilt. Also
        rebuilds when free slots or all-padding columns would cost more compute than the copy
        (see kv_cache.py)."""
        joins = [j for j, s in enumerate(new_rows) if not s.finished]
        free = [i for i, s in enumerate(self.rows) if s is None]
        fits = joins and len(free) >= len(joins)
        if (
            fits
            and joining is not None
            and joining_rows is not None
            and can_write_in_place(self.runner, self.cache, joining)
        ):
            slots = free[: len(joins)]
            write_in_place(self.runner, self.cache, slots, joining, [int(joining_rows[j]) for j in joins])
            for slot, j in zip(slots, joins, strict=True):
                self.rows[slot] = new_rows[j]
            joins, free = [], free[len(joins) :]
        # Slack is wasted only while nobody joins: count steps with free slots and no join.
        self.free_steps = self.free_steps + 1 if free and not new_rows else 0
        if joins or self._wasteful(len(free)):
            keep = np.array([i for i, s in enumerate(self.rows) if s is not None], np.int64)
            rows = np.asarray(joining_rows)[joins] if joins else None
            spare = self._spare_slots(len(keep) + len(joins))
            self.cache = rebuild(self.runner, self.cache, keep, joining, rows, spare)
            self.rows = [self.rows[i] for i in keep] + [new_rows[j] for j in joins] + [None] * spare

    def _spare_slots(self, used: int) -> int:
        """Free slots a rebuild keeps, so the batch does not shrink only to grow again at the
        next arrivals: as many as it had, unless SHRINK_AFTER_STEPS steps have passed with free
        slots and no join (then shrinking is the point). Only where joins are written in place."""
        if self.free_steps >= SHRINK_AFTER_STEPS or not keeps_spare_rows(self.runner, self.cache):
            return 0
        return max(0, len(self.rows) - used)

    def _wasteful(self, free: int) -> bool:
        """Rebuild when no row is left, when over a third of the rows are free slots and nobody
        has joined for SHRINK_AFTER_STEPS (unless free slots trail and the steps leave them out,
        _free_finished: then they cost memory only, and the batch keeps them for the next joins),
        and (left-padded rows only) when the live rows leave many columns of padding in front, or
        before the cache outgrows the context."""
        alive = len(self.rows) - free
        if free and alive == 0:
            return True
        idle = 2 * free > alive and self.free_steps >= SHRINK_AFTER_STEPS
        if free and idle and not trims_free_rows(self.runner, self.cache):
            return True
        if self.cache.ragged:  # nothing is padding in front, and each row stops within the context
            return False
        live_mask = self.cache.mask[[i for i, s in enumerate(self.rows) if s is not None]]
        padding = first_used_column(live_mask) if live_mask.size else 0
        return padding >= TRIM_COLUMNS or self.cache.columns >= self.runner.n_positions

    def _decode(self, joining: list[Admitted] | None = None) -> Joined:
        """One decode step for the batch's rows. With `joining` (a runner with mixed prefill), the
        same forward prefills their prompts, and their cache is returned for _place."""
        eos = self.runner.eos_token_id
        # Trailing free slots are left out where the cache allows (_free_finished): the step runs
        # the first `ran` rows, through views of the batch's buffers (kv_cache.leading_rows).
        ran = self._live_rows() if trims_free_rows(self.runner, self.cache) else len(self.rows)
        # A free slot, or a row that failed at its prefill (_fail_unsampleable), feeds a dummy token.
        last = [s.generated[-1] if s is not None and s.generated else eos for s in self.rows[:ran]]
        input_ids = np.array(last, np.int64)[:, None]
        live = np.array([s is not None for s in self.rows])
        positions = self._positions()[:ran]
        positions[~live[:ran]] = 0  # a free slot's dummy token must stay a valid position
        mask = self.cache.step_mask(live)
        rows, logits_rows = [s for s in self.rows if s is not None], np.flatnonzero(live)
        past = leading_rows(self.runner, self.cache, ran)
        step = (input_ids, mask[:ran], positions, past)
        if not joining:
            present = self._forward_and_sample("decode", *step, rows, logits_rows)
            self._advance(present, past, mask, live, ran)
            return None, None, []
        # The prompts' logits rows follow the batch's (the mixed graph, contract/manifest.py).
        prompts, prompt_row, new_rows = self._prompts(joining)
        present = self._forward_and_sample(
            "mixed", *step, rows + new_rows, np.concatenate([logits_rows, ran + prompt_row]), prompts
        )
        self._advance(present, past, mask, live, ran)
        return BatchCache(prompts.past, prompts.attention_mask, True), prompt_row, new_rows

    def _advance(
        self, present: list[ort.OrtValue], past: list[ort.OrtValue], mask: np.ndarray, live: np.ndarray, ran: int
    ) -> None:
        """After a decode step over the first `ran` rows. Where it ran them all, or wrote in place
        through views of the buffers (`present` is `past`), the batch's buffers hold the step. A
        step over views that came back in new buffers (grown for room, onnx_runner.py) returns
        those rows alone: they are the batch now, and the free slots behind them are dropped."""
        if ran == len(self.rows) or present is not past:
            self.cache.advance(present, mask[:ran], live[:ran])
            del self.rows[ran:]
            return
        self.cache.advance(self.cache.past, mask, live)

    def _positions(self) -> np.ndarray:
        """The position of each row's next token (contract/positions.py): the words it has left
        to write for a countdown model, else its count of tokens shifted by its offset."""
        if self.countdown is not None:
            left = [s.words_left if s is not None else 0 for s in self.rows]
            return np.array([[self.countdown.position(w)] for w in left], np.int64)
        offsets = np.array([[s.request.position_offset if s is not None else 0] for s in self.rows], np.int64)
        positions: np.ndarray = self.cache.positions() + offsets
        return positions

    def _forward_and_sample(
        self,
        phase: str,
        input_ids: np.ndarray,
        mask: np.ndarray,
        positions: np.ndarray,
        past: list[ort.OrtValue],
        rows: list[Sequence],
        logits_rows: np.ndarray,
        prompts: Prompts | None = None,
    ) -> list[ort.OrtValue]:
        """One forward, then one token for each of `rows` (sampled from logits row
        `logits_rows[i]`), appended. The runtime's sampler samples on the device when the
        runner can and every row's parameters allow it, else on the host."""
        prepared = [s.prepare() for s in rows]
        self.faults.before_forward()
        if self.before_forward is not None:
            self.before_forward()
        result = self.sampler.run(input_ids, mask, positions, past, prepared, logits_rows, prompts=prompts)
        self._forward[phase].observe(result.forward_s)  # with device sampling: the sampling too
        # prompts in a prefill, live rows in a decode (a set: np.unique was 2% of a lone request's step)
        self._batch_size[phase].observe(len(set(logits_rows.tolist())))
        self._append(result.tokens, rows)
        return result.present

    def _append(self, tokens: np.ndarray, rows: list[Sequence]) -> None:
        now = time.monotonic()
        generated = 0
        for sequence, token in zip(rows, tokens, strict=True):
            admitted = self.active.get(sequence.request.request_id)
            if admitted is None:
                continue  # failed by another of its samples in this step
            if token == NO_TOKEN:
                self._fail_unsampleable(sequence)
                continue
            if admitted.first_token_at is None:
                admitted.first_token_at = now
                self._ttft.observe(now - sequence.request.arrival)
            elif sequence.last_token_time:
                self._inter_token.observe(now - sequence.last_token_time)
            before = len(sequence.generated)
            sequence.append(int(token))
            if self.countdown is not None:
                sequence.words_left = self.countdown.after(sequence.words_left, int(token))
            generated += len(sequence.generated) - before
            if sequence.request.stream and (delta := sequence.delta()) is not None:
                emit(sequence.request, delta)
        self._generated.inc(generated)

    def _fail_unsampleable(self, sequence: Sequence) -> None:
        """The model's logits for this row were not finite (runtime/sampler.py: NO_TOKEN): its
        request fails with `model_error`, and the other rows go on. Their logits stay finite in
        fp32 and fp16, whose rows do not mix. (The INT8 variant's dynamic quantisation turns a NaN
        activation into finite noise: a NaN embedding gave fluent text there, not this error.)"""
        request = sequence.request
        error_id = new_error_id()
        at = len(sequence.generated) + 1
        log.error(
            "non-finite logits; failing the request",
            extra={"error_id": error_id, "output_token": at},
        )
        message = (
            f"the model's logits were not finite (NaN or infinity) at output token {at}, so there "
            f"was nothing to sample (error id {error_id}). An fp16 variant can overflow where fp32 "
            "does not: try the bundle's fp32 or int8 variant (--variant)."
        )
        self.abort(request.request_id, "model_error", message, error_id)

    def _finish(self) -> None:
        """Report finished samples and requests; their rows leave at the next rebuild."""
        for request_id, admitted in list(self.active.items()):
            for sequence in admitted.sequences:
                if sequence.finished and not sequence.reported:
                    sequence.reported = True
                    self.metrics.finish_reasons.labels(self.metrics.model, sequence.finish_reason).inc()
                    emit(admitted.request, sequence.done())
            if admitted.finished:
                del self.active[request_id]
                completion = sum(len(s.generated) for s in admitted.sequences)
                queue_s = admitted.admitted_at - admitted.request.arrival
                emit(admitted.request, RequestDone(len(admitted.request.prompt_ids), completion, queue_s))
        self._update_gauges()
