"""A service with streaming, slow, cancellable and idempotent methods, for the stream,
deadline and retry tests (module level: every start method can start it)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from multiprocessing.process import BaseProcess
from typing import Any

from rpcgen.runtime import (
    Address,
    ReadySignal,
    RPCServiceBase,
    current_call,
    idempotent,
    serve_rpc,
)


class StreamServer:
    """Counts what it started, finished and closed, so tests can see the server side."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.stamps: dict[str, float] = {}
        self.produced = 0

    def _count(self, key: str, by: int = 1) -> None:
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + by
            self.stamps[key] = time.time()

    def health_check_rpc(self) -> dict[str, Any]:
        return {"status": "ok"}

    def counts_rpc(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts, produced=self.produced)

    def stamps_rpc(self) -> dict[str, float]:
        with self._lock:
            return dict(self.stamps)

    def pid_rpc(self) -> int:
        return os.getpid()

    def rss_rpc(self) -> int:
        import psutil

        return int(psutil.Process().memory_info().rss)

    def count_rpc(self, n: int) -> Iterator[int]:
        """0 .. n-1, as fast as it can."""
        try:
            yield from range(n)
        finally:
            self._count("count closed")

    def blobs_rpc(self, n: int, size: int) -> Iterator[bytes]:
        """n items of ``size`` bytes each (counted as produced)."""
        try:
            for i in range(n):
                with self._lock:
                    self.produced += 1
                yield bytes([i % 256]) * size  # a new, touched buffer each time
        finally:
            self._count("blobs closed")

    def ticks_rpc(self, pause_s: float) -> Iterator[int]:
        """An endless feed, one item every ``pause_s``; its finally stamps the time."""
        i = 0
        self._count("ticks started")
        try:
            while True:
                yield i
                i += 1
                if current_call().wait_cancelled(pause_s):
                    return
        finally:
            self._count("ticks closed")

    def fail_at_rpc(self, at: int) -> Iterator[int]:
        for i in range(at + 100):
            if i == at:
                raise ValueError(f"failed at item {i}")
            yield i

    async def acount_rpc(self, n: int) -> AsyncIterator[int]:
        try:
            for i in range(n):
                yield i
                await asyncio.sleep(0)
        finally:
            self._count("acount closed")

    def slow_rpc(self, seconds: float) -> str:
        """Counts each start: a call that waited past its deadline never starts."""
        self._count("slow started")
        time.sleep(seconds)
        self._count("slow finished")
        return "slow done"

    def time_left_rpc(self) -> float | None:
        return current_call().time_left_s

    async def wait_rpc(self, seconds: float) -> str:
        """A coroutine method: cancelling its call cancels it here."""
        self._count("wait started")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self._count("wait cancelled")
            raise
        return "waited"

    def poll_rpc(self, seconds: float) -> bool:
        """A sync method that gives up when its call is cancelled."""
        self._count("poll started")
        cancelled = current_call().wait_cancelled(seconds)
        if cancelled:
            self._count("poll cancelled")
        return cancelled

    @idempotent
    def read_slowly_rpc(self, seconds: float) -> int:
        self._count("read started")
        time.sleep(seconds)
        return os.getpid()

    def write_slowly_rpc(self, seconds: float) -> int:
        self._count("write started")
        time.sleep(seconds)
        return os.getpid()


def serve_streams(address: Address, authkey: bytes, ready: ReadySignal) -> None:
    serve_rpc(StreamServer, address, authkey, ready, service_name="Streams", max_concurrent_calls=1)


class Streams(RPCServiceBase[StreamServer]):
    """Written as rpcgen generates clients (module-level target, listed idempotent methods)."""

    rpc_service_name = "Streams"
    rpc_idempotent_methods = ("read_slowly_rpc",)

    def __init__(self, port: int, **kwargs: Any) -> None:
        super().__init__("Streams", port, **kwargs)
        self._initialize_service()

    def _create_direct_server(self) -> StreamServer:
        return StreamServer()

    def _start_server_process(
        self, address: Address, authkey: bytes, server_ready: ReadySignal
    ) -> BaseProcess:
        return self._launch_server_process(serve_streams, address, authkey, server_ready)

    @property
    def server(self) -> Any:
        """The proxy, untyped: the tests call server methods by name."""
        return self._server_proxy_untyped


def stream_in_child(port: int, pause_s: float) -> None:
    """A client process that streams until it is killed (the tests SIGKILL it)."""
    client = Streams.attach(port=port, service_name="Streams")
    for _ in client.server.ticks_rpc(pause_s):
        pass


class BufferServer:
    """Keeps what it is sent, so tests can see that copies are copies."""

    def __init__(self) -> None:
        self.kept: Any = None
        self.echoes = 0

    def health_check_rpc(self) -> dict[str, Any]:
        return {"status": "ok"}

    def echo_rpc(self, value: Any) -> Any:
        return value

    def keep_rpc(self, value: Any) -> None:
        self.kept = value

    def kept_rpc(self) -> Any:
        return self.kept

    def writable_rpc(self, array: Any) -> bool:
        return bool(array.flags.writeable)

    def shared_rpc(self, value: Any) -> bool:
        """Whether ``value`` (an array) arrived as a view of shared memory."""
        return in_shared_memory(value)

    def echoes_rpc(self) -> int:
        return self.echoes

    def count_echo_rpc(self, value: Any) -> Any:
        self.echoes += 1
        return value

    def scribble_rpc(self, array: Any) -> Any:
        """Change the array it got, in place, and send it back."""
        array[:] = 7
        return array

    def arrays_rpc(self, n: int, size: int) -> Iterator[Any]:
        import numpy

        for i in range(n):
            yield numpy.full(size, i % 256, dtype=numpy.uint8)


def in_shared_memory(array: Any) -> bool:
    """Whether a numpy array's memory is a mapping of an rpcgen arena (see .shm): its
    address, looked up in this process's /proc/self/maps."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            span = line.split(maxsplit=1)[0]
            low, high = (int(x, 16) for x in span.split("-"))
            if low <= address < high:
                return "memfd:rpcgen-arena" in line
    return False


def echo_in_child(port: int, size: int) -> None:
    """A client process that echoes large arrays until it is killed (tests SIGKILL it)."""
    import numpy

    client = Buffers.attach(port=port, service_name="Buffers")
    array = numpy.ones(size, dtype=numpy.uint8)
    while True:
        client.server.count_echo_rpc(array)


def serve_buffers(address: Address, authkey: bytes, ready: ReadySignal) -> None:
    serve_rpc(BufferServer, address, authkey, ready, service_name="Buffers")


class Buffers(RPCServiceBase[BufferServer]):
    def __init__(self, port: int, **kwargs: Any) -> None:
        super().__init__("Buffers", port, **kwargs)
        self._initialize_service()

    def _create_direct_server(self) -> BufferServer:
        return BufferServer()

    def _start_server_process(
        self, address: Address, authkey: bytes, server_ready: ReadySignal
    ) -> BaseProcess:
        return self._launch_server_process(serve_buffers, address, authkey, server_ready)

    @property
    def server(self) -> Any:
        return self._server_proxy_untyped
