"""Trading demo: three rpcgen services working together, a crash, and recovery.

Run from the repository root:  python -m examples.trading.demo

It starts LivePriceFetcher and PositionManager in parallel, then LimitOrderManager
(which depends on both); places and fills limit orders; SIGKILLs the price
fetcher's server and waits for the health monitor to restart it (the
notifications are printed); checks that no persisted position was lost by
restarting PositionManager from disk; then shuts everything down and checks that
no server process is left. Exit code 0 means every check passed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rpcgen.runtime.ports import free_ports

# The example is a project of its own (examples/trading/rpcgen.toml); its root holds
# the generated `services` package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

_OUT = threading.Lock()


def say(text: str) -> None:
    """Print whole lines: notifications arrive from another thread."""
    with _OUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


class PrintingNotifier:
    """Stands in for Slack: the same send_message(message, level=...) interface."""

    def send_message(self, message: str, level: str = "info") -> None:
        say(f"  [notify:{level}] {message}")


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def run(args: argparse.Namespace) -> None:
    os.environ["TRADING_DATA_DIR"] = args.data_dir
    from services import registry

    ports = (
        dict(zip(registry.SERVICE_NAMES, free_ports(len(registry.SERVICE_NAMES))))
        if args.free_ports
        else None
    )
    services = registry.start_all(
        ports=ports,
        health_monitor=True,
        notifier=PrintingNotifier(),
        start_method=args.start_method,
    )
    pids = {attr: client.server_pid for attr, client in services}
    try:
        for attr, client in services:
            say(f"started {attr:<20} pid {client.server_pid} port {client.port}")
        if args.pause:
            say("ready: press Enter to continue")
            sys.stdin.readline()

        fetcher = services.live_price_fetcher
        lom = services.limit_order_manager
        positions = services.position_manager
        # A live feed: prices come as the server makes them (no polling).
        feed = list(fetcher.stream_prices(["BTCUSD", "ETHUSD"], first_tick=0, ticks=2))
        tick, prices = feed[-1]
        say(f"prices streamed for ticks {[t for t, _ in feed]}; at tick {tick}: {prices}")
        lom.place("alice", "BTCUSD", 2, prices["BTCUSD"] + 5)
        lom.place("bob", "ETHUSD", -3, prices["ETHUSD"] - 5)
        waiting = lom.place("alice", "ETHUSD", 1, 1.0)
        filled = lom.fill_orders(tick=1)
        say(f"filled {len(filled)} orders; order {waiting} still open")
        before = positions.snapshot()
        say(f"positions: {before}")
        assert (
            before["alice"]["BTCUSD"]["qty"] == 2
            and before["bob"]["ETHUSD"]["qty"] == -3
        )

        old = fetcher.server_pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        say(f"killed LivePriceFetcher server (pid {old}) with SIGKILL")
        wait_for(
            lambda: fetcher.server_pid not in (None, old),
            20,
            "the monitor to restart it",
        )
        wait_for(fetcher.health_check, 20, "the restarted server to be healthy")
        fetcher.flush_notifications()
        say(
            f"LivePriceFetcher restarted by its health monitor as pid {fetcher.server_pid}"
        )
        assert fetcher.get_prices(["BTCUSD", "ETHUSD"], tick=1) == prices

        assert positions.restart()
        after = positions.snapshot()
        assert (
            after == before
        ), f"positions changed across a restart: {before} -> {after}"
        say(
            f"PositionManager restarted from disk (pid {positions.server_pid}): no position lost"
        )
        later = []
        for tick, _ in fetcher.stream_prices(["ETHUSD"], first_tick=2, ticks=3):
            later += lom.fill_orders(tick=tick)  # the filling server reads the same feed
        say(f"ticks 2-4: filled {len(later)} more orders")
    finally:
        services.shutdown()
    leftover = [
        pid for pid in (*pids.values(), services.live_price_fetcher.server_pid) if pid
    ]
    wait_for(
        lambda: not any(alive(pid) for pid in leftover), 10, "server processes to exit"
    )
    say("shut down cleanly: no server process left")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.trading.demo", description=__doc__
    )
    parser.add_argument(
        "--data-dir", help="where positions are stored (default: a new temp folder)"
    )
    parser.add_argument(
        "--free-ports", action="store_true", help="use free ports, not the spec's"
    )
    parser.add_argument(
        "--pause", action="store_true", help="wait for Enter once started"
    )
    parser.add_argument(
        "--start-method", choices=["fork", "spawn", "forkserver"], default=None
    )
    args = parser.parse_args(argv)
    made_here = args.data_dir is None
    if made_here:
        args.data_dir = tempfile.mkdtemp(prefix="trading-data-")
    say(f"data dir: {args.data_dir}")
    try:
        run(args)
    except (AssertionError, TimeoutError) as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        if made_here:  # ours to remove; a --data-dir given to us is the caller's
            shutil.rmtree(args.data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
