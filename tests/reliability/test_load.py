"""Load: 8 threads x 5k calls on one client, and 4 client processes x 5k calls; every
result verified, zero errors."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.reliability.conftest import Log
from tests.support.services import Echo
from tests.support.waiting import free_port

CALLS = 5_000


def test_eight_threads_on_one_client(reliability_log: Log) -> None:
    errors = 0
    with Echo(free_port()) as svc:

        def work(thread: int) -> int:
            bad = 0
            for i in range(CALLS):
                try:
                    bad += svc.add(thread * 1_000_000, i) != thread * 1_000_000 + i
                except Exception:
                    bad += 1
            return bad

        with ThreadPoolExecutor(8) as pool:
            errors = sum(pool.map(work, range(8)))
    reliability_log.record("8 threads x 5k calls on one client", rounds=8 * CALLS, failures=errors)
    assert errors == 0


def _client_process(client: Echo, worker: int, results: Any) -> None:
    bad = 0
    for i in range(CALLS):
        try:
            bad += client.echo((worker, i)) != (worker, i)
        except Exception:
            bad += 1
    results.put(bad)
    client.shutdown()  # an attached client only closes its own connections


def test_four_client_processes(reliability_log: Log) -> None:
    ctx = multiprocessing.get_context("spawn")
    with Echo(free_port()) as svc:
        results = ctx.Queue()
        workers = [ctx.Process(target=_client_process, args=(svc, w, results)) for w in range(4)]
        for w in workers:
            w.start()
        errors = sum(results.get(timeout=120) for _ in workers)
        for w in workers:
            w.join(30)
            errors += w.exitcode != 0
            w.close()
        assert svc.echo("owner still served") == "owner still served"
        results.close()
        results.join_thread()
    reliability_log.record("4 client processes x 5k calls", rounds=4 * CALLS, failures=errors)
    assert errors == 0
