"""When requests are sent: a closed loop (C clients, each sends its next request when the last
answers) or an open loop (Poisson arrivals at a given rate, whether or not earlier ones answered).

The two measure different things. A closed loop finds the throughput a concurrency sustains,
but it slows down with the server, so it hides queueing: a server twice as slow simply gets
half the requests. An open loop is how independent users arrive; past saturation its queue
grows and latency with it, which is the curve a latency-vs-load plot shows. Open-loop latency
counts from each request's scheduled arrival, not from when the client got round to sending
it, so a client that falls behind cannot hide the server's delay (coordinated omission).

Both are bounded: at most `requests` sent and none started after `duration_s`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from loadtest.client import Result

# fire(i, due): send the i-th request of the mix, due at perf_counter time `due`
Fire = Callable[[int, float], Coroutine[Any, Any, Result]]


def poisson_arrivals(rate: float, requests: int, duration_s: float, seed: int = 0) -> list[float]:
    """Arrival times (seconds from the start) of a Poisson process: exponential gaps of mean
    1/rate, stopped at `requests` arrivals or `duration_s` seconds. Seeded, so two runs (two
    servers) see the same arrival pattern."""
    rng = random.Random(seed)
    times: list[float] = []
    t = 0.0
    while len(times) < requests:
        t += rng.expovariate(rate)
        if t > duration_s:
            break
        times.append(t)
    return times


async def open_loop(fire: Fire, arrivals: list[float], on_done: Callable[[], None] = lambda: None) -> list[Result]:
    start = time.perf_counter()
    pending: list[asyncio.Task[Result]] = []
    for i, offset in enumerate(arrivals):
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(fire(i, start + offset))
        task.add_done_callback(lambda _: on_done())
        pending.append(task)
    return list(await asyncio.gather(*pending))


async def closed_loop(
    fire: Fire, concurrency: int, requests: int, duration_s: float, on_done: Callable[[], None] = lambda: None
) -> list[Result]:
    start = time.perf_counter()
    counter = iter(range(requests))
    results: list[Result] = []

    async def client() -> None:
        # one shared counter: the requests are handed out in mix order whatever the concurrency
        for i in counter:
            now = time.perf_counter()
            if now - start > duration_s:
                return
            results.append(await fire(i, now))
            on_done()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results
