"""Module-level workers and servers for the shared-services tests (spawn can pickle them).

``HealthCheckDaemon`` is the design doc's "Option 2" code as written there, with
``bt.logging`` replaced by ``logging`` and the 60 s period by ``CHECK_EVERY_S``.
"""

from __future__ import annotations

import logging
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from rpcgen.runtime import Address, RPCServiceBase, ServiceUnavailable, serve_rpc

CHECK_EVERY_S = 0.05


class TimeUtil:
    @staticmethod
    def now_in_millis() -> int:
        return int(time.time() * 1000)


class HealthCheckDaemon:
    def __init__(self, service_client: Any, slack_notifier: Any = None) -> None:
        self.service = service_client
        self.slack_notifier = slack_notifier

    def run(self) -> None:
        from setproctitle import setproctitle

        setproctitle("vali_MyService_HealthChecker")
        while True:
            try:
                current_time = TimeUtil.now_in_millis()
                is_healthy = self.service.health_check(current_time)

                if not is_healthy:
                    logging.warning("Health check failed")

                time.sleep(CHECK_EVERY_S)  # Check every minute

            except Exception as e:
                logging.error(f"Health check daemon error: {e}")
                if self.slack_notifier:
                    self.slack_notifier.send_message(
                        f"❌ Health check daemon error: {e}", level="error"
                    )
                time.sleep(CHECK_EVERY_S)


def pickled_client_worker(client: Any, conn: Connection) -> None:
    """Call once, wait for the go, then call again (after the parent restarted the server)."""
    conn.send(("before", client.echo("before"), client.is_owner))
    conn.recv()
    conn.send(("after", _call_until_ok(client, "after"), client.server_pid))
    client.shutdown()  # a non-owner: closes its connections only


def _call_until_ok(client: Any, value: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.echo(value)
        except ServiceUnavailable:
            if time.monotonic() > deadline:
                raise


def shared_caller(port: int, index: int, stop: Any, results: Any) -> None:
    """Attach and call until told to stop; report (ok, unavailable, other errors, last pid)."""
    from tests.support.services import Echo

    client = Echo.attach(port=port, timeout_s=20)
    ok = unavailable = other = 0
    n = 0
    last_error = ""
    while not stop.is_set():
        n += 1
        value = (index, n)
        try:
            if client.echo(value) == value:
                ok += 1
            else:
                other += 1
                last_error = "wrong result"
        except ServiceUnavailable:
            unavailable += 1
        except Exception as exc:  # anything else is a lost call
            other += 1
            last_error = repr(exc)
        results[index] = (ok, unavailable, other, last_error)
    client.shutdown()


class HolderServer:
    """Holds a client of another service and calls it: a server-to-server client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.client: Any = None

    def health_check_rpc(self) -> dict[str, Any]:
        return {"status": "ok"}

    def hold_rpc(self, client: Any) -> bool:
        with self._lock:
            self.client = client
        return bool(client.is_owner)

    def via_held_rpc(self, value: Any) -> Any:
        return _call_until_ok(self.client, value)


def serve_holder(address: Address, authkey: bytes, ready: Any) -> None:
    serve_rpc(HolderServer, address, authkey, ready, service_name="Holder")


class Holder(RPCServiceBase[HolderServer]):
    def __init__(self, port: int, **kwargs: Any) -> None:
        super().__init__("Holder", port, **kwargs)
        self._initialize_service()

    def _create_direct_server(self) -> HolderServer:
        return HolderServer()

    def _start_server_process(
        self, address: Address, authkey: bytes, server_ready: Any
    ) -> BaseProcess:
        return self._launch_server_process(serve_holder, address, authkey, server_ready)

    def hold(self, client: Any) -> bool:
        return self._server_proxy.hold_rpc(client)

    def via_held(self, value: Any) -> Any:
        return self._server_proxy.via_held_rpc(value)


def owner_pid_of_server(pid: int) -> int:
    from rpcgen.runtime.announce import parse_process_title

    with open(f"/proc/{pid}/cmdline", "rb") as f:
        title = parse_process_title(f.read().decode().replace("\0", " ").strip())
    assert title is not None
    return title.owner_pid
