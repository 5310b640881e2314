"""The gate with an injected clock, in this process (loopback sockets, no processes): the
handshake runs step by step, the deadline is absolute, and room is made by dropping the
oldest peer that has not sent its hello, never a client at work."""

from __future__ import annotations

import pickle
import secrets
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rpcgen.runtime.gate import Gate
from rpcgen.runtime.tls import TlsPolicy, TlsStream
from rpcgen.runtime.transport import HELLO, TLS_BINDING, client_handshake, socket_binding
from tests.support.fakes import FakeClock
from tests.support.waiting import wait_until

KEY = secrets.token_bytes(32)


@contextmanager
def running_gate(
    clock: FakeClock,
    *,
    max_pending: int = 4,
    deadline_s: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> Iterator[tuple[Gate, list[tuple[socket.socket, tuple[Any, ...]]]]]:
    listener = socket.create_server(("127.0.0.1", 0))
    served: list[tuple[socket.socket, tuple[Any, ...]]] = []
    stop = threading.Event()
    gate = Gate(
        listener,
        KEY,
        serve=lambda sock, request, tls: served.append((sock, request)),
        stop=stop,
        deadline_s=deadline_s,
        max_pending=max_pending,
        clock=clock,
        tls=tls,
    )
    thread = threading.Thread(target=gate.run, daemon=True)
    thread.start()
    try:
        yield gate, served
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for sock, _ in served:
            sock.close()


def _client(gate: Gate) -> socket.socket:
    """A blocking socket (as the handshake wants), its reads bounded by SO_RCVTIMEO."""
    sock = socket.create_connection(gate.listener.getsockname(), timeout=5)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
    # As rpcgen's clients do: without it a second small write waits for an ACK (Nagle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_client_that_proves_the_key_is_handed_its_first_request() -> None:
    with running_gate(FakeClock()) as (gate, served):
        sock = _client(gate)
        client_handshake(sock.fileno(), KEY, socket_binding(sock.getpeername()))
        request = pickle.dumps((None, "rpcgen_accept", ("t",), {}))
        sock.sendall(struct.pack("!i", len(request)) + request)
        wait_until(lambda: len(served) == 1, timeout=5, what="the hand-off")
        assert served[0][1] == (None, "rpcgen_accept", ("t",), {})
        assert served[0][0].getblocking()  # a blocking socket for the serving thread
        sock.close()


def test_a_wrong_key_gets_no_answer_past_the_servers_proof() -> None:
    with running_gate(FakeClock()) as (gate, served):
        sock = _client(gate)
        sock.sendall(HELLO + secrets.token_bytes(32))
        sock.settimeout(5)
        reply = b""
        while len(reply) < 64:
            reply += sock.recv(64 - len(reply))
        sock.sendall(secrets.token_bytes(32))  # a proof made with another key
        assert _closed(sock)
        sock.close()
        assert served == [] and gate.refused == 1


def test_the_deadline_is_absolute_however_the_peer_trickles() -> None:
    clock = FakeClock()
    with running_gate(clock, deadline_s=2.0) as (gate, _):
        sock = _client(gate)
        wait_until(lambda: len(gate.pending) == 1, timeout=5, what="the accept")
        for byte in HELLO[:5]:  # a byte now and then: each arrives well within any per-read limit
            sock.sendall(bytes([byte]))
            clock.now += 0.5
        wait_until(lambda: gate.dropped_late == 1, timeout=5, what="the drop")
        assert _closed(sock) and not gate.pending
        sock.close()


def test_room_is_made_by_dropping_the_oldest_stalled_peer_not_a_client_at_work() -> None:
    with running_gate(FakeClock(), max_pending=2) as (gate, _):
        at_work = _client(gate)
        at_work.sendall(HELLO + secrets.token_bytes(32))  # hello sent: at work
        stalled = _client(gate)
        stalled.sendall(HELLO[:3])
        wait_until(lambda: len(gate.pending) == 2, timeout=5, what="both pending")
        newcomer = _client(gate)
        wait_until(lambda: gate.dropped_for_room == 1, timeout=5, what="room")
        assert _closed(stalled)
        stalled.close()
        at_work.settimeout(5)
        assert len(at_work.recv(64)) > 0  # the server's proof: still served
        newcomer.close()
        at_work.close()


def test_a_client_whose_hello_waits_unread_is_not_taken_for_a_stalled_peer() -> None:
    # Driven by hand (no gate thread), so the hello is in the socket, not yet read, when
    # room is needed: as after a burst of accepts.
    listener = socket.create_server(("127.0.0.1", 0))
    gate = Gate(
        listener,
        KEY,
        serve=lambda sock, request, tls: sock.close(),
        stop=threading.Event(),
        deadline_s=10.0,
        max_pending=1,
        clock=FakeClock(),
    )
    listener.setblocking(False)
    with _client(gate) as at_work:
        at_work.sendall(HELLO + secrets.token_bytes(32))
        gate._accept()  # at_work waits, its hello unread
        [waiting] = gate.pending.values()
        assert waiting.stage == "hello"
        newcomer = _client(gate)
        gate._accept()  # newcomer: the gate is full
        assert gate.dropped_for_room == 1
        assert [p.sock for p in gate.pending.values()] == [waiting.sock]
        assert waiting.stage == "proof"  # read on the spot: a client at work
        assert len(at_work.recv(64)) > 0  # and answered
        assert _closed(newcomer)  # turned away instead
        newcomer.close()
    for pending in list(gate.pending.values()):
        gate._close(pending)
    gate.selector.close()
    listener.close()


def test_over_tls_a_client_is_handed_its_first_request_and_the_handshake_is_sealed() -> None:
    policy = TlsPolicy("on")
    with running_gate(FakeClock(), tls=policy.server_context(KEY)) as (gate, served):
        sock = _client(gate)
        stream = TlsStream.connect(sock.detach(), policy.client_context(KEY))
        client_handshake(stream, KEY, TLS_BINDING)
        stream.send((None, "rpcgen_accept", ("t",), {}))
        wait_until(lambda: len(served) == 1, timeout=5, what="the hand-off")
        assert served[0][1] == (None, "rpcgen_accept", ("t",), {})
        stream.close()


def test_over_tls_a_peer_that_never_finishes_tls_is_dropped_first_for_room() -> None:
    policy = TlsPolicy("on")
    with running_gate(FakeClock(), max_pending=2, tls=policy.server_context(KEY)) as (gate, _):
        at_work = _client(gate)
        stream = TlsStream.connect(at_work.detach(), policy.client_context(KEY))
        stream.write(HELLO + secrets.token_bytes(32))  # hello sent: at work
        stalled = _client(gate)
        stalled.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, no more
        wait_until(lambda: len(gate.pending) == 2, timeout=5, what="both pending")
        newcomer = _client(gate)
        wait_until(lambda: gate.dropped_for_room == 1, timeout=5, what="room")
        assert _closed(stalled)
        stalled.close()
        assert len(stream.read(64)) > 0  # the server's proof, sealed: still served
        stream.close()
        newcomer.close()
