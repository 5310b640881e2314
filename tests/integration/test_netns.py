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

from tests.support.procs import ROOT

PORT = 50123  # inside namespace A only: nothing else listens there


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def hosts() -> Iterator[tuple[str, str, str, str]]:
    """(namespace A, address A, namespace B, address B), torn down afterwards."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network-namespace test needs root and iproute2's `ip`; not available here")
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b = f"rpcgenA{tag}", f"rpcgenB{tag}"
    veth_a, veth_b = f"rva{tag}", f"rvb{tag}"
    subnet = 1 + os.getpid() % 250
    addr_a, addr_b = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    created: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            result = _ip("netns", "add", ns)
            if result.returncode != 0:
                pytest.skip(f"`ip netns add` failed here ({result.stderr.strip()}); skipping")
            created.append(ns)
        steps = [
            ("link", "add", veth_a, "type", "veth", "peer", "name", veth_b),
            ("link", "set", veth_a, "netns", ns_a),
            ("link", "set", veth_b, "netns", ns_b),
            ("-n", ns_a, "addr", "add", f"{addr_a}/24", "dev", veth_a),
            ("-n", ns_b, "addr", "add", f"{addr_b}/24", "dev", veth_b),
            ("-n", ns_a, "link", "set", veth_a, "up"),
            ("-n", ns_b, "link", "set", veth_b, "up"),
            ("-n", ns_a, "link", "set", "lo", "up"),
            ("-n", ns_b, "link", "set", "lo", "up"),
        ]
        for step in steps:
            result = _ip(*step)
            assert result.returncode == 0, f"ip {' '.join(step)}: {result.stderr}"
        yield ns_a, addr_a, ns_b, addr_b
    finally:
        for ns in created:
            _ip("netns", "del", ns)  # takes the veth pair with it


def _in(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.support.netns_peer", *args]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))


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
    server = subprocess.Popen(
        _in(ns_a, "serve", addr_a, str(PORT), str(server_key)),
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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
        assert refused.stdout.strip() == "authentication refused"
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=30)
