"""Shared services under faults, counted (issue 10).

* Four client processes attached to one service while its server is SIGKILLed 20
  times: after each recovery every process's calls are answered again, and no call
  ever fails with anything but ServiceUnavailable (no wrong result, no other error).
* A second owner started 50 times next to a live one: it never kills the live server.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Any

import pytest

from rpcgen.runtime import PortInUseError, RestartPolicy
from tests.reliability.conftest import Log
from tests.support.procs import python_process, read_line
from tests.support.services import Echo
from tests.support.sharing import shared_caller
from tests.support.waiting import free_port, pid_alive, wait_until

NO_FLAP = RestartPolicy(backoff_initial_s=0.001, backoff_max_s=0.01, flap_max_restarts=1000)
PROCESSES = 4
KILLS = 20


@pytest.mark.slow
def test_four_processes_share_a_service_killed_20_times(reliability_log: Log) -> None:
    ctx: Any = multiprocessing.get_context("spawn")
    port = free_port()
    svc = Echo(port, enable_health_check=True, restart_policy=NO_FLAP)
    stop = ctx.Event()
    results = ctx.Manager().list([(0, 0, 0, "")] * PROCESSES)
    workers = [
        ctx.Process(target=shared_caller, args=(port, i, stop, results)) for i in range(PROCESSES)
    ]
    recovered = 0
    try:
        for worker in workers:
            worker.start()
        wait_until(lambda: all(r[0] > 0 for r in results), timeout=60, what="every worker calling")
        for _ in range(KILLS):
            old = svc.server_pid or 0
            os.kill(old, signal.SIGKILL)
            wait_until(lambda old=old: svc.server_pid not in (None, old), timeout=20)  # type: ignore[misc]
            # Recovered: every process's calls are answered again.
            before = [r[0] for r in results]
            wait_until(
                lambda before=before: _all_advanced(results, before),  # type: ignore[misc]
                timeout=20,
                what="every process answered after the restart",
            )
            recovered += 1
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
            if worker.exitcode is None:
                worker.kill()
        svc.shutdown()
    final = list(results)
    lost = sum(r[2] for r in final)
    reliability_log.record(
        f"{PROCESSES} processes sharing one service, its server SIGKILLed",
        rounds=KILLS,
        failures=lost + (KILLS - recovered),
        note=f"{sum(r[0] for r in final)} calls answered, "
        f"{sum(r[1] for r in final)} ServiceUnavailable during restarts, 0 expected otherwise",
    )
    assert lost == 0, f"calls lost: {[r[3] for r in final if r[2]]}"
    assert recovered == KILLS and all(w.exitcode == 0 for w in workers)


def _all_advanced(results: Any, before: list[int]) -> bool:
    return all(r[0] > b + 5 for r, b in zip(results, before, strict=True))


@pytest.mark.slow
def test_a_second_owner_never_kills_a_live_server(reliability_log: Log) -> None:
    rounds = 50
    killed = 0
    for _ in range(rounds):
        port = free_port()
        with python_process("-m", "tests.support.owner_script", str(port), "fork") as owner:
            server = int(read_line(owner))
            try:
                Echo(port).shutdown()
                killed += 1  # it started: so the live server must have gone
            except PortInUseError as exc:
                killed += exc.owner_pid != owner.pid
            killed += not pid_alive(server)
    reliability_log.record(
        "a second owner on the port of a live server", rounds=rounds, failures=killed
    )
    assert killed == 0
