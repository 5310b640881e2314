"""The code that runs inside a service's Ray actor.

One actor per service, named after it. It builds the server object with the
``make_server`` callable its owner sends (the client's ``_create_direct_server``)
and runs the server's public methods: one actor method per server method the
client class lists, so a call passes exactly the method's arguments, as a raw Ray
actor call does. A server exception travels as with the process backend
(:mod:`rpcgen.runtime.remote`); a private or missing method is refused.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from .remote import RaisedInfo, pack_exception
from .stream_server import is_stream, sync_items

__all__ = ["Raised", "Refused", "ServiceActor", "actor_class", "is_forwardable"]


class Raised:
    """A server method's exception, as the process backend sends it."""

    __slots__ = ("info",)

    def __init__(self, info: RaisedInfo) -> None:
        self.info = info

    def __reduce__(self) -> tuple[Any, ...]:
        return (Raised, (self.info,))


class Refused:
    """A call the actor does not run (a private or missing method): why, as text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __reduce__(self) -> tuple[Any, ...]:
        return (Refused, (self.text,))


class ServiceActor:
    """The actor's class: builds the server with ``make_server()`` (the client class's
    ``_create_direct_server()``, sent by the owner) and runs its public methods."""

    def __init__(self, make_server: Callable[[], Any], owner: dict[str, Any]) -> None:
        self._server = make_server()
        self._owner = owner
        self._started = time.time()

    def rpcgen_call(self, request: tuple[str, tuple[Any, ...], dict[str, Any]]) -> Any:
        """Any public server method, by name (for methods the actor class does not name).

        One argument: Ray serializes each argument on its own (three cost ~0.3 ms more).
        """
        method, args, kwargs = request
        return self._rpcgen_run(method, args, kwargs)

    def _rpcgen_run(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        function = None if method.startswith("_") else getattr(self._server, method, None)
        if not callable(function):
            return Refused(
                f"method {method!r} of {type(self._server).__name__!r} is not exposed "
                "(only public methods are)"
            )
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            return Raised(pack_exception(exc))

    def rpcgen_stream(self, request: tuple[str, tuple[Any, ...], dict[str, Any]]) -> Any:
        """A streaming method's items, one Ray object each (a Ray streaming generator);
        an exception is the last item, as :class:`Raised`."""
        method, args, kwargs = request
        result = self._rpcgen_run(method, args, kwargs)
        if isinstance(result, (Raised, Refused)):
            yield result
            return
        items = sync_items(result) if is_stream(result) else iter((result,))
        try:
            for item in items:  # noqa: UP028  (`yield from` would pass Ray's send() on)
                yield item
        except Exception as exc:
            yield Raised(pack_exception(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def rpcgen_health(self) -> tuple[int, Any]:
        """(worker pid, what ``health_check_rpc`` returned); the start's readiness test."""
        check = getattr(self._server, "health_check_rpc", None)
        if not callable(check):
            return os.getpid(), {"status": "ok"}
        try:
            return os.getpid(), check()
        except Exception as exc:
            return os.getpid(), Raised(pack_exception(exc))

    def rpcgen_info(self) -> dict[str, Any]:
        ray: Any = importlib.import_module("ray")
        context = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address(),
            "node_id": context.get_node_id(),
            "owner": dict(self._owner),
            "started": self._started,
            "server_class": type(self._server).__qualname__,
        }


_actor_classes: dict[tuple[str, tuple[str, ...]], Any] = {}


def _forwarder(name: str) -> Callable[..., Any]:
    def method(self: ServiceActor, *args: Any, **kwargs: Any) -> Any:
        return self._rpcgen_run(name, args, kwargs)

    method.__name__ = method.__qualname__ = name
    return method


def actor_class(ray: Any, service: str, methods: tuple[str, ...]) -> Any:
    """The actor class: :class:`ServiceActor`, plus one actor method per server method
    the client names (``rpc_server_methods``), so that a call passes the server
    method's own arguments and nothing else, as a raw Ray actor call does."""
    key = (service, methods)
    cls = _actor_classes.get(key)
    if cls is None:
        own = {name: _forwarder(name) for name in methods if is_forwardable(name)}
        body = type(f"ServiceActor_{service}", (ServiceActor,), own)
        cls = _actor_classes[key] = ray.remote(body)
    return cls


def is_forwardable(name: str) -> bool:
    return name.isidentifier() and not name.startswith("_") and not name.startswith("rpcgen_")
