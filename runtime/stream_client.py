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

from .errors import CallTimeout, ServiceUnavailable
from .transport import stream_of
from .wire import PROTOCOL, recv_message, send_message

if TYPE_CHECKING:
    from .proxy import RPCProxy, _Holder

__all__ = ["RemoteStream"]

_T = TypeVar("_T")
_CLOSE = pickle.dumps(("#CLOSE",), PROTOCOL)
_DONE = pickle.dumps(("#DONE",), PROTOCOL)


class RemoteStream(Iterator[_T], Generic[_T]):
    """A server generator's items, as they come. Iterate it once; ``close()`` ends it."""

    def __init__(
        self,
        proxy: RPCProxy,
        holder: _Holder,
        method: str,
        first: list[Any],
        deadline: float | None,
        timeout_s: float | None = None,
    ) -> None:
        self._proxy = proxy
        self._holder = holder
        self._method = method
        self._first = first
        self._deadline = deadline
        self._timeout_s = timeout_s or 0.0
        self._finished = False
        self._credit = [len(first), 0]  # consumed, not yet acknowledged: items, bytes
        self._items = self._run()

    def __repr__(self) -> str:
        state = "ended" if self._finished else "open"
        return f"<RemoteStream {self._method}() {state}>"

    def __iter__(self) -> Iterator[_T]:
        return self._items

    def __next__(self) -> _T:
        return next(self._items)

    def close(self) -> None:
        """Stop the stream now (the server closes its generator at its next ``yield``)."""
        self._items.close()
        self._abandon()

    def __enter__(self) -> RemoteStream[_T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._abandon()

    # -- internals -----------------------------------------------------------------------

    def _run(self) -> Generator[_T, None, None]:
        try:
            yield from self._first
            self._first = []
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                yield from batch
        finally:
            self._abandon()

    def _next_batch(self) -> list[Any] | None:
        conn = self._holder.conn
        stream = stream_of(conn)
        try:
            if self._credit[0]:
                credit, self._credit = self._credit, [0, 0]
                send_message(stream, pickle.dumps(("#CREDIT", *credit), PROTOCOL))
            if self._deadline is not None:
                left = self._deadline - time.monotonic()
                if left <= 0 or not conn.poll(left):
                    self._abandon()
                    raise self._proxy._rpc_call_timeout(self._method, self._timeout_s)
            data = recv_message(stream, self._proxy._rpc_max_message_bytes)
        except (EOFError, OSError) as exc:
            if isinstance(exc, CallTimeout):
                raise
            self._abandon()
            raise self._cut(exc) from exc
        kind, value = pickle.loads(data)
        if kind == "#ITEMS":
            self._credit[0] += len(value)
            self._credit[1] += len(data)
            return value  # type: ignore[no-any-return]
        # the end: say so, and the connection is in step again (ready for the next call)
        self._finished = True
        try:
            send_message(stream, _DONE)
        except OSError:
            self._proxy._rpc_forget_holder(self._holder)
        else:
            self._proxy._rpc_release(self._holder)
        if kind == "#END":
            return None
        self._proxy._rpc_result(self._method, kind, value)
        return None  # it raised

    def _cut(self, exc: BaseException) -> Exception:
        return ServiceUnavailable(
            service=self._proxy._rpc_service,
            host=str(self._proxy._rpc_address),
            port="stream",
            reason=f"{self._method}(): the stream was cut short ({exc!r}); the server may "
            "have restarted. A stream is never replayed: call the method again",
        )

    def _abandon(self) -> None:
        """Ended before the server's end: tell it, and drop the connection (out of step)."""
        if self._finished:
            return
        self._finished = True
        conn = self._holder.conn
        with contextlib.suppress(Exception):
            send_message(stream_of(conn), _CLOSE)
        self._proxy._rpc_forget_holder(self._holder)
