"""Regression tests for runtime traps found by trying rpcgen as a newcomer and an attacker.

Each test failed on the code before its fix (issue 9, items 9-18).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import psutil
import pytest

from rpcgen.runtime import (
    CallTimeout,
    RemoteCallError,
    RPCServiceBase,
    ServiceUnavailable,
    transport,
)
from rpcgen.runtime import proxy as proxy_module
from rpcgen.runtime.errors import RemoteTraceback
from tests.support.services import AnythingGoes, Echo, NeedsArgsError, Sized
from tests.support.waiting import free_port, wait_until


@pytest.fixture
def echo(port: int) -> Any:
    svc = Echo(port)
    yield svc
    svc.shutdown()


# -- exceptions cross with their server-side traceback (items 9, 10, 11) ------------------


def test_a_server_exception_carries_its_remote_traceback(echo: Echo) -> None:
    with pytest.raises(ValueError, match=r"^bad symbol$") as info:
        echo._server_proxy.boom_rpc("bad symbol")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in boom_rpc" in cause.remote_traceback
    assert "raise ValueError(message)" in cause.remote_traceback
    shown = "".join(traceback.format_exception(info.value))
    assert "in boom_rpc" in shown  # what a user sees when it is not caught


def test_an_exception_pickle_cannot_rebuild_arrives_as_its_own_class(echo: Echo) -> None:
    with pytest.raises(NeedsArgsError) as info:
        echo._server_proxy.needs_args_error_rpc()
    assert str(info.value) == "code 42: the detail"
    assert info.value.code == 42
    assert isinstance(info.value.__cause__, RemoteTraceback)


def test_an_exception_whose_class_is_missing_keeps_type_message_and_traceback(
    echo: Echo,
) -> None:
    with pytest.raises(RemoteCallError) as info:
        echo._server_proxy.local_class_error_rpc()
    error = info.value
    assert error.error_type is not None and error.error_type.endswith("OnlyHere")
    assert error.error_message == "raised by a class the client cannot import"
    assert "in local_class_error_rpc" in error.remote_traceback
    assert "raised by a class the client cannot import" in str(error)


def test_a_server_exception_never_makes_the_client_import_a_module(
    port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module runs code as it is imported: a server (or anyone holding the key) must not
    # be able to make a client import one by naming it in an exception.
    marks = tmp_path / "imports"
    monkeypatch.setenv("RPCGEN_TEST_IMPORT_MARKS", str(marks))
    assert "tests.support.foreign_error" not in sys.modules
    with Echo(port) as svc:
        server_pid = svc.server_pid
        with pytest.raises(RemoteCallError) as info:
            svc._server_proxy.foreign_error_rpc()
    assert info.value.error_type == "tests.support.foreign_error.ForeignError"
    assert info.value.error_message == "from a module the client never imported"
    assert "tests.support.foreign_error" not in sys.modules
    assert marks.read_text().split() == [str(server_pid)]  # imported by the server alone


def test_a_server_raising_an_rpcgen_error_reaches_the_client_intact(echo: Echo) -> None:
    with pytest.raises(ServiceUnavailable) as info:
        echo._server_proxy.service_error_rpc()
    assert info.value.service == "Inner" and info.value.reason == "inner down"


def test_direct_mode_pickle_raises_what_rpc_mode_raises() -> None:
    svc = Echo(free_port(), running_unit_tests=True, direct_mode_pickle=True)
    with pytest.raises(ServiceUnavailable) as unavailable:
        svc._server_proxy.service_error_rpc()
    assert unavailable.value.reason == "inner down"
    with pytest.raises(NeedsArgsError) as needs_args:
        svc._server_proxy.needs_args_error_rpc()
    assert needs_args.value.code == 42
    assert isinstance(needs_args.value.__cause__, RemoteTraceback)


# -- a call timeout is a CallTimeout (item 12), said once (item 18) ----------------------


def test_a_call_timeout_is_a_call_timeout_and_a_timeout_error(echo: Echo) -> None:
    proxy: Any = echo._server_proxy
    with pytest.raises(CallTimeout) as info:
        proxy._rpc_call("sleep_rpc", (5.0,), timeout_s=0.2)
    assert isinstance(info.value, TimeoutError)
    assert info.value.method == "sleep_rpc"
    assert echo.echo("after") == "after"  # the timed-out connection was not reused


def test_a_failed_health_check_says_each_thing_once(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    svc = Echo(
        port,
        target="hanging",
        enable_health_check=True,
        health_check_interval_s=0,
        health_check_timeout_s=0.2,
        max_consecutive_failures=5,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="rpcgen"):
            assert svc.health_check() is False
    finally:
        svc.shutdown()
    lines = [r.getMessage() for r in caplog.records if "health check failed" in r.getMessage()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "got no reply within 0.2s" in line
    assert line.count("Echo") == 1 and "check that" not in line and "CallTimeout" not in line


# -- "big" is decided by real buffers only (item 13) -------------------------------------


def test_values_with_odd_nbytes_attributes_travel_both_ways(echo: Echo) -> None:
    assert echo.echo(Sized()) == Sized()
    assert echo._server_proxy.sized_rpc(None) == Sized()  # the result, too
    assert isinstance(echo.echo(AnythingGoes()), AnythingGoes)


# -- restarts under concurrent calls (item 14) -------------------------------------------


def test_a_connect_that_races_a_restart_retries_with_the_new_key(
    echo: Echo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that read the old key just before a restart connects to the new server."""
    real_open = transport.open_connection
    raced: list[int] = []

    def descheduled_open(address: Any, authkey: bytes, **kwargs: Any) -> Any:
        if threading.current_thread().name == "racer" and not raced:
            old = echo.server_pid or 0
            restarter = threading.Thread(target=echo.restart)
            restarter.start()  # a new server, with a new key, while we hold the old one
            restarter.join(30)
            raced.append(old)
            assert echo.server_pid not in (None, old)
        return real_open(address, authkey, **kwargs)

    monkeypatch.setattr(proxy_module, "open_connection", descheduled_open)
    results: list[Any] = []
    racer = threading.Thread(target=lambda: results.append(_call(echo)), name="racer")
    racer.start()
    racer.join(30)
    assert raced, "the race was not staged"
    assert results == ["answered"]


def _call(echo: Echo) -> str:
    try:
        return "answered" if echo.echo(1) == 1 else "wrong result"
    except Exception as exc:
        return repr(exc)


def test_a_fork_while_another_thread_holds_the_proxy_lock_does_not_deadlock(
    echo: Echo,
) -> None:
    """The child frees other threads' connections inside fork(): it must not take that lock."""
    opened = threading.Event()
    finish = threading.Event()

    def other_thread() -> None:
        echo.echo("opens this thread's connection")
        opened.set()
        finish.wait(30)

    thread = threading.Thread(target=other_thread)
    thread.start()
    opened.wait(30)
    proxy: Any = echo._server_proxy
    with proxy._rpc_lock:  # as if another thread were inside the lock at fork time
        pid = os.fork()
        if pid == 0:
            os._exit(0)
    finish.set()
    thread.join(30)
    try:
        wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, timeout=10, what="the child")
    except AssertionError:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise


# -- silent peers and the fd limit (item 15) ---------------------------------------------


def _read_until_eof(sock: socket.socket, deadline_s: float) -> bool:
    sock.settimeout(deadline_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True  # reset: dropped as well
    return True


def test_silent_peers_are_dropped_while_real_clients_are_served(port: int) -> None:
    svc = Echo(port, target="quick_handshake")  # handshake_timeout_s=0.5
    peers = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    try:
        for i in range(20):
            assert svc.echo(i) == i
        dropped = sum(_read_until_eof(peer, 10.0) for peer in peers)
        assert dropped == 50
        assert svc.echo("still serving") == "still serving"
    finally:
        for peer in peers:
            peer.close()
        svc.shutdown()


def test_fd_exhaustion_backs_off_and_recovers(port: int) -> None:
    svc = Echo(port, target="few_fds", connect_timeout_s=3.0)
    server = psutil.Process(svc.server_pid)
    peers: list[socket.socket] = []
    try:
        for _ in range(30):  # more than the server's spare fds: the rest wait in the backlog
            peers.append(socket.create_connection(("127.0.0.1", port)))
        # At the limit the gate makes room by dropping its oldest waiting peer, so the
        # count touches the limit and the one below it.
        wait_until(
            lambda: server.num_fds() >= _fd_limit(server) - 1, timeout=20, what="the fd limit"
        )
        before = sum(server.cpu_times()[:2])
        threading.Event().wait(1.0)  # a window to measure: a busy accept loop burns ~1 s here
        burnt = sum(server.cpu_times()[:2]) - before
        assert burnt < 0.5, f"the accept loop used {burnt:.2f}s of CPU in 1 s at the fd limit"
    finally:
        for peer in peers:
            peer.close()
    try:
        assert wait_until(lambda: _call(svc) == "answered", timeout=15, what="recovery")
    finally:
        svc.shutdown()


def _fd_limit(process: psutil.Process) -> int:
    soft, _ = process.rlimit(psutil.RLIMIT_NOFILE)
    return int(soft)


# -- RPCServiceBase's hooks are enforced (item 16) ---------------------------------------


def test_a_subclass_missing_a_hook_fails_at_construction() -> None:
    class Incomplete(RPCServiceBase[object]):
        def _create_direct_server(self) -> object:
            return object()

    with pytest.raises(TypeError, match=r"Incomplete .* _start_server_process\(\)"):
        Incomplete("Incomplete", 50000, running_unit_tests=True)  # type: ignore[abstract]


# -- rpcgen ps skips what does not parse (item 17) ---------------------------------------


@pytest.mark.parametrize(
    "title",
    ["rpcgen:Fake port=50001 owner=999999999999999999999", "rpcgen:Fake port=99999999 owner=1"],
)
def test_ps_skips_a_process_with_a_malformed_title(
    title: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from rpcgen.generator.cli import main
    from rpcgen.runtime.process import list_servers
    from tests.support.procs import python_process, read_line

    script = (
        "import setproctitle, sys; setproctitle.setproctitle(sys.argv[1]); print('titled', "
        "flush=True); sys.stdin.read()"
    )
    with python_process("-c", script, title) as faker:
        assert read_line(faker) == "titled"
        assert all(s.pid != faker.pid for s in list_servers())
        assert main(["ps"]) == 0
        assert main(["ps", "--json"]) == 0
    assert "internal error" not in capsys.readouterr().err


def test_shutdown_while_a_call_is_blocked_wakes_it_with_service_stopped() -> None:
    """Both the woken thread and shutdown() close that connection: only one may."""
    from rpcgen.runtime import ServiceStopped

    outcomes: list[str] = []
    for _ in range(30):
        svc = Echo(free_port())
        entered = threading.Event()

        def block(svc: Echo = svc, entered: threading.Event = entered) -> None:
            try:
                entered.set()
                svc._server_proxy.block_forever_rpc()
                outcomes.append("returned")
            except ServiceStopped:
                outcomes.append("stopped")
            except BaseException as exc:
                outcomes.append(repr(exc))

        blocker = threading.Thread(target=block)
        blocker.start()
        entered.wait(10)
        proxy: Any = svc._server_proxy
        wait_until(lambda proxy=proxy: proxy._rpc_connection_count() == 2, timeout=10)  # type: ignore[misc]
        svc.shutdown()
        blocker.join(10)
    assert outcomes == ["stopped"] * 30
