"""Errors, process titles, port probing, direct proxy, ready signal: no processes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rpcgen.runtime import (
    CallTimeout,
    PortInUseError,
    ReadySignal,
    RemoteCallError,
    ServiceAuthenticationError,
    ServiceError,
    ServiceUnavailable,
    StartupError,
    StartupTimeout,
)
from rpcgen.runtime.announce import parse_process_title, process_title
from rpcgen.runtime.direct import PicklingProxy
from rpcgen.runtime.process import port_is_free, wait_port_free


def test_errors_subclass_the_stdlib_classes_callers_catch() -> None:
    import multiprocessing

    cases = [
        (ServiceUnavailable(service="S", host="h", port=1, reason="r"), ConnectionError),
        (CallTimeout(service="S", host="h", port=1, method="m", timeout_s=1), TimeoutError),
        (
            ServiceAuthenticationError(service="S", host="h", port=1),
            multiprocessing.AuthenticationError,
        ),
        (StartupTimeout(service="S", port=1, timeout_s=1), TimeoutError),
        (PortInUseError(service="S", host="h", port=1, pid=9, process_name="nginx"), OSError),
        (RemoteCallError(service="S", method="m", remote_traceback="tb"), RuntimeError),
        (StartupError(service="S", port=1, exitcode=3), RuntimeError),
    ]
    for err, base in cases:
        assert isinstance(err, base) and isinstance(err, ServiceError)
        assert "'S'" in str(err)  # every message names the service
    assert "pid 9 (nginx)" in str(cases[4][0])
    assert isinstance(cases[1][0], ServiceUnavailable)


def test_process_title_round_trip() -> None:
    title = process_title("PriceFetcher", 50001, 4242)
    parsed = parse_process_title(title)
    assert parsed is not None
    assert (parsed.service, parsed.port, parsed.owner_pid) == ("PriceFetcher", 50001, 4242)
    assert parse_process_title(title.split(" ")) == parsed
    assert parse_process_title(["python", "rpcgen:X", "port=1"]) is None
    assert parse_process_title("/usr/bin/python -m rpcgen new X") is None


def test_port_probe_sees_listeners_but_not_time_wait() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.listen()
        assert not port_is_free("127.0.0.1", port)
        ticks = iter(range(1000))
        assert not wait_port_free(
            "127.0.0.1", port, timeout_s=3, clock=lambda: float(next(ticks)), sleep=lambda _: None
        )
    assert port_is_free("127.0.0.1", port)


def test_pickling_proxy_round_trips_values() -> None:
    class S:
        def get(self, x: list[int]) -> list[int]:
            x.append(1)
            return x

    mine = [0]
    assert PicklingProxy(S()).get(mine) == [0, 1]
    assert mine == [0]  # the server saw a copy, as over RPC


def test_ready_signal_carries_ready_and_errors() -> None:
    ok = ReadySignal()
    assert not ok.is_set()
    ok.set()
    assert ok.wait(1) and ok.is_set()
    ok.close()
    bad = ReadySignal()
    bad.fail("ValueError: nope")
    assert bad.poll_outcome() == ("error", "ValueError: nope")
    assert not bad.is_set()
    bad.close()


@pytest.mark.parametrize("level", ["warning", "error"])
def test_slack_payload_has_an_emoji_for_alerts(level: str) -> None:
    from rpcgen.runtime import SlackWebhookNotifier

    text = SlackWebhookNotifier("https://x.invalid/h").payload("m", level)["text"]
    assert text.startswith(":") and text.endswith(" m")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    blocks = root.joinpath("README.md").read_text().split("```bash\n")
    readme_test_command = blocks[2].split("\n```")[0].strip()
    ci = root.joinpath(".ci", "run").read_text().splitlines()
    assert readme_test_command in ci, readme_test_command


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    from rpcgen.runtime.ports import free_ports

    ports = free_ports(50)
    assert len(set(ports)) == 50
    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if range_file.exists():
        low = int(range_file.read_text().split()[0])
        if low > 21000:  # else there is no such range and the OS chooses
            # an outgoing connection's local port can never be one of these
            assert all(20000 <= p < low for p in ports), ports
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()
