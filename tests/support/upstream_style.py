"""A service written the way upstream writes them, with only the import changed: its
server process builds its own BaseManager (no serve_rpc), and its client reads the
design doc's attributes."""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.managers import BaseManager
from multiprocessing.process import BaseProcess
from typing import Any

from rpcgen.runtime import RPCServiceBase  # was: from shared.rpc_service_base import ...


class WordServer:
    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    def count_rpc(self, text: str) -> int:
        self.calls += 1
        return len(text.split())

    def pid_rpc(self) -> int:
        return os.getpid()

    def boom_rpc(self, message: str) -> None:
        raise ValueError(message)

    def fail_health_rpc(self) -> None:
        self.failing = True

    def health_check_rpc(self) -> dict[str, Any]:
        return {"status": "failing" if self.failing else "ok"}


def serve_words(address: Any, authkey: bytes, server_ready: Any, service_name: str) -> None:
    """Upstream's server process: a BaseManager of its own, as 6 of 9 of its services do."""
    server = WordServer()

    class M(BaseManager):
        pass

    M.register(service_name, callable=lambda: server)
    manager = M(address=address, authkey=authkey)
    s = manager.get_server()
    server_ready.set()
    s.serve_forever()


class WordService(RPCServiceBase[WordServer]):
    def __init__(self, port: int, running_unit_tests: bool = False, **kwargs: Any) -> None:
        super().__init__(
            service_name="WordService",
            port=port,
            running_unit_tests=running_unit_tests,
            enable_health_check=True,
            health_check_interval_s=0,
            **kwargs,
        )
        self._initialize_service()

    def _create_direct_server(self) -> WordServer:
        return WordServer()

    def _start_server_process(self, address: Any, authkey: bytes, server_ready: Any) -> BaseProcess:
        process = multiprocessing.Process(
            target=serve_words,
            args=(address, authkey, server_ready, self.service_name),
            daemon=True,
        )
        process.start()
        return process

    def count(self, text: str) -> int:
        return self._server_proxy.count_rpc(text)

    def remote_pid(self) -> int:
        return self._server_proxy.pid_rpc()
