"""Bounded memory: peers that declare huge messages, and peers that never read their
replies, cannot grow a server's memory (aim: under 64 MiB), and real clients are still
served meanwhile.

Both attackers hold the key: a message is read only after the handshake.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import psutil
import pytest

from rpcgen.runtime.tls import TlsPolicy, TlsStream
from rpcgen.runtime.transport import OBJECT_ID, open_connection
from rpcgen.runtime.wire import tagged_frame
from tests.reliability.conftest import Log
from tests.support.internals import process_backend
from tests.support.services import Echo
from tests.support.waiting import free_port, wait_until

LIMIT_MIB = 64


def _rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def _unsent(sock: socket.socket | TlsStream) -> int:
    """Bytes this socket has sent that its peer's kernel has not acknowledged yet."""
    queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", queued)[0])


def _peak_rss_mib(pid: int, seconds: float) -> float:
    """The highest RSS seen while sampling for ``seconds`` (a measurement window)."""
    peak = _rss_mib(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, _rss_mib(pid))
        time.sleep(0.02)
    return peak


@contextmanager
def _raw(svc: Echo, *, mux: bool = False) -> Iterator[socket.socket]:
    """An authenticated connection, as a plain blocking socket."""
    conn = open_connection(
        svc.address, process_backend(svc).key(), service="Echo", timeout_s=5, mux=mux
    )
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    try:
        yield sock
    finally:
        sock.close()


@contextmanager
def _sealed(svc: Echo) -> Iterator[TlsStream]:
    """An authenticated TLS connection: what is written to it is sealed first."""
    conn = open_connection(
        svc.address, process_backend(svc).key(), service="Echo", timeout_s=5, tls=TlsPolicy("on")
    )
    assert isinstance(conn, TlsStream)
    try:
        yield conn
    finally:
        conn.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_declared_sizes_allocate_nothing_and_oversized_messages_are_dropped(
    reliability_log: Log, tls: bool
) -> None:
    failures = 0
    with Echo(free_port(), tls="on" if tls else "auto") as svc:
        server = svc.server_pid or 0
        assert svc.echo(b"x" * 2_000_000) == b"x" * 2_000_000  # large messages still travel
        before = _rss_mib(server)
        with contextlib.ExitStack() as stack:
            opener: Callable[[Echo], AbstractContextManager[socket.socket | TlsStream]] = (
                _sealed if tls else _raw
            )
            peers = [stack.enter_context(opener(svc)) for _ in range(3)]
            for peer in peers:  # just under 1 GiB declared, then a little of it
                data = struct.pack("!i", (1 << 30) - 1) + b"y" * 100_000
                if isinstance(peer, TlsStream):
                    peer.write(data)
                else:
                    peer.sendall(data)
            wait_until(
                lambda: all(_unsent(peer) == 0 for peer in peers),
                timeout=10,
                what="the server's kernel to take every byte",
            )
            grown = _peak_rss_mib(server, 0.5) - before
            failures += grown > LIMIT_MIB
            failures += svc.echo("still served") != "still served"
            with _sealed(svc) if tls else _raw(svc) as over:  # over 1 GiB: dropped
                data = struct.pack("!iQ", -1, 1 << 40)
                if isinstance(over, TlsStream):
                    over.write(data)
                    failures += over.read(1) != b""
                else:
                    over.sendall(data)
                    over.settimeout(10)
                    failures += over.recv(1) != b""
        failures += svc.echo("after") != "after"
    reliability_log.record(
        f"3 peers declare 1 GiB messages; one declares 1 TiB ({'TLS' if tls else 'plain'})",
        rounds=4,
        failures=failures,
        note=f"server RSS grew {grown:.1f} MiB (limit {LIMIT_MIB})",
    )
    assert failures == 0, f"server RSS grew {grown:.1f} MiB"


def test_a_peer_that_never_reads_its_replies_is_no_longer_read(reliability_log: Log) -> None:
    failures = 0
    request = pickle.dumps((OBJECT_ID, "echo_rpc", (b"z" * 1024,), {}), pickle.HIGHEST_PROTOCOL)
    with Echo(free_port()) as svc:
        server = svc.server_pid or 0
        svc.echo(1)
        before = _rss_mib(server)
        sent = 0
        with _raw(svc, mux=True) as attacker:
            attacker.settimeout(3)  # once the server stops reading us, sending blocks
            try:
                for ident in range(1, 100_001):
                    attacker.sendall(b"".join(tagged_frame(ident, request)))
                    sent += 1
            except TimeoutError:
                pass
            grown = _peak_rss_mib(server, 0.5) - before
            failures += grown > LIMIT_MIB
            failures += svc.echo("still served") != "still served"
            with _raw(svc, mux=True) as polite:  # another peer's mux calls are still served
                polite.sendall(b"".join(tagged_frame(7, request)))
                polite.settimeout(10)
                failures += len(polite.recv(64)) == 0
        failures += svc.echo("after") != "after"
    reliability_log.record(
        "a mux peer sends 100,000 x 1 KiB requests and reads no reply",
        rounds=sent,
        failures=failures,
        note=f"{sent} requests sent before the server stopped reading; RSS grew {grown:.1f} MiB",
    )
    assert failures == 0, f"{sent} sent, server RSS grew {grown:.1f} MiB"
    assert sent < 100_000  # the server stopped reading a peer that does not read
