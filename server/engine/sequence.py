"""One sample being generated: its tokens, its text so far, and when it must stop.

Its text grows by the incremental detokenizer (runtime/detokenize.py): each token decodes a
few ids, not the whole sample again, and only complete characters ever reach `text`, so a
streamed delta never carries half a UTF-8 character."""

from __future__ import annotations

import time

from tokenizers import Tokenizer

from contract.command import count_words
from runtime.detokenize import IncrementalDetokenizer
from runtime.sampler import Row, make_generator
from server.engine.request import LENGTH, STOP, Delta, GenerationRequest, SampleDone


class Sequence:
    def __init__(self, request: GenerationRequest, index: int, tokenizer: Tokenizer, eos_token_id: int) -> None:
        self.request = request
        self.index = index
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.eos_token_id = eos_token_id
        self.row = Row(
            request.params, make_generator(request.seed, index), generated=[], banned=[], never=request.never
        )
        self.text = ""
        self.streamed = 0  # characters of `text` already sent as deltas
        self.finish_reason: str | None = None
        self.reported = False  # its SampleDone has been sent
        self.last_token_time = 0.0
        self.words_left = request.words  # a countdown model's next position (contract/positions.py)

    @property
    def generated(self) -> list[int]:
        return self.row.generated

    def prepare(self) -> Row:
        """The sampler's view for the next token: EOS is banned below the minimum length."""
        bounds = self.request.length_bounds
        too_short = bounds is not None and count_words(self.text) < bounds.min_words
        self.row.banned = [self.eos_token_id] if too_short else []
        return self.row

    def append(self, token: int) -> None:
        """Take the sampled token; decide whether the sample is finished and why.
        (`max_new_tokens` was already clipped by the API to what the context can hold.)"""
        self.last_token_time = time.monotonic()
        if token == self.eos_token_id:
            self._finish(STOP)
            return
        # (A token refused below ends the sample, so the detokenizer never needs to take it back.)
        # A copy token writes an intent word: the detokenizer gets that word's BPE ids.
        candidate = (self.text + self.detokenizer.push(self.request.copies.get(token, [token]))).lstrip()
        bounds = self.request.length_bounds
        if bounds is not None and count_words(candidate) > bounds.max_words:
            # The token would start one word too many: end here instead (forced EOS).
            self.finish_reason = STOP
            return
        self.generated.append(token)
        self.text = candidate
        for stop in self.request.stop:
            at = self.text.find(stop)
            if at >= 0:
                self.text = self.text[:at]
                self.finish_reason = STOP
                return
        if len(self.generated) >= self.request.max_new_tokens:
            self._finish(LENGTH)

    def _finish(self, reason: str) -> None:
        """The model ended the sample: its text is every id decoded, a last unfinished
        character included (a forced stop or a stop string cut the text instead)."""
        self.text = (self.text + self.detokenizer.flush()).lstrip()
        self.finish_reason = reason

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def delta(self) -> Delta | None:
        """New text safe to stream: not the start of a stop string (which would have to be
        taken back). Half characters never reach `text` (see the module docstring)."""
        safe = len(self.text)
        if not self.finished:
            hold = 0
            for stop in self.request.stop:
                for k in range(min(len(stop) - 1, safe), hold, -1):
                    if self.text[:safe].endswith(stop[:k]):
                        hold = k
                        break
            safe -= hold
        if safe <= self.streamed:
            return None
        delta = Delta(self.index, self.text[self.streamed : safe])
        self.streamed = safe
        return delta

    def done(self) -> SampleDone:
        return SampleDone(
            index=self.index,
            text=self.text,
            words=count_words(self.text),
            tokens=len(self.generated),
            finish_reason=self.finish_reason or LENGTH,
        )
