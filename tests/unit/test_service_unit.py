"""RPCServiceBase's lifecycle, driven through the backend seam: a fake backend, an
injected clock and sleep, no process and no real waiting."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any

import pytest

from rpcgen.runtime import (
    NotPicklableError,
    RestartPolicy,
    RPCServiceBase,
    ServiceError,
    ServiceState,
    ServiceStopped,
    ServiceUnavailable,
    StartupError,
)
from rpcgen.runtime.backend import Backend, Proxy, ServerRef
from rpcgen.runtime.health import FailureKind
from rpcgen.runtime.process_backend import Secret
from rpcgen.runtime.supervise import Probe
from tests.support.fakes import FakeClock


class Server:
    def __init__(self) -> None:
        self.status = "ok"
        self.checks = 0

    def health_check_rpc(self) -> dict[str, Any]:
        self.checks += 1
        return {"status": self.status}


class FakeBackend:
    """A backend that records what the client asks of it; starts get pids 100, 101, ..."""

    label = "fake"

    def __init__(self, *, failing_starts: int = 0) -> None:
        self.asked: list[str] = []  # what the client asked of it
        self.failing_starts = failing_starts  # starts after the first that raise
        self.starts = 0
        self.next_pid = 100
        self.proxy: Any = None
        self.calls: Proxy | None = None  # no asyncio calls in these tests
        self.server: ServerRef = (0, 0)
        self.probes: list[Probe] = []
        self.unhealthy_result = False
        self.on_exit: Callable[[str, ServerRef], None] | None = None
        self.followed: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # A pickled client takes its (fake) backend along: a fresh one, as a real one is.
        return {**vars(self), "asked": [], "on_exit": None}

    def start(self) -> int:
        self.asked.append("start")
        self.starts += 1
        if self.starts > 1 and self.failing_starts:
            self.failing_starts -= 1
            raise StartupError(service="Fake", port=1, exitcode=1)
        pid, self.next_pid = self.next_pid, self.next_pid + 1
        self.server = (pid, self.server[1] + 1)
        self.proxy = Server()
        return pid

    def stop(self) -> None:
        self.asked.append("stop")

    def restart_once(self) -> int:
        self.asked.append("restart_once")
        return self.start()

    def probe(self) -> Probe:
        self.asked.append("probe")
        probe = self.probes.pop(0) if self.probes else Probe(None)
        if isinstance(probe, Exception):
            raise probe
        return Probe(probe.kind, probe.detail, probe.fatal, server=self.server)

    def watch(self, on_exit: Callable[[str, ServerRef], None]) -> None:
        self.on_exit = on_exit

    def unwatch(self, timeout_s: float) -> None:
        self.asked.append("unwatch")

    def handoff(self) -> Any:
        return ("handoff", self.server)

    def follow(self, handoff: Any) -> None:
        self.followed = handoff
        self.server = handoff[1]
        self.proxy = Server()

    def attach(self, located: Any, timeout_s: float) -> None:
        raise AssertionError("not used here")

    def on_unhealthy(self, reason: str) -> bool:
        self.asked.append(f"on_unhealthy: {reason}")
        return self.unhealthy_result

    def rotate_key(self) -> None:
        self.asked.append("rotate_key")

    def close(self) -> None:
        self.asked.append("close")

    def after_fork(self) -> None:
        self.asked.append("after_fork")

    def die(self) -> None:
        """The server process exited: what the process backend's watcher reports."""
        assert self.on_exit is not None
        self.on_exit("server process exited (exit code -9)", self.server)


class Fake(RPCServiceBase[Server]):
    """A client whose backend is a FakeBackend (its one seam for tests)."""

    def __init__(self, fake: FakeBackend, clock: FakeClock, **kwargs: Any) -> None:
        self.fake = fake
        super().__init__("Fake", 50000, clock=clock, sleep=clock.sleep, **kwargs)

    def _rpc_make_backend(self) -> Backend:
        return self.fake

    def _create_direct_server(self) -> Server:
        return Server()

    def _start_server_process(self, address: Any, authkey: bytes, server_ready: Any) -> Any:
        raise AssertionError("the fake backend starts no process")


def started(fake: FakeBackend, clock: FakeClock | None = None, **kwargs: Any) -> Fake:
    svc = Fake(fake, clock or FakeClock(), **kwargs)
    svc._initialize_service()
    return svc


def test_the_backend_satisfies_the_protocol() -> None:
    backend: Backend = FakeBackend()  # mypy --strict checks that it conforms
    assert backend.label == "fake"


def test_start_makes_this_process_the_owner_and_the_server_pid_known() -> None:
    fake = FakeBackend()
    svc = started(fake)
    assert svc.state is ServiceState.RUNNING and svc.is_owner and svc.server_pid == 100
    assert svc._server_proxy is fake.proxy
    svc.shutdown()
    assert fake.asked[-2:] == ["close", "stop"]  # connections first, then the server
    assert svc.state is ServiceState.STOPPED and svc.server_pid is None


def test_a_failed_start_is_failed_and_drops_what_the_backend_holds() -> None:
    class Refusing(FakeBackend):
        def start(self) -> int:
            raise StartupError(service="Fake", port=1, exitcode=3)

    fake = Refusing()
    svc = Fake(fake, FakeClock())
    with pytest.raises(StartupError):
        svc._initialize_service()
    assert svc.state is ServiceState.FAILED
    assert fake.asked == ["stop"]


def test_a_dead_server_is_restarted_at_once_by_its_owner() -> None:
    fake = FakeBackend()
    svc = started(fake, enable_health_check=True)
    fake.die()
    assert svc.server_pid == 101 and svc.state is ServiceState.RUNNING
    assert fake.asked.count("restart_once") == 1


class Notes:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send_message(self, message: str, level: str = "info") -> None:
        self.sent.append((level, message))


def test_restart_attempts_back_off_then_the_flapping_guard_stops_them() -> None:
    clock, notes = FakeClock(), Notes()
    policy = RestartPolicy(
        backoff_initial_s=0.5, backoff_multiplier=2, max_attempts=3, flap_max_restarts=5
    )
    fake = FakeBackend(failing_starts=99)
    svc = started(fake, clock, restart_policy=policy, enable_health_check=True, notifier=notes)
    fake.die()
    assert fake.starts == 4 and clock.sleeps == [0.5, 1.0]  # the first start, then 3 attempts
    assert svc.state is ServiceState.FAILED
    fake.die()
    assert fake.starts == 6  # the guard stopped the 6th restart
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0]
    fake.die()
    assert fake.starts == 6  # no busy loop once tripped
    assert svc.flush_notifications(5)
    assert [level for level, text in notes.sent if "is flapping" in text] == ["critical"]
    assert svc.restart() is False  # a manual restart re-arms the guard (and fails here)
    assert fake.starts == 9


def test_the_flapping_guard_trips_on_restarts_that_went_through() -> None:
    clock = FakeClock()
    policy = RestartPolicy(backoff_initial_s=0.5, flap_max_restarts=2, flap_window_s=60)
    fake = FakeBackend()
    svc = started(fake, clock, restart_policy=policy, enable_health_check=True)
    fake.die()
    fake.die()
    assert svc.server_pid == 102
    fake.die()  # the third death within the window: no restart
    assert svc.server_pid is None and svc.state is ServiceState.FAILED
    assert fake.asked.count("restart_once") == 2


def test_failing_health_checks_restart_the_server_they_judged() -> None:
    fake = FakeBackend()
    svc = started(fake, enable_health_check=True, health_check_interval_s=0)
    fake.probes = [Probe(FailureKind.STATUS, "bad")] * 3
    assert [svc.health_check() for _ in range(3)] == [False, False, False]
    assert fake.asked.count("restart_once") == 1 and svc.server_pid == 101
    assert svc.health_check() is True


def test_a_restart_for_a_server_already_replaced_does_nothing() -> None:
    fake = FakeBackend()
    svc = started(fake, enable_health_check=True, health_check_interval_s=0)

    seen = fake.server
    fake.die()  # the watcher restarted it first
    assert fake.server != seen

    def judged_old() -> Probe:
        return Probe(FailureKind.TRANSPORT, "gone", fatal=True, server=seen)

    fake.probe = judged_old  # type: ignore[method-assign]
    assert svc.health_check() is False
    assert fake.asked.count("restart_once") == 1  # the health check did not restart it again


def test_health_check_never_raises() -> None:
    fake = FakeBackend()
    svc = started(fake, enable_health_check=True, health_check_interval_s=0)
    fake.probes = [KeyError("unexpected")]  # type: ignore[list-item]
    assert svc.health_check() is False


def test_a_client_that_does_not_own_the_server_asks_its_backend() -> None:
    fake = FakeBackend()
    owner = started(fake, enable_health_check=True, health_check_interval_s=0)
    clone = pickle.loads(pickle.dumps(owner))
    assert isinstance(clone, Fake)
    assert clone.fake.followed == ("handoff", (100, 1)) and clone.server_pid == 100
    assert not clone.is_owner and clone.state is ServiceState.RUNNING
    clone.fake.probes = [Probe(FailureKind.TRANSPORT, "hung")] * 3
    for _ in range(3):
        clone.health_check()
    assert clone.fake.asked[-1] == "on_unhealthy: transport failure: hung"
    assert "restart_once" not in clone.fake.asked
    clone.shutdown()
    assert "stop" not in clone.fake.asked and "close" in clone.fake.asked
    assert owner.state is ServiceState.RUNNING


def test_only_the_owner_rotates_the_key_and_then_restarts() -> None:
    fake = FakeBackend()
    owner = started(fake)
    assert owner.rotate_authkey() is True
    assert fake.asked[-3:] == ["rotate_key", "restart_once", "start"]
    clone = pickle.loads(pickle.dumps(owner))
    with pytest.raises(ServiceError, match="only the owner"):
        clone.rotate_authkey()


def test_a_stopped_client_is_not_picklable_and_calls_raise_stopped() -> None:
    fake = FakeBackend()
    svc = started(fake)
    svc.shutdown()
    with pytest.raises(ServiceUnavailable, match=r"only a running \(or restarting\) client"):
        pickle.dumps(svc)


# -- direct mode: the real DirectBackend ------------------------------------------------


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


def test_health_checks_on_the_callers_clock_and_ours_mixed_still_probe() -> None:
    # Issue 21: upstream callers pass epoch ms; one such call must not leave every later
    # call without an argument "not due" (and healthy) for ever.
    clock = FakeClock()
    svc = Direct(clock, enable_health_check=True, health_check_interval_s=60)
    server = svc._server_proxy
    epoch_ms = 1_700_000_000_000.0
    assert svc.health_check(current_time_ms=epoch_ms) is True
    assert server.checks == 1
    server.status = "failing"  # the server starts failing
    assert svc.health_check() is False  # our clock, far behind the caller's: due
    assert server.checks == 2
    assert svc.health_check(current_time_ms=epoch_ms + 1) is False  # ahead again: due
    assert server.checks == 3
    assert svc.health_check(current_time_ms=epoch_ms + 2) is False  # rate limited
    assert server.checks == 3


def test_health_checks_default_to_epoch_ms_as_the_design_doc_callers_pass() -> None:
    svc = RPCServiceBase.__new__(Direct)
    RPCServiceBase.__init__(svc, "Epoch", 50000, running_unit_tests=True, enable_health_check=True)
    svc._initialize_service()
    server = svc._server_proxy
    assert svc.health_check(current_time_ms=time.time() * 1000) is True
    assert svc.health_check() is True  # the same clock: rate limited, no second probe
    assert server.checks == 1
    assert svc.health_check_interval_ms == 60_000


def test_server_proxy_can_be_assigned_until_the_service_starts_again() -> None:
    svc = Direct(FakeClock())
    real = svc._server_proxy
    svc._server_proxy = None  # as upstream's __setstate__ does
    assert svc._server_proxy is None
    svc.shutdown()
    svc._rpc_life.state = ServiceState.NEW  # started again, as after unpickling
    svc._initialize_service()
    assert svc._server_proxy is not None and svc._server_proxy is not real


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


def test_direct_mode_state_pid_and_pickling() -> None:
    svc = Direct(FakeClock())
    assert svc.state is ServiceState.DIRECT and svc.server_pid is None
    with pytest.raises(NotPicklableError):
        pickle.dumps(svc)
    svc.shutdown()
    assert svc.state is ServiceState.STOPPED
    assert not svc._server_proxy  # as the design doc's None: `if not self._server_proxy:`
    with pytest.raises(ServiceStopped):
        svc._server_proxy.health_check_rpc()


def test_server_proxy_before_start_is_a_clear_error() -> None:
    class Lazy(Direct):
        def __init__(self) -> None:
            RPCServiceBase.__init__(self, "Lazy", 50000)

    proxy = Lazy()._server_proxy
    assert not proxy
    with pytest.raises(ServiceUnavailable, match="call _initialize_service"):
        proxy.health_check_rpc()


def test_secret_repr_hides_the_value() -> None:
    assert repr(Secret(b"abc")) == "<secret>"


def test_an_abandoned_client_is_collected_at_once() -> None:
    # The backend holds the client's methods weakly: no reference cycle keeps it alive.
    import weakref

    fake = FakeBackend()
    svc = started(fake, enable_health_check=True)
    ref = weakref.ref(svc)
    del svc
    assert ref() is None
    assert "stop" in fake.asked  # __del__ stopped the server it owned
