"""Start and stop a project's services together, in dependency order.

The generated ``<package>/registry.py`` declares a :class:`ServiceGraph` of every
service in the spec; ``start_all()`` starts it:

* services start tier by tier (a tier's services depend only on earlier tiers),
  the services of one tier in parallel;
* a dependent service's client gets its dependencies' clients as keyword
  arguments (named after them), so cross-service logic runs where the clients
  are owned and always hold the current authkeys;
* if one fails to start, everything already started is shut down and
  :class:`ServiceStartError` names the service;
* ``shutdown()`` stops services in reverse order, and so do atexit, SIGTERM
  and SIGINT (the previous handlers run afterwards).
"""

from __future__ import annotations

import atexit
import signal
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, TypeVar, cast

from .errors import ServiceStartError
from .service import RPCServiceBase

__all__ = ["ServiceGraph", "ServiceNode", "StartedServices"]


@dataclass(frozen=True)
class ServiceNode:
    """One service of a graph: its name, the handle attribute, the client class, deps."""

    name: str
    attr: str
    client: Callable[..., RPCServiceBase[Any]]
    depends_on: tuple[str, ...] = ()


class StartedServices:
    """Typed access to started clients (generated subclasses declare the attributes)."""

    def __init__(self, clients: Mapping[str, RPCServiceBase[Any]], order: Sequence[str]) -> None:
        self._clients = dict(clients)
        self._order = list(order)  # attrs, in start order
        self._lock = threading.Lock()
        for attr, client in self._clients.items():
            setattr(self, attr, client)

    def __iter__(self) -> Iterator[tuple[str, RPCServiceBase[Any]]]:
        return iter([(attr, self._clients[attr]) for attr in self._order])

    def __len__(self) -> int:
        return len(self._order)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {', '.join(self._order)}>"

    def shutdown(self) -> None:
        """Stop every service, in reverse start order. Idempotent."""
        with self._lock:
            order, self._order = self._order, []
        for attr in reversed(order):
            self._clients[attr].shutdown()
        _LIVE.discard(self)

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


_H = TypeVar("_H", bound=StartedServices)
_LIVE: weakref.WeakSet[StartedServices] = weakref.WeakSet()
_handlers_lock = threading.Lock()
_previous_handlers: dict[int, Any] = {}


@atexit.register
def _shutdown_all_at_exit() -> None:
    for started in list(_LIVE):
        started.shutdown()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    for started in list(_LIVE):
        started.shutdown()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    elif previous != signal.SIG_IGN:
        raise SystemExit(128 + signum)


def _install_signal_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers
    with _handlers_lock:
        for signum in (signal.SIGTERM, signal.SIGINT):
            current = signal.getsignal(signum)
            if current is not _on_signal:
                _previous_handlers[signum] = current
                signal.signal(signum, _on_signal)


class ServiceGraph:
    """A project's services and their dependencies."""

    def __init__(self, nodes: Sequence[ServiceNode]) -> None:
        self.nodes = {node.name: node for node in nodes}
        for node in nodes:
            for dep in node.depends_on:
                if dep not in self.nodes:
                    raise ValueError(f"service {node.name!r} depends on unknown service {dep!r}")
        self._tiers = self._compute_tiers()
        self._started: weakref.WeakSet[StartedServices] = weakref.WeakSet()

    def shutdown_all(self) -> None:
        """Stop every service started from this graph, in reverse order."""
        for started in list(self._started):
            started.shutdown()

    def _compute_tiers(self) -> list[list[ServiceNode]]:
        placed: dict[str, int] = {}
        tiers: list[list[ServiceNode]] = []
        remaining = dict(self.nodes)
        while remaining:
            ready = [n for n in remaining.values() if all(d in placed for d in n.depends_on)]
            if not ready:
                raise ValueError(f"dependency cycle among {', '.join(sorted(remaining))}")
            for node in sorted(ready, key=lambda n: n.name):
                placed[node.name] = len(tiers)
                del remaining[node.name]
            tiers.append(sorted(ready, key=lambda n: n.name))
        return tiers

    @property
    def tiers(self) -> list[list[str]]:
        return [[n.name for n in tier] for tier in self._tiers]

    def start(
        self,
        handle: type[_H],
        *,
        running_unit_tests: bool = False,
        ports: Mapping[str, int] | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        parallel: bool = True,
        cleanup_on_signals: bool = True,
        **common: Any,
    ) -> _H:
        """Start every service; return ``handle`` with one attribute per client.

        ``ports`` overrides ports by service name (tests pass free ports);
        ``options`` gives per-service keyword arguments; ``common`` goes to all
        (e.g. ``health_monitor=True``, ``start_method="spawn"``).
        """
        ports = ports or {}
        options = options or {}
        started: dict[str, RPCServiceBase[Any]] = {}
        order: list[str] = []

        def start_one(node: ServiceNode) -> RPCServiceBase[Any]:
            kwargs: dict[str, Any] = dict(common)
            kwargs.update(options.get(node.name, {}))
            kwargs["running_unit_tests"] = running_unit_tests
            if running_unit_tests:  # as over RPC: every argument and result through pickle
                kwargs.setdefault("direct_mode_pickle", True)
            if node.name in ports:
                kwargs["port"] = ports[node.name]
            for dep in node.depends_on:
                kwargs[self.nodes[dep].attr] = started[dep]
            return node.client(**kwargs)

        try:
            for tier in self._tiers:
                if parallel and len(tier) > 1:
                    with ThreadPoolExecutor(
                        max_workers=len(tier), thread_name_prefix="rpcgen-start"
                    ) as pool:
                        futures = [(node, pool.submit(start_one, node)) for node in tier]
                        failure: tuple[ServiceNode, BaseException] | None = None
                        for node, future in futures:
                            try:
                                started[node.name] = future.result()
                                order.append(node.name)
                            except BaseException as exc:  # collect the others before failing
                                failure = failure or (node, exc)
                        if failure is not None:
                            raise _Failed(*failure)
                else:
                    for node in tier:
                        try:
                            started[node.name] = start_one(node)
                        except BaseException as exc:
                            raise _Failed(node, exc) from exc
                        order.append(node.name)
        except _Failed as failed:
            for name in reversed(order):
                started[name].shutdown()
            raise ServiceStartError(
                service=failed.node.name, cause=failed.cause, stopped=list(reversed(order))
            ) from failed.cause
        result = handle(
            {self.nodes[n].attr: started[n] for n in order}, [self.nodes[n].attr for n in order]
        )
        _LIVE.add(result)
        self._started.add(result)
        if cleanup_on_signals:
            _install_signal_handlers()
        return result

    def attach(
        self,
        handle: type[_H],
        *,
        ports: Mapping[str, int] | None = None,
        timeout_s: float = 10.0,
        **common: Any,
    ) -> _H:
        """Clients of every service of the graph, already running and owned elsewhere.

        Each is found in the service directory by its name (and port, if given in
        ``ports``) with :meth:`RPCServiceBase.attach`; a dependency's client is set
        on its dependent, as ``start()`` passes it. Their ``shutdown()`` closes only
        their own connections.
        """
        ports = ports or {}
        clients: dict[str, RPCServiceBase[Any]] = {}
        for tier in self._tiers:
            for node in tier:
                client_class = cast(type[RPCServiceBase[Any]], node.client)
                client = client_class.attach(
                    service_name=node.name, port=ports.get(node.name), timeout_s=timeout_s, **common
                )
                for dep in node.depends_on:
                    setattr(client, self.nodes[dep].attr, clients[dep])
                clients[node.name] = client
        order = [node.name for tier in self._tiers for node in tier]
        return handle(
            {self.nodes[n].attr: clients[n] for n in order}, [self.nodes[n].attr for n in order]
        )


class _Failed(Exception):
    def __init__(self, node: ServiceNode, cause: BaseException) -> None:
        super().__init__(node.name)
        self.node, self.cause = node, cause
