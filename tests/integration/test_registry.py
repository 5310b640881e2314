"""Starting a project's services together: order, parallelism, failure, restart, cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from rpcgen.runtime import ServiceStartError
from rpcgen.runtime.process import list_servers
from rpcgen.runtime.testing import free_ports
from tests.support import registry_services as reg
from tests.support.procs import python_process, read_line
from tests.support.waiting import pid_alive, wait_until, wait_until_dead


def ports() -> dict[str, int]:
    return dict(zip(reg.SERVICE_NAMES, free_ports(len(reg.SERVICE_NAMES)), strict=True))


@pytest.fixture
def services() -> Iterator[reg.Services]:
    started = reg.start_all(ports=ports(), cleanup_on_signals=False)
    yield started
    started.shutdown()


def test_tiers_follow_dependencies() -> None:
    assert reg.GRAPH.tiers == [["A", "B"], ["C"]]


def test_start_all_gives_typed_access_and_injects_dependencies(services: reg.Services) -> None:
    assert [attr for attr, _ in services] == ["a", "b", "c"]
    for attr in ("a", "b", "c"):
        client = getattr(services, attr)
        assert client.echo(attr) == attr and client.server_pid is not None
    assert services.c.deps == {"a": services.a, "b": services.b}


def test_shutdown_all_stops_everything_in_reverse_order(monkeypatch: pytest.MonkeyPatch) -> None:
    started = reg.start_all(ports=ports(), cleanup_on_signals=False)
    pids = [client.server_pid for _, client in started]
    order: list[str] = []
    for attr, client in started:
        original = client.shutdown

        def record(attr: str = attr, original=original) -> None:  # type: ignore[no-untyped-def]
            order.append(attr)
            original()

        monkeypatch.setattr(client, "shutdown", record)
    reg.shutdown_all()
    assert order == ["c", "b", "a"]
    assert not any(pid_alive(p or 0) for p in pids)
    reg.shutdown_all()  # idempotent


def test_direct_mode_starts_no_process() -> None:
    with reg.start_all(running_unit_tests=True, cleanup_on_signals=False) as started:
        assert all(client.server_pid is None for _, client in started)
        assert started.c.echo(1) == 1
        # As the generated tests promise: every call round-trips through pickle, so what
        # could not cross a process boundary fails here too (issue 21).
        assert all(client.direct_mode_pickle for _, client in started)
        with pytest.raises(TypeError, match="cannot cross a process boundary"):
            started.c.echo(lambda: None)


def test_a_failing_service_is_named_and_the_others_are_shut_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reg.Named, "BROKEN", {"C"})
    before = {s.pid for s in list_servers()}
    with pytest.raises(ServiceStartError) as info:
        reg.start_all(ports=ports(), cleanup_on_signals=False)
    assert info.value.service == "C"
    assert "service 'C' failed to start" in str(
        info.value
    ) and "constructor exploded on purpose" in str(info.value)
    assert sorted(info.value.stopped) == ["A", "B"]
    # Only servers this process owns: tests running at once (xdist) start their own A, B, C.
    leftover = {
        s.pid for s in list_servers() if s.service in ("A", "B", "C") and s.owner_pid == os.getpid()
    } - before
    assert not [p for p in leftover if pid_alive(p)]


def test_parallel_tier_failure_still_shuts_down_its_siblings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reg.Named, "BROKEN", {"B"})
    with pytest.raises(ServiceStartError) as info:
        reg.start_all(ports=ports(), cleanup_on_signals=False)
    assert info.value.service == "B" and info.value.stopped == ["A"]


def test_sigkilled_server_is_restarted_by_the_monitor_and_every_service_answers() -> None:
    started = reg.start_all(ports=ports(), cleanup_on_signals=False, health_monitor=True)
    try:
        victim = started.b.server_pid
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: started.b.server_pid not in (None, victim), timeout=15, what="monitor restart"
        )
        for attr in ("a", "b", "c"):
            assert getattr(started, attr).echo(attr) == attr
    finally:
        started.shutdown()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_owner_shuts_every_server_down(signum: int) -> None:
    with python_process("-m", "tests.support.registry_script") as owner:
        pids = json.loads(read_line(owner))
        assert all(pid_alive(p) for p in pids.values())
        os.kill(owner.pid, signum)
        code = owner.wait(20)
        assert code != 3  # it did not run to the end
        for pid in pids.values():
            wait_until_dead(pid)


def test_rpcgen_ps_lists_the_running_services(services: reg.Services) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rpcgen.generator.cli", "ps", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = {(row["service"], row["pid"]) for row in json.loads(out.stdout)}
    for attr, client in services:
        assert (attr.upper(), client.server_pid) in rows
    mine = [row for row in json.loads(out.stdout) if row["pid"] == services.a.server_pid]
    assert mine[0]["owner_pid"] == os.getpid() and mine[0]["owner_alive"] is True
    assert mine[0]["port"] == services.a.port and mine[0]["rss_bytes"] > 0
    table = subprocess.run(
        [sys.executable, "-m", "rpcgen.generator.cli", "ps"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "service" in table.splitlines()[0] and str(services.c.server_pid) in table


def test_parallel_start_overlaps_independent_services() -> None:
    # Not a timing assertion: the two independent services' start windows overlap.
    windows: dict[str, tuple[float, float]] = {}
    original = reg.Named._initialize_service

    def timed(self: reg.Named) -> None:
        start = time.monotonic()
        original(self)
        windows[self.NAME] = (start, time.monotonic())

    reg.Named._initialize_service = timed  # type: ignore[method-assign,assignment]
    try:
        with reg.start_all(ports=ports(), cleanup_on_signals=False, start_method="spawn"):
            pass
    finally:
        reg.Named._initialize_service = original  # type: ignore[method-assign]
    (a0, a1), (b0, b1), (c0, _) = windows["A"], windows["B"], windows["C"]
    assert a0 < b1 and b0 < a1  # A and B overlapped
    assert c0 >= max(a1, b1)  # C waited for both


def test_attach_all_from_another_process(services: reg.Services) -> None:
    code = (
        "from tests.support import registry_services as reg\n"
        "attached = reg.attach_all(timeout_s=10)\n"
        "print(*(getattr(attached, a).echo(a) for a in ('a', 'b', 'c')))\n"
        "print(attached.c.a.server_pid, attached.c.is_owner)\n"
        "attached.shutdown()\n"
    )
    with python_process("-c", code) as proc:
        assert read_line(proc) == "a b c"
        assert read_line(proc) == f"{services.a.server_pid} False"
        proc.wait(30)
    assert proc.returncode == 0
    for attr in ("a", "b", "c"):  # the attached clients' shutdown() stopped nothing
        assert getattr(services, attr).echo(attr) == attr
