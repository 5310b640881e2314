"""Peers (optional): Pyro5, RPyC and gRPC on the same trivial call and payloads, in the
same run as rpcgen. Install them with `pip install ".[bench]"`; a missing one is skipped
with a line that says so. Each server runs in its own (forked) process on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import multiprocessing
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ._services import BenchClient
from ._util import Row, free_port, median_ms

Echo = Callable[[bytes], Any]


def _serve_pyro(port: int, ready: Any) -> None:
    import Pyro5.api
    import Pyro5.server

    class Bench:
        @Pyro5.server.expose
        def echo(self, value: Any) -> Any:
            return value

    Pyro5.config.SERIALIZER = "marshal"  # Pyro5's fastest for bytes
    daemon = Pyro5.server.Daemon(host="127.0.0.1", port=port)
    daemon.register(Bench(), "bench")
    ready.set()
    daemon.requestLoop()


def _pyro_client(port: int) -> tuple[Echo, Callable[[], None]]:
    import Pyro5.api

    Pyro5.config.SERIALIZER = "marshal"
    proxy = Pyro5.api.Proxy(f"PYRO:bench@127.0.0.1:{port}")
    return proxy.echo, proxy._pyroRelease


def _serve_rpyc(port: int, ready: Any) -> None:
    import rpyc
    from rpyc.utils.server import ThreadedServer

    class Bench(rpyc.Service):  # type: ignore[misc]
        def exposed_echo(self, value: Any) -> Any:
            return value

    server = ThreadedServer(Bench, hostname="127.0.0.1", port=port)
    ready.set()
    server.start()


def _rpyc_client(port: int) -> tuple[Echo, Callable[[], None]]:
    import rpyc

    conn = rpyc.connect("127.0.0.1", port)
    return conn.root.echo, conn.close


def _serve_grpc(port: int, ready: Any) -> None:
    from concurrent import futures

    import grpc

    handler = grpc.method_handlers_generic_handler(
        "bench.Bench",
        {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    ready.set()
    server.wait_for_termination()


def _grpc_client(port: int) -> tuple[Echo, Callable[[], None]]:
    import grpc

    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_send_message_length", 8 << 20),
            ("grpc.max_receive_message_length", 8 << 20),
        ],
    )
    call = channel.unary_unary("/bench.Bench/Echo")
    return call, channel.close


PEERS: dict[
    str, tuple[str, Callable[[int, Any], None], Callable[[int], tuple[Echo, Callable[[], None]]]]
] = {
    "Pyro5": ("Pyro5", _serve_pyro, _pyro_client),
    "RPyC": ("rpyc", _serve_rpyc, _rpyc_client),
    "gRPC unary": ("grpc", _serve_grpc, _grpc_client),
}


@contextmanager
def _peer(
    serve: Callable[[int, Any], None], connect: Callable[[int], tuple[Echo, Callable[[], None]]]
) -> Iterator[Echo]:
    ctx = multiprocessing.get_context("fork")
    port, ready = free_port(), ctx.Event()
    proc = ctx.Process(target=serve, args=(port, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(20):
            raise RuntimeError("peer server did not start")
        echo, close = connect(port)
        try:
            yield echo
        finally:
            close()
    finally:
        proc.kill()
        proc.join(5)
        proc.close()


def _median(echo: Echo, value: bytes, n: int) -> float:
    for _ in range(20):
        echo(value)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        echo(value)
        samples.append(time.perf_counter() - t0)
    return median_ms(samples)


def run(quick: bool) -> list[Row]:
    cases = [
        ("trivial call", b"x", 300 if quick else 3000),
        ("1 KB", b"x" * 1024, 200 if quick else 2000),
        ("100 KB", b"x" * 102400, 50 if quick else 500),
        ("1 MB", b"x" * (1 << 20), 20 if quick else 100),
    ]
    rows: list[Row] = []
    ours = BenchClient(free_port())
    try:
        base = {case: _median(ours.echo, value, n) for case, value, n in cases}
    finally:
        ours.shutdown()
    for case in base:
        rows.append(Row("peers", f"{case}: rpcgen", base[case], "ms"))
    for name, (module, serve, connect) in PEERS.items():
        if importlib.util.find_spec(module) is None:
            rows.append(
                Row(
                    "peers",
                    f"{name}: skipped ({module} not installed; pip install '.[bench]')",
                    0.0,
                    "",
                )
            )
            continue
        with _peer(serve, connect) as echo:
            for case, value, n in cases:
                value_ms = _median(echo, value, n)
                rows.append(
                    Row(
                        "peers",
                        f"{case}: {name}",
                        value_ms,
                        "ms",
                        baseline=f"{case}: rpcgen",
                        ratio=value_ms / base[case],
                    )
                )
    return rows
