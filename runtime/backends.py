"""Which backend a client gets: made from its settings and its callables.

The one place that looks at the backend's name. It is given the client's
:class:`~rpcgen.runtime.settings.ServiceSettings` and the hooks a backend calls
back (the client's ``_create_direct_server`` and ``_start_server_process``,
held weakly), never the client itself. The Ray backend is imported only for a
Ray-backed service, and imports no ray until it is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from .announce import ReadySignal
from .backend import Backend
from .direct import DirectBackend
from .endpoint import Address
from .lifecycle import Lifecycle
from .process_backend import ProcessBackend
from .settings import ServiceSettings

if TYPE_CHECKING:
    from .service import RPCServiceBase

__all__ = ["ClientHooks", "direct_server", "make_backend"]


@dataclass(frozen=True)
class ClientHooks:
    """What a backend calls back in its client."""

    #: the server object, in this process (direct mode)
    create_direct_server: Callable[[], Any]
    #: start the server process (the process backend)
    start_server_process: Callable[[Address, bytes, ReadySignal], BaseProcess]
    #: the server object, made in a Ray actor's worker: Ray pickles it there
    make_server_elsewhere: Callable[[], Any]
    notify: Callable[[str, str], None]


def make_backend(
    settings: ServiceSettings,
    hooks: ClientHooks,
    *,
    life: Lifecycle,
    log: logging.Logger,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Backend:
    """The backend ``settings.backend`` names: direct, a process, or a Ray actor."""
    if settings.backend == "direct":
        return DirectBackend(
            make_server=hooks.create_direct_server, pickling=settings.direct_pickle, log=log
        )
    if settings.backend == "ray":
        from .ray_backend import RayBackend

        return RayBackend(
            settings,
            make_server=hooks.make_server_elsewhere,
            notify=hooks.notify,
            log=log,
            clock=clock,
            sleep=sleep,
        )
    return ProcessBackend(
        settings,
        life=life,
        start_process=hooks.start_server_process,
        log=log,
        clock=clock,
        sleep=sleep,
    )


def direct_server(
    cls: type[RPCServiceBase[Any]],
    service: str,
    port: int,
    dependencies: Mapping[str, RPCServiceBase[Any]] | None = None,
) -> Any:
    """The server object, made as in direct mode: what a Ray actor serves.

    Module level, so that Ray can send it to the actor's worker. ``dependencies``:
    the clients the server uses (``rpc_server_dependencies``), which reach the
    worker pickled, as clients that follow their servers.
    """
    bare = cls._rpc_bare(service, port, running_unit_tests=True)
    for attr, client in (dependencies or {}).items():
        setattr(bare, attr, client)
    return bare._create_direct_server()
