"""The design doc's "Example with All Features" (LivePriceFetcher), import changed only.

Health checks with auto-restart and a notifier with the seed's
``send_message(message, level=...)`` interface. The demo kills the server to
show the restart and the notifications. Closure target: fork start method, as
in the seed. Prices are synthetic (no network here).

Run: python -m examples.seed_compat.live_price_fetcher [--port N]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from rpcgen.runtime import RPCServiceBase


class LivePriceFetcherServer:
    def __init__(self, running_unit_tests: bool = False) -> None:
        self.running_unit_tests = running_unit_tests

    def get_latest_price_rpc(self, symbol: str) -> float:
        return 100.0 + sum(map(ord, symbol)) % 50  # deterministic, synthetic

    def health_check_rpc(self) -> dict[str, Any]:
        return {"status": "ok", "timestamp_ms": int(time.time() * 1000)}


_OUT = threading.Lock()


def say(text: str) -> None:
    """Print one whole line: notifications arrive from another thread."""
    with _OUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


class PrintingNotifier:
    """Stands in for the seed's SlackNotifier: same interface."""

    def send_message(self, message: str, level: str = "info") -> None:
        say(f"[notify:{level}] {message}")


class LivePriceFetcher(RPCServiceBase[LivePriceFetcherServer]):
    def __init__(
        self, slack_notifier: Any = None, running_unit_tests: bool = False, port: int = 50001
    ) -> None:
        super().__init__(
            service_name="LivePriceFetcher",
            port=port,
            running_unit_tests=running_unit_tests,
            # Health check configuration
            enable_health_check=True,
            health_check_interval_s=60,  # Check every 60 seconds
            max_consecutive_failures=3,  # Restart after 3 failures
            enable_auto_restart=True,  # Auto-restart on failure
            slack_notifier=slack_notifier,  # Slack notifications
        )
        self._initialize_service()

    def _create_direct_server(self) -> LivePriceFetcherServer:
        return LivePriceFetcherServer(running_unit_tests=True)

    def _start_server_process(self, address: Any, authkey: bytes, server_ready: Any) -> Any:
        from multiprocessing import Process

        from setproctitle import setproctitle

        def server_main() -> None:
            setproctitle("vali_LivePriceFetcher")
            server = LivePriceFetcherServer()
            self._serve_rpc(server, address, authkey, server_ready)

        process = Process(target=server_main, daemon=True)
        process.start()
        return process

    # Client API
    def get_latest_price(self, symbol: str) -> float:
        return self._server_proxy.get_latest_price_rpc(symbol)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=50001)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fetcher = LivePriceFetcher(slack_notifier=PrintingNotifier(), port=args.port)
    try:
        say(f"BTCUSD: {fetcher.get_latest_price('BTCUSD')}")
        old = fetcher.server_pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        say(f"killed server pid {old}")
        # Its owner (this process) watches the server and restarts it at once:
        # no health_check() call is needed for that.
        deadline = time.monotonic() + 20
        while fetcher.server_pid in (None, old) and time.monotonic() < deadline:
            time.sleep(0.01)
        say(f"restarted by its owner as pid {fetcher.server_pid}")
        now = int(time.time() * 1000)
        say(f"healthy right after the restart: {fetcher.health_check(now)}")
        say(f"BTCUSD: {fetcher.get_latest_price('BTCUSD')}")
        say(f"healthy a minute later: {fetcher.health_check(now + 60_000)}")
        fetcher.flush_notifications()
    finally:
        fetcher.shutdown()
    say("shut down cleanly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
