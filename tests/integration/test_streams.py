"""Streams, deadlines, cancellation and safe retries, with real server processes.

Each behaviour the issue names, measured on the server's side too: its generator's
``finally`` (a counter and a timestamp), what it produced, what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from rpcgen.runtime import (
    CallTimeout,
    RemoteStream,
    ServiceUnavailable,
    current_call,
    deadline,
)
from tests.support.stream_services import Streams, stream_in_child
from tests.support.waiting import wait_until

START_METHODS = ["fork", "spawn", "forkserver"]
MIB = 1 << 20


@pytest.fixture(params=START_METHODS)
def streams(request: pytest.FixtureRequest, port: int) -> Iterator[Streams]:
    client = Streams(
        port,
        start_method=request.param,
        enable_health_check=True,
        health_check_interval_s=0.1,
        max_consecutive_failures=1,
    )
    try:
        yield client
    finally:
        client.shutdown()


def closed(client: Streams, key: str) -> int:
    return int(client.server.counts_rpc().get(key, 0))


def _closed_n(client: Streams, key: str, n: int) -> bool:
    return closed(client, key) == n


def test_a_million_small_items_arrive_in_order_and_complete(streams: Streams) -> None:
    items = streams.server.count_rpc(1_000_000)
    assert isinstance(items, RemoteStream)
    expected = 0
    for item in items:
        assert item == expected
        expected += 1
    assert expected == 1_000_000
    # the connection the stream had is in step again: plain calls work
    assert streams.server.pid_rpc() == streams.server_pid


def test_a_loop_over_a_stream_can_call_the_same_service(streams: Streams) -> None:
    pid = streams.server_pid
    assert [(i, streams.server.pid_rpc() == pid) for i in streams.server.count_rpc(3)] == [
        (0, True),
        (1, True),
        (2, True),
    ]


def test_a_slow_consumer_stops_the_producer_and_memory_stays_bounded(streams: Streams) -> None:
    window_mib = 8  # the default window: 8 MiB of items ahead of the consumer
    server = psutil.Process(streams.server_pid)
    me = psutil.Process()
    server_before, me_before = server.memory_info().rss, me.memory_info().rss
    items: RemoteStream[bytes] = streams.server.blobs_rpc(4096, MIB)  # 4 GiB in all
    for _ in range(20):
        next(items)
    # The consumer stops reading: the producer must stop within the window (plus what the
    # kernel's socket buffers hold), not run on through the 4 GiB.
    produced = _once_still(lambda: int(streams.server.counts_rpc()["produced"]))
    assert produced < 20 + window_mib + 64, produced  # items of 1 MiB
    growth_server = server.memory_info().rss - server_before
    growth_me = me.memory_info().rss - me_before
    assert growth_server < 64 * MIB and growth_me < 64 * MIB, (growth_server, growth_me)
    for _ in range(300):  # it resumes; memory stays bounded all along
        next(items)
    assert server.memory_info().rss - server_before < 64 * MIB
    assert me.memory_info().rss - me_before < 64 * MIB
    items.close()
    wait_until(lambda: closed(streams, "blobs closed") == 1, what="the generator's finally")


def _once_still(read: Callable[[], int], quiet_s: float = 0.3, timeout_s: float = 20.0) -> int:
    """``read()`` once it has not changed for ``quiet_s`` (bounded by ``timeout_s``)."""
    end = time.monotonic() + timeout_s
    value, since = read(), time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.02)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return value
    raise AssertionError(f"still changing after {timeout_s}s: {value}")


def test_break_runs_the_server_generators_finally_within_100_ms(streams: Streams) -> None:
    delays = []
    for round_ in range(5):
        for item in streams.server.ticks_rpc(0.001):
            if item == 20:
                broke_at = time.time()
                break
        wait_until(functools.partial(_closed_n, streams, "ticks closed", round_ + 1))
        delays.append(streams.server.stamps_rpc()["ticks closed"] - broke_at)
    assert max(delays) < 0.1, delays


def test_an_error_arrives_at_the_item_where_it_happened(streams: Streams) -> None:
    got: list[int] = []
    with pytest.raises(ValueError, match="failed at item 500") as info:
        for item in streams.server.fail_at_rpc(500):
            got.append(item)
    assert got == list(range(500))
    assert "fail_at_rpc" in str(info.value.__cause__)  # the server's traceback
    assert streams.server.pid_rpc() == streams.server_pid  # in step


def test_the_client_sigkilled_mid_stream_closes_the_server_generator(
    streams: Streams, port: int
) -> None:
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=stream_in_child, args=(port, 0.01), daemon=True)
    child.start()
    try:
        wait_until(lambda: closed(streams, "ticks started") == 1, timeout=30, what="the child")
        os.kill(child.pid or 0, signal.SIGKILL)
        wait_until(
            lambda: closed(streams, "ticks closed") == 1, timeout=5, what="the server's finally"
        )
    finally:
        child.kill()
        child.join(5)


def test_the_server_sigkilled_mid_stream_raises_typed_then_the_next_stream_works(
    streams: Streams,
) -> None:
    items = iter(streams.server.ticks_rpc(0.001))
    assert next(items) == 0
    old = streams.server_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    with pytest.raises(ServiceUnavailable, match="never replayed"):
        for _ in items:
            pass
    wait_until(lambda: streams.server_pid not in (None, old), timeout=20, what="the restart")
    assert list(streams.server.count_rpc(5)) == [0, 1, 2, 3, 4]


def test_64_streams_on_one_asyncio_connection_alongside_unary_calls(streams: Streams) -> None:
    async def one(n: int) -> list[int]:
        return [x async for x in streams._rpc_astream("count_rpc", (n,))]

    async def unary() -> list[int]:
        return [await streams._rpc_acall("pid_rpc") for _ in range(100)]

    async def main() -> tuple[list[list[int]], list[int], int]:
        results = await asyncio.gather(*(one(1000 + k) for k in range(64)), unary())
        loops = streams._rpc_backend.proxy._rpc_loops
        return results[:64], results[64], len(loops.by_loop)

    server = psutil.Process(streams.server_pid)
    threads_before = server.num_threads()
    lists, pids, connections = asyncio.run(main())
    assert all(got == list(range(1000 + k)) for k, got in enumerate(lists))
    assert pids == [streams.server_pid] * 100
    assert connections == 1
    wait_until(lambda: closed(streams, "count closed") == 64, what="every generator closed")
    # no thread left behind: the streams' threads, and the connection's, are gone
    wait_until(lambda: server.num_threads() <= threads_before, what="the streams' threads")


def test_cancelling_the_task_that_iterates_closes_the_stream(streams: Streams) -> None:
    async def main() -> None:
        async def consume() -> None:
            async for _ in streams._rpc_astream("ticks_rpc", (0.001,)):
                pass

        task = asyncio.ensure_future(consume())
        await _counted(streams, "ticks started")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    wait_until(lambda: closed(streams, "ticks closed") == 1, what="the server's finally")


def test_async_generators_and_async_break(streams: Streams) -> None:
    async def main() -> tuple[list[int], list[int]]:
        whole = [x async for x in streams._rpc_astream("acount_rpc", (10,))]
        part = []
        async for x in streams._rpc_astream("ticks_rpc", (0.001,)):
            part.append(x)
            if x == 3:
                break
        return whole, part

    whole, part = asyncio.run(main())
    assert whole == list(range(10)) and part == [0, 1, 2, 3]
    assert list(streams.server.acount_rpc(3)) == [0, 1, 2]  # sync, too
    wait_until(lambda: closed(streams, "ticks closed") == 1, what="the aio break's close")


def test_a_call_queued_past_its_deadline_never_runs(streams: Streams) -> None:
    # One call at a time on an asyncio connection (max_concurrent_calls=1): the second
    # waits for a thread past its deadline.
    async def main() -> tuple[str, BaseException | None]:
        first = asyncio.ensure_future(streams._rpc_acall("slow_rpc", (0.5,)))
        await _counted(streams, "slow started")  # it holds the only thread
        error = None
        try:
            with deadline(0.1):
                await streams._rpc_acall("slow_rpc", (0.0,))
        except CallTimeout as exc:
            error = exc
        done = await first
        # Calls run in order (one at a time): once this one is answered, the expired one
        # was taken off the queue before it.
        await streams._rpc_acall("pid_rpc")
        return done, error

    first, error = asyncio.run(main())
    assert first == "slow done" and isinstance(error, CallTimeout)
    counts = streams.server.counts_rpc()
    assert counts["slow started"] == 1 and counts["slow finished"] == 1, counts


def test_the_server_sees_the_time_left(streams: Streams) -> None:
    with deadline(5.0):
        left = streams.server.time_left_rpc()
    assert 4.0 < left <= 5.0
    assert streams.server.time_left_rpc() is None
    assert current_call().time_left_s is None  # outside a server call


def test_asyncio_cancellation_reaches_the_server(streams: Streams) -> None:
    # Each call is cancelled while it runs on the server, and the server sees it while the
    # connection is still open (its end would cancel everything anyway).
    async def main() -> None:
        task = asyncio.ensure_future(streams._rpc_acall("wait_rpc", (30.0,)))
        await _counted(streams, "wait started")
        task.cancel()
        await _counted(streams, "wait cancelled")
        poll = asyncio.ensure_future(streams._rpc_acall("poll_rpc", (30.0,)))
        await _counted(streams, "poll started")
        poll.cancel()
        await _counted(streams, "poll cancelled")

    asyncio.run(main())


def test_an_idempotent_call_rides_through_a_sigkill_and_another_raises(streams: Streams) -> None:
    old = streams.server_pid
    assert old is not None
    killer = _kill_in_call(streams, old, "read started")
    with deadline(30.0):
        pid = streams.server.read_slowly_rpc(0.5)  # killed mid-call: tried again
    killer.join()
    assert pid != old and pid == streams.server_pid
    old = pid
    killer = _kill_in_call(streams, old, "write started")
    with pytest.raises(ServiceUnavailable):
        streams.server.write_slowly_rpc(0.5)  # it may have run: never tried again
    killer.join()
    wait_until(lambda: streams.server_pid not in (None, old), timeout=20, what="the restart")


def _kill_in_call(client: Streams, pid: int, started: str) -> threading.Thread:
    """SIGKILL server ``pid`` once it has started the call (its counter ``started`` goes
    up by one)."""
    n = closed(client, started) + 1

    def kill() -> None:
        wait_until(functools.partial(_closed_n, client, started, n), what=started)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


async def _counted(client: Streams, key: str, n: int = 1, timeout_s: float = 10.0) -> None:
    """Until the server's counter ``key`` reaches ``n`` (read on a plain connection: the
    asyncio one may be busy), bounded by ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while await asyncio.to_thread(closed, client, key) < n:
        assert time.monotonic() < end, f"timed out waiting for {key}"
        await asyncio.sleep(0.005)


def test_direct_mode_streams_items_through_pickle(port: int) -> None:
    with Streams(port, running_unit_tests=True, direct_mode_pickle=True) as client:
        assert list(client.server.count_rpc(5)) == [0, 1, 2, 3, 4]
        for item in client.server.ticks_rpc(0.001):
            if item == 2:
                break
        assert client.server.counts_rpc()["ticks closed"] == 1
        with pytest.raises(ValueError, match="failed at item 3"):
            list(client.server.fail_at_rpc(3))
