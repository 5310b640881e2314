"""RPCServiceBase logic that needs no process: direct mode, rate limiting with an injected
clock, restart backoff and flapping with an injected sleep."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from rpcgen.runtime import (
    NotPicklableError,
    RestartPolicy,
    RPCServiceBase,
    ServiceState,
    ServiceUnavailable,
    StartupError,
)
from rpcgen.runtime.service import _Secret


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Server:
    def __init__(self) -> None:
        self.status = "ok"
        self.checks = 0

    def health_check_rpc(self) -> dict[str, Any]:
        self.checks += 1
        return {"status": self.status}


class Direct(RPCServiceBase[Server]):
    def __init__(self, clock: FakeClock, **kwargs: Any) -> None:
        super().__init__(
            "Direct", 50000, running_unit_tests=True, clock=clock, sleep=clock.sleep, **kwargs
        )
        self._initialize_service()

    def _create_direct_server(self) -> Server:
        return Server()

    def _start_server_process(self, address: Any, authkey: bytes, server_ready: Any) -> Any:
        raise AssertionError("direct mode starts no process")


def test_direct_mode_health_is_rate_limited_by_the_injected_clock() -> None:
    clock = FakeClock()
    svc = Direct(clock, enable_health_check=True, health_check_interval_s=60)
    server = svc._server_proxy
    assert svc.health_check() is True
    assert svc.health_check() is True
    assert server.checks == 1
    clock.now += 60
    assert svc.health_check() is True
    assert server.checks == 2


def test_failing_direct_server_stays_unhealthy_while_rate_limited() -> None:
    clock = FakeClock()
    svc = Direct(clock, enable_health_check=True, health_check_interval_s=10)
    svc._server_proxy.status = "bad"
    assert svc.health_check() is False
    svc._server_proxy.status = "ok"
    clock.now += 1
    assert svc.health_check() is False
    clock.now += 10
    assert svc.health_check() is True


def test_health_check_never_raises() -> None:
    clock = FakeClock()
    svc = Direct(clock, enable_health_check=True, health_check_interval_s=0)

    def explode() -> Any:
        raise KeyError("unexpected")

    svc._rpc_probe = explode  # type: ignore[method-assign]
    assert svc.health_check() is False


def test_direct_mode_state_pid_and_pickling() -> None:
    svc = Direct(FakeClock())
    assert svc.state is ServiceState.DIRECT and svc.server_pid is None
    with pytest.raises(NotPicklableError):
        pickle.dumps(svc)
    svc.shutdown()
    assert svc.state is ServiceState.STOPPED


def test_server_proxy_before_start_is_a_clear_error() -> None:
    class Lazy(Direct):
        def __init__(self) -> None:
            RPCServiceBase.__init__(self, "Lazy", 50000)

    with pytest.raises(ServiceUnavailable, match="call _initialize_service"):
        Lazy()._server_proxy  # noqa: B018


def test_secret_repr_hides_the_value() -> None:
    assert repr(_Secret(b"abc")) == "<secret>"


class FlakyRestarts(Direct):
    """Pretends to own a running server whose every start fails."""

    def __init__(self, clock: FakeClock, policy: RestartPolicy) -> None:
        super().__init__(clock, restart_policy=policy, enable_health_check=True)
        self.starts = 0
        self._rpc_state = ServiceState.RUNNING
        self._rpc_owner_pid = __import__("os").getpid()

    def _rpc_stop_server_process(self) -> None:
        pass

    def _rpc_start_server(self) -> None:
        self.starts += 1
        raise StartupError(service=self.service_name, port=self.port, exitcode=1)


def test_restart_attempts_back_off_then_flapping_guard_stops_them() -> None:
    clock = FakeClock()
    policy = RestartPolicy(
        backoff_initial_s=0.5, backoff_multiplier=2, max_attempts=3, flap_max_restarts=5
    )
    svc = FlakyRestarts(clock, policy)
    assert svc._rpc_restart_server("test") is False
    assert svc.starts == 3 and clock.sleeps == [0.5, 1.0]
    assert svc.state is ServiceState.FAILED
    assert svc._rpc_restart_server("again") is False
    assert svc.starts == 5  # the guard stopped the 6th
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0]
    assert svc._rpc_supervisor.flap.tripped
    assert svc._rpc_restart_server("and again") is False
    assert svc.starts == 5  # no busy loop once tripped
