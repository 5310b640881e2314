"""Supervisor and Endpoint with fakes: no processes, no sockets held, no real waiting."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from rpcgen.runtime import Endpoint, HealthPolicy, RestartPolicy, StartupError
from rpcgen.runtime.health import FailureKind
from rpcgen.runtime.supervise import HEALTHY, Probe, RestartOutcome, Supervisor


class Fakes:
    def __init__(self, probes: list[Probe]) -> None:
        self.probes = probes
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.notes: list[tuple[str, str]] = []
        self.unhealthy: list[str] = []
        self.act_result = True

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def probe(self) -> Probe:
        return self.probes.pop(0)

    def on_unhealthy(self, reason: str) -> bool:
        self.unhealthy.append(reason)
        return self.act_result

    def notify(self, message: str, level: str) -> None:
        self.notes.append((level, message))

    def supervisor(self, **health: object) -> Supervisor:
        return Supervisor(
            name="Svc",
            health=HealthPolicy(**health),  # type: ignore[arg-type]
            restart=RestartPolicy(backoff_initial_s=0.5, max_attempts=3, flap_max_restarts=4),
            probe=self.probe,
            on_unhealthy=self.on_unhealthy,
            notify=self.notify,
            log=logging.getLogger("test.supervise"),
            clock=self.clock,
            sleep=self.sleep,
        )


HUNG = Probe(FailureKind.TRANSPORT, "health_check_rpc() got no reply within 5s")
DEAD = Probe(FailureKind.TRANSPORT, "server process is gone (exit code -9)", fatal=True)


def test_acts_at_the_threshold_then_reports_recovery_once() -> None:
    fakes = Fakes([HUNG, HUNG, HUNG, HEALTHY, HEALTHY])
    sup = fakes.supervisor(max_consecutive_failures=3)
    assert [sup.check(t) for t in (0, 1, 2)] == [False, False, False]
    assert fakes.unhealthy == ["transport failure: health_check_rpc() got no reply within 5s"]
    assert sup.check(3) and sup.check(4)
    assert [level for level, _ in fakes.notes] == ["success"]


def test_a_dead_process_acts_at_once() -> None:
    fakes = Fakes([DEAD])
    sup = fakes.supervisor(max_consecutive_failures=3)
    assert sup.check(0) is False
    assert len(fakes.unhealthy) == 1 and "exit code -9" in fakes.unhealthy[0]


def test_with_auto_restart_off_it_asks_for_a_human_once() -> None:
    fakes = Fakes([HUNG] * 4)
    sup = fakes.supervisor(max_consecutive_failures=2, auto_restart=False)
    for t in range(4):
        sup.check(t)
    assert fakes.unhealthy == []
    assert [level for level, _ in fakes.notes] == ["error"]


def test_restart_backs_off_gives_up_and_stops_when_flapping() -> None:
    fakes = Fakes([])
    sup = fakes.supervisor()
    starts: list[int] = []

    def failing_start() -> int | None:
        starts.append(1)
        raise StartupError(service="Svc", port=1, exitcode=1)

    assert sup.restart("dead", failing_start) is RestartOutcome.GAVE_UP
    assert len(starts) == 3 and fakes.sleeps == [0.5, 1.0]
    assert sup.restart("dead", failing_start) is RestartOutcome.FLAPPING
    assert len(starts) == 4  # the 5th attempt in the window is refused: no busy loop
    assert sup.restart("dead", failing_start) is RestartOutcome.FLAPPING
    assert len(starts) == 4
    assert [level for level, _ in fakes.notes] == ["error", "critical"]  # each said once
    sup.reset_flapping()
    assert sup.restart("manual", lambda: 42) is RestartOutcome.RESTARTED
    assert fakes.notes[-1] == ("warning", "Svc server restarted (pid 42) after: manual")


# -- Endpoint ------------------------------------------------------------------------------


def test_a_tcp_endpoint() -> None:
    endpoint = Endpoint(("127.0.0.1", 50001))
    assert (endpoint.host, endpoint.port, endpoint.where, endpoint.path) == (
        "127.0.0.1",
        50001,
        50001,
        None,
    )
    assert endpoint.label == str(endpoint) == "127.0.0.1:50001"
    assert Endpoint.of(endpoint) is endpoint and Endpoint.of(("127.0.0.1", 50001)) == endpoint


def test_a_unix_endpoint_keeps_the_service_port_as_its_identity(tmp_path: Path) -> None:
    path = str(tmp_path / "PriceFetcher-50001.sock")
    endpoint = Endpoint(path)
    assert (endpoint.host, endpoint.port, endpoint.where, endpoint.path) == (
        "unix",
        50001,
        path,
        path,
    )
    assert endpoint.label == f"unix:{path}"
    assert not endpoint.in_use()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        assert endpoint.in_use()
        endpoint.remove_stale_file()
        assert Path(path).exists()  # somebody listens: not stale
    assert not endpoint.in_use()
    endpoint.remove_stale_file()
    assert not Path(path).exists()


def test_a_tcp_endpoint_in_use() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        endpoint = Endpoint(listener.getsockname())
        assert endpoint.in_use()
    assert not endpoint.in_use()


@pytest.mark.parametrize("address", [("127.0.0.1", 1), "/nonexistent/dir/x-1.sock"])
def test_connecting_to_nothing_is_an_os_error(address: tuple[str, int] | str) -> None:
    with pytest.raises(OSError):
        Endpoint.of(address).connect(0.5).close()
