"""Sockets and the handshake: how a client connection is opened and authenticated.

The server is a stock ``multiprocessing.managers.Server``; this module changes
only how sockets are made and how a connection starts:

* TCP_NODELAY on the listener (accepted sockets inherit it on Linux) and on every
  client socket. Without it each new authenticated connection stalls ~40 ms on
  delayed ACK, because the client writes its last handshake message and its
  first request back to back.
* The served object is registered on the server under a fixed id
  (:data:`OBJECT_ID`), so a client needs one connection per thread and none of
  BaseManager's create / incref / decref round trips.
* The handshake (:func:`client_handshake`; the server's side is :mod:`.gate`) has the
  *server* prove first that it holds the key, and both proofs name the server's
  socket (its IP and port, or its Unix socket path) as each end sees it. A client
  therefore answers only the real server, never a program that took a dead
  server's port, and a relay between them (which sees its own address, not the
  server's) gets no proof it could pass on. Nothing in it is sent in clear that
  could be replayed: each side contributes a fresh 32-byte nonce.
* Over TLS (:mod:`.tls`: off loopback, by default) the same handshake runs inside
  the encrypted channel, after the client has verified the server's certificate,
  and names the channel (:data:`TLS_BINDING`) instead of an address: TLS already
  proves who the server is, and a port-mapped address still works.

The proxy that calls through these connections is :mod:`rpcgen.runtime.proxy`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing import AuthenticationError, connection, managers
from typing import TYPE_CHECKING, Any

from .endpoint import Address, Endpoint
from .errors import (
    RemoteCallError,
    ServiceAuthenticationError,
    ServiceTLSError,
    ServiceUnavailable,
    StockServerFound,
)
from .tls import TlsPolicy, TlsStream
from .wire import Payload, Stream, dumps, looks_big, read_exactly, write_all

if TYPE_CHECKING:
    from .shm import Offer, SharedLink

__all__ = [
    "OBJECT_ID",
    "SERIALIZER",
    "TLS_BINDING",
    "Address",
    "Link",
    "again_if_cut_short",
    "client_handshake",
    "close",
    "connect",
    "default_socket_dir",
    "describe",
    "open_connection",
    "proof",
    "request_payload",
    "request_shutdown",
    "set_recv_timeout",
    "share",
    "socket_binding",
    "stream_of",
    "unix_socket_path",
]

logger = logging.getLogger("rpcgen")

#: An open connection: plain (a stdlib Connection) or TLS.
Link = connection.Connection | TlsStream


def stream_of(link: Link) -> Stream:
    """What :mod:`.wire` reads and writes for ``link``: its fd, or the TLS stream."""
    return link if isinstance(link, TlsStream) else link.fileno()


#: Id under which the served object is registered in the manager Server.
OBJECT_ID = "rpcgen"
#: Key in ``multiprocessing.managers.listener_client`` for our socket factories.
SERIALIZER = "rpcgen"


def request_payload(
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    timeout_s: float | None,
    window: tuple[int, int] | None,
) -> Payload:
    """A call's request, pickled: ``(OBJECT_ID, method, args, kwargs, meta)``. ``meta``
    (None, or ``(timeout_s, window)``) says this client takes streams (see .dispatch)."""
    kwargs = kwargs or {}
    big = looks_big(args) or (bool(kwargs) and looks_big(kwargs.values()))
    meta = None if timeout_s is None and window is None else (timeout_s, window)
    return dumps((OBJECT_ID, method, args, kwargs, meta), big)  # errors here: no I/O yet


_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, with the terminating NUL


def default_socket_dir() -> str:
    """A folder only this user can enter: $XDG_RUNTIME_DIR/rpcgen, or /tmp/rpcgen-<uid>."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        folder = os.path.join(runtime_dir, "rpcgen")
    else:
        folder = os.path.join(tempfile.gettempdir(), f"rpcgen-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    info = os.stat(folder)
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{folder} must belong to this user with mode 0700 (it holds RPC sockets); "
            "fix it, or pass socket_dir"
        )
    return folder


def unix_socket_path(service: str, port: int, folder: str | None = None) -> str:
    """Where ``service`` listens with transport="unix": ``<folder>/<service>-<port>.sock``.

    The port stays the service's identity (process title, ``rpcgen ps``).
    """
    if folder is None:
        folder = default_socket_dir()
    else:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, f"{service}-{port}.sock")
    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        raise ValueError(
            f"Unix socket path {path!r} is longer than {_UNIX_PATH_MAX} bytes; "
            "pass a shorter socket_dir"
        )
    return path


def describe(address: Address) -> tuple[str, int | str]:
    """(host, port) for messages: ("unix", path) for a Unix socket."""
    endpoint = Endpoint.of(address)
    return endpoint.host, endpoint.where


def connect(address: Address, timeout_s: float | None) -> socket.socket:
    """A connected stream socket to a TCP address or a Unix socket path."""
    return Endpoint.of(address).connect(timeout_s)


def _set_nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _set_recv_timeout(sock: socket.socket, seconds: float) -> None:
    # SO_RCVTIMEO bounds blocking reads at the OS level; Connection uses raw os.read,
    # so Python-level socket timeouts (which switch to non-blocking mode) cannot apply.
    whole = int(seconds)
    micro = int((seconds - whole) * 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, micro))


def set_recv_timeout(conn: Link, seconds: float) -> None:
    """Bound every blocking read on ``conn`` (0: no bound). Opens no new fd."""
    view = socket.socket(fileno=conn.fileno())
    try:
        _set_recv_timeout(view, seconds)
    finally:
        view.detach()


class NoDelayListener(connection.Listener):
    """A ``multiprocessing.connection.Listener`` with TCP_NODELAY and a full-size backlog.

    Python 3.10 and 3.11's manager Server asks for a backlog of 16: a burst of new
    connections (many client threads or processes at once) overflows it, and each
    connect past the 16th stalls ~1 s for the SYN retransmit.
    """

    def __init__(
        self,
        address: Any = None,
        family: str | None = None,
        backlog: int = 1,
        authkey: bytes | None = None,
    ) -> None:
        super().__init__(address, family, max(backlog, socket.SOMAXCONN), authkey)
        inner = self._listener  # type: ignore[attr-defined]
        _set_nodelay(inner._socket)


def _nodelay_client(
    address: Any, family: str | None = None, authkey: bytes | None = None
) -> connection.Connection:
    """Drop-in for ``multiprocessing.connection.Client`` that sets TCP_NODELAY (and
    speaks rpcgen's handshake)."""
    sock = connect(address, None)
    _set_nodelay(sock)
    binding = socket_binding(sock.getpeername())
    conn = connection.Connection(sock.detach())
    if authkey is not None:
        client_handshake(conn.fileno(), authkey, binding)
    return conn


# -- the handshake ---------------------------------------------------------------------

HELLO = b"rpcgen-2\n"
_NONCE = 32
#: The handshake's binding inside TLS: the channel, whose server TLS has verified.
TLS_BINDING = b"tls"
#: What a stock multiprocessing server sends first, after a 4-byte length.
STOCK_CHALLENGE = b"#CHALLENGE#"
_STOCK_HEAD = b"\0" * 4 + STOCK_CHALLENGE


class StockChallenge(Exception):
    """The peer is a stock multiprocessing server: it challenged us first (nothing
    derived from the key was sent to it)."""


def socket_binding(address: Any) -> bytes:
    """How both ends name the server's socket: ``tcp IP PORT`` or ``unix PATH``.

    The client passes its socket's peer address, the server its accepted socket's own
    address: they agree when nothing stands between them.
    """
    if isinstance(address, (str, bytes)):
        return b"unix " + os.fsencode(address)
    ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"tcp {ip.compressed} {int(address[1])}".encode()


def proof(key: bytes, role: bytes, first: bytes, second: bytes, binding: bytes) -> bytes:
    """What a side (``role`` b"server" or b"client") sends to prove it holds ``key``."""
    return hmac.new(key, role + b"\0" + first + second + binding, "sha256").digest()


def client_handshake(fd: Stream, key: bytes, binding: bytes) -> None:
    """The client's side: send a nonce; check the server's proof; only then prove ours.

    ``AuthenticationError`` if the server's proof is wrong: a different key, a
    program that is not the server, or a relay. Nothing derived from the key was sent.
    """
    mine = secrets.token_bytes(_NONCE)
    write_all(fd, HELLO + mine)
    head = read_exactly(fd, len(_STOCK_HEAD))
    if head[4:] == STOCK_CHALLENGE:
        raise StockChallenge("the server sent multiprocessing's challenge first")
    reply = head + read_exactly(fd, 2 * _NONCE - len(head))
    theirs, shown = reply[:_NONCE], reply[_NONCE:]
    if not hmac.compare_digest(shown, proof(key, b"server", mine, theirs, binding)):
        raise AuthenticationError("the server did not prove that it holds the key")
    write_all(fd, proof(key, b"client", theirs, mine, binding))


managers.listener_client[SERIALIZER] = (NoDelayListener, _nodelay_client)  # type: ignore[attr-defined]


def _handshake(
    address: Address,
    authkey: bytes,
    *,
    service: str,
    timeout_s: float,
    request: tuple[Any, ...],
    tls: TlsPolicy | None = None,
) -> tuple[Link, Any]:
    """Connect, authenticate both ways, send one manager-level request, read its reply
    (returned with the connection).

    Every step is bounded by ``timeout_s``. Raises :class:`ServiceUnavailable`,
    :class:`ServiceAuthenticationError` or :class:`ServiceTLSError`; never a raw
    socket, TLS or manager error.
    """
    host, port = describe(address)
    policy = tls or TlsPolicy()
    secure = policy.applies(address)
    if not secure and policy.plaintext_across_hosts(address):
        _warn_plaintext(address)
    try:
        sock = connect(address, timeout_s)
    except OSError as exc:
        raise ServiceUnavailable(service=service, host=host, port=port, reason=str(exc)) from exc
    conn: Link
    try:
        _set_nodelay(sock)
        sock.settimeout(None)
        _set_recv_timeout(sock, timeout_s)
        binding = TLS_BINDING if secure else socket_binding(sock.getpeername())
        if not secure:
            conn = connection.Connection(sock.detach())
    except OSError as exc:  # e.g. reset by a server that died as we connected
        sock.close()
        raise ServiceUnavailable(service=service, host=host, port=port, reason=repr(exc)) from exc
    except BaseException:
        sock.close()
        raise
    if secure:
        conn = _tls_connect(sock, policy.client_context(authkey), service, host, port)
    try:
        client_handshake(stream_of(conn), authkey, binding)
        conn.send(request)
        kind, result = conn.recv()
        if kind != "#RETURN":
            raise RemoteCallError(service=service, method=request[1], remote_traceback=str(result))
    except AuthenticationError as exc:
        conn.close()
        raise ServiceAuthenticationError(service=service, host=host, port=port) from exc
    except StockChallenge as exc:
        conn.close()
        raise StockServerFound(service=service, host=host, port=port) from exc
    except ssl.SSLError as exc:  # under TLS 1.3 a refused client certificate shows here
        conn.close()
        raise ServiceTLSError(
            service=service, host=host, port=port, reason=exc.reason or str(exc)
        ) from exc
    except (OSError, EOFError, ValueError) as exc:
        conn.close()
        if isinstance(exc, BlockingIOError):
            reason = "handshake timed out"
        elif isinstance(exc, EOFError) and not secure:
            reason = (
                "the server hung up during the handshake (a server with TLS on? both sides "
                "need the same tls= setting)"
            )
        elif isinstance(exc, EOFError):
            reason = "the server hung up during the handshake (did it refuse our certificate?)"
        else:
            reason = repr(exc)
        raise ServiceUnavailable(service=service, host=host, port=port, reason=reason) from exc
    except BaseException:
        conn.close()
        raise
    return conn, result


def _tls_connect(
    sock: socket.socket, context: ssl.SSLContext, service: str, host: str, port: int | str
) -> TlsStream:
    fd = sock.detach()
    try:
        return TlsStream.connect(fd, context)
    except ssl.SSLCertVerificationError as exc:
        os.close(fd)
        raise ServiceTLSError(
            service=service, host=host, port=port, reason=exc.verify_message or str(exc)
        ) from exc
    except ssl.SSLError as exc:
        os.close(fd)
        raise ServiceTLSError(
            service=service, host=host, port=port, reason=exc.reason or str(exc)
        ) from exc
    except BlockingIOError as exc:
        os.close(fd)
        raise ServiceUnavailable(
            service=service, host=host, port=port, reason="TLS handshake timed out"
        ) from exc
    except OSError as exc:
        os.close(fd)
        raise ServiceTLSError(
            service=service, host=host, port=port, reason=f"the connection ended ({exc})"
        ) from exc
    except BaseException:
        os.close(fd)
        raise


_warned: set[str] = set()


def _warn_plaintext(address: Address) -> None:
    label = Endpoint.of(address).label
    if label not in _warned:
        _warned.add(label)
        logger.warning(
            "INSECURE: connecting to %s in plain TCP (tls='insecure-plaintext'): anyone on "
            "the path reads every call and can run code in the server",
            label,
        )


def open_connection(
    address: Address,
    authkey: bytes,
    *,
    service: str,
    timeout_s: float,
    mux: bool = False,
    tls: TlsPolicy | None = None,
    shared: tuple[SharedLink, Offer] | None = None,
) -> Link:
    """Open one authenticated connection that the server serves in its own thread.

    ``mux``: a multiplexed connection (tagged frames, many calls in flight), for asyncio.
    ``shared``: arenas to offer the server (see .shm); their ``accepted`` says if it
    took them.
    """
    conn, answer = _handshake(
        address,
        authkey,
        service=service,
        timeout_s=timeout_s,
        request=(
            None,
            "rpcgen_accept_mux" if mux else "rpcgen_accept",
            (threading.current_thread().name,),
            {} if shared is None else {"shared": shared[1]},
        ),
        tls=tls,
    )
    if shared is not None:
        shared[0].accepted = answer is True
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as view:
            _set_recv_timeout(view, 0.0)  # calls block until replied, unless given a timeout
    except BaseException:
        conn.close()
        raise
    return conn


def request_shutdown(
    address: Address,
    authkey: bytes,
    *,
    service: str,
    timeout_s: float,
    tls: TlsPolicy | None = None,
) -> None:
    """Ask the server to stop serving and exit (the manager's own ``shutdown`` request)."""
    _handshake(
        address,
        authkey,
        service=service,
        timeout_s=timeout_s,
        request=(None, "shutdown", (), {}),
        tls=tls,
    )[0].close()


def _cut_short(exc: BaseException) -> bool:
    """Whether the server hung up mid-handshake, before it proved anything: a server whose
    table of pending handshakes was full (under attack) drops the newest peers it has
    not heard from yet. Nothing of the call was sent, so trying again is safe."""
    return isinstance(exc.__cause__, (EOFError, ConnectionResetError, BrokenPipeError))


def again_if_cut_short(attempt: Callable[[], Link], bound_s: float) -> Link:
    """``attempt()`` (a connection), tried again with a short backoff while the server
    hangs up mid-handshake, within ``bound_s``."""
    deadline = time.monotonic() + bound_s
    delay = 0.02
    while True:
        try:
            return attempt()
        except (ServiceUnavailable, ServiceTLSError) as exc:
            if not _cut_short(exc) or time.monotonic() + delay >= deadline:
                raise
        time.sleep(delay)  # a short backoff: the server sheds load, then takes us
        delay = min(delay * 2, 0.25)


#: each connection's shared memory (see .shm), closed with it
_SHARED: weakref.WeakKeyDictionary[Link, SharedLink] = weakref.WeakKeyDictionary()


def share(conn: Link, link: SharedLink) -> None:
    """Close ``link`` with ``conn`` (see :func:`close`), whoever closes it."""
    _SHARED[conn] = link


def close(conn: Link) -> None:
    """Close ``conn``, and give back its shared memory now (not when its last user goes)."""
    conn.close()
    link = None if isinstance(conn, TlsStream) else _SHARED.pop(conn, None)  # TLS: none
    if link is not None:
        link.close()
