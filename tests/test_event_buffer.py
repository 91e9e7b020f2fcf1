"""EventBuffer (server/api/event_buffer.py): the engine thread puts, the event loop reads;
however far the reader falls behind, the buffer holds at most 2n+1 events and every
sample's text arrives whole and in order. tests/test_hardening.py checks the same through
the real server with a client that stops reading."""

from __future__ import annotations

import asyncio
import threading

from server.api.event_buffer import EventBuffer
from server.engine.request import Delta, Event, RequestDone, SampleDone

N = 4
WORDS = [f" w{i}" for i in range(2000)]


def engine_events() -> list[Event]:
    """What the scheduler sends for a stream of N samples: deltas round-robin, then the ends."""
    deltas: list[Event] = [Delta(i % N, word) for i, word in enumerate(WORDS)]
    ends: list[Event] = [SampleDone(i, "", 0, 0, "length") for i in range(N)]
    return [*deltas, *ends, RequestDone(1, len(WORDS), 0.0)]


def expected_text(index: int) -> str:
    return "".join(WORDS[index::N])


async def read_all(buffer: EventBuffer) -> list[Event]:
    events = [await buffer.get()]
    while not isinstance(events[-1], RequestDone):
        events.append(await asyncio.wait_for(buffer.get(), timeout=10))
    return events


def texts(events: list[Event]) -> dict[int, str]:
    return {i: "".join(e.text for e in events if isinstance(e, Delta) and e.index == i) for i in range(N)}


def test_a_reader_that_reads_nothing_until_the_end_gets_one_merged_delta_per_sample() -> None:
    async def run() -> tuple[EventBuffer, list[Event]]:
        buffer = EventBuffer(asyncio.get_running_loop())
        engine = threading.Thread(target=lambda: [buffer.put(e) for e in engine_events()])
        engine.start()
        engine.join()  # everything sent before the first read
        return buffer, await read_all(buffer)

    buffer, events = asyncio.run(run())
    assert buffer.high_water == 2 * N + 1  # one delta per sample, N SampleDone, one RequestDone
    assert buffer.merged == len(WORDS) - N
    assert [type(e) for e in events] == [Delta] * N + [SampleDone] * N + [RequestDone]
    assert texts(events) == {i: expected_text(i) for i in range(N)}


def test_a_reader_racing_the_engine_gets_every_event_in_order() -> None:
    async def run() -> tuple[EventBuffer, list[Event]]:
        buffer = EventBuffer(asyncio.get_running_loop())
        engine = threading.Thread(target=lambda: [buffer.put(e) for e in engine_events()])
        engine.start()
        events = await read_all(buffer)
        engine.join()
        return buffer, events

    buffer, events = asyncio.run(run())
    assert buffer.high_water <= 2 * N + 1
    assert texts(events) == {i: expected_text(i) for i in range(N)}
    for i in range(N):  # a sample's SampleDone comes after all of its text
        done_at = next(k for k, e in enumerate(events) if isinstance(e, SampleDone) and e.index == i)
        assert not any(isinstance(e, Delta) and e.index == i for e in events[done_at:])
    assert isinstance(events[-1], RequestDone)
