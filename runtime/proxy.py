"""The process backend's client proxy: calls on per-thread connections.

:class:`RPCProxy` is what ``_server_proxy`` returns for a service in its own
process. Each thread gets its own connection, opened on its first call; asyncio
calls share one multiplexed connection per event loop (:mod:`.mux`, imported
only by programs that use it). It closes every connection it opened (a
``connect()``-ed BaseManager cannot), drops inherited connections in forked
children, and maps transport failures to :mod:`rpcgen.runtime.errors`.
"""

from __future__ import annotations

import functools
import os
import pickle
import select
import socket
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import shm
from .backend import CallsByName
from .calls import _DEADLINE, current_deadline
from .constants import DEFAULT_MAX_MESSAGE_BYTES
from .endpoint import Address
from .errors import (
    CallTimeout,
    ServiceAuthenticationError,
    ServiceStopped,
    ServiceUnavailable,
)
from .oob import loads as oob_loads
from .replies import ReplyErrors, unpickle_reply
from .retry import retrying
from .shm import Reader, SharedLink
from .stream_client import RemoteStream
from .tls import TlsPolicy, TlsStream
from .transport import (
    Link,
    again_if_cut_short,
    close,
    describe,
    open_connection,
    request_payload,
    share,
    stream_of,
)
from .wire import (
    Payload,
    ProtocolError,
    Received,
    TooLarge,
    recv_message,
    send_message,
)

if TYPE_CHECKING:
    from .mux import LoopConnections, Opened
    from .stock import StockClient

__all__ = ["RPCProxy"]

_loads = pickle.loads


def _left(end_at: float) -> float:
    return max(end_at - time.monotonic(), 0.001)


class _Holder:
    """Per-thread slot; its finalizer closes the thread's connection when the thread ends."""

    __slots__ = ("__weakref__", "conn", "generation", "poll", "shared", "used")

    def __init__(self, conn: Link, generation: int, shared: SharedLink | None = None) -> None:
        self.conn = conn
        self.generation = generation
        #: the connection's shared memory for large buffers (see .shm), if it has any
        self.shared = shared
        #: when its last reply came (monotonic): a connection that answered under a
        #: millisecond ago is not polled (a loop of calls pays no system call for it)
        self.used = 0.0
        #: ``poll(0)`` is truthy if the connection has bytes (or EOF) to read now:
        #: ~0.2 µs, once per call
        self.poll: Callable[[int], Any]
        if isinstance(conn, TlsStream):
            self.poll = conn.poll
        else:
            poller = select.poll()
            poller.register(conn.fileno(), select.POLLIN)
            self.poll = poller.poll

    @property
    def reader(self) -> Reader | None:
        return None if self.shared is None else self.shared.reader


def _forget(proxy_ref: weakref.ReferenceType[RPCProxy], conn: Link) -> None:
    proxy = proxy_ref()
    # A forked child frees the other threads' thread-locals inside os.fork(), before
    # any at-fork hook: the proxy's lock may have been held by one of those threads
    # then, and would never be released. The child's after-fork hook drops the set.
    if proxy is not None and proxy._rpc_pid == os.getpid() and not proxy._rpc_forget(conn):
        return  # _rpc_drop_all took it, and closes it
    close(conn)


_LIVE_PROXIES: weakref.WeakSet[RPCProxy] = weakref.WeakSet()


def _reset_proxies_in_child() -> None:
    # A forked child must never write to its parent's sockets: the parent's
    # thread would read the child's reply. Drop (close our copy of) every fd.
    for proxy in list(_LIVE_PROXIES):
        proxy._rpc_after_fork()


os.register_at_fork(after_in_child=_reset_proxies_in_child)


class RPCProxy(CallsByName, ReplyErrors):
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
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: TlsPolicy | None = None,
        call_timeout_s: float | None = None,
        idempotent: frozenset[str] = frozenset(),
        stream_window: tuple[int, int] | None = None,
        shared_memory_bytes: int = 0,
    ) -> None:
        self._rpc_service = service
        self._rpc_shared_bytes = shared_memory_bytes
        #: a call's timeout where it gives none and no deadline() applies
        self._rpc_call_timeout_s = call_timeout_s
        #: server methods safe to run twice: tried again across a restart
        self._rpc_idempotent = idempotent
        self._rpc_window = stream_window
        self._rpc_tls_policy = tls or TlsPolicy()
        #: set when the server speaks the stock manager protocol (see .stock)
        self._rpc_stock: StockClient | None = None
        self._rpc_max_message_bytes = max_message_bytes
        self._rpc_address = address
        self._rpc_authkey = authkey
        self._rpc_connect_timeout_s = connect_timeout_s
        self._rpc_wait_ready = wait_ready
        self._rpc_init_state()
        _LIVE_PROXIES.add(self)

    def _rpc_init_state(self) -> None:
        self._rpc_tls = threading.local()
        self._rpc_lock = threading.Lock()
        self._rpc_conns: set[Link] = set()
        self._rpc_idle: list[_Holder] = []  # connections finished streams gave back
        self._rpc_generation = 0
        self._rpc_closed = False
        self._rpc_pid = os.getpid()
        # asyncio: one multiplexed connection per event loop, made on the first
        # asyncio call (see .mux)
        self._rpc_loops: LoopConnections | None = None

    def __repr__(self) -> str:
        host, port = describe(self._rpc_address)
        return f"<RPCProxy service={self._rpc_service!r} address={host}:{port}>"

    # -- connection management -------------------------------------------------

    def _rpc_use_stock(self, typeid: str) -> None:
        """Talk to a stock manager server from now on (its owner decided it may)."""
        from .stock import StockClient  # only for servers that build their own BaseManager

        self._rpc_stock = StockClient(
            service=self._rpc_service,
            address=self._rpc_address,
            authkey=self._rpc_authkey,
            typeid=typeid,
        )

    def _rpc_connect(self, *, wait_ready: bool = True, timeout_s: float | None = None) -> None:
        """Open this thread's connection now (a start or attach checks the server so)."""
        if self._rpc_stock is not None:
            self._rpc_stock.connect()
        else:
            self._rpc_connection(wait_ready=wait_ready, timeout_s=timeout_s)

    def _rpc_connection(self, *, wait_ready: bool = True, timeout_s: float | None = None) -> Link:
        return self._rpc_holder(wait_ready=wait_ready, timeout_s=timeout_s).conn

    def _rpc_holder(self, *, wait_ready: bool = True, timeout_s: float | None = None) -> _Holder:
        """This thread's connection (in its slot), opened if it has none."""
        holder: _Holder | None = getattr(self._rpc_tls, "holder", None)
        if (
            holder is not None
            and holder.generation == self._rpc_generation
            and not holder.conn.closed
        ):
            if time.monotonic() - holder.used < 0.001 or not holder.poll(0):
                return holder
            # Something to read on an idle connection: the server closed it (it died or
            # restarted, which a client that does not own it is not told) or it is out
            # of step. Nothing of this call was sent yet: a new connection is safe, and
            # it follows the restarted server.
            self._rpc_discard(holder.conn)
        holder = None  # dropped here, not under the lock: its finalizer takes the lock
        while self._rpc_idle:  # a connection a finished stream gave back
            with self._rpc_lock:
                idle = self._rpc_idle.pop() if self._rpc_idle else None
            if idle is None:
                break
            if (
                idle.generation == self._rpc_generation
                and not idle.conn.closed
                and not idle.poll(0)
            ):
                self._rpc_tls.holder = idle
                return idle
            self._rpc_forget_holder(idle)
            idle = None
        return self._rpc_open(wait_ready=wait_ready, timeout_s=timeout_s)

    def _rpc_open(self, *, wait_ready: bool = True, timeout_s: float | None = None) -> _Holder:
        """Open this thread's connection; ``timeout_s`` (a call's timeout) bounds it too."""
        conn, generation, shared = self._rpc_handshake(wait_ready=wait_ready, timeout_s=timeout_s)
        if shared is not None:
            share(conn, shared)
        with self._rpc_lock:
            if self._rpc_closed:
                close(conn)
                raise ServiceStopped(service=self._rpc_service)
            self._rpc_conns.add(conn)
        holder = _Holder(conn, generation, shared)
        weakref.finalize(holder, _forget, weakref.ref(self), conn)
        self._rpc_tls.holder = holder
        return holder

    def _rpc_open_mux(self, timeout_s: float | None = None) -> Opened:
        """Open a multiplexed connection (blocking): its own fd, the generation, its TLS
        state (None: plain) and its shared memory (None: none)."""
        conn, generation, shared = self._rpc_handshake(
            wait_ready=True, timeout_s=timeout_s, mux=True
        )
        try:
            fd = os.dup(conn.fileno())
        finally:
            conn.close()
        return fd, generation, conn.tls if isinstance(conn, TlsStream) else None, shared

    def _rpc_handshake(
        self, *, wait_ready: bool, timeout_s: float | None, mux: bool = False
    ) -> tuple[Link, int, SharedLink | None]:
        """A new connection, its generation, and its shared memory if the server took it."""
        if self._rpc_closed:
            raise ServiceStopped(service=self._rpc_service)
        bound = self._rpc_connect_timeout_s
        if timeout_s is not None:
            bound = min(bound, max(timeout_s, 0.001))
        ready = self._rpc_wait_ready if wait_ready else None
        if ready is not None:
            ready(bound)  # a restart is under way: wait for it (bounded), don't fail fast
        offered = shm.offer_for(self._rpc_address, self._rpc_tls_policy, self._rpc_shared_bytes)

        def attempt() -> Link:  # the address and key as they are now
            return open_connection(
                self._rpc_address,
                self._rpc_authkey,
                service=self._rpc_service,
                timeout_s=bound,
                mux=mux,
                tls=self._rpc_tls_policy,
                shared=offered,
            )

        generation = self._rpc_generation
        try:
            conn = again_if_cut_short(attempt, bound)
        except ServiceAuthenticationError:
            # A restart can put a new server, with a new key, on the port between the
            # wait above and the connect. Then (and only then) wait for the restart to
            # finish and try once more, with the new key.
            if ready is None or (self._rpc_generation == generation and ready(0)):
                raise
            ready(bound)
            generation = self._rpc_generation
            conn = attempt()
        link = offered[0] if offered is not None and offered[0].accepted else None
        return conn, generation, link

    def _rpc_wait_with(self, wait_ready: Callable[[float], bool]) -> None:
        """How a new connection waits for the server (a forked copy follows it instead)."""
        self._rpc_wait_ready = wait_ready

    def _rpc_forget(self, conn: Link) -> bool:
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

    def _rpc_discard(self, conn: Link) -> None:
        self._rpc_tls.holder = None
        if self._rpc_forget(conn):
            close(conn)

    def _rpc_drop_all(self) -> None:
        with self._rpc_lock:
            conns, self._rpc_conns = self._rpc_conns, set()
            idle, self._rpc_idle = self._rpc_idle, []  # collected after the lock (finalizers)
            self._rpc_generation += 1
        del idle
        for conn in conns:
            _shutdown_and_close(conn)
        if self._rpc_loops is not None:
            self._rpc_loops.close_all()

    def _rpc_rebind(self, address: Address, authkey: bytes) -> None:
        """Point at a restarted server; every thread reconnects on its next call."""
        self._rpc_address = address
        self._rpc_authkey = authkey
        self._rpc_drop_all()
        if self._rpc_stock is not None:
            self._rpc_stock.reset(address, authkey)

    def _rpc_close(self) -> None:
        """Close every connection; later calls raise ServiceStopped. Idempotent."""
        self._rpc_closed = True
        self._rpc_drop_all()
        if self._rpc_stock is not None:
            self._rpc_stock.reset()

    def _rpc_after_fork(self) -> None:
        inherited, loops = self._rpc_conns, self._rpc_loops
        closed = self._rpc_closed
        self._rpc_init_state()
        self._rpc_closed = closed
        for conn in inherited:
            close(conn)  # our copy of the fd only; the parent's socket stays open
        if loops is not None:
            loops.close_in_child()

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

        An exception raised by the method is re-raised as itself. The call's timeout is
        ``timeout_s``, else what is left of the current :func:`~.calls.deadline`, else
        the client's ``call_timeout_s``; it travels with the request (a server that
        gets it too late does not run it), and no reply in time raises
        :class:`CallTimeout`. A method marked idempotent is tried again across a
        restart or a lost connection, within that time (see :mod:`.retry`).
        """
        if self._rpc_stock is not None:
            if self._rpc_closed:
                raise ServiceStopped(service=self._rpc_service)
            if self._rpc_wait_ready is not None:  # a restart under way: wait for it (bounded)
                self._rpc_wait_ready(self._rpc_connect_timeout_s)
            return self._rpc_stock.call(method, args, kwargs, timeout_s)
        if timeout_s is None and (
            self._rpc_call_timeout_s is not None or _DEADLINE.get() is not None
        ):
            timeout_s = self._rpc_timeout(method, None)
        payload = request_payload(method, args, kwargs, timeout_s, self._rpc_window)
        if len(payload) > self._rpc_max_message_bytes:
            raise self._rpc_too_large("request", len(payload))
        if method in self._rpc_idempotent:
            reply, holder = self._rpc_exchange_again(method, payload, timeout_s)
        else:
            reply, holder = self._rpc_exchange(method, payload, timeout_s)
        try:
            kind, result = _loads(reply) if reply[0] else oob_loads(reply, holder.reader)
        except Exception:
            kind, result = unpickle_reply(self._rpc_service, method, reply, holder.reader)
        if kind == "#RETURN":
            return result
        if kind == "#STREAM":
            # The stream has this connection to itself until it ends: this thread's
            # next call takes another.
            if getattr(self._rpc_tls, "holder", None) is holder:
                self._rpc_tls.holder = None
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            return RemoteStream(self, holder, method, result, deadline, timeout_s)
        return self._rpc_result(method, kind, result)

    def _rpc_exchange(
        self, method: str, payload: Payload, timeout_s: float | None
    ) -> tuple[Received, _Holder]:
        """Send one request and read its reply: only transport errors are raised here."""
        limit = self._rpc_max_message_bytes
        holder = self._rpc_holder(timeout_s=timeout_s)
        conn = holder.conn
        try:
            stream = stream_of(conn)
            shared = holder.shared
            send_message(stream, payload if shared is None else shared.place(payload))
            if timeout_s is not None and not conn.poll(timeout_s):
                reply = None
            else:
                reply = recv_message(stream, limit)
        except TooLarge as exc:  # nothing of it was read: the connection is out of step
            self._rpc_discard(conn)
            raise self._rpc_too_large("reply", exc.size) from None
        except (OSError, EOFError, ProtocolError) as exc:
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
            raise self._rpc_call_timeout(method, timeout_s)
        holder.used = time.monotonic()
        return reply, holder

    def _rpc_exchange_again(
        self, method: str, payload: Payload, timeout_s: float | None
    ) -> tuple[Received, _Holder]:
        """:meth:`_rpc_exchange`, tried again across a lost connection (idempotent methods)."""
        end_at = time.monotonic() + (timeout_s or self._rpc_connect_timeout_s)
        return retrying(
            lambda: self._rpc_exchange(method, payload, _left(end_at)),
            end_at=end_at,
            retryable=self._rpc_retryable,
        )

    def _rpc_retryable(self, exc: BaseException) -> bool:
        """A failure of the connection, not of the method, and not the caller's doing."""
        return (
            isinstance(exc, ServiceUnavailable)
            and not isinstance(exc, (CallTimeout, ServiceStopped))
            and not self._rpc_closed
        )

    # -- streams: a connection of their own until they end ------------------------------------

    def _rpc_release(self, holder: _Holder) -> None:
        """A stream ended in step: its connection serves calls again (this thread's, if it
        has none, else the next thread that needs one)."""
        if holder.generation != self._rpc_generation or holder.conn.closed:
            return
        if getattr(self._rpc_tls, "holder", None) is None:
            self._rpc_tls.holder = holder
        else:
            with self._rpc_lock:
                self._rpc_idle.append(holder)

    def _rpc_forget_holder(self, holder: _Holder) -> None:
        if self._rpc_forget(holder.conn):
            close(holder.conn)

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
        if self._rpc_stock is not None:  # no mux in the stock protocol: a thread per call
            import asyncio

            return asyncio.get_running_loop().run_in_executor(
                None, functools.partial(self._rpc_call, method, args, kwargs, timeout_s)
            )
        timeout_s = self._rpc_timeout(method, timeout_s)
        return self._rpc_mux().call(self, method, args, kwargs, timeout_s)

    def _rpc_astream(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Any]:
        """A streaming method's items for ``async for``, on this loop's connection."""
        timeout_s = self._rpc_timeout(method, timeout_s)
        return self._rpc_mux().stream(self, method, args, kwargs, timeout_s)

    def _rpc_mux(self) -> LoopConnections:
        loops = self._rpc_loops
        if loops is None:
            from .mux import LoopConnections  # asyncio: imported only by programs that use it

            with self._rpc_lock:
                if self._rpc_loops is None:
                    self._rpc_loops = LoopConnections()
                loops = self._rpc_loops
        return loops

    def _rpc_timeout(self, method: str, timeout_s: float | None) -> float | None:
        """A call's timeout: its own, else the current deadline's rest, else the client's."""
        if timeout_s is not None:
            return timeout_s
        end = current_deadline()
        if end is None:
            return self._rpc_call_timeout_s
        left = end - time.monotonic()
        if left <= 0:
            raise self._rpc_call_timeout(method, 0.0)
        return left

    def __reduce__(self) -> tuple[Any, ...]:
        # The authkey travels explicitly: a pickled proxy must be able to authenticate.
        return (
            _rebuild_proxy,
            (
                self._rpc_service,
                self._rpc_address,
                self._rpc_authkey,
                self._rpc_connect_timeout_s,
                self._rpc_max_message_bytes,
                self._rpc_tls_policy,
                self._rpc_stock.typeid if self._rpc_stock is not None else None,
                self._rpc_shared_bytes,
            ),
        )


def _rebuild_proxy(
    service: str,
    address: Address,
    authkey: bytes,
    timeout_s: float,
    max_bytes: int,
    tls: TlsPolicy | None = None,
    stock: str | None = None,
    shared_memory_bytes: int = 0,
) -> RPCProxy:
    proxy = RPCProxy(
        service=service,
        address=address,
        authkey=authkey,
        connect_timeout_s=timeout_s,
        max_message_bytes=max_bytes,
        tls=tls,
        shared_memory_bytes=shared_memory_bytes,
    )
    if stock is not None:
        proxy._rpc_use_stock(stock)
    return proxy


def _shutdown_and_close(conn: Link) -> None:
    # shutdown() wakes a thread blocked in recv on this socket before the fd is closed,
    # so that thread cannot later touch a reused fd number.
    if conn.closed:
        return
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as view:
            view.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    close(conn)
