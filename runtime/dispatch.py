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

from .calls import _CURRENT, _DEADLINE, _SERVING, CallContext
from .oob import SharedReader
from .oob import loads as oob_loads
from .remote import pack_exception
from .stream_server import DEFAULT_WINDOW, STREAM_TYPES, sync_items
from .wire import Payload, Received, dumps, looks_big

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
        request: Received,
        arrived: float,
        calls: dict[int, CallContext] | None = None,
        ident: int = 0,
        shared: SharedReader | None = None,
    ) -> Payload | StreamCall:
        """Run one pickled request; its pickled reply (never raises), or a stream."""
        reply: tuple[str, Any]
        big = False
        serving = _SERVING
        try:
            parts = _loads(request) if request[0] else oob_loads(request, shared)
            obj, exposed, _ = self.id_to_obj[parts[0]]
            method = parts[1]
            if method not in exposed:
                raise AttributeError(f"method {method!r} of {type(obj).__name__!r} is not exposed")
            # rpcgen's clients send a fifth element (None, or (timeout_s, window)), and
            # take a stream; a generator returned to any other caller fails to pickle.
            streams = len(parts) > 4
            meta = parts[4] if streams else None
            timeout_s = meta[0] if meta else None
            call: CallContext | str
            token = None
            if timeout_s is None and calls is None:
                call = method  # made into a CallContext only if the method asks for it
            else:
                end = None if timeout_s is None else (arrived or time.monotonic()) + timeout_s
                if end is not None and time.monotonic() >= end:
                    return _EXPIRED  # it waited past its caller's deadline: not run
                call = CallContext(method, end)
                if end is not None:
                    token = _DEADLINE.set(end)  # the calls it makes inherit it
                if calls is not None:
                    calls[ident] = call
            serving.call = call
            try:
                result = getattr(obj, method)(*parts[2], **parts[3])
                if type(result) is types.CoroutineType:
                    result = self._await(result, _context(serving.call))
            except Exception as exc:
                reply = ("#RAISED", pack_exception(exc))
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("%s() raised %r", method, exc, exc_info=exc)
            except asyncio.CancelledError as exc:  # its caller cancelled it
                reply = ("#RAISED", pack_exception(exc))
            else:
                if streams and isinstance(result, STREAM_TYPES):
                    window = meta[1] if meta and meta[1] else DEFAULT_WINDOW
                    return StreamCall(sync_items(result), _context(serving.call), window)
                reply, big = ("#RETURN", result), looks_big((result,))
            finally:
                serving.call = None
                if token is not None:
                    _DEADLINE.reset(token)
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


_EXPIRED = dumps(("#EXPIRED", None), False)


def _context(call: CallContext | str) -> CallContext:
    return call if isinstance(call, CallContext) else CallContext(call)


async def _as_call(coroutine: Any, call: CallContext) -> Any:
    _CURRENT.set(call)  # this task's own context: current_call() works in it
    _DEADLINE.set(call.deadline)
    return await coroutine
