"""Run one request against the served object: its pickled reply, or the stream it opens.

A request is ``(object id, method, args, kwargs[, meta])``; rpcgen's clients send
``meta = (timeout_s, window)``: the seconds the caller still waits (None: for
ever) and, for a streaming method, its flow-control window (None: the default).
The deadline counts from the request's arrival, so a call that waited for a free
thread past it is not run: its reply is ``("#EXPIRED", None)``.

A server method may be a plain function, a coroutine function (run on the
server's event loop thread; cancelling the call cancels it), a generator or an
async generator (a stream: see :mod:`.stream_server`).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
import traceback
import types
from collections.abc import Iterator
from typing import Any, NamedTuple

from .calls import CallContext, run_in_call
from .remote import pack_exception
from .stream_server import DEFAULT_WINDOW, is_stream, sync_items
from .wire import dumps, looks_big

__all__ = ["Dispatcher", "StreamCall"]

logger = logging.getLogger("rpcgen")

_loads = pickle.loads


class StreamCall(NamedTuple):
    """A request whose method returned a generator: serve it as a stream."""

    items: Iterator[Any]
    call: CallContext
    window: tuple[int, int]


class Dispatcher:
    """The served object's exposed methods, called for pickled requests."""

    def __init__(self, id_to_obj: dict[Any, Any]) -> None:
        self.id_to_obj = id_to_obj
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    def answer(
        self,
        request: bytes | bytearray,
        arrived: float,
        calls: dict[int, CallContext] | None = None,
        ident: int = 0,
    ) -> bytes | memoryview | StreamCall:
        """Run one pickled request; its pickled reply (never raises), or a stream."""
        reply: tuple[str, Any]
        big = False
        try:
            request_tuple = _loads(request)
            ident_obj, method, args, kwargs = request_tuple[:4]
            meta = request_tuple[4] if len(request_tuple) > 4 else None
            obj, exposed, _ = self.id_to_obj[ident_obj]
            if method not in exposed:
                raise AttributeError(f"method {method!r} of {type(obj).__name__!r} is not exposed")
            timeout_s = meta[0] if meta is not None else None
            call = CallContext(method, None if timeout_s is None else arrived + timeout_s)
            if timeout_s is not None and time.monotonic() >= call.deadline:  # type: ignore[operator]
                return dumps(("#EXPIRED", None), False)  # it waited past its caller's deadline
            if calls is not None:
                calls[ident] = call
            try:
                result = run_in_call(call, getattr(obj, method), *args, **kwargs)
                if isinstance(result, types.CoroutineType):
                    result = self._await(result, call)
            except Exception as exc:
                reply = ("#RAISED", pack_exception(exc))
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("%s() raised %r", method, exc, exc_info=exc)
            except asyncio.CancelledError as exc:  # its caller cancelled it
                reply = ("#RAISED", pack_exception(exc))
            else:
                if meta is not None and is_stream(result):
                    window = meta[1] if len(meta) > 1 and meta[1] else DEFAULT_WINDOW
                    return StreamCall(sync_items(result), call, window)
                reply, big = ("#RETURN", result), looks_big((result,))
            finally:
                if calls is not None:
                    calls.pop(ident, None)
        except Exception:
            reply = ("#TRACEBACK", traceback.format_exc())
        try:
            return dumps(reply, big)
        except Exception as exc:  # one line: the client makes it a ResultNotPicklable
            why = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            return dumps(("#UNSERIALIZABLE", why.replace("\n", " ")), False)

    def _await(self, coroutine: Any, call: CallContext) -> Any:
        """Run a coroutine method on the server's event loop (one thread, made on first
        use); cancelling the call cancels it there (it gets CancelledError)."""
        loop = self._loop
        if loop is None:
            with self._loop_lock:
                if self._loop is None:
                    self._loop = asyncio.new_event_loop()
                    threading.Thread(
                        target=self._loop.run_forever, name="rpcgen-async-methods", daemon=True
                    ).start()
                loop = self._loop
        future = asyncio.run_coroutine_threadsafe(_as_call(coroutine, call), loop)
        call._hook = future.cancel
        if call.cancelled:
            future.cancel()
        return future.result()


async def _as_call(coroutine: Any, call: CallContext) -> Any:
    from .calls import _CURRENT, _DEADLINE

    _CURRENT.set(call)  # this task's own context: current_call() works in it
    _DEADLINE.set(call.deadline)
    return await coroutine
