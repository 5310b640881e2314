"""A relay that stands between clients and a server: it forwards every byte both ways,
keeps a copy, and can inject bytes of its own into the server's side.

In a test process: ``Relay(server, listen_host=...)``. Inside a network namespace:
``python -m tests.support.relay LISTEN_HOST SERVER_HOST SERVER_PORT`` prints
``ready PORT``, then takes commands on stdin, one per line, answering each with one line:
``inject HEX`` (sends the bytes to every server-side connection: ``injected N``),
``seen`` (``seen C2S S2C`` byte counts), ``find HEX`` (``found yes|no``: whether those
bytes appear in what it saw), ``quit``.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading


class Relay:
    """Listens on its own port and forwards every connection to ``server``."""

    def __init__(self, server: tuple[str, int], listen_host: str = "127.0.0.1") -> None:
        self.listener = socket.create_server((listen_host, 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.server = server
        self.from_client = bytearray()
        self.from_server = bytearray()
        self.lock = threading.Lock()
        self.upstreams: list[socket.socket] = []
        self.sockets: list[socket.socket] = []  # every socket, closed by close()
        self.upstream: socket.socket | None = None  # the first connection's
        self.clients_gone = 0  # client connections that have ended
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, seen: bytearray) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not data:
                break
            with self.lock:
                seen += data
            try:
                sink.sendall(data)
            except OSError:
                break
        if seen is self.from_client:
            with self.lock:
                self.clients_gone += 1  # the server side stays open: tests write to it
        else:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)  # the server hung up: so does the relay

    def _run(self) -> None:
        while True:
            try:
                victim, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.server)
            with self.lock:
                self.sockets += (victim, upstream)
                self.upstreams.append(upstream)
                if self.upstream is None:
                    self.upstream = upstream
            for source, sink, seen in (
                (upstream, victim, self.from_server),
                (victim, upstream, self.from_client),
            ):
                threading.Thread(target=self._pump, args=(source, sink, seen), daemon=True).start()

    def inject(self, data: bytes) -> int:
        """Send ``data`` to the server on every open connection; how many took it."""
        sent = 0
        with self.lock:
            upstreams = list(self.upstreams)
        for upstream in upstreams:
            try:
                upstream.sendall(data)
                sent += 1
            except OSError:
                pass
        return sent

    def saw(self, data: bytes) -> bool:
        with self.lock:
            return data in self.from_client or data in self.from_server

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                sock.close()


def main() -> None:
    listen_host, server_host, server_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    relay = Relay((server_host, server_port), listen_host)
    print(f"ready {relay.address[1]}", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "inject":
            print(f"injected {relay.inject(bytes.fromhex(argument))}", flush=True)
        elif command == "seen":
            print(f"seen {len(relay.from_client)} {len(relay.from_server)}", flush=True)
        elif command == "find":
            print(f"found {'yes' if relay.saw(bytes.fromhex(argument)) else 'no'}", flush=True)
        elif command == "quit":
            break
    relay.close()


if __name__ == "__main__":
    main()
