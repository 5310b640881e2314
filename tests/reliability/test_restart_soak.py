"""Soak: many threads calling while the server is SIGKILLed again and again.

During an auto-restart a call may fail, but only as ``ServiceUnavailable`` (a
``ConnectionError``: the server it was talking to died). Anything else, such as
``ServiceAuthenticationError`` from a connection that raced the restart onto the
new server with the old key, or a ``StartupTimeout``, is a failure.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from rpcgen.runtime import RestartPolicy, ServiceUnavailable
from tests.reliability.conftest import Log
from tests.support.services import Echo
from tests.support.waiting import free_port, wait_until

NO_FLAP = RestartPolicy(backoff_initial_s=0.001, backoff_max_s=0.01, flap_max_restarts=1000)
THREADS = 8
KILLS = 25


@pytest.mark.slow
def test_calls_during_auto_restarts_fail_only_as_unavailable(reliability_log: Log) -> None:
    svc = Echo(
        free_port(),
        enable_health_check=True,
        health_check_interval_s=0.01,
        max_consecutive_failures=1,
        health_monitor=True,
        restart_policy=NO_FLAP,
    )
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def caller(index: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            value = (index, n)
            try:
                ok = svc.echo(value) == value
                kind = "ok" if ok else "wrong result"
            except ServiceUnavailable as exc:
                kind = "unavailable" if type(exc) is ServiceUnavailable else type(exc).__name__
            except Exception as exc:
                kind = type(exc).__name__
            with lock:
                outcomes[kind] += 1

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(THREADS)]
    recovered = 0
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        for _ in range(KILLS):
            stop.wait(0.4)  # pacing: calls run against a steady server between kills
            old = wait_until(lambda: svc.server_pid or 0, timeout=15, what="a running server")
            before = outcomes["ok"]
            os.kill(old, signal.SIGKILL)
            wait_until(
                lambda old=old: svc.server_pid not in (None, old),  # type: ignore[misc]
                timeout=15,
                what="the restart",
            )
            # Recovered: every thread's calls go through again.
            wait_until(lambda before=before: outcomes["ok"] > before + THREADS, timeout=15)  # type: ignore[misc]
            recovered += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        svc.shutdown()
    unexpected = {k: v for k, v in outcomes.items() if k not in ("ok", "unavailable")}
    reliability_log.record(
        f"{THREADS} threads calling while the server is SIGKILLed (auto-restart)",
        rounds=KILLS,
        failures=sum(unexpected.values()) + (KILLS - recovered),
        note=f"{outcomes['ok']} calls answered, {outcomes['unavailable']} ServiceUnavailable "
        f"during restarts, {time.monotonic() - started:.0f}s",
    )
    assert not unexpected, f"calls failed with {unexpected}; outcomes {dict(outcomes)}"
    assert recovered == KILLS
