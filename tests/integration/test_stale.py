"""Stale-server cleanup before start: replace our own, never touch anyone else's."""

from __future__ import annotations

import os
import signal

import pytest

from rpcgen.runtime import PortInUseError
from rpcgen.runtime.process import cleanup_stale_server
from tests.support.procs import python_process, read_line
from tests.support.services import Echo
from tests.support.waiting import pid_alive, stop_process_now


def test_a_server_of_the_same_service_with_a_hung_owner_is_left_alone(port: int) -> None:
    """Its owner is alive (only stopped): it is somebody's live server (issue 10)."""
    with python_process("-m", "tests.support.owner_script", str(port), "fork") as owner:
        server = int(read_line(owner))
        stop_process_now(owner.pid)
        try:
            with pytest.raises(PortInUseError) as info:
                Echo(port)
            assert info.value.owner_pid == owner.pid and pid_alive(server)
        finally:
            os.kill(owner.pid, signal.SIGCONT)


def test_a_sigstopped_server_whose_owner_died_is_replaced(port: int) -> None:
    with python_process("-m", "tests.support.owner_script", str(port), "fork") as owner:
        stale_pid = int(read_line(owner))
        stop_process_now(stale_pid)  # its owner watchdog cannot act
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        try:
            with Echo(port) as svc:
                assert not pid_alive(stale_pid)
                assert svc.echo(1) == 1
        finally:
            if pid_alive(stale_pid):
                os.kill(stale_pid, signal.SIGKILL)


def test_foreign_listener_is_never_killed(port: int) -> None:
    with python_process("-m", "tests.support.foreign_listener", str(port)) as foreign:
        assert read_line(foreign) == "listening"
        with pytest.raises(PortInUseError) as info:
            Echo(port)
        assert info.value.pid == foreign.pid
        assert f"pid {foreign.pid}" in str(info.value)
        assert "foreign_listener" in str(info.value)
        assert foreign.poll() is None and pid_alive(foreign.pid)


def test_server_of_another_service_is_not_killed(port: int) -> None:
    with python_process(
        "-m", "tests.support.owner_script", str(port), "fork", "OtherService"
    ) as owner:
        other_pid = int(read_line(owner))
        with pytest.raises(PortInUseError, match="OtherService"):
            cleanup_stale_server("Echo", "127.0.0.1", port, timeout_s=2)
        assert pid_alive(other_pid)


def test_cleanup_on_a_free_port_does_nothing(port: int) -> None:
    assert cleanup_stale_server("Echo", "127.0.0.1", port) == []
