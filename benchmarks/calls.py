"""Steady-state calls, payloads and throughput: rpcgen vs raw BaseManager vs raw
multiprocessing.connection vs raw TCP (the floor), plus direct mode. All in one run,
interleaved in rounds so every variant sees the same machine noise."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rpcgen.runtime.ports import free_port

from ._raw import ConnectionClient, TcpClient, serve_connection, serve_tcp
from ._services import BenchClient, StockManager
from ._util import Row, median_ms, p99_ms

Echo = Callable[[Any], Any]


@contextlib.contextmanager
def _process(target: Callable[..., None], *args: Any) -> Iterator[None]:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(10):
            raise RuntimeError(f"{target.__name__} did not start")
        yield
    finally:
        proc.kill()
        proc.join(5)
        proc.close()


@contextlib.contextmanager
def transports() -> Iterator[dict[str, Echo]]:
    """Every variant's echo callable, each against its own server process."""
    key = secrets.token_bytes(32)
    conn_addr = ("127.0.0.1", free_port())
    tcp_addr = ("127.0.0.1", free_port())
    stock = StockManager(address=("127.0.0.1", 0), authkey=key)
    stock.start()
    client = BenchClient(free_port())
    unix_client = BenchClient(free_port(), transport="unix")
    direct = BenchClient(free_port(), running_unit_tests=True)
    try:
        with _process(serve_connection, conn_addr, key), _process(serve_tcp, tcp_addr):
            raw_conn = ConnectionClient(conn_addr, key)
            raw_tcp = TcpClient(tcp_addr)
            stock_proxy = stock.BenchServer()  # type: ignore[attr-defined]
            try:
                yield {
                    "rpcgen client method": client.echo,
                    "rpcgen over a Unix socket": unix_client.echo,
                    "raw BaseManager proxy": stock_proxy.echo_rpc,
                    "raw multiprocessing.connection": raw_conn.echo,
                    "raw TCP socket (floor)": raw_tcp.echo,
                    "rpcgen direct mode": direct.echo,
                }
            finally:
                raw_conn.close()
                raw_tcp.close()
                del stock_proxy
    finally:
        client.shutdown()
        unix_client.shutdown()
        direct.shutdown()
        stock.shutdown()


def _measure(fn: Echo, value: Any, n: int, samples: list[float]) -> float:
    clock = time.perf_counter
    start = clock()
    for _ in range(n):
        t0 = clock()
        fn(value)
        samples.append(clock() - t0)
    return clock() - start


def steady_and_payloads(quick: bool) -> list[Row]:
    rows: list[Row] = []
    total = 2_000 if quick else 24_000
    rounds = 4
    cases = [("steady", b"x", total)] + [
        (f"payload {label}", b"x" * size, count if not quick else max(10, count // 10))
        for label, size, count in (
            ("1 KB", 1024, 8_000),
            ("100 KB", 100 * 1024, 2_000),
            ("1 MB", 1 << 20, 300),
        )
    ]
    with transports() as variants:
        for fn in variants.values():  # warm up every connection
            for _ in range(50):
                fn(b"warm")
        for case, value, count in cases:
            samples: dict[str, list[float]] = {name: [] for name in variants}
            elapsed: dict[str, float] = dict.fromkeys(variants, 0.0)
            for _ in range(rounds):
                for name, fn in variants.items():
                    elapsed[name] += _measure(fn, value, count // rounds, samples[name])
            base = median_ms(samples["raw BaseManager proxy"])
            floor = median_ms(samples["raw TCP socket (floor)"])
            for name in variants:
                med = median_ms(samples[name])
                extra = {
                    "p99_ms": p99_ms(samples[name]),
                    "calls_per_s": len(samples[name]) / elapsed[name],
                    "calls": len(samples[name]),
                }
                row = Row(f"calls/{case}", f"{case}: {name} (median)", med, "ms", extra=extra)
                if name == "rpcgen over a Unix socket":
                    tcp = median_ms(samples["rpcgen client method"])
                    row.baseline, row.ratio = "rpcgen client method (TCP)", med / tcp
                    rows.append(row)
                    continue
                if name == "rpcgen client method":
                    row.baseline, row.ratio = "raw BaseManager proxy", med / base
                    row.target = "<= 1.05x BaseManager" if case == "steady" else None
                    rows.append(row)
                    rows.append(
                        Row(
                            f"calls/{case}",
                            f"{case}: rpcgen vs raw TCP",
                            med,
                            "ms",
                            baseline="raw TCP socket (floor)",
                            ratio=med / floor,
                            target="<= 1.25x TCP" if case == "steady" else None,
                        )
                    )
                    continue
                rows.append(row)
            rows.append(
                Row(
                    f"calls/{case}",
                    f"{case}: rpcgen p99 / calls/s",
                    p99_ms(samples["rpcgen client method"]),
                    "ms",
                    extra={
                        "calls_per_s": len(samples["rpcgen client method"])
                        / elapsed["rpcgen client method"]
                    },
                )
            )
    return rows


def _client_worker(client: BenchClient, n: int, barrier: Any, out: Any) -> None:
    client.echo(b"warm")
    barrier.wait()
    start = time.perf_counter()
    for _ in range(n):
        client.echo(b"x")
    out.put((start, time.perf_counter()))
    client.shutdown()


def _thread_rate(client: BenchClient, threads: int, per: int) -> float:
    """Calls/s with ``threads`` threads sharing one client, ``per`` calls each."""
    barrier = threading.Barrier(threads)
    spans: list[tuple[float, float]] = []

    def work() -> None:
        client.echo(b"warm")
        barrier.wait()
        start = time.perf_counter()
        for _ in range(per):
            client.echo(b"x")
        spans.append((start, time.perf_counter()))

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(120)
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return threads * per / wall


def throughput(quick: bool) -> list[Row]:
    n = 1_000 if quick else 6_000
    rows: list[Row] = []
    ctx = multiprocessing.get_context("fork")
    client = BenchClient(free_port())
    try:
        results: dict[int, float] = {}
        for procs in (1, 2, 4):
            barrier, out = ctx.Barrier(procs), ctx.Queue()
            workers = [
                ctx.Process(target=_client_worker, args=(client, n, barrier, out))
                for _ in range(procs)
            ]
            for w in workers:
                w.start()
            spans = [out.get(timeout=120) for _ in workers]
            for w in workers:
                w.join(30)
                w.close()
            wall = max(e for _, e in spans) - min(s for s, _ in spans)
            results[procs] = procs * n / wall
        for procs, rate in results.items():
            rows.append(
                Row(
                    "throughput",
                    f"{procs} client process{'es' if procs > 1 else ''}",
                    rate,
                    "/s",
                    baseline="1 client process" if procs > 1 else None,
                    ratio=rate / results[1] if procs > 1 else None,
                    target=">= 1.6x" if procs == 4 else None,
                )
            )
        for threads in (1, 8):
            per = n // threads if threads > 1 else n
            rows.append(
                Row(
                    "throughput",
                    f"{threads} thread{'s' if threads > 1 else ''}, one client",
                    _thread_rate(client, threads, per),
                    "/s",
                )
            )
    finally:
        client.shutdown()
    return rows


@contextlib.contextmanager
def pinned(enabled: bool) -> Iterator[str]:
    """Pin this process (and the servers it starts) to one core.

    On this kind of VM a cross-core wake-up costs ~25 us, more than the RPC layer
    itself, and where the scheduler puts the client and server changes from run to
    run. Pinned, a call's latency is its CPU cost: what rpcgen can change.
    """
    if not enabled or not hasattr(os, "sched_setaffinity"):
        yield "unpinned"
        return
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    try:
        yield f"pinned to core {core}"
    finally:
        os.sched_setaffinity(0, before)


PIN = True


def run(quick: bool) -> list[Row]:
    with pinned(PIN) as where:
        rows = steady_and_payloads(quick)
    for row in rows:
        row.extra["placement"] = where
    return rows + throughput(quick)  # throughput needs every core
