"""Slow peers: 300 connections that trickle a byte now and then, each reconnecting a
second after it is dropped, against a server with 256 file descriptors and a 2 s
handshake deadline. Each is dropped within the deadline (in all, not per read), none holds a
thread, and real clients are served all along."""

from __future__ import annotations

import selectors
import socket
import statistics
import threading
import time

from rpcgen.runtime.proxy import RPCProxy
from tests.reliability.conftest import Log
from tests.support.internals import process_backend
from tests.support.services import Echo
from tests.support.waiting import free_port

PEERS = 300
DEADLINE_S = 2.0  # serve_fd256's handshake_timeout_s
ATTACK_S = 8.0


class Trickler:
    """PEERS connections, each sending one byte every 0.5 s; a dropped one reconnects 1 s
    later (persistent, not a flood)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.selector = selectors.DefaultSelector()
        self.born: dict[socket.socket, float] = {}
        self.lifetimes: list[float] = []
        self.reconnect_at: list[float] = []
        self.stop = threading.Event()

    def _open(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(self.address)
        self.born[sock] = time.monotonic()
        self.selector.register(sock, selectors.EVENT_READ)

    def _dropped(self, sock: socket.socket) -> None:
        self.lifetimes.append(time.monotonic() - self.born.pop(sock))
        self.selector.unregister(sock)
        sock.close()

    def run(self) -> None:
        for _ in range(PEERS):
            self._open()
        next_byte = time.monotonic()
        while not self.stop.is_set():
            for key, _ in self.selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    closed = sock.recv(64) == b""
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    self._dropped(sock)
                    self.reconnect_at.append(time.monotonic() + 1.0)
            if time.monotonic() >= next_byte:
                next_byte += 0.5
                for sock in list(self.born):
                    try:
                        sock.send(b"r")
                    except BlockingIOError:
                        pass
                    except OSError:
                        self._dropped(sock)
                        self.reconnect_at.append(time.monotonic() + 1.0)
            now = time.monotonic()
            due = [t for t in self.reconnect_at if t <= now]
            self.reconnect_at = [t for t in self.reconnect_at if t > now]
            for _ in due:
                self._open()
        for sock in list(self.born):
            self.selector.unregister(sock)
            sock.close()


def test_trickling_peers_are_dropped_in_time_and_real_clients_get_in(
    reliability_log: Log,
) -> None:
    failures = 0
    firsts: list[float] = []
    errors: list[str] = []
    with Echo(free_port(), target="fd256") as svc:
        key = process_backend(svc).key()
        address = svc.address
        assert isinstance(address, tuple)
        attack = Trickler(address)
        attacker = threading.Thread(target=attack.run, daemon=True)
        attacker.start()
        started = time.monotonic()
        try:
            while time.monotonic() - started < ATTACK_S:
                proxy = RPCProxy(service="Echo", address=address, authkey=key, connect_timeout_s=5)
                t0 = time.monotonic()
                try:
                    ok = proxy.echo_rpc("real") == "real"
                except Exception as exc:
                    errors.append(repr(exc))
                    ok = False
                firsts.append(time.monotonic() - t0)
                failures += not ok
                proxy._rpc_close()
                time.sleep(0.2)  # pacing the real client's calls, not waiting for a condition
        finally:
            attack.stop.set()
            attacker.join(10)
        assert svc.echo("after the attack") == "after the attack"
    late = [t for t in attack.lifetimes if t > DEADLINE_S + 1.0]
    failures += len(late)
    note = (
        f"{len(attack.lifetimes)} slow peers dropped, the longest after "
        f"{max(attack.lifetimes, default=0):.2f}s (deadline {DEADLINE_S}s); "
        f"{len(firsts)} real clients, time to first call median "
        f"{statistics.median(firsts) * 1000:.1f} ms, max {max(firsts) * 1000:.1f} ms"
        + (f"; errors: {errors}" if errors else "")
    )
    reliability_log.record(
        f"{PEERS} trickling peers vs a server with 256 fds",
        rounds=len(firsts),
        failures=failures,
        note=note,
    )
    assert len(attack.lifetimes) >= PEERS  # every peer was dropped at least once
    assert failures == 0, note
