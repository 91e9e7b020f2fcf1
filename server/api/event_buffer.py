"""`EventBuffer`: a request's events on their way from the engine thread to its route.

The engine never waits for a client: it hands each event over and carries on. A stream
whose client reads slowly (or not at all for a while) therefore falls behind, and with
a plain queue every token would wait as one more event: memory per request growing with
the client's slowness, not with the text. Here consecutive text deltas of one sample are
merged while they wait (a delta is text appended to what was sent, so sending two at
once is sending their concatenation). The buffer so holds at most one pending delta per
sample plus the terminal events (one `SampleDone` per sample, one `RequestDone` or
`RequestFailed`): `2 n + 1` events, whose text is at most the text generated. Nothing
is dropped, and each sample's events keep their order (the engine sends no delta of a
sample after its `SampleDone`, so merging never moves text past it).

`put` is called on the engine thread, `get` awaited on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass

from server.engine.request import Delta, Event


@dataclass
class _PendingDelta:
    """A delta in the buffer that later deltas of the same sample are appended to."""

    index: int
    parts: list[str]


class EventBuffer:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._events: deque[Event | _PendingDelta] = deque()
        self._pending: dict[int, _PendingDelta] = {}  # sample index -> its delta still in the buffer
        self._ready = asyncio.Event()  # set and cleared on the loop only
        self._wakeup_scheduled = False
        self.high_water = 0  # most events held at once: what the bound is checked against
        self.merged = 0  # deltas appended to a waiting one: how far the reader fell behind

    def put(self, event: Event) -> None:
        """Engine thread: add an event; never blocks on the reader."""
        with self._lock:
            if isinstance(event, Delta) and (pending := self._pending.get(event.index)) is not None:
                pending.parts.append(event.text)
                self.merged += 1
                return
            if isinstance(event, Delta):
                pending = self._pending[event.index] = _PendingDelta(event.index, [event.text])
                self._events.append(pending)
            else:
                self._events.append(event)
            self.high_water = max(self.high_water, len(self._events))
            if self._wakeup_scheduled:
                return  # one wake-up per batch of events, not one loop callback per token
            self._wakeup_scheduled = True
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wakeup_scheduled = False
        self._ready.set()

    async def get(self) -> Event:
        """Event loop: the next event, waiting for one if need be."""
        while True:
            with self._lock:
                if self._events:
                    event = self._events.popleft()
                    if isinstance(event, _PendingDelta):
                        del self._pending[event.index]
                        return Delta(event.index, "".join(event.parts))
                    return event
            # Safe to clear here: `_wake` runs on this loop, so it cannot run between the
            # check above and this line; a put since the check has scheduled it for later.
            self._ready.clear()
            await self._ready.wait()
