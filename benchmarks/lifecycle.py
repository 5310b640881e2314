"""Lifecycle: start -> first call, and shutdown; rpcgen vs a default BaseManager."""

from __future__ import annotations

import multiprocessing
import os
import secrets
import signal
import time

from rpcgen.runtime import ServiceUnavailable
from rpcgen.runtime.ports import free_port

from ._services import BenchClient, StockManager
from ._util import Row, median_ms, timed


def _stock_round(method: str) -> tuple[float, float]:
    ctx = multiprocessing.get_context(method)
    manager = StockManager(address=("127.0.0.1", 0), authkey=secrets.token_bytes(32), ctx=ctx)

    def start_and_call() -> None:
        manager.start()
        proxy = manager.BenchServer()  # type: ignore[attr-defined]
        proxy.echo_rpc(1)
        start_and_call.proxy = proxy  # type: ignore[attr-defined]

    start = timed(start_and_call)
    del start_and_call.proxy  # type: ignore[attr-defined]
    stop = timed(manager.shutdown)
    return start, stop


def _rpcgen_round(method: str) -> tuple[float, float]:
    port = free_port()
    holder: list[BenchClient] = []

    def start_and_call() -> None:
        client = BenchClient(port, start_method=method)
        client.echo(1)
        holder.append(client)

    start = timed(start_and_call)
    stop = timed(holder[0].shutdown)
    return start, stop


SEED_RESTART_SLEEP_S = 2.0  # the seed design slept this long on every restart


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:  # FileNotFoundError, or ProcessLookupError while it is being reaped
        return True


def _restart_round(method: str) -> float:
    """SIGKILL the server; time from the kill to the first answered call.

    The owner watches its server's process and restarts it at once, so this
    includes the detection.
    """
    client = BenchClient(
        free_port(), start_method=method, enable_health_check=True, health_check_interval_s=0
    )
    try:
        client.echo(1)
        pid = client.server_pid
        assert pid is not None
        start = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        # Room for a start timeout (10 s) and a second attempt: a stalled restart shows
        # as a slow round in the figures instead of aborting the whole run.
        deadline = time.monotonic() + 45
        while True:
            try:
                client.echo(1)
                break
            except ServiceUnavailable:  # a call that raced the death: try again
                if time.monotonic() > deadline:
                    raise
        elapsed = time.perf_counter() - start
        assert client.server_pid not in (None, pid)
        return elapsed
    finally:
        client.shutdown()


def run(quick: bool) -> list[Row]:
    rounds = 3 if quick else 15
    rows: list[Row] = []
    for method in ("fork", "spawn"):
        stock = [_stock_round(method) for _ in range(rounds)]
        ours = [_rpcgen_round(method) for _ in range(rounds)]
        s_start, s_stop = median_ms([a for a, _ in stock]), median_ms([b for _, b in stock])
        r_start, r_stop = median_ms([a for a, _ in ours]), median_ms([b for _, b in ours])
        base = f"BaseManager ({method})"
        rows += [
            Row("lifecycle", f"start->first call, BaseManager ({method})", s_start, "ms"),
            Row(
                "lifecycle",
                f"start->first call, rpcgen ({method})",
                r_start,
                "ms",
                baseline=base,
                ratio=r_start / s_start,
                target="<= 0.1x" if method == "fork" else None,
            ),
            Row("lifecycle", f"shutdown, BaseManager ({method})", s_stop, "ms"),
            Row(
                "lifecycle",
                f"shutdown, rpcgen ({method})",
                r_stop,
                "ms",
                baseline=base,
                ratio=r_stop / s_stop,
                target="<= 0.2x",
            ),
        ]
    for method in ("fork", "spawn"):
        restart = median_ms([_restart_round(method) for _ in range(rounds)])
        rows.append(
            Row(
                "lifecycle",
                f"restart after SIGKILL, kill->first call ({method})",
                restart,
                "ms",
                baseline="seed's fixed 2 s sleep",
                ratio=restart / (SEED_RESTART_SLEEP_S * 1000),
                target="<= 200 ms (0.1x)" if method == "fork" else None,
            )
        )
    return rows
