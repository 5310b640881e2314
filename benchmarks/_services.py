"""The benchmark's server, an rpcgen client for it, and a stock BaseManager for it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from multiprocessing.managers import BaseManager
from multiprocessing.process import BaseProcess
from typing import Any

from rpcgen.runtime import Address, AsyncView, RPCServiceBase, serve_rpc


class BenchServer:
    def health_check_rpc(self) -> dict[str, str]:
        return {"status": "ok"}

    def echo_rpc(self, value: Any) -> Any:
        return value

    def pid_rpc(self) -> int:
        return os.getpid()


def serve_bench(address: Address, authkey: bytes, ready: Any) -> None:
    serve_rpc(BenchServer, address, authkey, ready, service_name="Bench")


class BenchClient(RPCServiceBase[BenchServer]):
    """Shaped like generated code: module-level entrypoint, typed forwarding method."""

    rpc_server_methods = ("echo_rpc", "pid_rpc")  # as generated Ray-backed clients list them

    def __init__(self, port: int, **kwargs: Any) -> None:
        super().__init__(service_name="Bench", port=port, **kwargs)
        self._initialize_service()

    def _create_direct_server(self) -> BenchServer:
        return BenchServer()

    def _start_server_process(
        self, address: Address, authkey: bytes, server_ready: Any
    ) -> BaseProcess:
        return self._launch_server_process(serve_bench, address, authkey, server_ready)

    def echo(self, value: Any) -> Any:
        return self._server_proxy.echo_rpc(value)

    @property
    def aio(self) -> BenchAio:
        return BenchAio(self)


class BenchAio(AsyncView[BenchServer]):
    """The asyncio view, as generated code writes it."""

    async def echo(self, value: Any) -> Any:
        return await self._rpc_call(self._rpc_server.echo_rpc, value)


class StockManager(BaseManager):
    """A default BaseManager, used the way the seed's hand-written services did."""


StockManager.register("BenchServer", callable=BenchServer)


class StreamBenchServer(BenchServer):
    """Items to stream, and the same item one call at a time."""

    def items_rpc(self, n: int, size: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b"x" * size  # a new object each time (pickle would share a repeated one)

    def item_rpc(self, size: int) -> bytes:
        return b"x" * size


def serve_stream_bench(address: Address, authkey: bytes, ready: Any) -> None:
    serve_rpc(StreamBenchServer, address, authkey, ready, service_name="StreamBench")


class StreamBenchClient(RPCServiceBase[StreamBenchServer]):
    def __init__(self, port: int, **kwargs: Any) -> None:
        super().__init__(service_name="StreamBench", port=port, **kwargs)
        self._initialize_service()

    def _create_direct_server(self) -> StreamBenchServer:
        return StreamBenchServer()

    def _start_server_process(
        self, address: Address, authkey: bytes, server_ready: Any
    ) -> BaseProcess:
        return self._launch_server_process(serve_stream_bench, address, authkey, server_ready)

    def items(self, n: int, size: int) -> Iterator[bytes]:
        return self._server_proxy.items_rpc(n, size)

    def item(self, size: int) -> bytes:
        return self._server_proxy.item_rpc(size)


def serve_bench_in_band(address: Address, authkey: bytes, ready: Any) -> None:
    """The benchmark's server with every buffer kept in the pickle (the path before
    out-of-band buffers), for the same-run comparison."""
    from rpcgen.runtime import oob

    oob.OOB_MIN_BYTES = 1 << 62
    serve_rpc(BenchServer, address, authkey, ready, service_name="BenchInBand")


class InBandBenchClient(BenchClient):
    def _start_server_process(
        self, address: Address, authkey: bytes, server_ready: Any
    ) -> BaseProcess:
        return self._launch_server_process(serve_bench_in_band, address, authkey, server_ready)
