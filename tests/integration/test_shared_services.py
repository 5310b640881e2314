"""One server, many client processes: shared keys, attach, following restarts,
supervision from any process, and a second owner that never kills a live server.

Issue 10. Process-level tests run under fork, spawn and forkserver.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rpcgen.runtime import PortInUseError, ServiceNotFound, ServiceUnavailable
from rpcgen.runtime.directory import directory_folder, lookup
from rpcgen.runtime.process import list_servers, port_is_free
from tests.support.internals import process_backend
from tests.support.procs import ROOT, python_process, read_line
from tests.support.services import Echo
from tests.support.sharing import (
    HealthCheckDaemon,
    Holder,
    owner_pid_of_server,
    pickled_client_worker,
)
from tests.support.waiting import (
    free_port,
    pid_alive,
    stop_process_now,
    wait_until,
    wait_until_dead,
)

METHODS = ["fork", "spawn", "forkserver"]


def supervised(port: int, method: str | None = None, **kwargs: Any) -> Echo:
    options: dict[str, Any] = dict(
        enable_health_check=True,
        health_check_interval_s=0,
        health_check_timeout_s=0.3,
        max_consecutive_failures=2,
        start_method=method,
    )
    options.update(kwargs)
    return Echo(port, **options)


def wait_restarted(svc: Echo, old: int) -> int:
    return int(wait_until(lambda: svc.server_pid not in (None, old) and svc.server_pid, timeout=20))


# -- one key across restarts; the directory ---------------------------------------------


def test_the_key_is_kept_across_restarts_and_published_for_this_user(port: int) -> None:
    with supervised(port) as svc:
        key = process_backend(svc).key()
        entry = lookup(port=port, service="Echo")
        assert entry is not None and entry.pid == svc.server_pid and entry.generation == 1
        assert Path(entry.key_file).read_bytes() == key.hex().encode() + b"\n"
        assert oct(Path(entry.key_file).stat().st_mode & 0o777) == "0o600"
        assert oct(directory_folder().stat().st_mode & 0o777) == "0o700"
        assert key.hex() not in Path(directory_folder() / f"Echo-{port}.json").read_text()
        old = svc.server_pid or 0
        os.kill(old, signal.SIGKILL)
        wait_restarted(svc, old)
        assert process_backend(svc).key() == key
        entry = wait_until(lambda: lookup(port=port, service="Echo"), timeout=10)
        assert entry is not None and entry.generation == 2 and entry.pid == svc.server_pid
    assert lookup(port=port, service="Echo") is None
    assert not (directory_folder() / f"Echo-{port}.key").exists()


def test_rotate_authkey_makes_a_new_key(port: int) -> None:
    with Echo(port) as svc:
        key = process_backend(svc).key()
        assert svc.rotate_authkey()
        assert process_backend(svc).key() != key and svc.echo("rotated") == "rotated"


# -- attach ----------------------------------------------------------------------------


def test_attach_from_an_unrelated_process(port: int) -> None:
    with Echo(port) as svc:
        code = (
            "import sys\n"
            "from tests.support.services import Echo\n"
            "client = Echo.attach(port=int(sys.argv[1]), timeout_s=10)\n"
            "print(client.echo('hello from elsewhere'), client.is_owner, client.server_pid)\n"
            "client.shutdown()\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(port)],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path])),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["hello", "from", "elsewhere", "False", str(svc.server_pid)]
        assert svc.echo("still mine") == "still mine"  # its shutdown() closed only its own


def test_attach_by_name_in_this_process(port: int) -> None:
    with Echo(port) as svc:
        other = Echo.attach(service_name="Echo", port=port)
        assert other.echo(1) == 1 and not other.is_owner and other.server_pid == svc.server_pid
        other.shutdown()
        assert pid_alive(svc.server_pid or 0)


def test_attach_with_nothing_running_is_a_typed_error_in_time() -> None:
    port = free_port()
    with pytest.raises(ServiceNotFound, match=f"on port {port}") as info:
        Echo.attach(port=port, timeout_s=0.3)
    assert isinstance(info.value, ConnectionError)


# -- non-owners follow restarts ------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_a_pickled_client_in_a_child_follows_a_restart(port: int, method: str) -> None:
    ctx: Any = multiprocessing.get_context(method)
    with supervised(port, method) as svc:
        parent, child_end = ctx.Pipe()
        child = ctx.Process(target=pickled_client_worker, args=(svc, child_end))
        child.start()
        try:
            assert parent.recv() == ("before", "before", False)
            old = svc.server_pid or 0
            os.kill(old, signal.SIGKILL)
            new = wait_restarted(svc, old)
            parent.send("go")
            assert parent.poll(30)
            assert parent.recv() == ("after", "after", new)
        finally:
            child.join(30)
            if child.exitcode is None:
                child.kill()
        assert child.exitcode == 0
        assert svc.echo("owner still serves") == "owner still serves"


@pytest.mark.parametrize("method", METHODS)
def test_a_server_holding_another_services_client_follows_its_restart(method: str) -> None:
    with (
        supervised(free_port(), method) as echo,
        Holder(free_port(), start_method=method) as holder,
    ):
        assert holder.hold(echo) is False  # in the holder's server it is not the owner
        assert holder.via_held("first") == "first"
        old = echo.server_pid or 0
        os.kill(old, signal.SIGKILL)
        wait_restarted(echo, old)
        assert holder.via_held("after the restart") == "after the restart"


# -- supervision from any process: the design doc's HealthCheckDaemon ---------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
def test_the_design_docs_health_check_daemon_brings_the_service_back(
    port: int, method: str, fault: str
) -> None:
    ctx: Any = multiprocessing.get_context(method)
    with supervised(port, method) as service:
        daemon = HealthCheckDaemon(service)
        health_process = ctx.Process(target=daemon.run, daemon=True)
        health_process.start()
        try:
            old = service.server_pid or 0
            if fault == "sigkill":
                os.kill(old, signal.SIGKILL)
            else:
                stop_process_now(old)  # hung: only a health check can tell
            # The main process never calls health_check(): its calls just work again,
            # answered by a new server (a SIGCONTed old one answers briefly while exiting).
            wait_until(
                lambda: service.server_pid != old and _answers(service),
                timeout=30,
                what="a new server to answer",
            )
            wait_until_dead(old)
        finally:
            health_process.kill()
            health_process.join(10)


def _answers(service: Echo) -> bool:
    try:
        return bool(service.echo("back") == "back")
    except ConnectionError:
        return False


# -- a second owner never kills a live server ----------------------------------------------


def test_a_second_program_on_the_same_port_gets_port_in_use_naming_the_owner(port: int) -> None:
    with python_process("-m", "tests.support.owner_script", str(port), "fork") as owner:
        server = int(read_line(owner))
        with pytest.raises(PortInUseError) as info:
            Echo(port)
        assert info.value.owner_pid == owner.pid and info.value.pid == server
        assert f"Echo.attach(port={port})" in str(info.value)
        assert pid_alive(server) and owner_pid_of_server(server) == owner.pid


def test_rpcgen_ps_lists_directory_entries(port: int) -> None:
    with Echo(port) as svc:
        rows = {s.pid: s for s in list_servers()}
        assert rows[svc.server_pid or 0].generation == 1


# -- another host: the key file rules (the cross-host call is in test_netns.py) --------------


def test_a_network_address_without_a_key_file_is_refused() -> None:
    from rpcgen.runtime import UnsafeBindError

    with pytest.raises(UnsafeBindError, match="authkey_file=PATH") as info:
        Echo(free_port(), host="0.0.0.0")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("problem", ["group-readable", "world-readable", "someone else's"])
def test_a_loose_key_file_is_refused(port: int, tmp_path: Path, problem: str) -> None:
    key = tmp_path / "service.key"
    key.write_bytes(os.urandom(32))
    key.chmod({"group-readable": 0o640, "world-readable": 0o604}.get(problem, 0o600))
    if problem == "someone else's":
        if os.geteuid() != 0:
            pytest.skip("making a file owned by another user needs root")
        os.chown(key, 65534, 65534)
    with pytest.raises(PermissionError, match="authkey file"):
        Echo(port, authkey_file=key)
    assert lookup(port=port, service="Echo") is None


def test_a_missing_key_file_is_created_with_a_fresh_key(port: int, tmp_path: Path) -> None:
    key = tmp_path / "new.key"
    with Echo(port, authkey_file=key) as svc:
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        assert len(bytes.fromhex(key.read_text())) == 32  # 64 hex digits and a newline
        other = Echo.attach(port=port, authkey_file=key)
        assert other.echo("shared") == "shared"
        other.shutdown()
        assert svc.echo("mine") == "mine"
    assert key.exists()  # the user's file: never removed


@pytest.mark.parametrize("round_", range(4))
def test_two_owners_starting_at_once_leave_the_winners_key_intact(round_: int) -> None:
    """The loser's failed start must not remove the key file its rival published."""
    port = free_port()
    command = [sys.executable, "-m", "tests.support.owner_script", str(port), "fork"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    racers = [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        lines = [_first_line(racer) for racer in racers]
        winners = [int(line) for line in lines if line]
        assert len(winners) >= 1, [r.stderr.read() for r in racers if r.stderr]
        client = Echo.attach(port=port, timeout_s=10)
        assert client.echo("winner") == "winner" and client.server_pid in winners
        client.shutdown()
    finally:
        for racer in racers:
            racer.kill()
            racer.communicate(timeout=30)


def _first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def test_a_second_instance_in_the_same_process_does_not_kill_the_first(port: int) -> None:
    with Echo(port) as first:
        with pytest.raises(PortInUseError) as info:
            Echo(port)
        assert info.value.owner_pid == os.getpid()
        assert first.echo("still mine") == "still mine"


def test_an_unusable_service_directory_does_not_stop_a_service(
    port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another user could make the folder first: rpcgen never writes there, and still serves."""
    runtime_dir = tmp_path / "run"
    (runtime_dir / "rpcgen").mkdir(parents=True)
    (runtime_dir / "rpcgen").chmod(0o777)  # open to others: refused as a directory
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    with Echo(port) as svc:
        assert svc.echo("served") == "served"
        assert svc.restart() and svc.echo("after a restart") == "after a restart"
    assert "not published in the service directory" in caplog.text
    assert list((runtime_dir / "rpcgen").iterdir()) == []
    with pytest.raises(PermissionError, match="mode 0700"):
        Echo.attach(port=port, timeout_s=0.2)


def test_attach_never_talks_to_what_took_the_port_of_a_dead_server(port: int) -> None:
    # The owner is SIGKILLed, its server exits (it watches its owner), and another
    # program takes the port. attach() sees in the directory that the server is gone:
    # it never connects, so the squatter gets no HMAC answer, nor anything else.
    with python_process("-m", "tests.support.owner_script", str(port), "fork") as owner:
        server_pid = int(read_line(owner) or 0)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
    wait_until(lambda: not pid_alive(server_pid), timeout=10, what="the orphan to exit")
    wait_until(lambda: port_is_free("127.0.0.1", port), timeout=10, what="the port")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        squatter.setblocking(False)
        started = time.monotonic()
        with pytest.raises(ServiceNotFound):
            Echo.attach(port=port, timeout_s=1)
        assert time.monotonic() - started < 3
        with pytest.raises(BlockingIOError):
            squatter.accept()  # nobody connected


def test_attach_timeout_bounds_the_whole_call_against_a_silent_server(port: int) -> None:
    with Echo(port) as svc:
        pid = svc.server_pid or 0
        os.kill(pid, signal.SIGSTOP)  # alive (the directory says so), but silent
        try:
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable):
                Echo.attach(port=port, timeout_s=1)
            assert time.monotonic() - started < 3  # it took 20 s with timeout_s=1
        finally:
            os.kill(pid, signal.SIGCONT)
        assert svc.echo("after") == "after"
