"""Where a service listens: one value for a TCP address or a Unix domain socket.

``Address`` is the raw form that ``multiprocessing`` (and the seed's hooks,
``_start_server_process(address, ...)``) use: ``(host, port)`` or a socket path.
:class:`Endpoint` wraps it once, so no other module branches on its type: it
owns the label for messages, the socket address, connecting, and the in-use probe.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from dataclasses import dataclass

__all__ = ["Address", "Endpoint"]

#: (host, port) for TCP, or the path of a Unix domain socket.
Address = tuple[str, int] | str

_SOCKET_PORT = re.compile(r"-(\d+)\.sock$")
_NUMERIC = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$")


@dataclass(frozen=True)
class Endpoint:
    """A TCP ``host:port``, or a Unix socket ``path`` (``<service>-<port>.sock``)."""

    address: Address

    @classmethod
    def of(cls, address: Address | Endpoint) -> Endpoint:
        return address if isinstance(address, Endpoint) else cls(address)

    @property
    def path(self) -> str | None:
        """The socket file of a Unix endpoint; None for TCP."""
        return self.address if isinstance(self.address, str) else None

    @property
    def host(self) -> str:
        """The TCP host; ``"unix"`` for a Unix socket (in messages)."""
        return "unix" if isinstance(self.address, str) else self.address[0]

    @property
    def where(self) -> int | str:
        """The TCP port, or the socket's path (in messages)."""
        return self.address if isinstance(self.address, str) else self.address[1]

    @property
    def port(self) -> int:
        """The service's port: the TCP port, or the one in the socket's file name."""
        if isinstance(self.address, str):
            match = _SOCKET_PORT.search(self.address)
            return int(match.group(1)) if match else 0
        return self.address[1]

    @property
    def label(self) -> str:
        return (
            f"unix:{self.address}" if isinstance(self.address, str) else f"{self.host}:{self.port}"
        )

    def __str__(self) -> str:
        return self.label

    def numeric(self) -> Endpoint:
        """This endpoint with its host name resolved once, as the server's listener
        resolves it (IPv4): ``localhost`` is 127.0.0.1 even where ``/etc/hosts`` puts
        ``::1`` first, so a client never dials an address its server did not bind."""
        if isinstance(self.address, str):
            return self
        host, port = self.address
        if _NUMERIC.match(host):
            return self  # already an address: nothing to resolve
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        info = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        return Endpoint((str(info[0][4][0]), port))

    def connect(self, timeout_s: float | None) -> socket.socket:
        """A connected stream socket (to :meth:`numeric`'s address, for TCP)."""
        target: Address = self.address if isinstance(self.address, str) else self.numeric().address
        if isinstance(target, str):
            family = socket.AF_UNIX
        else:
            family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.connect(target)
        except BaseException:
            sock.close()
            raise
        return sock

    def in_use(self) -> bool:
        """True if something listens here.

        TCP: the port cannot be bound. SO_REUSEADDR matters: without it the
        TIME_WAIT sockets of a just-stopped server look like "in use" although no
        process listens any more. Unix: something accepts on the socket file.
        """
        if isinstance(self.address, str):
            if not os.path.exists(self.address):
                return False
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(self.address)
                except (ConnectionRefusedError, FileNotFoundError):
                    return False  # a stale file: nobody listens
                except OSError:
                    return True
            return True
        host, port = self.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return True
                raise
        return False

    def remove_stale_file(self) -> None:
        """Unix: remove a socket file that nobody listens on (left by a killed server)."""
        if self.path is not None and not self.in_use():
            self.remove_file()

    def remove_file(self) -> None:
        """Unix: remove the socket file, for a caller that has just seen nobody listen."""
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (a name or an address)."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
