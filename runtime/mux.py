"""asyncio calls: many in flight on one connection per event loop.

A multiplexed connection carries tagged frames (:func:`~.wire.tagged_frame`):
each request has an id, and the server answers in whatever order its calls
finish. This side reads and writes the socket's fd straight from the event loop
(``add_reader``), so that a burst of calls made in one loop turn goes out in one
``write`` and a burst of replies comes in with one ``read``.

Only the loop's own thread touches a connection's futures. Any thread may close
it (:meth:`MuxConnection.close_threadsafe`): a restart or ``shutdown()`` runs in
whatever thread noticed, and closing there must not touch the loop's selector.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import socket
import ssl
import threading
import weakref
from asyncio import get_running_loop
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .errors import CallTimeout, MessageTooLarge, ServiceStopped
from .oob import SharedReader, window_size
from .oob import loads as oob_loads
from .shm import SharedLink
from .stream_aio import AsyncRemoteStream, CallFuture
from .stream_server import CLOSE
from .tls import Tls
from .transport import request_payload
from .wire import CONTROL, FrameReader, Payload, ProtocolError, tagged_frame

#: a new multiplexed connection: fd, generation, TLS state, shared memory
Opened = tuple[int, int, Tls | None, SharedLink | None]

__all__ = ["LoopConnections", "MuxClient", "MuxConnection"]

# Under malloc's mmap threshold: a bigger buffer costs an mmap and a munmap per read.
_READ_SIZE = 1 << 16


def _settable(exc: Exception) -> Exception:
    # A future cannot hold StopIteration (it would end the awaiting coroutine's frame).
    if isinstance(exc, StopIteration):
        error = RuntimeError(f"the server method raised StopIteration: {exc!r}")
        error.__cause__ = exc
        return error
    return exc


class MuxConnection:
    """One authenticated, multiplexed connection, used by one event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        generation: int,
        *,
        decode: Callable[[str, bytes, SharedReader | None], Any],
        lost_error: Callable[[str, BaseException | None], Exception],
        max_bytes: int,
        tls: Tls | None = None,
        shared: SharedLink | None = None,
    ) -> None:
        # Weak: the proxy's table maps the loop (weakly) to us, so a strong reference
        # here would keep every finished asyncio.run() loop, and our fd, alive.
        self._loop = weakref.ref(loop)
        self.fd = fd
        self.generation = generation
        self.closed = False  # no new requests
        self._finished = False  # reader removed, fd closed, calls in flight failed
        self._fd_lock = threading.Lock()  # whoever closes the fd holds it
        self._thread = threading.get_ident()
        # Replies are decoded here, on the loop, so that a call's future is all its caller
        # awaits: no coroutine of ours per call.
        self._decode = decode
        self._lost_error = lost_error
        #: this connection's shared memory for large buffers (see .shm), if it has any
        self.shared = shared
        self._in_shared = None if shared is None else shared.reader
        self._pending: dict[int, tuple[asyncio.Future[Any], str]] = {}
        #: open streams, held weakly: one its consumer dropped is collected (and closed)
        self._streams: dict[int, weakref.ReferenceType[AsyncRemoteStream[Any]]] = {}
        self._ids = itertools.count(1)
        self._reader = FrameReader(max_bytes)
        self._out: list[bytes | memoryview] = []
        self._tls = tls
        self._sealed = b""  # TLS: encrypted bytes the socket did not take yet
        self._flush_scheduled = False
        self._writer_registered = False
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._on_readable)
        # A loop that is dropped without anyone closing us (asyncio.run() ends) takes
        # the fd with it.
        self._fd_box = [fd]
        self._finalizer = weakref.finalize(loop, _close_fd, self._fd_lock, self._fd_box, shared)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._pending)} in flight"
        return f"<MuxConnection fd={self.fd} {state}>"

    # -- calls (loop thread) -------------------------------------------------------------

    def request(
        self, loop: asyncio.AbstractEventLoop, payload: Payload, method: str
    ) -> asyncio.Future[Any]:
        """Send one pickled request; the future gets its result or its (typed) error."""
        ident = next(self._ids)
        future = CallFuture(loop=loop)
        future._rpc_conn, future._rpc_ident = self, ident  # its cancel tells the server
        pending = self._pending
        pending[ident] = (future, method)
        if self.shared is not None:
            payload = self.shared.place(payload)
        self._out.extend(tagged_frame(ident, payload))
        if not (self._flush_scheduled or self._writer_registered):
            if len(pending) == 1:
                self._flush(loop)  # nothing else in flight: send now, no extra loop turn
            else:
                # Others are in flight: send with whatever this loop turn adds.
                self._flush_scheduled = True
                loop.call_soon(self._flush, loop)
        return future

    def open_stream(self, loop: asyncio.AbstractEventLoop, payload: Payload, stream: Any) -> int:
        """Send a streaming call's request; its frames go to ``stream.deliver``."""
        ident = next(self._ids)
        self._streams[ident] = weakref.ref(stream)
        if self.shared is not None:
            payload = self.shared.place(payload)
        self._send_now(loop, tagged_frame(ident, payload))
        return ident

    def forget_stream(self, ident: int) -> None:
        self._streams.pop(ident, None)

    def control(self, ident: int, body: bytes) -> None:
        """A message for a call in flight (loop thread): a cancel, a credit, a close."""
        loop = self._loop()
        if self.closed or loop is None:
            return
        self._send_now(loop, tagged_frame(ident | CONTROL, body))

    def control_threadsafe(self, ident: int, body: bytes) -> None:
        loop = self._loop()
        if loop is not None and not loop.is_closed() and not self.closed:
            loop.call_soon_threadsafe(self.control, ident, body)

    def _send_now(self, loop: asyncio.AbstractEventLoop, pieces: list[bytes | memoryview]) -> None:
        self._out.extend(pieces)
        if not (self._flush_scheduled or self._writer_registered):
            self._flush_scheduled = True
            loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_scheduled = False
        out = self._out
        if (not out and not self._sealed) or self.closed:
            return
        if self._tls is None:
            data: bytes | memoryview = out[0] if len(out) == 1 else b"".join(out)
        else:
            # Encrypted once, in order; what the socket does not take waits, sealed.
            data = self._sealed + self._tls.encrypt_all(out) if out else self._sealed
            self._sealed = b""
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):
            if self._tls is None:
                self._out = [memoryview(data)[sent:]]
            else:
                self._out, self._sealed = [], bytes(memoryview(data)[sent:])
            if not self._writer_registered:
                loop.add_writer(self.fd, self._flush, loop)
                self._writer_registered = True
        else:
            self._out = []
            if self._writer_registered:
                loop.remove_writer(self.fd)
                self._writer_registered = False

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        try:
            if self._tls is not None:
                data = self._tls.decrypt(data)
            frames = self._reader.feed(data)
        except (ProtocolError, ssl.SSLError) as exc:
            self._lost(exc)
            return
        pending = self._pending
        decode, reader = self._decode, self._in_shared
        for ident, body in frames:
            entry = pending.pop(ident, None)
            if entry is None:
                self._to_stream(ident, body)
                continue
            future, method = entry
            if future.done():  # its caller was cancelled or timed out: the reply is dropped
                continue
            try:
                result = decode(method, body, reader)
            except Exception as exc:
                future.set_exception(_settable(exc))
            else:
                future.set_result(result)

    def _to_stream(self, ident: int, body: bytes) -> None:
        ref = self._streams.get(ident)
        stream = ref() if ref is not None else None
        if stream is None:
            if ref is not None:  # its consumer dropped it: stop the server's generator
                del self._streams[ident]
                self.control(ident, CLOSE)
            return
        try:
            kind, value = oob_loads(body, self._in_shared)
        except Exception as exc:
            stream.lost(self._lost_error(stream.method, exc))
            return
        stream.deliver(kind, value, window_size(body))

    def _lost(self, cause: BaseException | None) -> None:
        """Close (loop thread): every call in flight fails with the typed transport error."""
        if self._finished:
            return
        self.closed = self._finished = True
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.fd)
            if self._writer_registered:
                loop.remove_writer(self.fd)
                self._writer_registered = False
        self._close_fd()
        streams, self._streams = self._streams, {}
        for ref in streams.values():
            stream = ref()
            if stream is not None:
                error = self._lost_error(stream.method, cause)
                error.__cause__ = cause
                stream.lost(error)
        pending, self._pending = self._pending, {}
        for future, method in pending.values():
            if not future.done():
                error = self._lost_error(method, cause)
                error.__cause__ = cause
                future.set_exception(error)

    # -- closing (any thread) ------------------------------------------------------------

    def _close_fd(self) -> None:
        self._finalizer.detach()
        _close_fd(self._fd_lock, self._fd_box, self.shared)

    def close_threadsafe(self) -> None:
        """Close from any thread; calls in flight fail (typed) on the loop's thread."""
        self.closed = True
        loop = self._loop()
        if loop is None or loop.is_closed():  # its selector is gone, and so is our entry
            self._close_fd()
            return
        if threading.get_ident() == self._thread:
            self._lost(None)
            return
        with self._fd_lock:
            if self._fd_box[0] >= 0:
                # Wakes the loop's reader with EOF; the fd itself is closed on the loop.
                try:
                    with socket.socket(fileno=os.dup(self._fd_box[0])) as view:
                        view.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        try:
            loop.call_soon_threadsafe(self._lost, None)
        except RuntimeError:  # the loop is closed: its selector is gone, and so is our entry
            self._close_fd()

    def close_in_child(self) -> None:
        """After fork: close this process's copy of the fd; the loop is the parent's."""
        self.closed = True
        self._finalizer.detach()
        _close_fd(self._fd_lock, self._fd_box, self.shared)


def _close_fd(lock: threading.Lock, box: list[int], shared: SharedLink | None = None) -> None:
    with lock:
        fd, box[0] = box[0], -1
    if fd >= 0:
        os.close(fd)
    if shared is not None:
        shared.close()  # its memory back, but for blocks still held (idempotent)


class MuxClient(Protocol):
    """What a multiplexed connection needs of the proxy it calls for (RPCProxy)."""

    _rpc_service: str
    #: bumped when the proxy drops its connections (a restart): older ones are stale
    _rpc_generation: int
    _rpc_closed: bool
    _rpc_max_message_bytes: int
    _rpc_window: tuple[int, int] | None

    def _rpc_open_mux(self, timeout_s: float | None) -> Opened:
        """Handshake (blocking): a multiplexed connection's fd, its generation, and its
        TLS state (None: plain)."""
        ...

    def _rpc_decode(self, method: str, reply: bytes, shared: SharedReader | None) -> Any: ...

    def _rpc_final_error(self, method: str, kind: str, value: Any) -> BaseException | None:
        """What a stream's last message means: None (its end) or the error to raise."""
        ...

    def _rpc_transport_error(self, method: str, exc: BaseException | None) -> Exception: ...

    def _rpc_call_timeout(self, method: str, timeout_s: float) -> CallTimeout: ...

    def _rpc_too_large(self, what: str, size: int) -> MessageTooLarge: ...


class LoopConnections:
    """One proxy's multiplexed connections: one per event loop, opened on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closed = False
        # Weak on the loop: a finished asyncio.run() loop takes its entry with it.
        self.by_loop: weakref.WeakKeyDictionary[Any, MuxConnection] = weakref.WeakKeyDictionary()
        self.opening: weakref.WeakKeyDictionary[Any, asyncio.Task[MuxConnection]] = (
            weakref.WeakKeyDictionary()
        )
        self.last: MuxConnection | None = None  # most programs run one loop: skip the table

    def call(
        self,
        client: MuxClient,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        timeout_s: float | None,
    ) -> Awaitable[Any]:
        """Call ``method`` through this loop's connection.

        On the fast path (connection open, no timeout) the awaitable is the call's own future.
        """
        payload = _request(client, method, args, kwargs, timeout_s)
        loop = get_running_loop()
        conn = self.last
        if conn is None or conn._loop() is not loop:
            conn = self.by_loop.get(loop)
        if (
            timeout_s is not None
            or conn is None
            or conn.closed
            or conn.generation != client._rpc_generation
        ):
            return self._call(client, loop, conn, method, payload, timeout_s)
        self.last = conn
        return conn.request(loop, payload, method)

    def stream(
        self,
        client: MuxClient,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        timeout_s: float | None,
    ) -> AsyncRemoteStream[Any]:
        """A streaming call: its request goes out on the first ``__anext__``."""
        payload = _request(client, method, args, kwargs, timeout_s)

        async def open_stream(stream: AsyncRemoteStream[Any]) -> tuple[MuxConnection, int]:
            loop = get_running_loop()
            conn = await self._usable(client, loop, self.by_loop.get(loop), timeout_s)
            return conn, conn.open_stream(loop, payload, stream)

        return AsyncRemoteStream(open_stream, method, client._rpc_final_error, client._rpc_window)

    def close_all(self) -> None:
        """Close every loop's connection (any thread); calls in flight fail, typed."""
        with self.lock:
            conns = list(self.by_loop.values())
            self.by_loop.clear()
            self.last = None
        for conn in conns:
            conn.close_threadsafe()

    def close_in_child(self) -> None:
        """After fork: close this process's copies of the fds; the loops are the parent's."""
        for conn in list(self.by_loop.values()):
            conn.close_in_child()

    async def _call(
        self,
        client: MuxClient,
        loop: asyncio.AbstractEventLoop,
        conn: MuxConnection | None,
        method: str,
        payload: Payload,
        timeout_s: float | None,
    ) -> Any:
        conn = await self._usable(client, loop, conn, timeout_s)
        self.last = conn
        future = conn.request(loop, payload, method)
        del payload
        if timeout_s is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout_s)  # cancels the future in time
        except asyncio.TimeoutError:
            raise client._rpc_call_timeout(method, timeout_s) from None

    async def _usable(
        self,
        client: MuxClient,
        loop: asyncio.AbstractEventLoop,
        conn: MuxConnection | None,
        timeout_s: float | None,
    ) -> MuxConnection:
        """``conn`` if it still serves this client, else this loop's connection (opened)."""
        if conn is None or conn.closed or conn.generation != client._rpc_generation:
            conn = await self._connection(client, loop, timeout_s)
        return conn

    async def _connection(
        self, client: MuxClient, loop: asyncio.AbstractEventLoop, timeout_s: float | None
    ) -> MuxConnection:
        """This loop's connection, opened once however many tasks ask at the same time."""
        opening = self.opening.get(loop)
        if opening is None:
            opening = loop.create_task(self._open(client, loop, timeout_s))
            self.opening[loop] = opening
            opening.add_done_callback(lambda task: self._opened(loop, task))
        # shield: one caller's cancellation must not cancel the others' connection.
        return await asyncio.shield(opening)

    def _opened(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[MuxConnection]) -> None:
        if self.opening.get(loop) is task:
            del self.opening[loop]
        if not task.cancelled():
            task.exception()  # retrieved: if every caller was cancelled, nobody else will

    async def _open(
        self, client: MuxClient, loop: asyncio.AbstractEventLoop, timeout_s: float | None
    ) -> MuxConnection:
        # The handshake blocks (and may wait for a restart): not on the loop's thread. Its
        # own thread, not the loop's executor: if this task is cancelled (asyncio.run()
        # ending mid-connect), the fd the handshake still returns must be closed, not leaked.
        handshake: concurrent.futures.Future[Opened] = concurrent.futures.Future()
        threading.Thread(
            target=_handshake,
            args=(client, timeout_s, handshake),
            name="rpcgen-connect",
            daemon=True,
        ).start()
        try:
            fd, generation, tls, shared = await asyncio.wrap_future(handshake)
        except asyncio.CancelledError:
            handshake.add_done_callback(_close_unused)
            raise
        conn = MuxConnection(
            loop,
            fd,
            generation,
            decode=client._rpc_decode,
            lost_error=client._rpc_transport_error,
            max_bytes=client._rpc_max_message_bytes,
            tls=tls,
            shared=shared,
        )
        with self.lock:
            # The proxy sets _rpc_closed before it closes us (under this lock): a
            # connection registered here is either closed by it or sees the flag.
            closed = client._rpc_closed
            if not closed:
                old = self.by_loop.get(loop)
                self.by_loop[loop] = conn
        if closed:
            conn._lost(None)
            raise ServiceStopped(service=client._rpc_service)
        if old is not None and old is not conn:
            old._lost(None)
        return conn


def _request(
    client: MuxClient,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    timeout_s: float | None,
) -> Payload:
    payload = request_payload(method, args, kwargs, timeout_s, client._rpc_window)
    if len(payload) > client._rpc_max_message_bytes:
        raise client._rpc_too_large("request", len(payload))
    return payload


def _handshake(
    client: MuxClient,
    timeout_s: float | None,
    result: concurrent.futures.Future[Opened],
) -> None:
    if not result.set_running_or_notify_cancel():
        return  # the caller was cancelled before we began
    try:
        result.set_result(client._rpc_open_mux(timeout_s))
    except BaseException as exc:
        result.set_exception(exc)


def _close_unused(result: concurrent.futures.Future[Opened]) -> None:
    if not result.cancelled() and result.exception() is None:
        os.close(result.result()[0])
