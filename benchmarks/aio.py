"""asyncio clients: calls/s and latency with 1, 16 and 64 calls in flight from one client
process, next to the sync client with 1 and 8 threads, and grpc.aio unary calls at the same
concurrency (when grpcio is installed: the ``bench`` extra). All in one run, interleaved in
rounds (every variant once per round), reported as medians over the rounds. Unpinned: a
throughput run needs both cores (the client and the server each use one)."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import multiprocessing
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rpcgen.runtime.ports import free_port

from ._services import BenchClient
from ._util import Row

TASKS = (1, 16, 64)
THREADS = (1, 8)


class Sample:
    """One measurement: calls/s, and each call's latency."""

    def __init__(self, calls: int, wall: float, latencies: list[float]) -> None:
        self.rate = calls / wall
        ordered = sorted(latencies)
        self.p50 = ordered[len(ordered) // 2]
        self.p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _drive(call: Callable[[bytes], Awaitable[Any]], tasks: int, total: int) -> Sample:
    per = max(1, total // tasks)
    latencies: list[float] = []
    clock = time.perf_counter

    async def worker() -> None:
        record = latencies.append
        for _ in range(per):
            t0 = clock()
            await call(b"x")
            record(clock() - t0)

    for _ in range(tasks):  # warm up (and open the connection) before the clock starts
        await call(b"warm")
    start = clock()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return Sample(per * tasks, clock() - start, latencies)


def _rpcgen_async(client: BenchClient, tasks: int, total: int) -> Sample:
    async def main() -> Sample:
        return await _drive(client.aio.echo, tasks, total)

    return asyncio.run(main())


def _sync_threads(client: BenchClient, threads: int, total: int) -> Sample:
    per = max(1, total // threads)
    barrier = threading.Barrier(threads)
    spans: list[tuple[float, float]] = []
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def work(index: int) -> None:
        client.echo(b"warm")
        record = latencies[index].append
        clock = time.perf_counter
        barrier.wait()
        start = clock()
        for _ in range(per):
            t0 = clock()
            client.echo(b"x")
            record(clock() - t0)
        spans.append((start, clock()))

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(300)
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return Sample(per * threads, wall, [x for part in latencies for x in part])


def _serve_grpc_aio(port: int, ready: Any) -> None:
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Bench", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


def _grpc_async(port: int, tasks: int, total: int) -> Sample:
    import grpc

    async def main() -> Sample:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await _drive(channel.unary_unary("/bench.Bench/Echo"), tasks, total)

    return asyncio.run(main())


def run(quick: bool) -> list[Row]:
    total = 2_000 if quick else 20_000
    rounds = 1 if quick else 3
    have_grpc = importlib.util.find_spec("grpc") is not None
    samples: dict[str, list[Sample]] = {}
    variants: dict[str, Callable[[], Sample]] = {}
    client = BenchClient(free_port())
    grpc_proc = None
    try:
        for threads in THREADS:
            variants[f"sync client, {threads} thread{'s' * (threads > 1)}"] = functools.partial(
                _sync_threads, client, threads, total
            )
        for tasks in TASKS:
            variants[f"asyncio client, {tasks} in flight"] = functools.partial(
                _rpcgen_async, client, tasks, total
            )
        if have_grpc:
            # spawn: grpc must not be initialised in a forked copy of a process that used it.
            ctx = multiprocessing.get_context("spawn")
            port, ready = free_port(), ctx.Event()
            grpc_proc = ctx.Process(target=_serve_grpc_aio, args=(port, ready), daemon=True)
            grpc_proc.start()
            if not ready.wait(60):
                raise RuntimeError("the grpc.aio server did not start")
            for tasks in TASKS:
                variants[f"grpc.aio unary, {tasks} in flight"] = functools.partial(
                    _grpc_async, port, tasks, total
                )
        for _ in range(rounds):
            for name, measure in variants.items():
                samples.setdefault(name, []).append(measure())
    finally:
        client.shutdown()
        if grpc_proc is not None:
            grpc_proc.kill()
            grpc_proc.join(5)
            grpc_proc.close()

    def rate(name: str) -> float:
        return statistics.median(s.rate for s in samples[name])

    rows: list[Row] = []
    for name, got in samples.items():
        p50 = statistics.median(s.p50 for s in got) * 1000
        p99 = statistics.median(s.p99 for s in got) * 1000
        row = Row(
            "aio",
            f"{name} (p50 {p50:.2f} ms, p99 {p99:.2f} ms)",
            rate(name),
            "/s",
            extra={"p50_ms": p50, "p99_ms": p99, "rounds": len(got)},
        )
        if name == "asyncio client, 64 in flight":
            row.baseline, row.ratio = "sync client, 8 threads", row.value / rate(
                "sync client, 8 threads"
            )
            row.target = ">= 3x sync 8 threads"
        elif name == "asyncio client, 16 in flight":
            row.baseline, row.ratio = "sync client, 8 threads", row.value / rate(
                "sync client, 8 threads"
            )
        rows.append(row)
    if have_grpc:
        for tasks in TASKS:
            ours = rate(f"asyncio client, {tasks} in flight")
            theirs = rate(f"grpc.aio unary, {tasks} in flight")
            rows.append(
                Row(
                    "aio",
                    f"asyncio client vs grpc.aio, {tasks} in flight",
                    ours,
                    "/s",
                    baseline=f"grpc.aio unary, {tasks} in flight",
                    ratio=ours / theirs,
                    target=">= 1.5x grpc.aio" if tasks == 64 else None,
                )
            )
    else:
        rows.append(
            Row("aio", "grpc.aio: skipped (grpcio not installed; pip install '.[bench]')", 0, "")
        )
    return rows
