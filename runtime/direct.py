"""Direct mode: the server object in this process (``running_unit_tests=True``).

:class:`DirectBackend` makes it with the client's ``_create_direct_server()``.
Calling the server in-process hides what would fail over RPC: an unpicklable
argument or result (a generator, a lock, a lambda), a private method, or a
result the test mutates in place. With ``direct_mode_pickle=True``,
:class:`PicklingProxy` sends every argument, result and error through pickle, so
direct mode fails the same way.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import pickle
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NoReturn

from .backend import ServerRef
from .oob import roundtrip
from .remote import pack_exception, unpack_exception
from .stream_server import is_stream, sync_items
from .supervise import Probe, judge_health

__all__ = ["DirectBackend", "DirectProxy", "PicklingProxy"]


def _roundtrip(value: Any, what: str, method: str) -> Any:
    try:
        return roundtrip(value)  # large buffers copied once, as they arrive over RPC
    except Exception as exc:
        raise TypeError(
            f"{what} of {method}() cannot cross a process boundary (pickle failed: {exc}); "
            "it would fail over RPC too"
        ) from exc


class PicklingProxy:
    """Wraps a server object; calls behave as they would through an RPC proxy."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __repr__(self) -> str:
        return f"<PicklingProxy of {type(self._obj).__name__}>"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            # Over RPC only public methods are exposed.
            raise AttributeError(
                f"{name!r} is not exposed over RPC (names starting with '_' never are)"
            )
        target = getattr(self._obj, name)
        if not callable(target):
            raise AttributeError(
                f"{name!r} is an attribute, not a method; RPC exposes methods only"
            )

        service = type(self._obj).__name__

        def method(*args: Any, **kwargs: Any) -> Any:
            call_args, call_kwargs = _roundtrip((args, kwargs), "an argument", name)
            try:
                result = _awaited(target(*call_args, **call_kwargs))
            except Exception as exc:
                _raise_as_over_rpc(exc, service, name)
            if is_stream(result):  # a streaming method: each item through pickle, as over RPC
                return _pickled_items(sync_items(result), service, name)
            return _roundtrip(result, "the result", name)

        method.__name__ = name
        return method


def _awaited(result: Any) -> Any:
    """A coroutine method's result (run here to the end, as the server would); else as is."""
    if not isinstance(result, types.CoroutineType):
        return result
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(result)
    # Called from a coroutine: its loop is busy running us; run it on a loop of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, result).result()


def _raise_as_over_rpc(exc: Exception, service: str, method: str) -> NoReturn:
    # Exactly what the client gets over RPC: the exception as it arrives there, with
    # the server-side traceback chained as its cause.
    info = pickle.loads(pickle.dumps(pack_exception(exc)))
    error = unpack_exception(info, service=service, method=method)
    try:
        raise error from error.__cause__
    finally:
        del error


def _pickled_items(items: Iterator[Any], service: str, method: str) -> Iterator[Any]:
    try:
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except Exception as exc:
                _raise_as_over_rpc(exc, service, method)
            yield _roundtrip(item, "an item", method)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()  # ended early: the generator's finally runs, as it does over RPC


async def _in_thread_items(items: Iterator[Any]) -> AsyncIterator[Any]:
    """A server generator's items for ``async for``: each step in a worker thread."""
    import asyncio

    loop = asyncio.get_running_loop()
    done = object()
    try:
        while True:
            item = await loop.run_in_executor(None, next, items, done)
            if item is done:
                return
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            await loop.run_in_executor(None, close)


class DirectProxy:
    """Direct mode's call path (:class:`~rpcgen.runtime.backend.Proxy`): the server
    object's methods, called in this process; asyncio calls in a worker thread, so
    direct-mode tests see calls overlap as they do over RPC."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def _rpc_call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        result = _awaited(getattr(self._target, method)(*args, **(kwargs or {})))
        return sync_items(result) if is_stream(result) else result

    def _rpc_acall(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Awaitable[Any]:
        return _in_thread(functools.partial(getattr(self._target, method), *args, **(kwargs or {})))

    def _rpc_astream(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Any]:
        result = self._rpc_call(method, args, kwargs)
        return _in_thread_items(sync_items(result))

    def _rpc_close(self) -> None:
        self._target = None


async def _in_thread(call: Callable[[], Any]) -> Any:
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, call)


class DirectBackend:
    """The :class:`~rpcgen.runtime.backend.Backend` of direct mode: the server object
    made in this process by ``make_server`` (the client's ``_create_direct_server``).

    Nothing to restart, follow or stop: a failing health check is reported, never acted on.
    """

    label = "direct"

    def __init__(
        self, *, make_server: Callable[[], Any], pickling: bool, log: logging.Logger
    ) -> None:
        self.make_server = make_server
        self.pickling = pickling
        self.log = log
        self.proxy: Any = None
        self.calls: DirectProxy | None = None
        self.server: ServerRef = (0, 0)

    def start(self) -> None:
        server = self.make_server()
        self.proxy = PicklingProxy(server) if self.pickling else server
        self.calls = DirectProxy(self.proxy)

    def stop(self) -> None:
        pass

    def restart_once(self) -> None:
        return None

    def probe(self) -> Probe:
        calls = self.calls
        return judge_health(lambda: calls._rpc_call("health_check_rpc") if calls else None)

    def watch(self, on_exit: Callable[[str, ServerRef], None]) -> None:
        pass

    def unwatch(self, timeout_s: float) -> None:
        pass

    def handoff(self) -> Any:
        raise TypeError("a direct-mode client cannot be handed to another process")

    def follow(self, handoff: Any) -> None:
        raise TypeError("a direct-mode client cannot follow another process's server")

    def attach(self, located: Any, timeout_s: float) -> None:
        raise TypeError("a direct-mode client has no running service to attach to")

    def on_unhealthy(self, reason: str) -> bool:
        self.log.warning("%s direct server is unhealthy: %s", self.label, reason)
        return False

    def rotate_key(self) -> None:
        pass  # no key: nothing crosses a process boundary

    def close(self) -> None:
        self.proxy = None
        if self.calls is not None:
            self.calls._rpc_close()
            self.calls = None

    def after_fork(self) -> None:
        pass
