"""The client side of a streaming call on a plain (one call at a time) connection.

A streaming method's call returns a :class:`RemoteStream` as soon as the server
answers with its first item. The stream has its connection to itself until it
ends: the calling thread's next calls use another one, so a loop over a stream
may call the same service. Iterating reads the server's batches; credit for
what the consumer took goes back before each read, so the server never runs
more than its window ahead.

Ending early (``break``, ``close()``, the stream collected, an exception in the
loop) sends a close and drops the connection: the server closes its generator at
its next ``yield``. A connection that fails mid-stream raises
:class:`~rpcgen.runtime.errors.ServiceUnavailable`; a stream is never replayed.
"""

from __future__ import annotations

import contextlib
import pickle
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import ServiceUnavailable
from .oob import loads as oob_loads
from .oob import window_size
from .stream_server import CLOSE, DEFAULT_WINDOW, DONE
from .transport import describe, stream_of
from .wire import PROTOCOL, recv_message, send_message

if TYPE_CHECKING:
    from .proxy import RPCProxy, _Holder

__all__ = ["RemoteStream"]

_T = TypeVar("_T")


class RemoteStream(Iterator[_T], Generic[_T]):
    """A server generator's items, as they come. Iterate it once; ``close()`` ends it.

    Like a generator, a stream held in a variable stays open after a ``break`` until
    it is closed or dropped; a loop straight over the call (``for x in client.m():``)
    closes it as the loop ends.
    """

    def __init__(
        self,
        proxy: RPCProxy,
        holder: _Holder,
        method: str,
        first: list[Any],
        deadline: float | None,
        timeout_s: float | None = None,
    ) -> None:
        # The iteration's state lives apart, so that the generator over it holds no
        # reference back to this object: dropped, this object (and so the stream)
        # closes at once, not at the next garbage collection.
        self._state = _State(proxy, holder, method, first, deadline, timeout_s or 0.0)
        self._items: Generator[_T, None, None] = _run(self._state)
        self._handed_out = False  # a loop holds the generator: it closes the stream

    def __repr__(self) -> str:
        state = "ended" if self._state.finished else "open"
        return f"<RemoteStream {self._state.method}() {state}>"

    def __iter__(self) -> Iterator[_T]:
        self._handed_out = True
        return self._items

    def __next__(self) -> _T:
        return next(self._items)

    def close(self) -> None:
        """Stop the stream now (the server closes its generator at its next ``yield``)."""
        self._items.close()
        self._state.abandon()

    def __enter__(self) -> RemoteStream[_T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_handed_out", True):
            with contextlib.suppress(Exception):
                self._state.abandon()


def _run(state: _State) -> Generator[Any, None, None]:
    try:
        first, state.first = state.first, []
        yield from first
        while True:
            batch = state.next_batch()
            if batch is None:
                return
            yield from batch
    finally:
        state.abandon()


class _State:
    __slots__ = (
        "credit",
        "deadline",
        "finished",
        "first",
        "half",
        "holder",
        "method",
        "proxy",
        "timeout_s",
    )

    def __init__(
        self,
        proxy: RPCProxy,
        holder: _Holder,
        method: str,
        first: list[Any],
        deadline: float | None,
        timeout_s: float,
    ) -> None:
        self.proxy = proxy
        self.holder = holder
        self.method = method
        self.first = first
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.finished = False
        self.credit = [len(first), 0]  # consumed, not yet acknowledged: items, bytes
        window = proxy._rpc_window or DEFAULT_WINDOW
        self.half = (max(1, window[0] // 2), max(1, window[1] // 2))

    def next_batch(self) -> list[Any] | None:
        conn = self.holder.conn
        stream = stream_of(conn)
        try:
            credit = self.credit
            # Credit goes back in halves of the window, or whenever this side is about to
            # wait: a server sent it back item by item would send item by item for ever.
            if credit[0] and (
                credit[0] >= self.half[0] or credit[1] >= self.half[1] or not self.holder.poll(0)
            ):
                self.credit = [0, 0]
                send_message(stream, pickle.dumps(("#CREDIT", *credit), PROTOCOL))
            late = self.deadline is not None and not conn.poll(
                max(self.deadline - time.monotonic(), 0.0)
            )
            data = b"" if late else recv_message(stream, self.proxy._rpc_max_message_bytes)
        except (EOFError, OSError) as exc:
            self.abandon()
            raise self._cut(exc) from exc
        if late:
            self.abandon()
            raise self.proxy._rpc_call_timeout(self.method, self.timeout_s)
        kind, value = oob_loads(data, self.holder.reader)
        if kind == "#ITEMS":
            self.credit[0] += len(value)
            self.credit[1] += window_size(data)
            return value  # type: ignore[no-any-return]
        # the end: say so, and the connection is in step again (ready for the next call)
        self.finished = True
        try:
            send_message(stream, DONE)
        except OSError:
            self.proxy._rpc_forget_holder(self.holder)
        else:
            self.proxy._rpc_release(self.holder)
        if kind == "#END":
            return None
        self.proxy._rpc_result(self.method, kind, value)
        return None  # it raised

    def _cut(self, exc: BaseException) -> Exception:
        host, port = describe(self.proxy._rpc_address)
        return ServiceUnavailable(
            service=self.proxy._rpc_service,
            host=host,
            port=port,
            reason=f"{self.method}(): the stream was cut short ({exc!r}); the server may "
            "have restarted. A stream is never replayed: call the method again",
        )

    def abandon(self) -> None:
        """Ended before the server's end: tell it, and drop the connection (out of step)."""
        if self.finished:
            return
        self.finished = True
        with contextlib.suppress(Exception):
            send_message(stream_of(self.holder.conn), CLOSE)
        self.proxy._rpc_forget_holder(self.holder)
