"""Health checks, restarts and the background monitor, against real server processes."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import pytest

from rpcgen.runtime import RestartPolicy, ServiceState
from tests.support.notifiers import HangingNotifier, RaisingNotifier, RecordingNotifier
from tests.support.services import Echo
from tests.support.waiting import pid_alive, stop_process_now, wait_until, wait_until_dead

FAST_RESTARTS = RestartPolicy(backoff_initial_s=0.01, backoff_max_s=0.05, flap_window_s=60)


def make(port: int, **kwargs: Any) -> Echo:
    kwargs.setdefault("enable_health_check", True)
    kwargs.setdefault("health_check_interval_s", 0)
    kwargs.setdefault("restart_policy", FAST_RESTARTS)
    return Echo(port, **kwargs)


def test_healthy_server_passes(port: int) -> None:
    with make(port) as svc:
        assert svc.health_check() is True
        assert svc.health_check(current_time_ms=123) is True


def test_health_check_disabled_reports_true_without_calling(port: int) -> None:
    with Echo(port) as svc:
        svc._server_proxy.set_healthy_rpc(False)
        assert svc.health_check() is True


def test_sigkilled_server_is_restarted_and_clients_use_the_new_connection(port: int) -> None:
    notes = RecordingNotifier()
    with make(port, notifier=notes, max_consecutive_failures=3) as svc:
        old = svc.server_pid
        assert old is not None and svc.echo("before") == "before"
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: not pid_alive(old), what="server to die")
        # A dead process is restarted at once by its owner, which watches it: no
        # health_check() call, let alone 3 failing ones, is needed.
        wait_until(
            lambda: svc.state is ServiceState.RUNNING and svc.server_pid not in (None, old),
            timeout=20,
            what="the restart",
        )
        new = svc.server_pid
        assert new is not None and new != old and pid_alive(new)
        assert svc.state is ServiceState.RUNNING
        assert svc.remote_pid() == new
        assert svc.echo("after") == "after"
        assert svc.health_check() is True
        svc.flush_notifications()
        assert notes.count("restarted") == 1
        assert notes.count("recovered") == 1
        assert svc.health_check() is True
        svc.flush_notifications()
        assert notes.count("recovered") == 1  # once


def test_bad_status_counts_to_the_threshold_then_restarts(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rpcgen")
    with make(port, max_consecutive_failures=3) as svc:
        old = svc.server_pid
        svc._server_proxy.set_healthy_rpc(False)
        assert svc.health_check() is False
        assert svc.health_check() is False
        assert svc.server_pid == old  # not yet
        assert svc.health_check() is False  # third: restart
        assert svc.server_pid != old
        assert svc.health_check() is True  # the new server starts healthy
        assert any("[status]" in r.getMessage() for r in caplog.records)


def test_transport_failure_is_logged_differently_from_bad_status(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rpcgen")
    with make(port, max_consecutive_failures=5) as svc:
        svc._server_proxy.set_healthy_rpc(False)
        assert svc.health_check() is False
    # Only the frozen-server check gets a short timeout: a loaded machine may take longer
    # than 0.2 s to answer a healthy call.
    with make(port, max_consecutive_failures=5, health_check_timeout_s=0.2) as svc:
        pid = svc.server_pid or 0
        stop_process_now(pid)  # alive but unresponsive
        try:
            assert svc.health_check() is False
        finally:
            os.kill(pid, signal.SIGCONT)
        messages = [r.getMessage() for r in caplog.records]
        assert any("[status]" in m and "degraded" in m for m in messages)
        assert any("[transport]" in m and "no reply within 0.2s" in m for m in messages)


def test_hung_health_check_times_out_and_restart_goes_through(port: int) -> None:
    with make(
        port, target="hanging", health_check_timeout_s=0.2, max_consecutive_failures=2
    ) as svc:
        old = svc.server_pid
        assert svc.health_check() is False
        assert svc.health_check() is False  # second timeout: restart
        assert svc.server_pid != old and svc.state is ServiceState.RUNNING
        assert svc.echo("works") == "works"


def test_auto_restart_off_alerts_for_manual_intervention_once(port: int) -> None:
    notes = RecordingNotifier()
    with make(port, enable_auto_restart=False, max_consecutive_failures=2, notifier=notes) as svc:
        old = svc.server_pid
        svc._server_proxy.set_healthy_rpc(False)
        for _ in range(5):
            assert svc.health_check() is False
        assert svc.server_pid == old
        svc.flush_notifications()
        assert notes.count("manual intervention needed") == 1


def test_rate_limited_call_while_failing_does_not_report_healthy(port: int) -> None:
    with make(port, health_check_interval_s=60, max_consecutive_failures=5) as svc:
        svc._server_proxy.set_healthy_rpc(False)
        assert svc.health_check(current_time_ms=1_000) is False
        svc._server_proxy.set_healthy_rpc(True)
        assert svc.health_check(current_time_ms=2_000) is False  # rate limited: still failing
        assert svc.health_check(current_time_ms=61_000) is True


def test_background_monitor_restarts_a_killed_server_and_stops_on_shutdown(port: int) -> None:
    notes = RecordingNotifier()
    svc = make(port, health_check_interval_s=0.05, health_monitor=True, notifier=notes)
    try:
        name = f"rpcgen-health-{svc.service_name}"
        [monitor] = [t for t in threading.enumerate() if t.name == name]
        for _ in range(3):
            old = svc.server_pid
            assert old is not None
            os.kill(old, signal.SIGKILL)

            def restarted(old: int = old) -> bool:
                return svc.server_pid not in (None, old)

            wait_until(restarted, timeout=10, what="restart")
            assert svc.echo("again") == "again"
    finally:
        svc.shutdown()
    wait_until(lambda: not monitor.is_alive(), timeout=5, what="the monitor to stop")
    svc.flush_notifications()
    assert notes.count("restarted") == 3


def test_flapping_server_backs_off_then_stops_restarting_and_notifies(port: int) -> None:
    notes = RecordingNotifier()
    sleeps: list[float] = []
    policy = RestartPolicy(
        backoff_initial_s=0.01, backoff_multiplier=2, max_attempts=2, flap_max_restarts=4
    )
    svc = make(port, notifier=notes, restart_policy=policy, sleep=sleeps.append)
    try:
        svc._target = "exit7"  # every later start dies at once
        os.kill(svc.server_pid or 0, signal.SIGKILL)
        results = [svc.health_check() for _ in range(6)]
        assert results == [False] * 6
        assert svc.state is ServiceState.FAILED
        svc.flush_notifications()
        assert notes.count("flapping") == 1
        # exponential backoff between attempts (no delay before the first)
        assert [s for s in sleeps if s >= 0.01][:3] == [0.01, 0.02, 0.04]
        attempts = sum("could not be restarted" in m for m in notes.texts())
        assert attempts >= 1
        svc._target = "echo"
        assert svc.restart() is True  # a manual restart re-arms the guard
        assert svc.echo("back") == "back"
    finally:
        svc.shutdown()


@pytest.mark.parametrize("bad", [RaisingNotifier, HangingNotifier])
def test_broken_notifier_does_not_stop_health_checks_or_restarts(port: int, bad: type) -> None:
    notifier = bad()
    with make(port, notifier=notifier) as svc:
        for _ in range(3):
            old = svc.server_pid
            os.kill(old or 0, signal.SIGKILL)
            wait_until_dead(old or 0)
            # The owner restarts a dead server at once, whatever its notifier does.
            wait_until(lambda old=old: svc.server_pid not in (None, old), timeout=20)  # type: ignore[misc]
            assert svc.health_check() is True
    if isinstance(notifier, HangingNotifier):
        notifier.release.set()
