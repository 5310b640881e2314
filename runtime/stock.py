"""Servers that build their own ``BaseManager``: the stock protocol, for migrated code.

Upstream services often start their server without ``serve_rpc``::

    class M(BaseManager): pass
    M.register(service_name, callable=lambda: server)
    M(address=address, authkey=authkey).get_server().serve_forever()

Such a server speaks multiprocessing's own handshake, in which the *server* sends a
challenge first. rpcgen's client notices it (the handshake raises
:class:`~.errors.StockServerFound` before anything derived from the key was sent) and, only when the
listening socket belongs to the process its owner just started (see
:mod:`.process_backend`), talks to it the stock way: a ``BaseManager`` client
and the proxy of the object registered under the service's name. Calls are the stock
manager's (a thread's first call opens its connection; no mux for asyncio, whose
calls run in a thread); the lifecycle (readiness, health checks, restarts, shutdown)
is rpcgen's. Anyone holding the key can run code in such a server, as with any.
"""

from __future__ import annotations

import concurrent.futures
import threading
from multiprocessing import managers
from multiprocessing.connection import Client
from typing import Any

from .endpoint import Address
from .errors import CallTimeout, RemoteCallError, ServiceUnavailable
from .transport import describe

__all__ = ["StockClient"]


def _stale_object(remote_traceback: str) -> bool:
    """Whether the stock server failed to find the proxy's object id (its serve_client
    looks the id up before it calls anything)."""
    return "KeyError" in remote_traceback and "id_to_obj[ident]" in remote_traceback


class StockClient:
    """Calls a stock manager server's object, registered under ``typeid``."""

    def __init__(self, *, service: str, address: Address, authkey: bytes, typeid: str) -> None:
        self.service = service
        self.address = address
        self.authkey = authkey
        self.typeid = typeid
        self._lock = threading.Lock()
        self._proxy: Any = None

    def _manager_proxy(self) -> Any:
        with self._lock:
            if self._proxy is None:
                manager_class: Any = type("StockManager", (managers.BaseManager,), {})
                manager_class.register(self.typeid)
                manager = manager_class(address=self.address, authkey=self.authkey)
                manager.connect()
                self._proxy = getattr(manager, self.typeid)()
            return self._proxy

    def _unavailable(self, exc: BaseException) -> ServiceUnavailable:
        host, port = describe(self.address)
        return ServiceUnavailable(service=self.service, host=host, port=port, reason=repr(exc))

    def connect(self) -> None:
        try:
            self._manager_proxy()
        except (OSError, EOFError) as exc:
            raise self._unavailable(exc) from exc

    def call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        if timeout_s is None:
            return self._call(method, args, kwargs or {})
        # The stock protocol has no timeouts: the call waits in a thread of its own.
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rpcgen-stock")
        try:
            return pool.submit(self._call, method, args, kwargs or {}).result(timeout_s)
        except concurrent.futures.TimeoutError:
            host, port = describe(self.address)
            raise CallTimeout(
                service=self.service, host=host, port=port, method=method, timeout_s=timeout_s
            ) from None
        finally:
            pool.shutdown(wait=False)

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        for attempt in (1, 2):
            try:
                proxy = self._manager_proxy()
                return proxy._callmethod(method, args, kwargs)
            except managers.RemoteError as exc:  # failed outside the method
                if attempt == 1 and _stale_object(str(exc)):
                    # The server restarted under this proxy: the new one does not know its
                    # object id. The method never ran: get the new server's object, again.
                    self.reset()
                    continue
                raise RemoteCallError(
                    service=self.service, method=method, remote_traceback=str(exc)
                ) from None
            except (OSError, EOFError) as exc:
                self.reset()
                raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")

    def shutdown_server(self, timeout_s: float) -> None:
        """The stock manager's own ``shutdown`` request."""
        conn = Client(self.address, authkey=self.authkey)
        try:
            managers.dispatch(conn, None, "shutdown")  # type: ignore[attr-defined]
        finally:
            conn.close()

    def reset(self, address: Address | None = None, authkey: bytes | None = None) -> None:
        with self._lock:
            old, self._proxy = self._proxy, None
            # Not its finalizer's decref: object ids are addresses in the server process,
            # and a restarted server (forked, the same layout) gives its object the same
            # id, so the old proxy's decref would delete the new server's object.
            finalizer = getattr(old, "_close", None)
            if finalizer is not None:
                finalizer.cancel()
            # BaseProxy keeps each thread's connection per server address, for every proxy
            # of that address: a restarted server on the same port must not get the dead
            # one's. Forget them (their sockets close when collected).
            table = getattr(managers.BaseProxy, "_address_to_local", {})
            table.pop(self.address, None)
        if address is not None:
            self.address = address
        if authkey is not None:
            self.authkey = authkey
