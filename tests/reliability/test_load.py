"""Load: 8 threads x 5k calls on one client, and 4 client processes x 5k calls; every
result verified, zero errors."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.reliability.conftest import Log
from tests.support.internals import rpc_proxy
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


ASYNC_TASKS = 64


def test_asyncio_client_with_64_calls_in_flight(reliability_log: Log) -> None:
    """One event loop, 64 tasks x 500 calls on one multiplexed connection; all verified."""
    import asyncio

    per_task = 500

    async def task(svc: Echo, number: int) -> int:
        bad = 0
        for i in range(per_task):
            try:
                bad += await svc.aio.add(number * 1_000_000, i) != number * 1_000_000 + i
            except Exception:
                bad += 1
        return bad

    async def main(svc: Echo) -> int:
        counts = await asyncio.gather(*(task(svc, n) for n in range(ASYNC_TASKS)))
        return sum(counts)

    with Echo(free_port()) as svc:
        errors = asyncio.run(asyncio.wait_for(main(svc), 120))
        loops = rpc_proxy(svc)._rpc_loops
        assert loops is not None and len(loops.by_loop) == 0  # loop gone
    reliability_log.record(
        "asyncio: 64 tasks x 500 calls in flight on one connection",
        rounds=ASYNC_TASKS * per_task,
        failures=errors,
        note="results verified",
    )
    assert errors == 0


def test_asyncio_calls_while_the_server_is_killed(reliability_log: Log) -> None:
    """16 tasks call while the server is SIGKILLed 5 times: calls fail only as
    ServiceUnavailable, never hang, and every task's calls recover after each restart."""
    import asyncio
    import os
    import signal

    from rpcgen.runtime import ServiceUnavailable

    kills = 5
    unexpected: list[BaseException] = []
    counts = {"ok": 0, "unavailable": 0}

    async def caller(svc: Echo, number: int, stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                assert await svc.aio.add(number, i) == number + i
                counts["ok"] += 1
            except ServiceUnavailable:
                counts["unavailable"] += 1
                await asyncio.sleep(0.01)
            except BaseException as exc:  # anything else is a failure of this scenario
                unexpected.append(exc)
                return

    async def main(svc: Echo) -> None:
        stop = asyncio.Event()
        tasks = [asyncio.ensure_future(caller(svc, n, stop)) for n in range(16)]
        for _ in range(kills):
            before = counts["ok"]
            while counts["ok"] < before + 200:  # calls succeed on this server
                await asyncio.sleep(0.01)
            pid = svc.server_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            while svc.server_pid in (pid, None):  # the owner restarted it
                await asyncio.sleep(0.01)
        before = counts["ok"]
        while counts["ok"] < before + 200:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*tasks)

    with Echo(free_port(), enable_health_check=True) as svc:
        asyncio.run(asyncio.wait_for(main(svc), 120))
    reliability_log.record(
        "asyncio: 16 tasks calling while the server is SIGKILLed",
        rounds=kills,
        failures=len(unexpected),
        note=f"{counts['ok']} calls ok; {counts['unavailable']} failed as ServiceUnavailable "
        "during restarts; all recovered",
    )
    assert not unexpected, unexpected[:3]
