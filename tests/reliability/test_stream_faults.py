"""Streams, deadlines and retries under faults, counted (rows of the README's table)."""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from rpcgen.runtime import CallTimeout, RestartPolicy, ServiceUnavailable, deadline
from tests.reliability.conftest import Log
from tests.support.stream_services import Streams, stream_in_child
from tests.support.waiting import free_port, wait_until

NO_FLAP = RestartPolicy(backoff_initial_s=0.001, backoff_max_s=0.01, flap_max_restarts=1000)


@pytest.fixture
def streams() -> Iterator[Streams]:
    client = Streams(
        free_port(),
        enable_health_check=True,
        health_check_interval_s=0.1,
        max_consecutive_failures=1,
        restart_policy=NO_FLAP,
    )
    yield client
    client.shutdown()


def _n_counted(client: Streams, key: str, n: int) -> bool:
    return _count(client, key) == n


def _count(client: Streams, key: str) -> int:
    return int(client.server.counts_rpc().get(key, 0))


def _restarted(client: Streams, old: int) -> None:
    wait_until(lambda: client.server_pid not in (None, old), timeout=20, what="the restart")


def test_break_mid_stream_closes_the_generator_in_time(
    streams: Streams, reliability_log: Log
) -> None:
    rounds, failures, delays = 50, 0, []
    for n in range(rounds):
        for item in streams.server.ticks_rpc(0.001):
            if item == 10:
                broke = time.time()
                break
        wait_until(functools.partial(_n_counted, streams, "ticks closed", n + 1))
        delay = streams.server.stamps_rpc()["ticks closed"] - broke
        delays.append(delay)
        failures += delay >= 0.1
    reliability_log.record(
        "stream: `break` mid-stream",
        rounds=rounds,
        failures=failures,
        note=f"the server's finally ran {max(delays) * 1000:.1f} ms after the break at most "
        "(aim: 100)",
    )
    assert failures == 0, delays


def test_client_sigkilled_mid_stream(streams: Streams, reliability_log: Log) -> None:
    rounds, failures = 5, 0
    ctx = multiprocessing.get_context("spawn")
    for n in range(rounds):
        child = ctx.Process(target=stream_in_child, args=(streams.port, 0.005), daemon=True)
        child.start()
        try:
            wait_until(functools.partial(_n_counted, streams, "ticks started", n + 1), timeout=30)
            os.kill(child.pid or 0, signal.SIGKILL)
            try:
                wait_until(functools.partial(_n_counted, streams, "ticks closed", n + 1), timeout=5)
            except AssertionError:
                failures += 1
        finally:
            child.kill()
            child.join(5)
    reliability_log.record(
        "stream: its client SIGKILLed mid-stream",
        rounds=rounds,
        failures=failures,
        note="the server's generator closed (its finally ran) each time",
    )
    assert failures == 0


def test_server_sigkilled_mid_stream(streams: Streams, reliability_log: Log) -> None:
    rounds, failures = 10, 0
    for _ in range(rounds):
        items = iter(streams.server.ticks_rpc(0.001))
        next(items)
        old = streams.server_pid or 0
        os.kill(old, signal.SIGKILL)
        try:
            for _ in items:
                pass
            failures += 1  # it should not end quietly
        except ServiceUnavailable:
            pass
        _restarted(streams, old)
        failures += list(streams.server.count_rpc(100)) != list(range(100))
    reliability_log.record(
        "stream: its server SIGKILLed mid-stream",
        rounds=rounds,
        failures=failures,
        note="`ServiceUnavailable` each time (never replayed); the next stream complete "
        "after the restart",
    )
    assert failures == 0


def test_calls_in_flight_across_sigkill(streams: Streams, reliability_log: Log) -> None:
    rounds, failures = 10, 0
    for kind in ("read", "write"):
        for _ in range(rounds):
            old = streams.server_pid or 0
            key = f"{kind} started"  # counted by this server (a retried call counts too)
            killer = threading.Thread(
                target=_kill_in_call, args=(streams, old, key, _count(streams, key) + 1)
            )
            killer.start()
            try:
                with deadline(30.0):
                    pid = getattr(streams.server, f"{kind}_slowly_rpc")(0.3)
                failures += kind == "write" or pid == old  # a write is never tried again
            except ServiceUnavailable:
                failures += kind == "read"  # a read (idempotent) is
            killer.join()
            _restarted(streams, old)
    reliability_log.record(
        "a call in flight when its server is SIGKILLed",
        rounds=2 * rounds,
        failures=failures,
        note="10 idempotent calls answered by the restarted server; 10 others raised "
        "`ServiceUnavailable` (never run twice)",
    )
    assert failures == 0


def _kill_in_call(client: Streams, pid: int, started: str, n: int) -> None:
    """SIGKILL server ``pid`` once it runs the call (its counter ``started`` reaches n)."""
    wait_until(functools.partial(_n_counted, client, started, n), what=started)
    os.kill(pid, signal.SIGKILL)


def test_calls_queued_past_their_deadline(streams: Streams, reliability_log: Log) -> None:
    import asyncio

    rounds = 20

    async def main() -> int:
        timeouts = 0
        for n in range(rounds):
            first = asyncio.ensure_future(streams._rpc_acall("slow_rpc", (0.1,)))
            while await asyncio.to_thread(_count, streams, "slow started") < n + 1:
                await asyncio.sleep(0.005)  # bounded by the test's timeout
            try:
                with deadline(0.02):
                    await streams._rpc_acall("slow_rpc", (0.0,))
            except CallTimeout:
                timeouts += 1
            await first
            await streams._rpc_acall("pid_rpc")  # runs after the expired one left the queue
        return timeouts

    timeouts = asyncio.run(main())
    started = _count(streams, "slow started")
    failures = (rounds - timeouts) + (started - rounds)
    reliability_log.record(
        "asyncio calls queued past their deadline (one thread, a 0.1 s call ahead)",
        rounds=rounds,
        failures=failures,
        note=f"{timeouts} `CallTimeout`s; the server started {started - rounds} of them",
    )
    assert failures == 0
