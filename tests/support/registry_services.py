"""A small three-service graph for registry tests: A and B independent, C depends on both."""

from __future__ import annotations

import os
from multiprocessing.process import BaseProcess
from typing import Any, ClassVar

from rpcgen.runtime import (
    Address,
    RPCServiceBase,
    ServiceGraph,
    ServiceNode,
    StartedServices,
    serve_rpc,
)
from tests.support.services import CrashingServer, EchoServer


def serve_named(address: Address, authkey: bytes, ready: Any, name: str) -> None:
    serve_rpc(EchoServer, address, authkey, ready, service_name=name)


def serve_broken(address: Address, authkey: bytes, ready: Any, name: str) -> None:
    serve_rpc(CrashingServer, address, authkey, ready, service_name=name)


class Named(RPCServiceBase[EchoServer]):
    NAME = "Named"
    BROKEN: ClassVar[set[str]] = set()

    def __init__(
        self, *, running_unit_tests: bool = False, port: int = 50000, **options: Any
    ) -> None:
        self.deps = {k: options.pop(k) for k in list(options) if k in ("a", "b")}
        options.setdefault("enable_health_check", True)
        options.setdefault("health_check_interval_s", 0.05)
        super().__init__(self.NAME, port, running_unit_tests, **options)
        self._initialize_service()

    def _create_direct_server(self) -> EchoServer:
        return EchoServer()

    def _start_server_process(
        self, address: Address, authkey: bytes, server_ready: Any
    ) -> BaseProcess:
        target = (
            serve_broken
            if self.NAME in Named.BROKEN or os.environ.get("BREAK") == self.NAME
            else serve_named
        )
        return self._launch_server_process(target, address, authkey, server_ready, self.NAME)

    def echo(self, value: Any) -> Any:
        return self._server_proxy.echo_rpc(value)


class A(Named):
    NAME = "A"


class B(Named):
    NAME = "B"


class C(Named):
    NAME = "C"


class Services(StartedServices):
    a: A
    b: B
    c: C


GRAPH = ServiceGraph(
    [ServiceNode("A", "a", A), ServiceNode("B", "b", B), ServiceNode("C", "c", C, ("A", "B"))]
)
SERVICE_NAMES = ("A", "B", "C")


def start_all(running_unit_tests: bool = False, **options: Any) -> Services:
    return GRAPH.start(Services, running_unit_tests=running_unit_tests, **options)


def shutdown_all() -> None:
    GRAPH.shutdown_all()


def attach_all(**options: Any) -> Services:
    return GRAPH.attach(Services, **options)
