"""Streams: small items per second from a streaming method, against the same items fetched
by repeated unary calls, gRPC server streaming (the ``bench`` extra) and a Ray streaming
generator (the ``ray`` extra); the time to a stream's first item against one unary call;
and MB/s at 1 KB and 1 MB items. rpcgen, the unary calls and gRPC run interleaved, in
rounds (medians reported); Ray runs last, in this process, after the others are stopped.
Unpinned: a stream keeps both cores busy (the producer and the consumer)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from rpcgen.runtime.ports import free_port

from ._services import StreamBenchClient
from ._util import Row

SMALL = 16  # bytes per small item


def _rate(items: Callable[[], Iterator[Any]], n: int) -> float:
    start = time.perf_counter()
    got = 0
    for _ in items():
        got += 1
    assert got == n, (got, n)
    return n / (time.perf_counter() - start)


def _unary_rate(client: StreamBenchClient, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        client.item(SMALL)
    return n / (time.perf_counter() - start)


def _first_item(client: StreamBenchClient, rounds: int) -> tuple[float, float]:
    """(median time to a 1-item stream's item, median unary call), interleaved."""
    stream, unary = [], []
    clock = time.perf_counter
    for _ in range(rounds):
        t0 = clock()
        items = iter(client.items(1, SMALL))
        next(items)
        t1 = clock()
        for _ in items:  # its end: the connection is back for the next call (not timed)
            pass
        t2 = clock()
        client.item(SMALL)
        t3 = clock()
        stream.append(t1 - t0)
        unary.append(t3 - t2)
    return statistics.median(stream), statistics.median(unary)


def _serve_grpc(port: int, ready: Any) -> None:
    from concurrent import futures

    import grpc

    def items(request: bytes, context: Any) -> Iterator[bytes]:
        for _ in range(int.from_bytes(request, "big")):
            yield b"x" * SMALL

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "bench.Bench", {"Items": grpc.unary_stream_rpc_method_handler(items)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    ready.set()
    server.wait_for_termination()


@contextlib.contextmanager
def _grpc_stream() -> Iterator[Callable[[int], Iterator[bytes]] | None]:
    if importlib.util.find_spec("grpc") is None:
        yield None
        return
    import grpc

    # spawn: grpc must not be initialised in a forked copy of a process that used it.
    ctx = multiprocessing.get_context("spawn")
    port, ready = free_port(), ctx.Event()
    proc = ctx.Process(target=_serve_grpc, args=(port, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the gRPC server did not start")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream("/bench.Bench/Items")
            yield lambda n: call(n.to_bytes(8, "big"))
    finally:
        proc.kill()
        proc.join(5)


def _ray_rate(n: int) -> float | None:
    if importlib.util.find_spec("ray") is None:
        return None
    import ray

    class Items:
        def items(self, n: int, size: int) -> Iterator[bytes]:
            for _ in range(n):
                yield b"x" * size

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        actor = ray.remote(Items).remote()
        method: Any = actor.items
        method = method.options(num_returns="streaming")

        def items() -> Iterator[bytes]:
            for ref in method.remote(n, SMALL):
                yield ray.get(ref)

        _rate(items, n)  # warm up: the actor's worker starts on first use
        return statistics.median(_rate(items, n) for _ in range(3))
    finally:
        ray.shutdown()


def run(quick: bool) -> list[Row]:
    n_small = 20_000 if quick else 300_000
    n_unary = 2_000 if quick else 10_000
    rounds = 1 if quick else 3
    rates: dict[str, list[float]] = {}
    client = StreamBenchClient(free_port())
    try:
        with _grpc_stream() as grpc_items:
            variants: dict[str, Callable[[], float]] = {
                "stream": functools.partial(
                    _rate, functools.partial(client.items, n_small, SMALL), n_small
                ),
                "unary": functools.partial(_unary_rate, client, n_unary),
            }
            if grpc_items is not None:
                variants["grpc"] = functools.partial(
                    _rate, functools.partial(grpc_items, n_small), n_small
                )
            for name in variants:  # warm up
                variants[name]()
            for _ in range(rounds):
                for name, measure in variants.items():
                    rates.setdefault(name, []).append(measure())
        first, unary_call = _first_item(client, 200 if quick else 3000)
        sized: dict[int, float] = {}
        for size, n in ((1024, 20_000 if quick else 100_000), (1 << 20, 100 if quick else 1000)):
            sized[size] = statistics.median(
                _rate(functools.partial(client.items, n, size), n) * size / 1e6
                for _ in range(rounds)
            )
    finally:
        client.shutdown()
    ray_rate = _ray_rate(2_000 if quick else 5_000)

    def rate(name: str) -> float:
        return statistics.median(rates[name])

    ours = rate("stream")
    rows = [
        Row(
            "streams",
            f"stream of {SMALL}-byte items vs the same by unary calls",
            ours,
            "/s",
            baseline=f"unary calls {rate('unary'):,.0f}/s",
            ratio=ours / rate("unary"),
            target=">= 20x",
        )
    ]
    if "grpc" in rates:
        rows.append(
            Row(
                "streams",
                "stream vs gRPC server streaming (same items)",
                ours,
                "/s",
                baseline=f"gRPC {rate('grpc'):,.0f}/s",
                ratio=ours / rate("grpc"),
                target=">= 5x",
            )
        )
    else:
        rows.append(Row("streams", "gRPC: skipped (pip install '.[bench]')", 0.0, ""))
    if ray_rate is not None:
        rows.append(
            Row(
                "streams",
                "stream vs a Ray streaming generator (same items)",
                ours,
                "/s",
                baseline=f"Ray {ray_rate:,.0f}/s",
                ratio=ours / ray_rate,
                target=">= 100x",
            )
        )
    else:
        rows.append(Row("streams", "Ray: skipped (pip install '.[ray]')", 0.0, ""))
    rows.append(
        Row(
            "streams",
            "time to first item vs one unary call",
            first * 1e6,
            "us",
            baseline=f"unary call {unary_call * 1e6:.0f} us",
            ratio=first / unary_call,
            target="<= 1x",
        )
    )
    for size, mb_s in sized.items():
        label = "1 KB" if size == 1024 else "1 MB"
        rows.append(Row("streams", f"stream throughput, {label} items", mb_s, "MB/s"))
    return rows
