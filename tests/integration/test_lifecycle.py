"""Start, call, stop: the basic lifecycle with real processes, under every start method."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket

import psutil
import pytest

from rpcgen.runtime import (
    PortInUseError,
    RemoteCallError,
    ResultNotPicklable,
    ServiceState,
    ServiceStopped,
    StartupError,
    StartupTimeout,
)
from rpcgen.runtime.announce import parse_process_title
from rpcgen.runtime.process import port_is_free
from tests.support.services import Echo, SeedStyleEcho
from tests.support.waiting import pid_alive

START_METHODS = ["fork", "spawn", "forkserver"]


@pytest.mark.parametrize("method", START_METHODS)
def test_start_call_shutdown_under_each_start_method(port: int, method: str) -> None:
    svc = Echo(port, start_method=method)
    try:
        assert svc.state is ServiceState.RUNNING
        pid = svc.server_pid
        assert pid is not None and pid != os.getpid() and pid_alive(pid)
        assert svc.remote_pid() == pid
        assert svc.echo({"k": [1, 2]}) == {"k": [1, 2]}
        assert svc.add(2, b=3) == 5
        title = parse_process_title(psutil.Process(pid).cmdline())
        assert title is not None
        assert (title.service, title.port, title.owner_pid) == ("Echo", port, os.getpid())
        assert not port_is_free("127.0.0.1", port)
    finally:
        svc.shutdown()
    assert svc.state is ServiceState.STOPPED
    assert svc.server_pid is None
    assert not pid_alive(pid)
    assert port_is_free("127.0.0.1", port)


def test_seed_style_closure_target_works_under_fork(port: int) -> None:
    if multiprocessing.get_start_method() != "fork":
        pytest.skip("closure targets need the fork start method, as in the seed")
    svc = SeedStyleEcho(port)
    try:
        assert svc._server_proxy.echo_rpc("seed") == "seed"
        title = parse_process_title(psutil.Process(svc.server_pid).cmdline())
        assert title is not None and title.service == "SeedStyleEcho"
    finally:
        svc.shutdown()


def test_shutdown_is_idempotent_and_calls_after_it_raise(port: int) -> None:
    svc = Echo(port)
    svc.shutdown()
    svc.shutdown()
    with pytest.raises(ServiceStopped, match="has been shut down"):
        svc.echo(1)


def test_context_manager_shuts_down(port: int) -> None:
    with Echo(port) as svc:
        pid = svc.server_pid
        assert svc.echo(3) == 3
    assert pid is not None and not pid_alive(pid)
    assert svc.state is ServiceState.STOPPED


def test_remote_exception_keeps_its_type(port: int) -> None:
    with Echo(port) as svc, pytest.raises(ValueError, match="kaboom"):
        svc._server_proxy.boom_rpc("kaboom")


def test_an_unpicklable_result_is_one_clear_line_as_in_direct_mode(port: int) -> None:
    with Echo(port) as svc:
        with pytest.raises(ResultNotPicklable) as info:
            svc._server_proxy.unpicklable_rpc()
        message = str(info.value)
        assert "\n" not in message, message
        assert "the result of unpicklable_rpc() cannot cross a process boundary" in message
        assert "lock" in message and "lock" in info.value.remote_traceback.lower()
        assert isinstance(info.value, (TypeError, RemoteCallError))
        with pytest.raises(ResultNotPicklable, match="lambda_rpc"):
            svc._server_proxy.lambda_rpc()
        assert svc.echo("still in step") == "still in step"
        assert list(svc._server_proxy.numbers_rpc(3)) == [0, 1, 2]  # a generator streams


def test_unknown_method_is_remote_call_error(port: int) -> None:
    with Echo(port) as svc:
        with pytest.raises(RemoteCallError, match="not_there_rpc"):
            svc._server_proxy.not_there_rpc()  # type: ignore[attr-defined]
        assert svc.echo(1) == 1


def test_constructor_crash_reports_the_exception_text(port: int) -> None:
    with pytest.raises(StartupError) as info:
        Echo(port, target="crashing")
    assert "constructor exploded on purpose" in str(info.value)
    assert info.value.exitcode not in (None, 0)
    assert port_is_free("127.0.0.1", port)


def test_child_that_exits_before_ready_reports_its_exit_code_at_once(port: int) -> None:
    # start_timeout_s is long: the error must come from the sentinel, not the timeout.
    with pytest.raises(StartupError) as info:
        Echo(port, target="exit7", start_timeout_s=60)
    assert info.value.exitcode == 7
    assert "exited with code 7" in str(info.value)


def test_startup_timeout_terminates_and_reaps_the_child(port: int) -> None:
    before = {c.pid for c in psutil.Process().children()}
    with pytest.raises(StartupTimeout, match=r"not ready within 0\.3s"):
        Echo(port, target="never_ready", start_timeout_s=0.3)
    leftover = {c.pid for c in psutil.Process().children()} - before
    assert not [p for p in leftover if pid_alive(p)]


def test_logs_go_to_the_service_logger(port: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="rpcgen")
    with Echo(port, name="LoggedEcho"):
        pass
    names = {r.name for r in caplog.records}
    assert "rpcgen.LoggedEcho" in names
    assert any("server started" in r.getMessage() for r in caplog.records)


def test_invalid_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="port"):
        Echo(70000)
    with pytest.raises(ValueError, match="service_name"):
        Echo(50000, name="bad name")


def test_the_design_docs_attributes_hold_in_rpc_mode(port: int) -> None:
    """Issue 21: what upstream subclasses read: ``_server_process`` (its pid, is_alive()),
    and ``_server_proxy`` falsy after shutdown while calls through it raise, typed."""
    svc = Echo(port)
    process = svc._server_process
    assert process is not None and process.pid == svc.server_pid and process.is_alive()
    assert svc._server_proxy
    svc.shutdown()
    assert svc._server_process is None
    assert not svc._server_proxy
    with pytest.raises(ServiceStopped, match="has been shut down"):
        svc._server_proxy.echo_rpc(1)


def test_health_check_after_shutdown_says_so_and_logs_no_failure(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    svc = Echo(port, enable_health_check=True)
    svc.shutdown()
    with caplog.at_level(logging.DEBUG, logger="rpcgen"):
        assert svc.health_check() is False
    assert [r.message for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("is shut down" in r.message for r in caplog.records)


def test_a_port_held_by_this_very_process_is_named_so(port: int) -> None:
    with (
        socket.create_server(("127.0.0.1", port)),
        pytest.raises(PortInUseError, match=r"\(this process\)"),
    ):
        Echo(port, shutdown_timeout_s=0.2)


def test_a_padded_process_title_is_cut_short_in_messages() -> None:
    from rpcgen.runtime.process import _short

    assert _short("rpcgen: Echo:5000" + " " * 150) == "rpcgen: Echo:5000"
    assert len(_short("x" * 500)) == 120
