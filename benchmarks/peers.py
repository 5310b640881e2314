"""Peers (optional): Pyro5, RPyC, gRPC and (when installed) Ray actors on the same trivial
call and payloads, in the same run as rpcgen, measured exactly as rpcgen is: the same
placement (every process pinned to one core, then none), interleaved blocks, medians of
block medians. Install them with `pip install ".[bench]"`; a missing one is skipped with a
line that says so. Each server runs in its own (forked) process on 127.0.0.1."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rpcgen.runtime.ports import free_port

from ._services import BenchClient
from ._util import Row, median_ms

Echo = Callable[[bytes], Any]


def _serve_pyro(port: int, ready: Any) -> None:
    import Pyro5.api
    import Pyro5.server

    class Bench:
        @Pyro5.server.expose  # type: ignore[untyped-decorator,unused-ignore]
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
) -> Iterator[tuple[Echo, list[int]]]:
    ctx = multiprocessing.get_context("fork")
    port, ready = free_port(), ctx.Event()
    proc = ctx.Process(target=serve, args=(port, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(20):
            raise RuntimeError("peer server did not start")
        echo, close = connect(port)
        try:
            assert proc.pid is not None
            yield echo, [proc.pid]
        finally:
            close()
    finally:
        proc.kill()
        proc.join(5)
        proc.close()


@contextmanager
def _ray_peer() -> Iterator[tuple[Echo, list[int]]]:
    """A Ray actor with the same echo method, on a local Ray with 2 CPUs."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:

        @ray.remote
        class Bench:
            def echo(self, value: Any) -> Any:
                return value

            def pid(self) -> int:
                import os

                return os.getpid()

        actor = Bench.remote()  # type: ignore[attr-defined]
        pid = ray.get(actor.pid.remote())

        def echo(value: bytes) -> Any:
            return ray.get(actor.echo.remote(value))

        yield echo, [pid]
    finally:
        ray.shutdown()


def _set_affinity(pids: list[int], cpus: set[int]) -> None:
    """Every thread of every process in ``pids`` (threads keep their own masks)."""
    for pid in pids:
        try:
            tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tasks:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)


def _median(echo: Echo, value: bytes, n: int) -> float:
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        echo(value)
        samples.append(clock() - t0)
    return median_ms(samples)


CASES = [
    ("trivial call", b"x", 3000),
    ("1 KB", b"x" * 1024, 2000),
    ("100 KB", b"x" * 102400, 400),
    ("1 MB", b"x" * (1 << 20), 60),
]


def run(quick: bool) -> list[Row]:
    """Every variant measured alike: the same placement (all pinned to one core, or none),
    blocks of calls interleaved across variants (the order rotating each block), and the
    median of the block medians."""
    blocks = 2 if quick else 5
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        ray_peer: tuple[Echo, list[int]] | None = None
        if importlib.util.find_spec("ray") is None:
            rows.append(_skipped("Ray actor", "ray", "pip install 'ray'"))
        else:  # first: Ray starts its own processes, before this one forks any
            ray_peer = stack.enter_context(_ray_peer())
        ours = BenchClient(free_port())
        stack.callback(ours.shutdown)
        assert ours.server_pid is not None
        variants: dict[str, Echo] = {"rpcgen": ours.echo}
        pids = [os.getpid(), ours.server_pid]
        peers = dict(PEERS)
        for name, (module, serve, connect) in peers.items():
            if importlib.util.find_spec(module) is None:
                rows.append(_skipped(name, module, "pip install '.[bench]'"))
                continue
            echo, peer_pids = stack.enter_context(_peer(serve, connect))
            variants[name], pids = echo, pids + peer_pids
        if ray_peer is not None:
            variants["Ray actor"], pids = ray_peer[0], pids + ray_peer[1]
        for echo in variants.values():
            for _ in range(50):
                echo(b"warm")
        every = os.sched_getaffinity(0)
        names = list(variants)
        for placement in ("pinned", "unpinned"):
            _set_affinity(pids, {min(every)} if placement == "pinned" else every)
            for case, value, n in CASES:
                count = max(10, n // 10) if quick else n // blocks
                medians: dict[str, list[float]] = {name: [] for name in names}
                for block in range(blocks):
                    order = names[block % len(names) :] + names[: block % len(names)]
                    for name in order:
                        medians[name].append(_median(variants[name], value, count))
                base = statistics.median(medians["rpcgen"])
                for name in names:
                    value_ms = statistics.median(medians[name])
                    rows.append(
                        Row(
                            "peers",
                            f"{placement}, {case}: {name}",
                            value_ms,
                            "ms",
                            baseline=None if name == "rpcgen" else f"{placement}, {case}: rpcgen",
                            ratio=None if name == "rpcgen" else value_ms / base,
                            extra={
                                "placement": placement,
                                "blocks": [round(m, 4) for m in medians[name]],
                            },
                        )
                    )
        _set_affinity(pids, every)
    return rows


def _skipped(name: str, module: str, hint: str) -> Row:
    return Row("peers", f"{name}: skipped ({module} not installed; {hint})", 0.0, "")
