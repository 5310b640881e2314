"""The backend seam: where a service's server object runs, behind one small interface.

:class:`~rpcgen.runtime.service.RPCServiceBase` picks one :class:`Backend` in
its constructor and drives the lifecycle through it, never asking which kind
it has::

    RPCServiceBase ──> Backend ──> Proxy (what _server_proxy returns)
                        ├─ DirectBackend   the server object in this process (direct.py)
                        ├─ ProcessBackend  its own process (process_backend.py)
                        └─ RayBackend      a named Ray actor (ray_backend.py)

A backend takes plain values and callables (the client's ``_start_server_process``,
``notify``, ``clock``, ``sleep``), never the client object, so unit tests drive
the lifecycle with a fake backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from .aio import AsyncCaller
from .supervise import Probe

__all__ = ["Backend", "CallsByName", "Proxy", "ServerRef"]

#: (server pid, start generation): which server a client last reached. A restart
#: acts only on the server it saw failing.
ServerRef = tuple[int, int]


class Proxy(AsyncCaller, Protocol):
    """The call signature every backend's proxy shares (``_rpc_acall`` from AsyncCaller).

    The names are private because any public name on a proxy is a server method.
    """

    def _rpc_call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any: ...

    def _rpc_astream(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Any]: ...

    def _rpc_close(self) -> None: ...


class Backend(Protocol):
    """One service's server, as its client sees it.

    The owner (the process that called ``start()``) starts, restarts and stops the
    server; any other client (attached, unpickled, forked) only follows it.
    """

    @property
    def proxy(self) -> Any:
        """What ``_server_proxy`` returns; None before a start (and, direct, after close)."""
        ...

    @property
    def calls(self) -> Proxy | None:
        """The call path for ``client.aio``; None before a start."""
        ...

    @property
    def server(self) -> ServerRef:
        """The server this client last reached; (0, 0) before any."""
        ...

    @property
    def label(self) -> str:
        """Where the server runs, for logs and repr (``127.0.0.1:50001``, ``ray:ns/Name``)."""
        ...

    def start(self) -> int | None:
        """Owner: start the server and connect; its pid (None in direct mode)."""
        ...

    def stop(self) -> None:
        """Owner: stop the server for good (graceful first, bounded), and drop its key."""
        ...

    def restart_once(self) -> int | None:
        """Owner: one stop-and-start attempt; raises a ServiceError if it failed."""
        ...

    def probe(self) -> Probe:
        """One health check of the server."""
        ...

    def watch(self, on_exit: Callable[[str, ServerRef], None]) -> None:
        """Owner: call ``on_exit(reason, server)`` as soon as the server dies (if it can tell)."""
        ...

    def unwatch(self, timeout_s: float) -> None: ...

    def handoff(self) -> Any:
        """What a copy of this client in another process needs to follow the server."""
        ...

    def follow(self, handoff: Any) -> None:
        """Become a client of a running server that this process does not own."""
        ...

    def attach(self, located: Any, timeout_s: float) -> None:
        """Follow a running server that ``attach()`` located (None: find it by name),
        once it answers within ``timeout_s``; ServiceNotFound if none does."""
        ...

    def on_unhealthy(self, reason: str) -> bool:
        """A client that does not own the server found it unhealthy: act (True) or not."""
        ...

    def rotate_key(self) -> None:
        """Owner: drop the key, so that the next start makes a new one (or refuse)."""
        ...

    def close(self) -> None:
        """Close this client's connections; later calls raise ServiceStopped."""
        ...

    def after_fork(self) -> None:
        """In a forked child: this copy follows the server and owns nothing."""
        ...


class CallsByName:
    """``proxy.name(*args, **kwargs)`` is ``proxy._rpc_call("name", args, kwargs)``.

    Private names are never forwarded: they are the proxy's own.
    """

    def _rpc_call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        call = self._rpc_call

        def method(*args: Any, **kwargs: Any) -> Any:
            return call(name, args, kwargs)

        method.__name__ = method.__qualname__ = name
        self.__dict__[name] = method  # later lookups skip __getattr__
        return method
