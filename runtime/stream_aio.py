"""The asyncio side of streams and cancellation, on a multiplexed connection.

``async for item in client.aio.ticks(5)``: :class:`AsyncRemoteStream` sends the
request on its first ``__anext__`` and then takes the server's batches as the
connection's reader delivers them (on the loop's thread), returning credit as
the consumer takes items. ``break``, ``aclose()``, the task's cancellation or the
stream collected sends a close: the server closes its generator at its next
``yield``.

A unary call's future is a :class:`CallFuture`: cancelling it (the awaiting task
was cancelled, or timed out) tells the server, which marks the call cancelled
(:func:`~rpcgen.runtime.calls.current_call`; a coroutine method gets
``CancelledError``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .stream_server import CLOSE, DEFAULT_WINDOW
from .wire import PROTOCOL

if TYPE_CHECKING:
    from .mux import MuxConnection

__all__ = ["AsyncRemoteStream", "CallFuture"]

_T = TypeVar("_T")
_CANCEL = pickle.dumps(("#CANCEL",), PROTOCOL)


class CallFuture(asyncio.Future):  # type: ignore[type-arg]
    """A unary call's future; cancelling it tells the server."""

    __slots__ = ("_rpc_conn", "_rpc_ident")
    _rpc_conn: MuxConnection | None
    _rpc_ident: int

    def cancel(self, msg: Any = None) -> bool:
        cancelled = super().cancel(msg)
        conn: MuxConnection | None = getattr(self, "_rpc_conn", None)
        if cancelled and conn is not None:
            conn.control(self._rpc_ident, _CANCEL)
        return cancelled


class AsyncRemoteStream(AsyncIterator[_T], Generic[_T]):
    """A server generator's items, for ``async for``. Iterate it once."""

    def __init__(
        self,
        open_stream: Callable[[AsyncRemoteStream[Any]], Awaitable[tuple[MuxConnection, int]]],
        method: str,
        error: Callable[[str, str, Any], BaseException | None],
        window: tuple[int, int] | None = None,
    ) -> None:
        self._open = open_stream
        self.method = method
        self._error = error  # (method, kind, value) -> the exception a final message means
        self._conn: MuxConnection | None = None
        self._ident = 0
        #: received, not yet taken: (items, their message's bytes)
        self._batches: collections.deque[tuple[list[Any], int]] = collections.deque()
        self._items: list[Any] = []
        self._next = 0
        self._credit = [0, 0]
        window = window or DEFAULT_WINDOW
        self._half = (max(1, window[0] // 2), max(1, window[1] // 2))
        self._final: BaseException | bool | None = False  # False: open; None: ended
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<AsyncRemoteStream {self.method}() {'open' if self._final is False else 'ended'}>"

    def __aiter__(self) -> AsyncRemoteStream[_T]:
        return self

    async def __anext__(self) -> _T:
        while True:
            if self._next < len(self._items):
                item = self._items[self._next]
                self._next += 1
                return item  # type: ignore[no-any-return]
            if self._batches:
                # credit for what the consumer takes, not for what merely arrived: a slow
                # consumer keeps the server within one window
                self._items, size = self._batches.popleft()
                self._next = 0
                self._credit[0] += len(self._items)
                self._credit[1] += size
                if self._credit[0] >= self._half[0] or self._credit[1] >= self._half[1]:
                    self._send_credit()
                continue
            if self._final is not False:
                self._finish()
                if not isinstance(self._final, BaseException):
                    raise StopAsyncIteration
                raise self._final
            if self._conn is None:
                self._conn, self._ident = await self._open(self)
                continue
            if self._credit[0]:  # about to wait: everything consumed goes back
                self._send_credit()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                await self.aclose()
                raise
            finally:
                self._waiter = None

    def _send_credit(self) -> None:
        credit, self._credit = self._credit, [0, 0]
        if self._conn is not None:
            self._conn.control(self._ident, pickle.dumps(("#CREDIT", *credit), PROTOCOL))

    async def aclose(self) -> None:
        """Stop the stream (the server closes its generator at its next ``yield``)."""
        if self._final is False and self._conn is not None:
            self._conn.control(self._ident, CLOSE)
        if self._final is False:
            self._final = None
        self._finish()

    def __del__(self) -> None:
        if self._final is False and self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.control_threadsafe(self._ident, CLOSE)

    def _finish(self) -> None:
        if self._conn is not None:
            self._conn.forget_stream(self._ident)

    # -- called by the connection's reader, on the loop's thread ---------------------------------

    def deliver(self, kind: str, value: Any, size: int) -> None:
        if kind in ("#STREAM", "#ITEMS"):
            if value:  # the opening reply's bytes are not counted by the server
                self._batches.append((value, size if kind == "#ITEMS" else 0))
        elif self._final is False:
            self._final = self._error(self.method, kind, value)
        self._wake()

    def lost(self, error: BaseException) -> None:
        if self._final is False:
            self._final = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
