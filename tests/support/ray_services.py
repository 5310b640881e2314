"""Services for the Ray backend tests (run in Ray workers: importable, module level)."""

from __future__ import annotations

import os
import socket
from multiprocessing.process import BaseProcess
from typing import Any

from rpcgen.runtime import Address, RPCServiceBase
from tests.support.services import Echo
from tests.support.stream_services import BufferServer, StreamServer


class RelayServer:
    """Calls another service through a client it is handed (pickled into this actor)."""

    def health_check_rpc(self) -> dict[str, Any]:
        return {"status": "ok"}

    def relay_rpc(self, client: Echo, value: Any) -> dict[str, Any]:
        return {
            "echo": client.echo(value),
            "their_pid": client.remote_pid(),
            "my_pid": os.getpid(),
        }

    def where_rpc(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname()}


class _RayOnly:
    def _start_server_process(
        self, address: Address, authkey: bytes, server_ready: Any
    ) -> BaseProcess:
        raise NotImplementedError("a Ray-only test service")


class Relay(_RayOnly, RPCServiceBase[RelayServer]):
    # As generated clients list them: these two are actor methods of their own.
    rpc_server_methods = ("relay_rpc", "where_rpc")

    def __init__(self, port: int = 1, *, name: str = "Relay", **kwargs: Any) -> None:
        kwargs.setdefault("backend", "ray")
        super().__init__(name, port, **kwargs)
        self._initialize_service()

    def _create_direct_server(self) -> RelayServer:
        return RelayServer()

    def relay(self, client: Echo, value: Any) -> dict[str, Any]:
        return self._server_proxy.relay_rpc(client, value)

    def where(self) -> dict[str, Any]:
        return self._server_proxy.where_rpc()


class ReaderServer:
    """Uses another service: its client comes in through ``__init__``, as generated
    servers get the services they depend on."""

    def __init__(self, echo: Echo) -> None:
        self.echo = echo

    def health_check_rpc(self) -> dict[str, Any]:
        return {"status": "ok"}

    def read_rpc(self, value: Any) -> dict[str, Any]:
        return {
            "echo": self.echo.echo(value),
            "their_pid": self.echo.remote_pid(),
            "my_pid": os.getpid(),
        }


class Reader(_RayOnly, RPCServiceBase[ReaderServer]):
    """A Ray-backed service whose server uses a process-backed one (``echo``)."""

    rpc_server_methods = ("read_rpc",)
    rpc_server_dependencies = ("echo",)

    def __init__(self, echo: Echo, **kwargs: Any) -> None:
        self.echo = echo
        kwargs.setdefault("backend", "ray")
        super().__init__("Reader", 1, **kwargs)
        self._initialize_service()

    def _create_direct_server(self) -> ReaderServer:
        return ReaderServer(echo=self.echo)

    def read(self, value: Any) -> dict[str, Any]:
        return self._server_proxy.read_rpc(value)


class RayStreams(_RayOnly, RPCServiceBase[StreamServer]):
    """The stream tests' server class, in a Ray actor."""

    rpc_stream_methods = ("count_rpc", "fail_at_rpc", "ticks_rpc", "acount_rpc")

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("backend", "ray")
        super().__init__("RayStreams", 1, **kwargs)
        self._initialize_service()

    def _create_direct_server(self) -> StreamServer:
        return StreamServer()

    @property
    def server(self) -> Any:
        return self._server_proxy_untyped


class RayBuffers(_RayOnly, RPCServiceBase[BufferServer]):
    """The large-data tests' server class, in a Ray actor."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("backend", "ray")
        super().__init__("RayBuffers", 1, **kwargs)
        self._initialize_service()

    def _create_direct_server(self) -> BufferServer:
        return BufferServer()

    @property
    def server(self) -> Any:
        return self._server_proxy_untyped


class NoDatabaseError(RuntimeError):
    pass


class Broken(_RayOnly, RPCServiceBase[Any]):
    """Its server cannot be built: the actor's constructor raises."""

    def __init__(self, port: int = 1, **kwargs: Any) -> None:
        super().__init__("Broken", port, backend="ray", **kwargs)
        self._initialize_service()

    def _create_direct_server(self) -> Any:
        raise NoDatabaseError("no database at db.invalid:5432")
