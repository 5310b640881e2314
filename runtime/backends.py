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
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from .announce import ReadySignal
from .backend import Backend
from .direct import DirectBackend
from .endpoint import Address
from .lifecycle import Lifecycle
from .process_backend import ProcessBackend
from .settings import ServiceSettings

__all__ = ["ClientHooks", "make_backend"]


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
