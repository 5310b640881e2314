"""Another host: two network namespaces joined by a veth pair (issue 10, point 7).

The server listens on an address that exists only inside namespace A; the client
runs inside namespace B. Nothing here connects from outside the namespaces: the
root namespace has a default route, so a connect to these addresses from there
would leave the machine. Needs root and iproute2 (CI has both); skipped with a
message where `ip netns` is unavailable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns_hosts import veth_hosts
from tests.support.procs import ROOT

PORT = 50123  # inside namespace A only: nothing else listens there


@pytest.fixture
def hosts() -> Iterator[tuple[str, str, str, str]]:
    """(namespace A, address A, namespace B, address B), torn down afterwards."""
    with veth_hosts("", 231) as found:
        yield found


def _in(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.support.netns_peer", *args]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))


def _spawn(ns: str, module: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _call_from(ns: str, server: str, key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _in(ns, "call", server, str(PORT), str(key)),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_client_in_another_namespace_calls_the_server(
    hosts: tuple[str, str, str, str], tmp_path: Path
) -> None:
    ns_a, addr_a, ns_b, _ = hosts
    server_key = tmp_path / "server.key"  # missing: the owner creates it with a fresh key
    server = _spawn(ns_a, "tests.support.netns_peer", "serve", addr_a, str(PORT), str(server_key))
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("ready "), line + (server.stderr.read() if server.stderr else "")
        server_pid = line.split()[1]
        assert oct(server_key.stat().st_mode & 0o777) == "0o600"
        client_key = tmp_path / "client.key"
        shutil.copyfile(server_key, client_key)
        client_key.chmod(0o600)
        call = _call_from(ns_b, addr_a, client_key)
        assert call.returncode == 0, call.stderr
        assert call.stdout.strip() == f"answer across the veth from {server_pid}"

        wrong_key = tmp_path / "wrong.key"
        wrong_key.write_bytes(os.urandom(32))
        wrong_key.chmod(0o600)
        refused = _call_from(ns_b, addr_a, wrong_key)
        assert refused.returncode == 0, refused.stderr
        # TLS (on by itself off loopback) refuses the server before the key is tried.
        assert refused.stdout.startswith("authentication refused"), refused.stdout
        assert "holds a different key" in refused.stdout
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=30)


def _ask(process: subprocess.Popen[str], command: str) -> str:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(command + "\n")
    process.stdin.flush()
    return process.stdout.readline().strip()  # each peer answers every command at once


def _first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip(), process.stderr.read() if process.stderr else ""
    return line.strip()


def _end(*processes: subprocess.Popen[str]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_a_relay_between_hosts_sees_no_plain_text_and_its_forged_frame_runs_nothing(
    hosts: tuple[str, str, str, str], tmp_path: Path
) -> None:
    """Issue 18: TLS is on by itself for a non-loopback bind. A relay in the client's
    namespace forwards every byte to the server in the other: the client's calls through
    it work, it reads none of them, and the pickled frame it injects runs nothing."""
    from tests.integration.test_tls import SECRET, _forged_frame

    ns_a, addr_a, ns_b, addr_b = hosts
    key = tmp_path / "service.key"
    marker = tmp_path / "forged-frame-ran"
    server = _spawn(ns_a, "tests.support.netns_peer", "serve", addr_a, str(PORT), str(key))
    processes = [server]
    try:
        assert _first_line(server).startswith("ready ")
        relay = _spawn(ns_b, "tests.support.relay", addr_b, addr_a, str(PORT))
        processes.append(relay)
        relay_port = _first_line(relay).split()[1]
        client = _spawn(
            ns_b, "tests.support.netns_peer", "session", addr_b, relay_port, str(key), SECRET
        )
        processes.append(client)
        assert _first_line(client) == "ok"  # a call through the relay
        c2s, s2c = map(int, _ask(relay, "seen").split()[1:])
        assert c2s > 0 and s2c > 0
        for plain in (SECRET, "echo_rpc", "rpcgen-2"):
            assert _ask(relay, f"find {plain.encode().hex()}") == "found no", plain
        assert _ask(relay, f"inject {_forged_frame(marker).hex()}") == "injected 1"
        # The server drops the connection whose record failed its check: the client's
        # next call fails, typed, or reconnects; the one after that works.
        assert _ask(client, "call") in ("ok", "ServiceUnavailable")
        assert _ask(client, "call") == "ok"
        assert not marker.exists()
        assert server.poll() is None
    finally:
        _end(*reversed(processes))


def test_plain_tcp_across_hosts_takes_the_loud_opt_out_on_both_sides(
    hosts: tuple[str, str, str, str], tmp_path: Path
) -> None:
    ns_a, addr_a, ns_b, _ = hosts
    key = tmp_path / "service.key"
    server = _spawn(
        ns_a, "tests.support.netns_peer", "serve", addr_a, str(PORT), str(key), "insecure-plaintext"
    )
    try:
        assert _first_line(server).startswith("ready ")
        # A client with the default (TLS) is refused, and told why.
        secure = subprocess.run(
            _in(ns_b, "call", addr_a, str(PORT), str(key)),
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "same tls= setting" in secure.stdout, secure.stdout + secure.stderr
        plain = subprocess.run(
            _in(ns_b, "call", addr_a, str(PORT), str(key), "insecure-plaintext"),
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert plain.stdout.startswith("answer across the veth"), plain.stdout + plain.stderr
        assert "INSECURE" in plain.stderr
    finally:
        _, errors = server.communicate(input="", timeout=30)  # stdin closed: it stops
    assert "INSECURE" in errors
