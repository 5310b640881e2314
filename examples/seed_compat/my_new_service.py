"""The design doc's "New Service in 20 Lines", with only the import changed.

The doc's closure-based ``_start_server_process`` works under the ``fork``
start method (Linux's default up to Python 3.13), exactly as in the seed.
Generated code uses a module-level entrypoint instead, which also works under
spawn and forkserver. The only other change: the port is a parameter (default
50003, as in the doc) so that tests can pick a free one.

Run: python -m examples.seed_compat.my_new_service [--port N]
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from rpcgen.runtime import RPCServiceBase  # was: from shared_objects.rpc_service_base import ...


class MyNewServiceServer:
    def __init__(self, dependency1: str, dependency2: int) -> None:
        self.dependency1 = dependency1
        self.dependency2 = dependency2

    def do_something_rpc(self, arg: str) -> str:
        return f"{self.dependency1}/{self.dependency2}/{arg}"

    def health_check_rpc(self) -> dict[str, Any]:
        """Health check endpoint for RPC monitoring"""
        return {"status": "ok", "timestamp_ms": int(time.time() * 1000)}


class MyNewService(RPCServiceBase[MyNewServiceServer]):
    def __init__(
        self,
        dependency1: str,
        dependency2: int,
        running_unit_tests: bool = False,
        port: int = 50003,
        **health: Any,
    ) -> None:
        super().__init__(
            service_name="MyNewService",
            port=port,  # Next available port
            running_unit_tests=running_unit_tests,
            **health,
        )
        self.dependency1 = dependency1
        self.dependency2 = dependency2
        self._initialize_service()

    def _create_direct_server(self) -> MyNewServiceServer:
        return MyNewServiceServer(self.dependency1, self.dependency2)

    def _start_server_process(self, address: Any, authkey: bytes, server_ready: Any) -> Any:
        def server_main() -> None:
            from setproctitle import setproctitle

            setproctitle("vali_MyNewService")
            server = MyNewServiceServer(self.dependency1, self.dependency2)
            self._serve_rpc(server, address, authkey, server_ready)

        from multiprocessing import Process

        process = Process(target=server_main, daemon=True)
        process.start()
        return process

    # Client API
    def do_something(self, arg: str) -> str:
        return self._server_proxy.do_something_rpc(arg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=50003)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # Direct mode, as the seed's unit tests use it.
    direct = MyNewService("dep", 1, running_unit_tests=True, port=args.port)
    print("direct:", direct.do_something("hello"))
    direct.shutdown()

    # RPC mode, with the doc's "Option 1: Manual Health Checks" loop.
    service = MyNewService(
        "dep",
        2,
        port=args.port,
        enable_health_check=True,
        health_check_interval_s=60,
        max_consecutive_failures=3,
        enable_auto_restart=True,
    )
    try:
        print("rpc:", service.do_something("hello"), "server pid", service.server_pid)
        for _ in range(3):
            current_time = int(time.time() * 1000)
            print("healthy:", service.health_check(current_time))
    finally:
        service.shutdown()
    print("shut down cleanly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
