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
