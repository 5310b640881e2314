"""TLS (issue 18): the channel is encrypted and pinned to the key; nothing it carries can
be read or forged by whoever stands in between.

These run on loopback with ``tls="on"`` (what a non-loopback bind turns on by itself);
tests/integration/test_netns.py runs the cross-host case between two namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pickle
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest

from rpcgen.runtime import ServiceTLSError, ServiceUnavailable
from rpcgen.runtime.proxy import RPCProxy
from rpcgen.runtime.tls import TlsPolicy
from rpcgen.runtime.transport import open_connection
from tests.support import pki
from tests.support.internals import process_backend, rpc_proxy
from tests.support.relay import Relay
from tests.support.services import Echo
from tests.support.waiting import free_port, wait_until

SECRET = "4111-1111-1111-1111 pin 7392"


class _Opens:
    """Unpickling this creates ``path``: what an attacker's injected frame would run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _forged_frame(marker: Path) -> bytes:
    body = pickle.dumps(("rpcgen", "echo_rpc", (_Opens(marker),), {}))
    return struct.pack("!i", len(body)) + body


def test_tls_serves_calls_large_messages_asyncio_and_health_checks(port: int) -> None:
    big = os.urandom(5 << 20)
    with Echo(port, tls="on") as svc:
        assert svc.echo(SECRET) == SECRET
        assert svc.echo(big) == big
        for size in (16383, 16385, (1 << 20) - 60, (1 << 20) + 40, (3 << 20) + 7):
            payload = os.urandom(size)  # around the record size and the buffer's first size
            assert svc.echo(payload) == payload

        async def many() -> None:
            assert await asyncio.gather(*(svc.aio.echo(i) for i in range(200))) == list(range(200))
            assert await svc.aio.echo(big) == big

        asyncio.run(many())
        assert svc.health_check(current_time_ms=10**12)


def test_a_relay_sees_only_ciphertext_and_its_forged_frame_runs_nothing(
    port: int, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    frame = _forged_frame(marker)
    with Echo(port, tls="on") as svc:
        relay = Relay(("127.0.0.1", port))
        try:
            victim = RPCProxy(
                service="Echo",
                address=relay.address,
                authkey=process_backend(svc).key(),
                connect_timeout_s=5,
                tls=TlsPolicy("on"),
            )
            # The relay forwards everything, so TLS (not the address) is what stops it:
            # the calls through it work.
            assert victim.echo_rpc({"card": SECRET}) == {"card": SECRET}
            assert relay.from_client and relay.from_server
            assert not relay.saw(SECRET.encode())
            assert not relay.saw(b"echo_rpc")
            assert relay.inject(frame) == 1
            calls = rpc_proxy(svc).calls_rpc()
            # The server finds a record that fails its check and drops that connection;
            # the client's next call on it fails, typed, and the one after reconnects.
            with contextlib.suppress(ServiceUnavailable):
                victim.echo_rpc("after the forgery")
            assert victim.echo_rpc("again") == "again"
            victim._rpc_close()
        finally:
            relay.close()
        assert not marker.exists()
        assert rpc_proxy(svc).calls_rpc() <= calls + 2  # the forged call never ran
        assert svc.echo("direct") == "direct"


def test_the_forged_frame_is_live_code_on_an_authenticated_plain_connection(
    port: int, tmp_path: Path
) -> None:
    # The control for the test above: the same bytes, where nothing protects each frame
    # (loopback, plain, after the handshake), do run in the server.
    marker = tmp_path / "ran"
    with Echo(port) as svc:
        conn = open_connection(svc.address, process_backend(svc).key(), service="Echo", timeout_s=5)
        try:
            os.write(conn.fileno(), _forged_frame(marker))
            wait_until(marker.exists, timeout=10, what="the forged frame to run")
        finally:
            conn.close()


def test_a_server_with_another_key_is_refused_before_anything_is_sent(port: int) -> None:
    with Echo(port, tls="on") as svc:
        calls = rpc_proxy(svc).calls_rpc()
        with pytest.raises(ServiceTLSError, match="holds a different key"):
            open_connection(
                svc.address, b"\1" * 32, service="Echo", timeout_s=5, tls=TlsPolicy("on")
            )
        assert rpc_proxy(svc).calls_rpc() == calls
        assert svc.echo("still up") == "still up"


def test_tls_and_plain_sides_refuse_each_other_with_a_clear_error(port: int) -> None:
    with Echo(port) as plain:  # loopback: plain
        key = process_backend(plain).key()
        with pytest.raises(ServiceTLSError, match="same tls= setting"):
            open_connection(plain.address, key, service="Echo", timeout_s=5, tls=TlsPolicy("on"))
        assert plain.echo("fine") == "fine"
    other = free_port()
    with Echo(other, tls="on") as secure:
        key = process_backend(secure).key()
        with pytest.raises(ServiceUnavailable, match="same tls= setting"):
            open_connection(secure.address, key, service="Echo", timeout_s=5)
        assert secure.echo("fine") == "fine"


def test_mutual_tls_with_the_users_own_ca(port: int, tmp_path: Path) -> None:
    folder = str(pki.make_pki(tmp_path / "pki"))
    stranger = str(pki.make_pki(tmp_path / "other", ca_name="another CA"))
    context = functools.partial(pki.make_context, folder)
    with Echo(port, ssl_context=context) as svc:
        assert svc.echo(SECRET) == SECRET
        assert asyncio.run(svc.aio.echo("async")) == "async"
        key = process_backend(svc).key()
        # A client that shows no certificate is refused by the server ...
        no_cert = TlsPolicy(
            ssl_context=functools.partial(pki.make_context_without_client_cert, folder)
        )
        with pytest.raises(ServiceTLSError):
            open_connection(svc.address, key, service="Echo", timeout_s=5, tls=no_cert)
        # ... and a client of another CA refuses the server.
        with pytest.raises(ServiceTLSError, match="certificate"):
            open_connection(
                svc.address,
                key,
                service="Echo",
                timeout_s=5,
                tls=TlsPolicy(ssl_context=functools.partial(pki.make_context, stranger)),
            )
        # The key is still checked inside TLS.
        with pytest.raises(Exception, match="did not prove"):
            open_connection(
                svc.address,
                b"\2" * 32,
                service="Echo",
                timeout_s=5,
                tls=TlsPolicy(ssl_context=context),
            )
        assert svc.echo("still up") == "still up"


def test_tls_settings_are_checked_in_one_line(port: int) -> None:
    with pytest.raises(ValueError, match="tls must be one of"):
        Echo(port, tls="off")
    with pytest.raises(ValueError, match="module-level function"):
        Echo(port, ssl_context=ssl.create_default_context())  # type: ignore[arg-type,unused-ignore]
    with pytest.raises(ValueError, match="TCP only"):
        Echo(port, tls="on", transport="unix")
