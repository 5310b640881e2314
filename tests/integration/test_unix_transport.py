"""transport="unix": the same service over a Unix domain socket (owner-only permissions)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from rpcgen.runtime import PortInUseError, ServiceState
from rpcgen.runtime.process import unix_socket_in_use
from tests.support.services import Echo
from tests.support.waiting import pid_alive, wait_until, wait_until_dead


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_calls_permissions_and_cleanup(port: int, tmp_path: Path, method: str) -> None:
    svc = Echo(port, transport="unix", socket_dir=str(tmp_path / "s"), start_method=method)
    path = svc.address
    assert isinstance(path, str)
    try:
        assert path == str(tmp_path / "s" / f"Echo-{port}.sock")
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert svc.echo({"over": "uds"}) == {"over": "uds"}
        assert f"unix:{path}" in repr(svc)
    finally:
        svc.shutdown()
    assert svc.state is ServiceState.STOPPED and not os.path.exists(path)


def test_default_socket_dir_is_private(port: int) -> None:
    with Echo(port, transport="unix") as svc:
        assert isinstance(svc.address, str)
        folder = os.path.dirname(svc.address)
        assert os.stat(folder).st_mode & 0o077 == 0
        assert svc.echo(1) == 1


def test_stale_socket_of_a_killed_server_is_replaced(port: int, tmp_path: Path) -> None:
    first = Echo(port, transport="unix", socket_dir=str(tmp_path))
    path, pid = first.address, first.server_pid or 0
    assert isinstance(path, str)
    os.kill(pid, signal.SIGKILL)
    wait_until_dead(pid)
    # The leader shows as a zombie before its threads' sockets are closed: wait for that.
    wait_until(lambda: not unix_socket_in_use(path), timeout=10, what="socket to be released")
    assert os.path.exists(path)  # a stale file: nobody listens, the file stays
    with Echo(port, transport="unix", socket_dir=str(tmp_path)) as second:
        assert second.echo("fresh") == "fresh"
    first.shutdown()


def test_restart_after_sigkill_over_a_unix_socket(port: int, tmp_path: Path) -> None:
    with Echo(
        port,
        transport="unix",
        socket_dir=str(tmp_path),
        enable_health_check=True,
        health_check_interval_s=0,
    ) as svc:
        old = svc.server_pid or 0
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: svc.server_pid not in (None, old), timeout=20, what="the restart")
        assert svc.echo("back") == "back" and svc.health_check() is True


def test_foreign_unix_listener_is_never_killed(port: int, tmp_path: Path) -> None:
    path = str(tmp_path / f"Echo-{port}.sock")
    with socket.socket(socket.AF_UNIX) as foreign:
        foreign.bind(path)
        foreign.listen()
        ctx = multiprocessing.get_context("fork")
        holder = ctx.Process(target=_hold, args=(foreign.fileno(),), daemon=True)
        holder.start()
        foreign.close()  # only the holder has the socket now: psutil names one pid per socket
        try:
            with pytest.raises(PortInUseError, match=f"socket {path}") as info:
                Echo(port, transport="unix", socket_dir=str(tmp_path))
            assert info.value.pid == holder.pid
            assert pid_alive(holder.pid or 0)
        finally:
            holder.kill()
            holder.join(5)
            holder.close()


def _hold(fd: int) -> None:
    import threading

    threading.Event().wait(60)


def _use(client: Any, queue: Any) -> None:
    queue.put(client.echo("child over uds"))


def test_client_pickled_into_a_spawned_child(port: int, tmp_path: Path) -> None:
    ctx: Any = multiprocessing.get_context("spawn")
    with Echo(port, transport="unix", socket_dir=str(tmp_path)) as svc:
        assert pickle.loads(pickle.dumps(svc)).address == svc.address
        queue = ctx.Queue()
        child = ctx.Process(target=_use, args=(svc, queue))
        child.start()
        assert queue.get(timeout=30) == "child over uds"
        child.join(30)
        assert child.exitcode == 0
        child.close()
        queue.close()
        queue.join_thread()


def test_invalid_transport_is_a_clear_error(port: int) -> None:
    with pytest.raises(ValueError, match="transport must be 'tcp' or 'unix'"):
        Echo(port, transport="udp")
