"""Listener and client sockets set TCP_NODELAY (loopback sockets, no processes)."""

from __future__ import annotations

import socket

from rpcgen.runtime.transport import NoDelayListener, _nodelay_client


def test_listener_and_accepted_sockets_have_nodelay() -> None:
    listener = NoDelayListener(("127.0.0.1", 0), backlog=1)
    try:
        raw = listener._listener._socket  # type: ignore[attr-defined]
        assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        client = _nodelay_client(listener.address)
        accepted = listener.accept()
        try:
            for conn in (client, accepted):
                with socket.socket(fileno=__import__("os").dup(conn.fileno())) as view:
                    assert view.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            client.send("hello")
            assert accepted.recv() == "hello"
        finally:
            client.close()
            accepted.close()
    finally:
        listener.close()


def test_listener_backlog_is_not_the_stdlib_16() -> None:
    # Python 3.10/3.11's manager Server asks for 16; a burst of connects then stalls
    # ~1 s each (SYN retransmit). Read the real backlog from the kernel.
    import shutil
    import subprocess

    import pytest

    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    listener = NoDelayListener(("127.0.0.1", 0), backlog=16)
    try:
        port = listener.address[1]
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert int(out[2]) >= 128  # Send-Q of a listening socket is its backlog
    finally:
        listener.close()
