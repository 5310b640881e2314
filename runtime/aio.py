"""The asyncio view of a client: ``await client.aio.method(...)``.

Generated clients subclass :class:`AsyncView` with one typed coroutine per client
method, each forwarding to the server method through :meth:`AsyncView._rpc_call`::

    class PriceFetcherAio(AsyncView["PriceFetcherServer"]):
        async def price(self, symbol: str) -> float:
            return await self._rpc_call(self._rpc_server.price_rpc, symbol)

``self._rpc_server`` is typed as the server class, so mypy checks the call against
the server method's signature; at run time it only names the method. Every task
of one event loop shares one multiplexed connection (see :mod:`.mux`), and the
view shares its client's server, lifecycle, health checks and restarts.

Any other client method (hand-written ones) is still reachable as a coroutine
through the view: it runs the client's own method in the loop's default executor.

In direct mode (``running_unit_tests=True``) a call runs the server method in a
worker thread, so direct-mode tests see the same concurrency as RPC mode.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast

__all__ = ["AsyncCaller", "AsyncView"]

ServerT = TypeVar("ServerT")
_P = ParamSpec("_P")
_R = TypeVar("_R")


class AsyncCaller(Protocol):
    """One asyncio call path: what the view needs of its client (an RPCServiceBase),
    and what every backend's proxy has (:class:`~rpcgen.runtime.backend.Proxy`)."""

    def _rpc_acall(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Awaitable[Any]: ...

    def _rpc_astream(
        self, method: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> AsyncIterator[Any]: ...


class _Names:
    """Stands in for the server object: ``names.price_rpc`` is just ``"price_rpc"``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> str:
        return name


_NAMES = _Names()


class AsyncView(Generic[ServerT]):
    """``client.aio``: the client's methods as coroutines, many in flight at once."""

    __slots__ = ("_rpc_client",)

    def __init__(self, client: AsyncCaller) -> None:
        self._rpc_client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._rpc_client!r}>"

    @property
    def _rpc_server(self) -> ServerT:
        """The server, for typing only: ``self._rpc_server.m`` names method ``m``."""
        return cast(ServerT, _NAMES)

    @property
    def _rpc_server_untyped(self) -> Any:
        """``_rpc_server`` typed as Any, for server methods that are not fully annotated."""
        return _NAMES

    def _rpc_call(
        self, method: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Awaitable[_R]:
        """Call the server method named by ``method`` (``self._rpc_server.<name>``)."""
        name = method if isinstance(method, str) else getattr(method, "__name__", "")
        return self._rpc_client._rpc_acall(name, args, kwargs)

    def _rpc_stream(
        self,
        method: Callable[_P, Iterable[_R] | AsyncIterable[_R]],
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> AsyncIterator[_R]:
        """Iterate the streaming server method named by ``method`` with ``async for``."""
        name = method if isinstance(method, str) else getattr(method, "__name__", "")
        return self._rpc_client._rpc_astream(name, args, kwargs)

    @staticmethod
    def _rpc_typed_as(method: Callable[..., Awaitable[_R]], value: Any) -> _R:
        """``value`` typed as the result of coroutine method ``method``."""
        return cast(_R, value)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        # A client method this view does not declare: run it in a worker thread.
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(self._rpc_client, name)
        if not callable(method):
            raise AttributeError(f"{name!r} is not a method of {type(self._rpc_client).__name__}")

        async def in_thread(*args: Any, **kwargs: Any) -> Any:
            import asyncio

            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, functools.partial(method, *args, **kwargs))

        in_thread.__name__ = in_thread.__qualname__ = name
        return in_thread
