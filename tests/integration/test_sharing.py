"""Sharing a client: threads, and pickling into other processes."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest

from rpcgen.runtime import NotPicklableError
from rpcgen.runtime.announce import parse_process_title
from tests.support.internals import rpc_proxy
from tests.support.services import Echo
from tests.support.waiting import wait_until


def test_one_client_from_eight_threads_at_once(port: int) -> None:
    with Echo(port) as svc:
        barrier = threading.Barrier(8)

        proxy = rpc_proxy(svc)
        assert proxy is not None
        counts: list[int] = []

        def work(t: int) -> list[int]:
            barrier.wait(10)
            got = [svc.add(t * 1000, i) for i in range(300)]
            barrier.wait(10)  # all eight threads alive, each with its own connection
            counts.append(proxy._rpc_connection_count())
            barrier.wait(10)
            return got

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        for t, got in enumerate(results):
            assert got == [t * 1000 + i for i in range(300)]
        assert min(counts) >= 8


def test_a_threads_connection_closes_when_the_thread_ends(port: int) -> None:
    with Echo(port) as svc:
        svc.echo(0)
        proxy = rpc_proxy(svc)
        assert proxy is not None
        t = threading.Thread(target=svc.echo, args=(1,))
        t.start()
        t.join(10)
        wait_until(lambda: proxy._rpc_connection_count() == 1, timeout=5, what="thread conn closed")


def _rpcgen_servers_on(port: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        title = parse_process_title(proc.info["cmdline"] or [])
        if title is not None and title.port == port:
            found.append(proc.info["pid"])
    return found


def _child_uses_client(client: Any, queue: Any) -> None:
    queue.put((client.remote_pid(), client.echo("from child"), client.server_pid))
    client.shutdown()  # a non-owner only closes its own connections


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_client_pickled_into_child_reconnects_to_the_same_server(port: int, method: str) -> None:
    ctx: Any = multiprocessing.get_context(method)
    with Echo(port) as svc:
        queue = ctx.Queue()
        child = ctx.Process(target=_child_uses_client, args=(svc, queue))
        child.start()
        remote_pid, echoed, seen_pid = queue.get(timeout=30)
        child.join(30)
        assert child.exitcode == 0
        assert remote_pid == svc.server_pid == seen_pid
        assert echoed == "from child"
        # No second server was started, and the child did not stop ours.
        assert _rpcgen_servers_on(port) == [svc.server_pid]
        assert svc.echo("parent") == "parent"
        queue.close()
        queue.join_thread()
        child.close()


def test_pickled_state_carries_the_authkey_only_in_the_pickle(port: int) -> None:
    with Echo(port) as svc:
        blob = pickle.dumps(svc)
        clone = pickle.loads(blob)
        try:
            assert clone.echo(5) == 5
            assert clone.server_pid == svc.server_pid
            assert "secret" in repr(clone._rpc_backend.handoff())
        finally:
            clone.shutdown()
        assert svc.echo(6) == 6  # the clone never owned the server


def test_direct_mode_client_refuses_to_pickle(port: int) -> None:
    with (
        Echo(port, running_unit_tests=True) as svc,
        pytest.raises(NotPicklableError, match="direct mode"),
    ):
        pickle.dumps(svc)


def test_direct_mode_uses_no_process(port: int) -> None:
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    with Echo(port, running_unit_tests=True) as svc:
        assert svc.server_pid is None
        assert svc.echo([1]) == [1]
        assert svc.health_check() is True
    assert {c.pid for c in psutil.Process().children(recursive=True)} == before


def test_direct_mode_pickle_flag_catches_what_rpc_would_reject(port: int) -> None:
    with Echo(port, running_unit_tests=True, direct_mode_pickle=True) as svc:
        value = {"a": [1, 2]}
        assert svc.echo(value) == value and svc.echo(value) is not value
        with pytest.raises(TypeError, match="result of lambda_rpc"):
            svc._server_proxy.lambda_rpc()
        assert list(svc._server_proxy.numbers_rpc(3)) == [0, 1, 2]  # streamed, item by item
        with pytest.raises(TypeError, match="argument of echo_rpc"):
            svc.echo(lambda: 1)
        with pytest.raises(ValueError, match="boom"):
            svc._server_proxy.boom_rpc("boom")
        with pytest.raises(AttributeError, match="not exposed"):
            svc._server_proxy._lock  # noqa: B018
    # Without the flag the same call "works" in-process and hides the bug.
    with Echo(port, running_unit_tests=True) as plain:
        assert callable(plain._server_proxy.lambda_rpc())


def _call_pickled_proxy(proxy: Any, queue: Any) -> None:
    queue.put(proxy.echo_rpc("via a pickled proxy"))


def test_a_pickled_proxy_carries_its_authkey_into_a_spawned_child(port: int) -> None:
    ctx: Any = multiprocessing.get_context("spawn")
    with Echo(port) as svc:
        queue = ctx.Queue()
        child = ctx.Process(target=_call_pickled_proxy, args=(svc._server_proxy, queue))
        child.start()
        assert queue.get(timeout=30) == "via a pickled proxy"
        child.join(30)
        assert child.exitcode == 0
        child.close()
        queue.close()
        queue.join_thread()
