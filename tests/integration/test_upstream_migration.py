"""Issue 21: upstream's services, migrated with the import changed only, whose servers
build their own BaseManager (tests/support/upstream_style.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rpcgen.runtime import ServiceStopped, StockServerFound
from tests.support.upstream_style import WordService
from tests.support.waiting import wait_until


def test_direct_mode(port: int) -> None:
    svc = WordService(port, running_unit_tests=True)
    assert svc.count("one two three") == 3
    assert svc.health_check(current_time_ms=time.time() * 1000) is True
    svc.shutdown()
    assert not svc._server_proxy


def test_rpc_mode_calls_errors_health_and_shutdown(port: int) -> None:
    svc = WordService(port)
    try:
        assert svc.count("one two") == 2
        pid = svc.remote_pid()
        assert pid == svc.server_pid == svc._server_process.pid != os.getpid()  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="bad input"):
            svc._server_proxy.boom_rpc("bad input")
        assert svc.health_check(current_time_ms=time.time() * 1000) is True
        assert svc.health_check() is True
    finally:
        svc.shutdown()
    assert not svc._server_proxy  # as upstream's None
    with pytest.raises(ServiceStopped):
        svc.count("after")


def test_a_killed_server_is_restarted_and_answers(port: int) -> None:
    svc = WordService(port, max_consecutive_failures=1)
    try:
        first = svc.remote_pid()
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not svc.health_check() or svc.server_pid != first, timeout=20)
        wait_until(lambda: svc.server_pid not in (None, first), timeout=20, what="a restart")
        assert svc.count("back again") == 2
        assert svc.remote_pid() == svc.server_pid != first
    finally:
        svc.shutdown()


def test_a_failing_health_check_on_the_mixed_clock_restarts_it(port: int) -> None:
    svc = WordService(port, max_consecutive_failures=1)
    try:
        first = svc.server_pid
        assert svc.health_check(current_time_ms=time.time() * 1000) is True
        svc._server_proxy.fail_health_rpc()
        assert svc.health_check() is False  # our clock, after the caller's: still probed
        wait_until(lambda: svc.server_pid != first, timeout=20, what="the restart")
        assert svc.count("restarted") == 1
    finally:
        svc.shutdown()


def test_another_process_is_told_plainly_that_it_cannot_attach(port: int) -> None:
    svc = WordService(port)
    try:
        with pytest.raises(StockServerFound, match="builds its own BaseManager"):
            WordService.attach(port=port, service_name="WordService", timeout_s=5)
        assert svc.count("owner unaffected") == 2
    finally:
        svc.shutdown()
