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
import threading
import weakref
from asyncio import get_running_loop
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import CallTimeout, ServiceStopped
from .transport import OBJECT_ID, describe
from .wire import FrameReader, ProtocolError, dumps, looks_big, tagged_frame

if TYPE_CHECKING:
    from .transport import RPCProxy

__all__ = ["MuxConnection", "acall"]

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
        decode: Callable[[str, bytes], Any],
        lost_error: Callable[[str, BaseException | None], Exception],
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
        self._pending: dict[int, tuple[asyncio.Future[Any], str]] = {}
        self._ids = itertools.count(1)
        self._reader = FrameReader()
        self._out: list[bytes | memoryview] = []
        self._flush_scheduled = False
        self._writer_registered = False
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._on_readable)
        # A loop that is dropped without anyone closing us (asyncio.run() ends) takes
        # the fd with it.
        self._fd_box = [fd]
        self._finalizer = weakref.finalize(loop, _close_fd, self._fd_lock, self._fd_box)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._pending)} in flight"
        return f"<MuxConnection fd={self.fd} {state}>"

    # -- calls (loop thread) -------------------------------------------------------------

    def request(
        self, loop: asyncio.AbstractEventLoop, payload: bytes | memoryview, method: str
    ) -> asyncio.Future[Any]:
        """Send one pickled request; the future gets its result or its (typed) error."""
        ident = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        pending = self._pending
        pending[ident] = (future, method)
        self._out.extend(tagged_frame(ident, payload))
        if not (self._flush_scheduled or self._writer_registered):
            if len(pending) == 1:
                self._flush(loop)  # nothing else in flight: send now, no extra loop turn
            else:
                # Others are in flight: send with whatever this loop turn adds.
                self._flush_scheduled = True
                loop.call_soon(self._flush, loop)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out or self.closed:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):
            self._out = [memoryview(data)[sent:]]
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
            frames = self._reader.feed(data)
        except ProtocolError as exc:
            self._lost(exc)
            return
        pending = self._pending
        decode = self._decode
        for ident, body in frames:
            entry = pending.pop(ident, None)
            if entry is None:
                continue
            future, method = entry
            if future.done():  # its caller was cancelled or timed out: the reply is dropped
                continue
            try:
                result = decode(method, body)
            except Exception as exc:
                future.set_exception(_settable(exc))
            else:
                future.set_result(result)

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
        pending, self._pending = self._pending, {}
        for future, method in pending.values():
            if not future.done():
                error = self._lost_error(method, cause)
                error.__cause__ = cause
                future.set_exception(error)

    # -- closing (any thread) ------------------------------------------------------------

    def _close_fd(self) -> None:
        self._finalizer.detach()
        _close_fd(self._fd_lock, self._fd_box)

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
        _close_fd(self._fd_lock, self._fd_box)


def _close_fd(lock: threading.Lock, box: list[int]) -> None:
    with lock:
        fd, box[0] = box[0], -1
    if fd >= 0:
        os.close(fd)


def acall(
    proxy: RPCProxy,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    timeout_s: float | None,
) -> Awaitable[Any]:
    """Call ``method`` through this loop's multiplexed connection of ``proxy``.

    On the fast path (connection open, no timeout) the awaitable is the call's own future.
    """
    kwargs = kwargs or {}
    big = looks_big(args) or (bool(kwargs) and looks_big(kwargs.values()))
    payload = dumps((OBJECT_ID, method, args, kwargs), big)
    loop = get_running_loop()
    conn = proxy._rpc_mux_last  # most programs run one loop: skip the table
    if conn is None or conn._loop() is not loop:
        conn = proxy._rpc_mux.get(loop)
    if (
        timeout_s is not None
        or conn is None
        or conn.closed
        or conn.generation != proxy._rpc_generation
    ):
        return _call(proxy, loop, conn, method, payload, timeout_s)
    proxy._rpc_mux_last = conn
    return conn.request(loop, payload, method)


async def _call(
    proxy: RPCProxy,
    loop: asyncio.AbstractEventLoop,
    conn: MuxConnection | None,
    method: str,
    payload: bytes | memoryview,
    timeout_s: float | None,
) -> Any:
    if conn is None or conn.closed or conn.generation != proxy._rpc_generation:
        conn = await _connection(proxy, loop, timeout_s)
    proxy._rpc_mux_last = conn
    future = conn.request(loop, payload, method)
    del payload
    if timeout_s is None:
        return await future
    try:
        return await asyncio.wait_for(future, timeout_s)  # cancels the future in time
    except asyncio.TimeoutError:
        host, port = describe(proxy._rpc_address)
        raise CallTimeout(
            service=proxy._rpc_service, host=host, port=port, method=method, timeout_s=timeout_s
        ) from None


async def _connection(
    proxy: RPCProxy, loop: asyncio.AbstractEventLoop, timeout_s: float | None
) -> MuxConnection:
    """This loop's connection, opened once however many tasks ask at the same time."""
    opening = proxy._rpc_mux_opening.get(loop)
    if opening is None:
        opening = loop.create_task(_open(proxy, loop, timeout_s))
        proxy._rpc_mux_opening[loop] = opening
        opening.add_done_callback(lambda task: _opened(proxy, loop, task))
    # shield: one caller's cancellation must not cancel the others' connection.
    return await asyncio.shield(opening)


def _opened(
    proxy: RPCProxy, loop: asyncio.AbstractEventLoop, task: asyncio.Task[MuxConnection]
) -> None:
    if proxy._rpc_mux_opening.get(loop) is task:
        del proxy._rpc_mux_opening[loop]
    if not task.cancelled():
        task.exception()  # retrieved: if every caller was cancelled, nobody else will


def _handshake(
    proxy: RPCProxy, timeout_s: float | None, result: concurrent.futures.Future[tuple[int, int]]
) -> None:
    if not result.set_running_or_notify_cancel():
        return  # the caller was cancelled before we began
    try:
        result.set_result(proxy._rpc_open_mux(timeout_s))
    except BaseException as exc:
        result.set_exception(exc)


def _close_unused(result: concurrent.futures.Future[tuple[int, int]]) -> None:
    if not result.cancelled() and result.exception() is None:
        os.close(result.result()[0])


async def _open(
    proxy: RPCProxy, loop: asyncio.AbstractEventLoop, timeout_s: float | None
) -> MuxConnection:
    # The handshake blocks (and may wait for a restart): not on the loop's thread. Its own
    # thread, not the loop's executor: if this task is cancelled (asyncio.run() ending
    # mid-connect), the fd the handshake still returns must be closed, not leaked.
    handshake: concurrent.futures.Future[tuple[int, int]] = concurrent.futures.Future()
    threading.Thread(
        target=_handshake, args=(proxy, timeout_s, handshake), name="rpcgen-connect", daemon=True
    ).start()
    try:
        fd, generation = await asyncio.wrap_future(handshake)
    except asyncio.CancelledError:
        handshake.add_done_callback(_close_unused)
        raise
    conn = MuxConnection(
        loop, fd, generation, decode=proxy._rpc_decode, lost_error=proxy._rpc_transport_error
    )
    with proxy._rpc_lock:
        closed = proxy._rpc_closed
        if not closed:
            old = proxy._rpc_mux.get(loop)
            proxy._rpc_mux[loop] = conn
    if closed:
        conn._lost(None)
        raise ServiceStopped(service=proxy._rpc_service)
    if old is not None and old is not conn:
        old._lost(None)
    return conn
