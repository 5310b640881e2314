"""Baseline servers without rpcgen: raw multiprocessing.connection and a raw TCP socket.

Each runs in its own process (module-level targets, so any start method works).
"""

from __future__ import annotations

import socket
import struct
import threading
from multiprocessing import connection
from typing import Any

_HEADER = struct.Struct("!I")


def serve_connection(address: tuple[str, int], authkey: bytes, ready: Any) -> None:
    """multiprocessing.connection + pickle: echo each object back; a thread per client."""
    listener = connection.Listener(address, authkey=authkey)
    ready.set()

    def handle(conn: connection.Connection) -> None:
        with conn:
            while True:
                try:
                    conn.send(conn.recv())
                except EOFError:
                    return

    while True:
        threading.Thread(target=handle, args=(listener.accept(),), daemon=True).start()


def recv_into_new(sock: socket.socket, n: int) -> bytearray:
    """``n`` bytes read straight into a new buffer (EOFError if the peer closes first)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EOFError
        got += k
    return buf


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    return bytes(recv_into_new(sock, n))


def serve_tcp(address: tuple[str, int], ready: Any) -> None:
    """Length-prefixed raw bytes echo: the floor for any RPC layer over TCP."""
    listener = socket.create_server(address)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ready.set()

    def handle(sock: socket.socket) -> None:
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                while True:
                    (n,) = _HEADER.unpack(_recv_exact(sock, 4))
                    sock.sendall(_HEADER.pack(n) + _recv_exact(sock, n))
            except (EOFError, OSError):
                return

    while True:
        sock, _ = listener.accept()
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


class TcpClient:
    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def echo(self, payload: bytes) -> bytes:
        self.sock.sendall(_HEADER.pack(len(payload)) + payload)
        (n,) = _HEADER.unpack(_recv_exact(self.sock, 4))
        return _recv_exact(self.sock, n)

    def close(self) -> None:
        self.sock.close()


class ConnectionClient:
    def __init__(self, address: tuple[str, int], authkey: bytes) -> None:
        self.conn = connection.Client(address, authkey=authkey)

    def echo(self, value: Any) -> Any:
        self.conn.send(value)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.close()
