"""Client and listener sockets, and the client-side proxy.

The server is a stock ``multiprocessing.managers.Server``; this module changes
only how sockets are made and how the client talks to it:

* TCP_NODELAY on the listener (accepted sockets inherit it on Linux) and on every
  client socket. Without it each new authenticated connection stalls ~40 ms on
  delayed ACK, because the client writes its last handshake message and its
  first request back to back.
* The served object is registered on the server under a fixed id, so a client
  needs one connection per thread and none of BaseManager's create / incref /
  decref round trips.
* :class:`RPCProxy` closes every connection it opened (a ``connect()``-ed
  BaseManager cannot), drops inherited connections in forked children, and maps
  transport failures to :mod:`rpcgen.runtime.errors`.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import tempfile
import threading
import weakref
from collections.abc import Awaitable, Callable
from multiprocessing import AuthenticationError, connection, managers
from typing import TYPE_CHECKING, Any

from .endpoint import Address, Endpoint
from .errors import (
    CallTimeout,
    RemoteCallError,
    ServiceAuthenticationError,
    ServiceStopped,
    ServiceUnavailable,
)
from .remote import unpack_exception
from .wire import dumps, looks_big, recv_message, send_message

if TYPE_CHECKING:
    from .mux import MuxConnection

__all__ = [
    "OBJECT_ID",
    "SERIALIZER",
    "Address",
    "RPCProxy",
    "connect",
    "default_socket_dir",
    "describe",
    "open_connection",
    "request_shutdown",
    "set_recv_timeout",
    "unix_socket_path",
]

#: Id under which the served object is registered in the manager Server.
OBJECT_ID = "rpcgen"
#: Key in ``multiprocessing.managers.listener_client`` for our socket factories.
SERIALIZER = "rpcgen"


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


_loads = pickle.loads
_acall: Callable[..., Awaitable[Any]] | None = None


def _set_nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _set_recv_timeout(sock: socket.socket, seconds: float) -> None:
    # SO_RCVTIMEO bounds blocking reads at the OS level; Connection uses raw os.read,
    # so Python-level socket timeouts (which switch to non-blocking mode) cannot apply.
    whole = int(seconds)
    micro = int((seconds - whole) * 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, micro))


def set_recv_timeout(conn: connection.Connection, seconds: float) -> None:
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
    """Drop-in for ``multiprocessing.connection.Client`` that sets TCP_NODELAY."""
    sock = connect(address, None)
    _set_nodelay(sock)
    conn = connection.Connection(sock.detach())
    if authkey is not None:
        connection.answer_challenge(conn, authkey)
        connection.deliver_challenge(conn, authkey)
    return conn


managers.listener_client[SERIALIZER] = (NoDelayListener, _nodelay_client)  # type: ignore[attr-defined]


def _handshake(
    address: Address,
    authkey: bytes,
    *,
    service: str,
    timeout_s: float,
    request: tuple[Any, ...],
) -> connection.Connection:
    """Connect, authenticate both ways, send one manager-level request, read its reply.

    Every step is bounded by ``timeout_s``. Raises :class:`ServiceUnavailable`
    or :class:`ServiceAuthenticationError`; never a raw socket or manager error.
    """
    host, port = describe(address)
    try:
        sock = connect(address, timeout_s)
    except OSError as exc:
        raise ServiceUnavailable(service=service, host=host, port=port, reason=str(exc)) from exc
    try:
        _set_nodelay(sock)
        sock.settimeout(None)
        _set_recv_timeout(sock, timeout_s)
        conn = connection.Connection(sock.detach())
    except BaseException:
        sock.close()
        raise
    try:
        connection.answer_challenge(conn, authkey)
        connection.deliver_challenge(conn, authkey)
        conn.send(request)
        kind, result = conn.recv()
        if kind != "#RETURN":
            raise RemoteCallError(service=service, method=request[1], remote_traceback=str(result))
    except AuthenticationError as exc:
        conn.close()
        raise ServiceAuthenticationError(service=service, host=host, port=port) from exc
    except (OSError, EOFError, ValueError) as exc:
        conn.close()
        reason = "handshake timed out" if isinstance(exc, BlockingIOError) else repr(exc)
        raise ServiceUnavailable(service=service, host=host, port=port, reason=reason) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def open_connection(
    address: Address, authkey: bytes, *, service: str, timeout_s: float, mux: bool = False
) -> connection.Connection:
    """Open one authenticated connection that the server serves in its own thread.

    ``mux``: a multiplexed connection (tagged frames, many calls in flight), for asyncio.
    """
    conn = _handshake(
        address,
        authkey,
        service=service,
        timeout_s=timeout_s,
        request=(
            None,
            "rpcgen_accept_mux" if mux else "rpcgen_accept",
            (threading.current_thread().name,),
            {},
        ),
    )
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as view:
            _set_recv_timeout(view, 0.0)  # calls block until replied, unless given a timeout
    except BaseException:
        conn.close()
        raise
    return conn


def request_shutdown(address: Address, authkey: bytes, *, service: str, timeout_s: float) -> None:
    """Ask the server to stop serving and exit (the manager's own ``shutdown`` request)."""
    _handshake(
        address, authkey, service=service, timeout_s=timeout_s, request=(None, "shutdown", (), {})
    ).close()


class _Holder:
    """Per-thread slot; its finalizer closes the thread's connection when the thread ends."""

    __slots__ = ("__weakref__", "conn", "generation")

    def __init__(self, conn: connection.Connection, generation: int) -> None:
        self.conn = conn
        self.generation = generation


def _forget(proxy_ref: weakref.ReferenceType[RPCProxy], conn: connection.Connection) -> None:
    proxy = proxy_ref()
    # A forked child frees the other threads' thread-locals inside os.fork(), before
    # any at-fork hook: the proxy's lock may have been held by one of those threads
    # then, and would never be released. The child's after-fork hook drops the set.
    if proxy is not None and proxy._rpc_pid == os.getpid() and not proxy._rpc_forget(conn):
        return  # _rpc_drop_all took it, and closes it
    conn.close()


_LIVE_PROXIES: weakref.WeakSet[RPCProxy] = weakref.WeakSet()


def _reset_proxies_in_child() -> None:
    # A forked child must never write to its parent's sockets: the parent's
    # thread would read the child's reply. Drop (close our copy of) every fd.
    for proxy in list(_LIVE_PROXIES):
        proxy._rpc_after_fork()


os.register_at_fork(after_in_child=_reset_proxies_in_child)


class CallsByName:
    """``proxy.name(*args, **kwargs)`` is ``proxy._rpc_call("name", args, kwargs)``.

    Private names are never forwarded: they are the proxy's own.
    """

    def _rpc_call(
        self, method: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        call = self._rpc_call

        def method(*args: Any, **kwargs: Any) -> Any:
            return call(name, args, kwargs)

        method.__name__ = method.__qualname__ = name
        self.__dict__[name] = method  # later lookups skip __getattr__
        return method


class RPCProxy(CallsByName):
    """Calls methods of the served object: ``proxy.method(*args, **kwargs)``.

    Safe to share between threads: each thread gets its own connection, opened on
    its first call. Not a ``BaseProxy``: no refcounting, no per-proxy fork hooks.
    """

    def __init__(
        self,
        *,
        service: str,
        address: Address,
        authkey: bytes,
        connect_timeout_s: float = 10.0,
        wait_ready: Callable[[float], bool] | None = None,
    ) -> None:
        self._rpc_service = service
        self._rpc_address = address
        self._rpc_authkey = authkey
        self._rpc_connect_timeout_s = connect_timeout_s
        self._rpc_wait_ready = wait_ready
        self._rpc_init_state()
        _LIVE_PROXIES.add(self)

    def _rpc_init_state(self) -> None:
        self._rpc_tls = threading.local()
        self._rpc_lock = threading.Lock()
        self._rpc_conns: set[connection.Connection] = set()
        self._rpc_generation = 0
        self._rpc_closed = False
        self._rpc_pid = os.getpid()
        # asyncio: one multiplexed connection per event loop (see .mux)
        self._rpc_mux: weakref.WeakKeyDictionary[Any, MuxConnection] = weakref.WeakKeyDictionary()
        self._rpc_mux_opening: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._rpc_mux_last: MuxConnection | None = None

    def __repr__(self) -> str:
        host, port = describe(self._rpc_address)
        return f"<RPCProxy service={self._rpc_service!r} address={host}:{port}>"

    # -- connection management -------------------------------------------------

    def _rpc_connection(
        self, *, wait_ready: bool = True, timeout_s: float | None = None
    ) -> connection.Connection:
        holder: _Holder | None = getattr(self._rpc_tls, "holder", None)
        if (
            holder is not None
            and holder.generation == self._rpc_generation
            and not holder.conn.closed
        ):
            return holder.conn
        return self._rpc_open(wait_ready=wait_ready, timeout_s=timeout_s)

    def _rpc_open(
        self, *, wait_ready: bool = True, timeout_s: float | None = None
    ) -> connection.Connection:
        """Open this thread's connection; ``timeout_s`` (a call's timeout) bounds it too."""
        conn, generation = self._rpc_handshake(wait_ready=wait_ready, timeout_s=timeout_s)
        with self._rpc_lock:
            if self._rpc_closed:
                conn.close()
                raise ServiceStopped(service=self._rpc_service)
            self._rpc_conns.add(conn)
        holder = _Holder(conn, generation)
        weakref.finalize(holder, _forget, weakref.ref(self), conn)
        self._rpc_tls.holder = holder
        return conn

    def _rpc_open_mux(self, timeout_s: float | None = None) -> tuple[int, int]:
        """Open a multiplexed connection (blocking): its own fd, and the generation."""
        conn, generation = self._rpc_handshake(wait_ready=True, timeout_s=timeout_s, mux=True)
        try:
            fd = os.dup(conn.fileno())
        finally:
            conn.close()
        return fd, generation

    def _rpc_handshake(
        self, *, wait_ready: bool, timeout_s: float | None, mux: bool = False
    ) -> tuple[connection.Connection, int]:
        if self._rpc_closed:
            raise ServiceStopped(service=self._rpc_service)
        bound = min(self._rpc_connect_timeout_s, timeout_s or self._rpc_connect_timeout_s)
        ready = self._rpc_wait_ready if wait_ready else None
        if ready is not None:
            ready(bound)  # a restart is under way: wait for it (bounded), don't fail fast
        generation = self._rpc_generation
        try:
            conn = open_connection(
                self._rpc_address,
                self._rpc_authkey,
                service=self._rpc_service,
                timeout_s=bound,
                mux=mux,
            )
        except ServiceAuthenticationError:
            # A restart can put a new server, with a new key, on the port between the
            # wait above and the connect. Then (and only then) wait for the restart to
            # finish and try once more, with the new key.
            if ready is None or (self._rpc_generation == generation and ready(0)):
                raise
            ready(bound)
            generation = self._rpc_generation
            conn = open_connection(
                self._rpc_address,
                self._rpc_authkey,
                service=self._rpc_service,
                timeout_s=bound,
                mux=mux,
            )
        return conn, generation

    def _rpc_forget(self, conn: connection.Connection) -> bool:
        """Take ``conn`` out of the set; True if it was there: then the caller closes it.

        Whoever takes a connection out of the set (under the lock) closes it, and only
        they: two threads in ``Connection.close()`` at once could both reach
        ``os.close`` (EBADF, or worse, closing an fd number reused meanwhile). That
        happens when shutdown closes a connection whose call it has just woken.
        """
        with self._rpc_lock:
            if conn in self._rpc_conns:
                self._rpc_conns.discard(conn)
                return True
            return False

    def _rpc_discard(self, conn: connection.Connection) -> None:
        self._rpc_tls.holder = None
        if self._rpc_forget(conn):
            conn.close()

    def _rpc_drop_all(self) -> None:
        with self._rpc_lock:
            conns, self._rpc_conns = self._rpc_conns, set()
            muxes = list(self._rpc_mux.values())
            self._rpc_mux.clear()
            self._rpc_mux_last = None
            self._rpc_generation += 1
        for conn in conns:
            _shutdown_and_close(conn)
        for mux in muxes:
            mux.close_threadsafe()

    def _rpc_rebind(self, address: Address, authkey: bytes) -> None:
        """Point at a restarted server; every thread reconnects on its next call."""
        self._rpc_address = address
        self._rpc_authkey = authkey
        self._rpc_drop_all()

    def _rpc_close(self) -> None:
        """Close every connection; later calls raise ServiceStopped. Idempotent."""
        self._rpc_closed = True
        self._rpc_drop_all()

    def _rpc_after_fork(self) -> None:
        inherited = self._rpc_conns
        muxes = list(self._rpc_mux.values())
        closed = self._rpc_closed
        self._rpc_init_state()
        self._rpc_closed = closed
        for conn in inherited:
            conn.close()  # our copy of the fd only; the parent's socket stays open
        for mux in muxes:
            mux.close_in_child()

    def _rpc_connection_count(self) -> int:
        with self._rpc_lock:
            return len(self._rpc_conns)

    # -- calls -----------------------------------------------------------------

    def _rpc_call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Call ``method`` on the served object and return its result.

        An exception raised by the method is re-raised as itself. With
        ``timeout_s``, a call with no reply in time raises :class:`CallTimeout`.
        """
        kwargs = kwargs or {}
        big = looks_big(args) or (bool(kwargs) and looks_big(kwargs.values()))
        payload = dumps((OBJECT_ID, method, args, kwargs), big)  # errors here: no I/O yet
        conn = self._rpc_connection(timeout_s=timeout_s)
        try:
            send_message(conn.fileno(), payload)
            del payload  # free a big request first: the reply reuses its memory (~2x on 1 MB)
            if timeout_s is not None and not conn.poll(timeout_s):
                reply = None
            else:
                reply = recv_message(conn.fileno())
        except (OSError, EOFError) as exc:
            self._rpc_discard(conn)
            raise self._rpc_transport_error(method, exc) from exc
        except BaseException:
            # KeyboardInterrupt or similar mid-call: the reply may still arrive, so
            # this connection is out of step. Never reuse it.
            self._rpc_discard(conn)
            raise
        if reply is None:  # raised here, not above: CallTimeout is an OSError too
            assert timeout_s is not None
            self._rpc_discard(conn)
            host, port = describe(self._rpc_address)
            raise CallTimeout(
                service=self._rpc_service, host=host, port=port, method=method, timeout_s=timeout_s
            )
        return self._rpc_decode(method, reply)

    def _rpc_acall(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Awaitable[Any]:
        """:meth:`_rpc_call` as an awaitable, on this event loop's multiplexed connection.

        A cancelled or timed-out call's late reply is dropped; the connection stays
        in step. Transport failures raise the same errors as :meth:`_rpc_call`.
        """
        global _acall
        if _acall is None:
            from .mux import acall  # asyncio is imported only by programs that use it

            _acall = acall
        return _acall(self, method, args, kwargs, timeout_s)

    def _rpc_transport_error(self, method: str, exc: BaseException | None) -> Exception:
        """The typed error for a call whose connection failed (``exc``; None: EOF)."""
        if self._rpc_closed:
            return ServiceStopped(service=self._rpc_service)
        host, port = describe(self._rpc_address)
        if exc is None or isinstance(exc, EOFError):
            reason = "connection closed by the server"
        else:
            reason = repr(exc)
        return ServiceUnavailable(
            service=self._rpc_service, host=host, port=port, reason=f"{method}(): {reason}"
        )

    def _rpc_decode(self, method: str, reply: bytes | bytearray) -> Any:
        """The result in a pickled reply, or its exception raised."""
        try:
            kind, result = _loads(reply)
        except Exception as exc:
            raise RemoteCallError(
                service=self._rpc_service,
                method=method,
                remote_traceback=f"the reply could not be unpickled here: {exc!r}",
            ) from exc
        if kind == "#RETURN":
            return result
        if kind == "#RAISED":
            error = unpack_exception(result, service=self._rpc_service, method=method)
            try:
                raise error
            finally:
                del error, result  # break the traceback reference cycle
        if kind == "#ERROR":
            try:
                raise result
            finally:
                del result  # break the traceback reference cycle
        raise RemoteCallError(
            service=self._rpc_service, method=method, remote_traceback=str(result)
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The authkey travels explicitly: a pickled proxy must be able to authenticate.
        return (
            _rebuild_proxy,
            (self._rpc_service, self._rpc_address, self._rpc_authkey, self._rpc_connect_timeout_s),
        )


def _rebuild_proxy(service: str, address: Address, authkey: bytes, timeout_s: float) -> RPCProxy:
    return RPCProxy(service=service, address=address, authkey=authkey, connect_timeout_s=timeout_s)


def _shutdown_and_close(conn: connection.Connection) -> None:
    # shutdown() wakes a thread blocked in recv on this socket before the fd is closed,
    # so that thread cannot later touch a reused fd number.
    if conn.closed:
        return
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as view:
            view.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()
