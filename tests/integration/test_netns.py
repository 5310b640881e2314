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
