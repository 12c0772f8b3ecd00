"""A gRPC load generator (grpc.aio, several processes): the highest rate a unary call sustains,
and its latency at a fixed offered rate.

The same generator drives the trivial reference call and the lookups, so that their ratio
measures the services, not the generator. At a fixed rate, latency is measured from when a
call was due, not when it was sent, so that a stalled server cannot hide its queue.
"""

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

# (target, request index) -> (unary-unary multicallable, request message)
CallFactory = Callable[[grpc.aio.Channel], Callable[[int], tuple[Any, Any]]]


@dataclass(frozen=True)
class LoadResult:
    calls: int
    errors: int
    seconds: float
    latencies_us: list[float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_us)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def saturate(
    target: str, factory: CallFactory, seconds: float, processes: int = 2, concurrency: int = 32
) -> LoadResult:
    """Calls as fast as they complete: ``concurrency`` in flight in each process."""
    return _run(target, factory, seconds, processes, concurrency=concurrency, rate=0.0)


def at_rate(
    target: str, factory: CallFactory, seconds: float, rate: float, processes: int = 2
) -> LoadResult:
    """Calls offered at ``rate`` per second in total, whatever the server's pace."""
    return _run(target, factory, seconds, processes, concurrency=0, rate=rate / processes)


def _run(
    target: str,
    factory: CallFactory,
    seconds: float,
    processes: int,
    *,
    concurrency: int,
    rate: float,
) -> LoadResult:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [
            pool.submit(_process, target, factory, seconds, concurrency, rate, i)
            for i in range(processes)
        ]
        parts = [future.result() for future in futures]
    return LoadResult(
        calls=sum(p.calls for p in parts),
        errors=sum(p.errors for p in parts),
        seconds=max(p.seconds for p in parts),
        latencies_us=[latency for p in parts for latency in p.latencies_us],
    )


def _process(
    target: str, factory: CallFactory, seconds: float, concurrency: int, rate: float, index: int
) -> LoadResult:
    return asyncio.run(_drive(target, factory, seconds, concurrency, rate, index))


async def _drive(
    target: str, factory: CallFactory, seconds: float, concurrency: int, rate: float, index: int
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        make_call = factory(channel)
        await _warm_up(make_call)
        started = time.perf_counter()
        deadline = started + seconds

        async def call(n: int, due: float) -> None:
            nonlocal errors
            method, request = make_call(n)
            try:
                await method(request, timeout=5)
            except grpc.aio.AioRpcError:
                errors += 1
                return
            latencies.append((time.perf_counter() - due) * 1e6)

        if rate:
            await _offer(call, rate, started, deadline, index)
        else:
            await asyncio.gather(
                *(_loop(call, deadline, index * 1_000_000 + w * 10_000) for w in range(concurrency))
            )
        elapsed = time.perf_counter() - started
    return LoadResult(len(latencies), errors, elapsed, latencies)


async def _warm_up(make_call: Callable[[int], tuple[Any, Any]]) -> None:
    for n in range(20):
        method, request = make_call(n)
        await method(request, timeout=5)


async def _loop(call: Any, deadline: float, first: int) -> None:
    n = first
    while (now := time.perf_counter()) < deadline:
        await call(n, now)
        n += 1


async def _offer(call: Any, rate: float, started: float, deadline: float, index: int) -> None:
    interval = 1.0 / rate
    tasks = set()
    n = 0
    while True:
        due = started + n * interval
        if due >= deadline:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(call(index * 1_000_000 + n, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks)
