"""A client's lifecycle: its state, who owns the server, and the locks around changes.

Shared by a client (:class:`~rpcgen.runtime.service.RPCServiceBase`) and its
backend, so that the backend's threads (the process watcher, health probes)
see the same state and take the same lock as the client's restarts::

    NEW ──_initialize_service()──> STARTING ──> RUNNING ──shutdown()──> STOPPED
     │                                            │  ▲
     │ running_unit_tests=True                    ▼  │ (restart went through)
     └──────────────> DIRECT                   RESTARTING ──(gave up)──> FAILED
"""

from __future__ import annotations

import atexit
import enum
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["OWNERS", "Lifecycle", "ServiceState", "weakly"]

_R = TypeVar("_R")


class ServiceState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    DIRECT = "direct"
    FAILED = "failed"
    STOPPED = "stopped"


class Lifecycle:
    """State, owner and locks of one client (rebuilt fresh when a client is unpickled)."""

    def __init__(self) -> None:
        self.state = ServiceState.NEW
        #: the process that started the server (it restarts and stops it); -1: a
        #: client that follows a server it does not own; None: not started
        self.owner_pid: int | None = None
        #: held by start, restart, shutdown, and whoever reads the server process
        self.lock = threading.RLock()
        #: clear while the owner restarts the server: its calls wait, bounded
        self.not_restarting = threading.Event()
        self.not_restarting.set()

    @property
    def is_owner(self) -> bool:
        return self.owner_pid == os.getpid()

    @property
    def running(self) -> bool:
        return self.state is ServiceState.RUNNING


def weakly(method: Callable[..., _R]) -> Callable[..., _R]:
    """``method`` (a bound method) held weakly, so that a backend holding it keeps no
    reference cycle with its client: an abandoned client is collected (and its
    ``__del__`` stops its server) as soon as nothing uses it."""
    ref: weakref.WeakMethod[Callable[..., _R]] = weakref.WeakMethod(method)
    name = getattr(method, "__name__", "method")

    def call(*args: Any, **kwargs: Any) -> _R:
        bound = ref()
        if bound is None:
            raise ReferenceError(f"the client of {name}() is gone")
        return bound(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


class _Owning(Protocol):
    def _shutdown_if_owner(self) -> None: ...

    def _rpc_after_fork(self) -> None: ...


#: The clients that started a server in this process: stopped at exit; in a forked
#: child they follow their servers instead (the child owns none of them).
OWNERS: weakref.WeakSet[_Owning] = weakref.WeakSet()


@atexit.register
def _stop_owned_servers_at_exit() -> None:
    for client in list(OWNERS):
        client._shutdown_if_owner()


def _after_fork_in_child() -> None:
    for client in list(OWNERS):
        client._rpc_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
