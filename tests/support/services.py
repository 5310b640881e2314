"""Sample servers and clients used by the integration tests.

Process targets are module level so spawn and forkserver can pickle them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from typing import Any

from rpcgen.runtime import Address, AsyncView, RPCServiceBase, serve_rpc


class NeedsArgsError(Exception):
    """Its __init__ needs two arguments: plain pickle cannot rebuild it (args is one string)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


class Sized:
    """A value whose ``nbytes`` is not a number (a dataclass field defaulting to None)."""

    def __init__(self, nbytes: int | None = None) -> None:
        self.nbytes = nbytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sized) and other.nbytes == self.nbytes


class AnythingGoes:
    """``__getattr__`` answers every name, so ``getattr(x, "nbytes", 0)`` is a string."""

    def __getattr__(self, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return "anything"


class EchoServer:
    """Thread-safe: the RPC server calls it from one thread per client connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.healthy = True

    def health_check_rpc(self) -> dict[str, Any]:
        return {"status": "ok" if self.healthy else "degraded", "pid": os.getpid()}

    def set_healthy_rpc(self, healthy: bool) -> None:
        self.healthy = healthy

    def echo_rpc(self, value: Any) -> Any:
        with self._lock:
            self.calls += 1
        return value

    def add_rpc(self, a: int, b: int = 0) -> int:
        return a + b

    def calls_rpc(self) -> int:
        with self._lock:
            return self.calls

    def pid_rpc(self) -> int:
        return os.getpid()

    def boom_rpc(self, message: str) -> None:
        raise ValueError(message)

    def sleep_rpc(self, seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    def block_forever_rpc(self) -> None:
        threading.Event().wait()

    def unpicklable_rpc(self) -> Any:
        return threading.Lock()

    def numbers_rpc(self, n: int) -> Iterator[int]:
        return (i for i in range(n))  # a generator: the call streams its items

    def lambda_rpc(self) -> Any:
        return lambda: None  # not picklable

    def payload_rpc(self, size: int) -> bytes:
        return b"x" * size

    def needs_args_error_rpc(self) -> None:
        raise NeedsArgsError(42, "the detail")

    def local_class_error_rpc(self) -> None:
        class OnlyHere(Exception):  # cannot be pickled, nor found by the client
            pass

        raise OnlyHere("raised by a class the client cannot import")

    def foreign_error_rpc(self) -> None:
        from tests.support.foreign_error import ForeignError  # imported in the server only

        raise ForeignError("from a module the client never imported")

    def service_error_rpc(self) -> None:
        from rpcgen.runtime import ServiceUnavailable

        raise ServiceUnavailable(service="Inner", host="127.0.0.1", port=1, reason="inner down")

    def sized_rpc(self, value: Any) -> Sized:
        return Sized()

    def rendezvous_rpc(self, key: str, parties: int, timeout_s: float) -> int:
        """Returns only once ``parties`` calls with this key run at the same time."""
        with self._lock:
            barrier = _BARRIERS.setdefault(key, threading.Barrier(parties, timeout=timeout_s))
        return barrier.wait()

    def thread_rpc(self) -> int:
        return threading.get_ident()


_BARRIERS: dict[str, threading.Barrier] = {}


class HangingHealthServer(EchoServer):
    """health_check_rpc never answers (a hung server)."""

    def health_check_rpc(self) -> dict[str, Any]:
        threading.Event().wait()
        return {}


class CrashingServer:
    def __init__(self) -> None:
        raise RuntimeError("constructor exploded on purpose")


def serve_echo(address: Address, authkey: bytes, ready: Any, name: str = "Echo") -> None:
    serve_rpc(EchoServer, address, authkey, ready, service_name=name)


def serve_hanging(address: Address, authkey: bytes, ready: Any, name: str = "Echo") -> None:
    serve_rpc(HangingHealthServer, address, authkey, ready, service_name=name)


def serve_crashing(address: Address, authkey: bytes, ready: Any, name: str = "Echo") -> None:
    serve_rpc(CrashingServer, address, authkey, ready, service_name=name)


def serve_quick_handshake(address: Address, authkey: bytes, ready: Any, name: str = "Echo") -> None:
    serve_rpc(EchoServer, address, authkey, ready, service_name=name, handshake_timeout_s=0.5)


class FewFdsServer(EchoServer):
    """Runs with only a few spare file descriptors, so a burst of peers exhausts them."""

    def __init__(self) -> None:
        import resource

        super().__init__()
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        spare = len(os.listdir("/proc/self/fd")) + 8
        resource.setrlimit(resource.RLIMIT_NOFILE, (spare, hard))


def serve_few_fds(address: Address, authkey: bytes, ready: Any, name: str = "Echo") -> None:
    serve_rpc(FewFdsServer, address, authkey, ready, service_name=name)


class Fd256Server(EchoServer):
    """Runs with 256 file descriptors, as a small container might."""

    def __init__(self) -> None:
        import resource

        super().__init__()
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


def serve_fd256(address: Address, authkey: bytes, ready: Any, name: str = "Echo") -> None:
    serve_rpc(Fd256Server, address, authkey, ready, service_name=name, handshake_timeout_s=2.0)


def exit_before_ready(address: Address, authkey: bytes, ready: Any, name: str = "Echo") -> None:
    os._exit(7)


def never_ready(address: Address, authkey: bytes, ready: Any, name: str = "Echo") -> None:
    threading.Event().wait()


def serve_two_at_a_time(address: Address, authkey: bytes, ready: Any, name: str = "Echo") -> None:
    serve_rpc(EchoServer, address, authkey, ready, service_name=name, max_concurrent_calls=2)


SERVE_TARGETS = {
    "two_at_a_time": serve_two_at_a_time,
    "echo": serve_echo,
    "hanging": serve_hanging,
    "crashing": serve_crashing,
    "exit7": exit_before_ready,
    "never_ready": never_ready,
    "quick_handshake": serve_quick_handshake,
    "few_fds": serve_few_fds,
    "fd256": serve_fd256,
}


class Echo(RPCServiceBase[EchoServer]):
    """A client written the way rpcgen generates them: module-level target."""

    def __init__(
        self, port: int, *, target: str = "echo", name: str = "Echo", **kwargs: Any
    ) -> None:
        self._target = target
        super().__init__(service_name=name, port=port, **kwargs)
        self._initialize_service()

    def _create_direct_server(self) -> EchoServer:
        return EchoServer()

    def _start_server_process(
        self, address: Address, authkey: bytes, server_ready: Any
    ) -> BaseProcess:
        target = SERVE_TARGETS[self._target]
        return self._launch_server_process(
            target, address, authkey, server_ready, self.service_name
        )

    def echo(self, value: Any) -> Any:
        return self._server_proxy.echo_rpc(value)

    def add(self, a: int, b: int = 0) -> int:
        return self._server_proxy.add_rpc(a, b)

    def remote_pid(self) -> int:
        return self._server_proxy.pid_rpc()

    @property
    def aio(self) -> EchoAio:
        return EchoAio(self)


class EchoAio(AsyncView[EchoServer]):
    """A typed asyncio view, written the way rpcgen generates them."""

    async def echo(self, value: Any) -> Any:
        return await self._rpc_call(self._rpc_server.echo_rpc, value)

    async def add(self, a: int, b: int = 0) -> int:
        return await self._rpc_call(self._rpc_server.add_rpc, a, b)

    async def remote_pid(self) -> int:
        return await self._rpc_call(self._rpc_server.pid_rpc)

    async def sleep(self, seconds: float) -> str:
        return await self._rpc_call(self._rpc_server.sleep_rpc, seconds)

    async def boom(self, message: str) -> None:
        await self._rpc_call(self._rpc_server.boom_rpc, message)

    async def rendezvous(self, key: str, parties: int, timeout_s: float) -> int:
        return await self._rpc_call(self._rpc_server.rendezvous_rpc, key, parties, timeout_s)

    async def thread(self) -> int:
        return await self._rpc_call(self._rpc_server.thread_rpc)


class SeedStyleEcho(RPCServiceBase[EchoServer]):
    """Written exactly like the seed design doc: a closure target (fork only)."""

    def __init__(self, port: int, running_unit_tests: bool = False) -> None:
        super().__init__(
            service_name="SeedStyleEcho", port=port, running_unit_tests=running_unit_tests
        )
        self._initialize_service()

    def _create_direct_server(self) -> EchoServer:
        return EchoServer()

    def _start_server_process(
        self, address: Address, authkey: bytes, server_ready: Any
    ) -> BaseProcess:
        def server_main() -> None:
            from setproctitle import setproctitle

            setproctitle(f"vali_{self.service_name}")
            server = EchoServer()
            self._serve_rpc(server, address, authkey, server_ready)

        from multiprocessing import Process

        process = Process(target=server_main, daemon=True)
        process.start()
        return process
