"""Faults, counted: kills, orphans, foreign and stale listeners, crashes, hangs, bad peers,
broken notifiers, flapping, Ctrl-C mid-call, authkey secrecy."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.util
import os
import signal
import socket
import threading
from typing import Any

import psutil
import pytest

from rpcgen.runtime import (
    PortInUseError,
    RestartPolicy,
    ServiceAuthenticationError,
    ServiceError,
    ServiceState,
    StartupError,
)
from rpcgen.runtime.process import port_is_free
from rpcgen.runtime.transport import open_connection
from tests.reliability.conftest import Log
from tests.support.notifiers import HangingNotifier, RaisingNotifier, RecordingNotifier
from tests.support.procs import python_process, read_line
from tests.support.services import Echo
from tests.support.waiting import (
    free_port,
    open_fds,
    pid_alive,
    stop_process_now,
    wait_until,
    wait_until_dead,
)

NO_FLAP = RestartPolicy(backoff_initial_s=0.001, backoff_max_s=0.01, flap_max_restarts=1000)


def test_sigkill_with_a_background_monitor_50_rounds(reliability_log: Log) -> None:
    notes = RecordingNotifier()
    svc = Echo(
        free_port(),
        enable_health_check=True,
        health_check_interval_s=0.02,
        health_monitor=True,
        restart_policy=NO_FLAP,
        notifier=notes,
    )
    failures = 0
    try:
        for round_ in range(50):
            old = svc.server_pid or 0
            os.kill(old, signal.SIGKILL)
            try:
                wait_until(lambda old=old: svc.server_pid not in (None, old), timeout=15)  # type: ignore[misc]
                assert svc.echo(round_) == round_
            except Exception:
                failures += 1
    finally:
        svc.shutdown()
    svc.flush_notifications()
    restarts = notes.count("restarted")
    reliability_log.record(
        "server SIGKILLed under a background monitor",
        rounds=50,
        failures=failures,
        note=f"{restarts} restarts",
    )
    assert failures == 0 and restarts == 50


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_owner_sigkilled_leaves_no_orphan(method: str, reliability_log: Log) -> None:
    failures = 0
    for _ in range(3):
        port = free_port()
        with python_process("-m", "tests.support.owner_script", str(port), method) as owner:
            server = int(read_line(owner))
            os.kill(owner.pid, signal.SIGKILL)
            try:
                wait_until_dead(server, timeout=10)
                wait_until(lambda port=port: port_is_free("127.0.0.1", port), timeout=10)  # type: ignore[misc]
            except AssertionError:
                failures += 1
                if pid_alive(server):
                    os.kill(server, signal.SIGKILL)
    reliability_log.record(
        "client (owner) SIGKILLed: 0 orphans", rounds=3, failures=failures, note=method
    )
    assert failures == 0


def test_foreign_listener_is_never_killed(reliability_log: Log) -> None:
    port = free_port()
    failures = 0
    with python_process("-m", "tests.support.foreign_listener", str(port)) as foreign:
        assert read_line(foreign) == "listening"
        for _ in range(10):
            try:
                Echo(port)
                failures += 1
            except PortInUseError as exc:
                failures += exc.pid != foreign.pid
        failures += not pid_alive(foreign.pid)
    reliability_log.record("foreign process on the port", rounds=10, failures=failures)
    assert failures == 0


def test_stale_same_service_server_with_hung_owner_is_left_alone(reliability_log: Log) -> None:
    """A hung owner is still alive: its server is somebody's live server (issue 10)."""
    failures = 0
    for _ in range(5):
        port = free_port()
        with python_process("-m", "tests.support.owner_script", str(port), "fork") as owner:
            server = int(read_line(owner))
            stop_process_now(owner.pid)
            try:
                Echo(port)
                failures += 1
            except PortInUseError as exc:
                failures += exc.owner_pid != owner.pid or not pid_alive(server)
            finally:
                os.kill(owner.pid, signal.SIGCONT)
    reliability_log.record(
        "same-service server, owner hung (SIGSTOP): left alone", rounds=5, failures=failures
    )
    assert failures == 0


def test_stale_server_whose_owner_died_is_replaced(reliability_log: Log) -> None:
    failures = 0
    for _ in range(5):
        port = free_port()
        with python_process("-m", "tests.support.owner_script", str(port), "fork") as owner:
            stale = int(read_line(owner))
            stop_process_now(stale)  # so that its owner watchdog cannot act
            os.kill(owner.pid, signal.SIGKILL)
            owner.wait(10)
            try:
                with Echo(port) as svc:
                    failures += pid_alive(stale) or svc.echo(1) != 1
            except Exception:
                failures += 1
            finally:
                if pid_alive(stale):
                    os.kill(stale, signal.SIGKILL)
    reliability_log.record(
        "stale same-service server (owner SIGKILLed, server hung)", rounds=5, failures=failures
    )
    assert failures == 0


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_startup_crash_is_reported_before_a_1s_deadline(method: str, reliability_log: Log) -> None:
    # With start_timeout_s=1, only a StartupError (not StartupTimeout) proves the crash
    # was seen, with its text, inside that second.
    failures = 0
    for _ in range(5):
        try:
            Echo(free_port(), target="crashing", start_method=method, start_timeout_s=1.0)
            failures += 1
        except StartupError as exc:
            failures += "constructor exploded on purpose" not in str(exc) or not exc.exitcode
        except Exception:
            failures += 1
    reliability_log.record("child crashes during startup", rounds=5, failures=failures, note=method)
    assert failures == 0


def test_frozen_server_times_out_health_checks_and_is_replaced(reliability_log: Log) -> None:
    failures = 0
    svc = Echo(
        free_port(),
        enable_health_check=True,
        health_check_interval_s=0,
        health_check_timeout_s=0.2,
        max_consecutive_failures=2,
        shutdown_timeout_s=0.5,
        restart_policy=NO_FLAP,
    )
    try:
        for _ in range(3):
            frozen = svc.server_pid or 0
            stop_process_now(frozen)  # alive, holds its port, answers nothing
            results = [svc.health_check() for _ in range(2)]
            failures += results != [False, False]
            failures += svc.server_pid == frozen or svc.state is not ServiceState.RUNNING
            failures += svc.echo("back") != "back"
            if pid_alive(frozen):
                failures += 1
                os.kill(frozen, signal.SIGKILL)
    finally:
        svc.shutdown()
    reliability_log.record(
        "server hangs (SIGSTOP): checks time out, restart", rounds=3, failures=failures
    )
    assert failures == 0


def test_a_method_blocked_forever_does_not_block_other_calls(reliability_log: Log) -> None:
    with Echo(free_port(), enable_health_check=True, health_check_interval_s=0) as svc:

        def block() -> None:
            with contextlib.suppress(ServiceError):  # ends when the client shuts down
                svc._server_proxy.block_forever_rpc()

        blocker = threading.Thread(target=block, daemon=True)
        blocker.start()
        failures = sum(svc.echo(i) != i or not svc.health_check() for i in range(50))
    blocker.join(10)  # woken by shutdown
    failures += blocker.is_alive()
    reliability_log.record(
        "a method blocks forever", rounds=50, failures=failures, note="other calls served"
    )
    assert failures == 0


def test_wrong_authkeys_and_garbage_never_stop_the_server(reliability_log: Log) -> None:
    failures = 0
    with Echo(free_port()) as svc:
        for i in range(100):
            with socket.create_connection((svc.host, svc.port)) as raw:
                raw.sendall(os.urandom(1 + i % 64))
        for _ in range(50):
            try:
                open_connection(svc.address, os.urandom(32), service="Echo", timeout_s=5).close()
                failures += 1
            except ServiceAuthenticationError:
                pass
        failures += sum(svc.echo(i) != i for i in range(100))
    reliability_log.record(
        "wrong authkey / garbage bytes to the port", rounds=150, failures=failures
    )
    assert failures == 0


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_start_stop_cycles_leak_nothing(method: str, reliability_log: Log) -> None:
    cycles = 200 if method == "fork" else 20
    port = free_port()
    Echo(port, start_method=method).shutdown()  # warm-up (resource tracker, imports)
    fds = open_fds()
    children = {c.pid for c in psutil.Process().children(recursive=True)}
    for i in range(cycles):
        svc = Echo(port, start_method=method)
        assert svc.echo(i) == i
        svc.shutdown()
    leaked = len(open_fds() - fds)
    now = psutil.Process().children(recursive=True)
    extra = [c for c in now if c.pid not in children]
    zombies = [c for c in now if c.status() == psutil.STATUS_ZOMBIE]
    failures = leaked + len(extra) + len(zombies)
    reliability_log.record(
        "start/stop cycles",
        rounds=cycles,
        failures=failures,
        note=f"{method}: {leaked} fds leaked, {len(zombies)} zombies, {len(extra)} leftover",
    )
    assert failures == 0


@pytest.mark.parametrize("bad", [RaisingNotifier, HangingNotifier])
def test_broken_notifiers_never_stop_checks_or_restarts(bad: Any, reliability_log: Log) -> None:
    notifier = bad()
    failures = 0
    with Echo(
        free_port(),
        enable_health_check=True,
        health_check_interval_s=0,
        notifier=notifier,
        restart_policy=NO_FLAP,
    ) as svc:
        for _ in range(5):
            old = svc.server_pid or 0
            os.kill(old, signal.SIGKILL)
            wait_until_dead(old)
            try:  # the owner restarts a dead server at once, whatever its notifier does
                wait_until(lambda old=old: svc.server_pid not in (None, old), timeout=20)  # type: ignore[misc]
            except AssertionError:
                failures += 1
            failures += not svc.health_check()
    if isinstance(notifier, HangingNotifier):
        notifier.release.set()
    reliability_log.record(
        "a notifier that raises or hangs", rounds=5, failures=failures, note=bad.__name__
    )
    assert failures == 0


def test_flapping_backs_off_then_stops_without_a_busy_loop(reliability_log: Log) -> None:
    notes = RecordingNotifier()
    sleeps: list[float] = []
    starts: list[str] = []
    policy = RestartPolicy(backoff_initial_s=0.01, max_attempts=2, flap_max_restarts=4)
    svc = Echo(
        free_port(),
        enable_health_check=True,
        health_check_interval_s=0,
        restart_policy=policy,
        notifier=notes,
        sleep=sleeps.append,
    )
    original = svc._start_server_process

    def counting(*args: Any) -> Any:
        starts.append("start")
        return original(*args)

    svc._start_server_process = counting  # type: ignore[method-assign,assignment]
    try:
        svc._target = "exit7"
        os.kill(svc.server_pid or 0, signal.SIGKILL)
        for _ in range(200):
            svc.health_check()
        svc.flush_notifications()
    finally:
        svc.shutdown()
    failures = (len(starts) > 4) + (notes.count("flapping") != 1) + (sleeps[:2] != [0.01, 0.02])
    reliability_log.record(
        "restart flapping (dies at every start)",
        rounds=200,
        failures=failures,
        note=f"{len(starts)} start attempts for 200 checks, then stopped",
    )
    assert failures == 0


def test_ctrl_c_mid_call_leaves_the_client_in_step(reliability_log: Log) -> None:
    failures = 0
    with Echo(free_port()) as svc:
        for round_ in range(5):
            timer = threading.Timer(0.05, os.kill, args=(os.getpid(), signal.SIGINT))
            timer.start()
            try:
                svc._server_proxy.sleep_rpc(0.5)
                failures += 1  # the interrupt never arrived
            except KeyboardInterrupt:
                pass
            finally:
                timer.join()
            # The late "slept" reply must never be read as the answer to a later call.
            failures += sum(svc.echo((round_, i)) != (round_, i) for i in range(20))
    reliability_log.record(
        "Ctrl-C (KeyboardInterrupt) mid-call, then more calls", rounds=5, failures=failures
    )
    assert failures == 0


def test_authkey_secrecy_in_every_process(
    reliability_log: Log, caplog: pytest.LogCaptureFixture
) -> None:
    keys: list[bytes] = []

    class Spy(Echo):
        def _start_server_process(self, address: Any, authkey: bytes, server_ready: Any) -> Any:
            keys.append(authkey)
            return super()._start_server_process(address, authkey, server_ready)

    caplog.set_level(logging.DEBUG)
    multiprocessing.util.log_to_stderr(logging.DEBUG)
    checked = 0
    leaks = 0
    try:
        for method in ("fork", "spawn", "forkserver"):
            with Spy(free_port(), start_method=method) as svc:
                svc.echo(1)
                key = keys[-1]
                forms = [key, key.hex().encode(), repr(key).encode()]
                blobs = [repr(svc).encode(), repr(vars(svc)).encode()]
                blobs += [r.getMessage().encode() for r in caplog.records]
                pids = {os.getpid(), svc.server_pid or 0}
                pids |= {c.pid for c in psutil.Process().children(recursive=True)}
                for pid in pids:
                    for part in ("cmdline", "environ"):
                        try:
                            with open(f"/proc/{pid}/{part}", "rb") as f:
                                blobs.append(f.read())
                        except OSError:
                            continue
                checked += len(blobs)
                leaks += sum(form in blob for blob in blobs for form in forms)
    finally:
        logger = multiprocessing.util.get_logger()
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    reliability_log.record(
        "authkey secrecy (logs, reprs, cmdline, environ of every process)",
        rounds=checked,
        failures=leaks,
    )
    assert leaks == 0
