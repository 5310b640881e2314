"""asyncio clients (``client.aio``): many calls in flight on one connection per event loop.

Real server processes on free ports; CI also runs this module under fork, spawn and
forkserver. Every wait is bounded by ``asyncio.wait_for`` or ``wait_until``.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from rpcgen.runtime import CallTimeout, ServiceStopped, ServiceUnavailable
from rpcgen.runtime.errors import RemoteTraceback
from tests.support.services import Echo, EchoServer, NeedsArgsError
from tests.support.waiting import free_port, open_fds, pid_alive, wait_until

T = TypeVar("T")
DEADLINE_S = 60.0


def run(main: Callable[[], Awaitable[T]], timeout_s: float = DEADLINE_S) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout_s)

    return asyncio.run(bounded())


@pytest.fixture
def echo() -> Any:
    with Echo(free_port()) as client:
        yield client


def mux_connections(client: Echo) -> int:
    proxy: Any = client._server_proxy
    return 0 if proxy._rpc_loops is None else len(proxy._rpc_loops.by_loop)


def test_a_thousand_concurrent_calls_share_one_connection(echo: Echo) -> None:
    async def main() -> list[Any]:
        results = await asyncio.gather(*(echo.aio.echo(("call", i)) for i in range(1000)))
        assert mux_connections(echo) == 1
        return results

    assert run(main) == [("call", i) for i in range(1000)]
    assert echo.echo("sync still works") == "sync still works"


def test_calls_from_one_connection_run_concurrently_on_the_server(echo: Echo) -> None:
    # Eight calls that each return only once all eight run at the same time.
    async def main() -> list[int]:
        return await asyncio.gather(*(echo.aio.rendezvous("eight", 8, 20.0) for _ in range(8)))

    assert sorted(run(main)) == list(range(8))


def test_the_server_bounds_concurrent_calls_per_connection(port: int) -> None:
    # max_concurrent_calls=2: two calls meet; a third that needs three never can.
    with Echo(port, target="two_at_a_time") as client:

        async def main() -> None:
            assert sorted(
                await asyncio.gather(*(client.aio.rendezvous("two", 2, 20.0) for _ in range(2)))
            ) == [0, 1]
            outcomes = await asyncio.gather(
                *(client.aio.rendezvous("three", 3, 1.0) for _ in range(3)),
                return_exceptions=True,
            )
            assert all(isinstance(o, threading.BrokenBarrierError) for o in outcomes), outcomes
            assert await client.aio.echo("after") == "after"

        run(main)


def test_exceptions_arrive_as_themselves_with_the_remote_traceback(echo: Echo) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="bad input") as info:
            await echo.aio.boom("bad input")
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "boom_rpc" in str(info.value.__cause__)
        again = pickle.loads(pickle.dumps(info.value))
        assert isinstance(again, ValueError)
        proxy: Any = echo._server_proxy
        with pytest.raises(NeedsArgsError) as rebuilt:
            await proxy._rpc_acall("needs_args_error_rpc")
        assert rebuilt.value.code == 42
        # The connection is still in step.
        assert await echo.aio.add(2, 3) == 5

    run(main)


def test_a_cancelled_call_never_desyncs_the_connection(echo: Echo) -> None:
    async def main() -> None:
        slow = [asyncio.ensure_future(echo.aio.sleep(0.3)) for _ in range(20)]
        await asyncio.sleep(0)  # they are sent
        assert await echo.aio.echo("first") == "first"
        for task in slow:
            task.cancel()
        # The late replies arrive while these run; each call still gets its own result.
        for i in range(300):
            assert await echo.aio.add(i, 1) == i + 1
        results = await asyncio.gather(*slow, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        # And after every late reply is certainly in (a call made after them returns).
        assert await echo.aio.sleep(0.35) == "slept"
        assert await asyncio.gather(*(echo.aio.echo(i) for i in range(100))) == list(range(100))
        assert mux_connections(echo) == 1

    run(main)


def test_a_call_timeout_is_typed_and_keeps_the_connection(echo: Echo) -> None:
    proxy: Any = echo._server_proxy

    async def main() -> None:
        with pytest.raises(CallTimeout):
            await proxy._rpc_acall("sleep_rpc", (2.0,), None, 0.05)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(echo.aio.sleep(2.0), 0.05)
        assert await echo.aio.echo("in step") == "in step"
        assert mux_connections(echo) == 1

    run(main)


def test_a_server_killed_mid_flight_fails_calls_typed_then_they_recover(port: int) -> None:
    with Echo(port, enable_health_check=True) as echo:
        killed_mid_flight(echo)


def killed_mid_flight(echo: Echo) -> None:
    old_pid = echo.server_pid
    assert old_pid is not None

    async def main() -> int:
        # 20: under the server's 32 concurrent calls, so the next call is not queued.
        in_flight = [asyncio.ensure_future(echo.aio.sleep(30.0)) for _ in range(20)]
        await asyncio.sleep(0)
        assert await echo.aio.remote_pid() == old_pid  # the sleeps are on the server now
        os.kill(old_pid, signal.SIGKILL)
        outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(isinstance(o, ServiceUnavailable) for o in outcomes), outcomes[:3]
        # The owner's watcher restarts the server. As with the sync client, a call made
        # before the restart begins fails fast (ServiceUnavailable, never anything else,
        # never a hang); one made during it waits for it.
        failures = 0
        while True:
            try:
                pids = await asyncio.gather(*(echo.aio.remote_pid() for _ in range(20)))
                break
            except ServiceUnavailable:
                failures += 1
                assert failures < 200
                await asyncio.sleep(0.05)
        assert len(set(pids)) == 1
        return pids[0]

    new_pid = run(main)
    assert new_pid != old_pid and new_pid == echo.server_pid
    wait_until(lambda: not pid_alive(old_pid), what="the killed server reaped")


def test_shutdown_fails_calls_in_flight_with_service_stopped(port: int) -> None:
    client = Echo(port)

    async def main() -> None:
        in_flight = [asyncio.ensure_future(client.aio.sleep(30.0)) for _ in range(10)]
        assert await client.aio.echo(1) == 1
        # shutdown() from another thread, as a signal handler or a supervisor would.
        await asyncio.get_running_loop().run_in_executor(None, client.shutdown)
        outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(isinstance(o, ServiceStopped) for o in outcomes), outcomes[:3]
        with pytest.raises(ServiceStopped):
            await client.aio.echo(2)

    try:
        run(main)
    finally:
        client.shutdown()


def test_shutdown_from_inside_the_loop(port: int) -> None:
    client = Echo(port)

    async def main() -> None:
        in_flight = asyncio.ensure_future(client.aio.sleep(30.0))
        assert await client.aio.echo(1) == 1
        client.shutdown()  # on the loop's own thread
        with pytest.raises(ServiceStopped):
            await in_flight

    try:
        run(main)
    finally:
        client.shutdown()


def test_each_event_loop_gets_its_own_connection_and_a_finished_loop_leaks_nothing(
    echo: Echo,
) -> None:
    async def calls(tag: str) -> list[Any]:
        return await asyncio.gather(*(echo.aio.echo((tag, i)) for i in range(50)))

    run(lambda: calls("warm"))  # the first asyncio.run imports and starts what it needs
    before = open_fds()
    results: dict[str, list[Any]] = {}

    def in_thread(tag: str) -> None:
        results[tag] = run(lambda: calls(tag))

    threads = [threading.Thread(target=in_thread, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    for _ in range(3):
        run(lambda: calls("main"))
    assert results == {f"t{i}": [(f"t{i}", j) for j in range(50)] for i in range(4)}
    # Every loop is gone, and so is its connection's fd (the loop's finalizer closes it).
    import gc

    gc.collect()
    wait_until(lambda: open_fds() <= before, what=f"fds back to {before}, now {open_fds()}")


def test_forked_child_opens_its_own_connection(echo: Echo) -> None:
    if "fork" not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip("fork is not available here")

    async def parent_calls() -> Any:
        return await echo.aio.echo("parent")

    assert run(parent_calls) == "parent"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own loop, its own connection; the parent's is untouched
        code = 1
        try:
            os.close(read_end)

            async def child_calls() -> Any:
                return await asyncio.gather(*(echo.aio.echo(("child", i)) for i in range(100)))

            ok = asyncio.run(child_calls()) == [("child", i) for i in range(100)]
            os.write(write_end, b"ok" if ok else b"bad")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as reader:
            assert reader.read() == b"ok"
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert run(parent_calls) == "parent"


def test_direct_mode_runs_calls_in_worker_threads() -> None:
    with Echo(free_port(), running_unit_tests=True, direct_mode_pickle=True) as client:

        async def main() -> None:
            loop_thread = threading.get_ident()
            assert await client.aio.thread() != loop_thread
            assert sorted(
                await asyncio.gather(*(client.aio.rendezvous("direct", 3, 20.0) for _ in range(3)))
            ) == [0, 1, 2]
            with pytest.raises(ValueError, match="direct boom"):
                await client.aio.boom("direct boom")
            with pytest.raises(TypeError, match="cannot cross a process boundary"):
                await client.aio.echo(threading.Lock())
            # A hand-written client method, not declared on the view: runs in a thread.
            generic: Any = client.aio
            assert await generic.health_check() is True

        run(main)


def test_the_generic_view_runs_any_client_method(echo: Echo) -> None:
    from rpcgen.runtime import AsyncView

    view: AsyncView[EchoServer] = AsyncView(echo)
    generic: Any = view

    async def main() -> None:
        assert await generic.echo("through a thread") == "through a thread"
        assert await generic.health_check() is True
        assert await view._rpc_call(view._rpc_server.add_rpc, 1, 2) == 3
        with pytest.raises(AttributeError):
            generic.no_such_method  # noqa: B018
        with pytest.raises(AttributeError):
            generic._private  # noqa: B018

    run(main)


def test_calls_before_start_or_after_shutdown_are_typed(port: int) -> None:
    client = Echo(port)
    client.shutdown()

    async def main() -> None:
        with pytest.raises(ServiceStopped):
            await client.aio.echo(1)

    run(main)


def test_a_call_cancelled_while_connecting_leaks_no_fd(echo: Echo) -> None:
    # The handshake runs in its own thread; cancelled mid-connect (as asyncio.run() ending
    # does), the connection it still opens must be closed, not leaked.
    run(lambda: echo.aio.echo("warm"))
    before = open_fds()

    async def cancel_while_connecting() -> None:
        task = asyncio.ensure_future(echo.aio.echo("never"))
        await asyncio.sleep(0)  # the task starts connecting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    for _ in range(20):
        run(cancel_while_connecting)
    import gc

    gc.collect()
    wait_until(lambda: open_fds() <= before, what=f"fds back to {before}, now {open_fds()}")
