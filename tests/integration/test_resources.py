"""No leaks: file descriptors, zombies, processes; fork safety; orphan protection."""

from __future__ import annotations

import atexit
import os
import signal

import psutil
import pytest

from rpcgen.runtime.process import port_is_free
from tests.support.procs import python_process, read_line
from tests.support.services import Echo
from tests.support.waiting import open_fds, pid_alive, wait_until


def test_200_start_stop_cycles_leak_no_fds_and_leave_no_processes(port: int) -> None:
    # Warm up once: first use opens long-lived fds (e.g. the resource tracker).
    Echo(port).shutdown()
    fds_before = open_fds()
    children_before = {c.pid for c in psutil.Process().children(recursive=True)}
    pids = []
    for i in range(200):
        svc = Echo(port)
        assert svc.echo(i) == i
        pids.append(svc.server_pid)
        svc.shutdown()
    leaked = open_fds() - fds_before
    assert not leaked, f"leaked fds: {sorted(leaked)}"
    now = psutil.Process().children(recursive=True)
    assert {c.pid for c in now} - children_before == set()
    zombies = [c.pid for c in now if c.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []
    assert len(set(pids)) == 200
    assert not any(pid_alive(p) for p in pids if p is not None)


def test_threads_connections_are_closed_on_shutdown(port: int) -> None:
    import threading

    fds_before = open_fds()
    svc = Echo(port)
    threads = [threading.Thread(target=svc.echo, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    svc.shutdown()
    assert open_fds() - fds_before == set()


def test_forked_child_never_shuts_down_the_parents_server(port: int) -> None:
    svc = Echo(port, start_method="fork")
    try:
        pid = os.fork()
        if pid == 0:  # child: use it, drop it, run the atexit handlers, leave
            code = 4
            try:
                code = 0 if svc.echo("from child") == "from child" else 3
                svc.__del__()
                del svc
                atexit._run_exitfuncs()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert svc.server_pid is not None and pid_alive(svc.server_pid)
        assert svc.echo("parent still served") == "parent still served"
    finally:
        svc.shutdown()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_server_exits_and_frees_port_when_its_owner_is_sigkilled(port: int, method: str) -> None:
    with python_process("-m", "tests.support.owner_script", str(port), method) as owner:
        server_pid = int(read_line(owner))
        assert pid_alive(server_pid)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        wait_until(lambda: not pid_alive(server_pid), timeout=10, what="orphaned server to exit")
        wait_until(lambda: port_is_free("127.0.0.1", port), timeout=10, what="port to be released")
