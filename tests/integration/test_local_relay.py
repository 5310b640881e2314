"""Local connections cannot be relayed or squatted (loopback and Unix sockets).

The server proves first that it holds the key, and both proofs name the server's
socket: a relay sees its own address, so the client refuses the server's relayed
proof and never sends one of its own; the relay is left with a connection that
authenticates nothing. And a client dials the numeric address its server bound, so
another local user listening on [::1] never even sees it.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rpcgen.runtime import ServiceAuthenticationError
from rpcgen.runtime.proxy import RPCProxy
from rpcgen.runtime.transport import HELLO
from tests.support.internals import process_backend
from tests.support.other_user import other_user
from tests.support.procs import ROOT
from tests.support.relay import Relay
from tests.support.services import Echo
from tests.support.waiting import free_port, wait_until


def test_a_relay_gets_no_proof_and_can_inject_nothing(port: int) -> None:
    with Echo(port) as svc:
        calls_before = svc._server_proxy.calls_rpc()
        relay = Relay(("127.0.0.1", port))
        victim = RPCProxy(
            service="Echo",
            address=relay.address,
            authkey=process_backend(svc).key(),
            connect_timeout_s=5,
        )
        with pytest.raises(ServiceAuthenticationError, match="did not prove"):
            victim.echo_rpc("through the relay")
        victim._rpc_close()
        wait_until(lambda: relay.clients_gone == 1, timeout=10)  # the victim hung up
        # The victim sent its hello (a fresh nonce) and nothing derived from the key.
        assert len(relay.from_client) == len(HELLO) + 32
        assert relay.from_client.startswith(HELLO)
        # The relay's own connection to the server never authenticated: what it sends
        # now is taken as a wrong proof, and the server hangs up without answering.
        assert relay.upstream is not None
        request = pickle.dumps((None, "rpcgen_accept", ("relay",), {}))
        relay.upstream.settimeout(10)
        try:
            relay.upstream.sendall(os.urandom(32) + struct.pack("!i", len(request)) + request)
            assert relay.upstream.recv(65536) == b""
        except ConnectionResetError:
            pass  # refused just as well
        relay.close()
        assert svc._server_proxy.calls_rpc() == calls_before  # the relayed echo never ran
        assert svc.echo("direct") == "direct"


def test_another_user_on_ipv6_localhost_gets_nothing(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/unshare"):
        pytest.skip("needs root and unshare for a private mount namespace with its own hosts")
    port = free_port()
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 localhost ip6-localhost ip6-loopback\n127.0.0.1 localhost\n")
    hosts.chmod(0o644)
    squat = (
        "import json, socket\n"
        "s = socket.socket(socket.AF_INET6)\n"
        f"s.bind(('::1', {port})); s.listen(); s.settimeout(20)\n"
        "print('listening', flush=True)\n"
        "try:\n"
        "    c, _ = s.accept(); c.settimeout(2)\n"
        "    got = c.recv(4096)\n"
        "    print(json.dumps({'connected': True, 'got': len(got)}), flush=True)\n"
        "except TimeoutError:\n"
        "    print(json.dumps({'connected': False}), flush=True)\n"
    )
    with other_user() as user:
        squatter = subprocess.Popen(
            ["/usr/bin/python3", "-c", squat],
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert squatter.stdout is not None
            assert squatter.stdout.readline().strip() == "listening"
            victim = subprocess.run(
                [
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    f'mount --bind "{hosts}" /etc/hosts && exec "{sys.executable}" '
                    f"-m tests.support.hosts_victim {port}",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert victim.returncode == 0, victim.stderr
            report = json.loads(victim.stdout.strip().splitlines()[-1])
            assert report["localhost_first"] == "::1"  # the trap is set
            assert report["answer"] == "to my own server"
        finally:
            squatter.kill()
            out, _ = squatter.communicate(timeout=10)
    assert '"connected": true' not in out  # the squatter never saw a connection
