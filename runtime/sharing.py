"""One server, many clients: attaching to a running service, following its restarts,
and stopping a hung server from a process that does not own it.

:class:`SharedClient` is the part of ``RPCServiceBase`` that does this for a
client: ``attach()``, pickling, forks and exit.

Every client that does not own its server (attached, unpickled, forked) holds
the service's key, which stays the same across restarts. When its connection
fails it waits, within its timeout, for the owner to publish the restarted
server in the service directory, then reconnects with the same key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .announce import parse_process_title
from .directory import DirectoryEntry, lookup, wait_for_entry
from .endpoint import Endpoint
from .errors import NotPicklableError, ServiceNotFound, ServiceUnavailable
from .keyfile import read_key
from .lifecycle import Lifecycle, ServiceState
from .poll import wait_until
from .settings import RayOptions, is_loopback

if TYPE_CHECKING:
    from .backend import Backend
    from .keeper import ServiceKeeper

__all__ = ["Located", "SharedClient", "locate", "stop_hung_server", "wait_until_published"]


@dataclass(frozen=True)
class Located:
    """Where ``attach()`` found a service, and its key."""

    service: str
    port: int
    #: (host, port), or a Unix socket path
    address: tuple[str, int] | str
    key: bytes
    #: the directory entry (None for a service on another host)
    entry: DirectoryEntry | None

    def client_settings(
        self, authkey_file: str | os.PathLike[str] | None
    ) -> dict[str, str | os.PathLike[str] | None]:
        """The client settings that reach it: a Unix socket's folder, or the host."""
        endpoint = Endpoint.of(self.address)
        if endpoint.path is not None:
            return {
                "transport": "unix",
                "socket_dir": os.path.dirname(endpoint.path),
                "authkey_file": authkey_file,
            }
        return {"host": endpoint.host, "authkey_file": authkey_file}


def locate(
    *,
    port: int | None,
    service: str | None,
    host: str | None,
    authkey_file: str | os.PathLike[str] | None,
    timeout_s: float,
) -> Located:
    """Find a running service: on another host by address and key file, here in the
    directory (by port and/or name). Raises ServiceNotFound within ``timeout_s``."""
    if host is not None and not is_loopback(host):
        if port is None or authkey_file is None:
            raise TypeError("attach(host=...) needs port= and authkey_file= too")
        return Located(service or "remote", port, (host, port), read_key(authkey_file), None)
    if port is None and service is None:
        raise TypeError("attach() needs port= or service_name=")
    # Live first: a client never connects to (and so never answers) whatever took the
    # port of a server that is gone.
    entry = lookup(port=port, service=service)
    if entry is None:
        entry = wait_for_entry(port=port, service=service, timeout_s=timeout_s)
    address = entry.address if isinstance(entry.address, str) else (entry.host, entry.port)
    key = read_key(authkey_file or entry.key_file)
    return Located(entry.service, entry.port, address, key, entry)


def wait_until_published(
    service: str,
    port: int,
    timeout_s: float,
    *,
    folder: Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DirectoryEntry | None:
    """The live directory entry of ``service`` on ``port``, waiting up to ``timeout_s``."""
    try:
        return wait_for_entry(
            port=port, service=service, timeout_s=timeout_s, folder=folder, clock=clock, sleep=sleep
        )
    except ServiceNotFound:
        return None


def stop_hung_server(
    service: str,
    port: int,
    *,
    timeout_s: float,
    log: logging.Logger,
    folder: Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Stop the published server of ``service`` on ``port``: SIGTERM, then SIGKILL.

    Only after checking that the pid is still that server (same create time), that
    its process title marks it as this service on this port, and that this user
    owns it. True if it was stopped; its owner then restarts it.
    """
    import psutil

    entry = lookup(port=port, service=service, folder=folder)
    if entry is None:
        log.info("%s: no live server is published; its owner restarts a dead one", service)
        return False
    try:
        process = psutil.Process(entry.pid)
        title = parse_process_title(process.cmdline())
        if (
            title is None
            or (title.service, title.port) != (service, port)
            or process.uids().real != os.getuid()
            or not entry.is_live()
        ):
            log.warning(
                "%s: pid %d is not its server any more; not stopping it", service, entry.pid
            )
            return False
        log.warning(
            "%s: stopping hung server pid %d (owner %d)", service, entry.pid, entry.owner_pid
        )
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)  # a SIGSTOPped process acts on SIGTERM only then
    except psutil.Error:
        return False
    wait_until(
        lambda: not entry.is_live(),
        timeout_s=timeout_s,
        clock=clock,
        sleep=sleep,
        initial=0.01,
        maximum=0.01,
    )
    if entry.is_live():
        with contextlib.suppress(psutil.Error):
            if entry.is_live():  # still the same process: checked by create time
                psutil.Process(entry.pid).kill()
    return True


_Shared = TypeVar("_Shared", bound="SharedClient")

# Attributes rebuilt fresh, never pickled: locks, threads, the backend and its connections.
_TRANSIENT = ("_rpc_life", "_rpc_backend", "_rpc_keeper_obj", "_rpc_log")


class SharedClient:
    """The part of a client (``RPCServiceBase``) that one server's many clients need:
    ``attach()``, pickling into another process, forks, and exit.

    A client that does not own its server follows it (its backend reconnects after
    a restart) and never stops it.
    """

    # What this part uses of the client: RPCServiceBase sets them all.
    rpc_service_name: str | None
    rpc_default_port: int | None
    rpc_backend: str
    rpc_ray_address: str | None
    rpc_ray_options: RayOptions | None
    service_name: str
    host: str
    port: int
    running_unit_tests: bool
    _rpc_life: Lifecycle
    _rpc_backend: Backend
    _rpc_log: logging.Logger
    _rpc_keeper_obj: ServiceKeeper | None

    @classmethod
    def _rpc_bare(cls: type[_Shared], service_name: str, port: int, **options: Any) -> _Shared:
        raise NotImplementedError

    def _rpc_init_transient(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError

    @property
    def is_owner(self) -> bool:
        """True in the process that started the server (and restarts and stops it)."""
        return self._rpc_life.is_owner

    @classmethod
    def attach(
        cls: type[_Shared],
        *,
        port: int | None = None,
        service_name: str | None = None,
        host: str | None = None,
        authkey_file: str | os.PathLike[str] | None = None,
        timeout_s: float = 10.0,
        **options: Any,
    ) -> _Shared:
        """A client of a running service that this process does not own.

        On this host the service is found in the service directory by ``port``
        and/or ``service_name`` (default: the class's ``rpc_service_name``); on
        another host give ``host``, ``port`` and ``authkey_file``. Raises
        :class:`~rpcgen.runtime.errors.ServiceNotFound` within ``timeout_s`` if
        none runs: a server that is gone is seen in the directory, before anything is
        sent to whatever holds its port now. ``timeout_s`` bounds the whole call, a
        server that does not answer included (:class:`ServiceUnavailable`). Its
        ``shutdown()`` closes only its own connections. The class's ``__init__`` is
        not called, so any client class works, generated or not.
        """
        deadline = time.monotonic() + timeout_s
        name = service_name or cls.rpc_service_name
        found = None
        if options.setdefault("backend", cls.rpc_backend) == "ray":  # found by name, in Ray
            if not name:
                raise ValueError(
                    f"{cls.__name__}.attach() of a Ray-backed service needs service_name="
                )
            options.setdefault("ray_address", cls.rpc_ray_address)
            options.setdefault("ray_options", cls.rpc_ray_options)
            port = cls.rpc_default_port or 1
        else:  # in this host's service directory, or at another host's address
            found = locate(  # by name on any port, unless a port is given (or there is no name)
                port=port if port is not None or name else cls.rpc_default_port,
                service=name,
                host=host,
                authkey_file=authkey_file,
                timeout_s=timeout_s,
            )
            name, port = found.service, found.port
            options.update(found.client_settings(authkey_file))
        client = cls._rpc_bare(name, port, **options)
        client._rpc_life.owner_pid = -1
        client._rpc_backend.attach(found, max(deadline - time.monotonic(), 0.05))
        client._rpc_life.state = ServiceState.RUNNING
        client._rpc_log.info("%s attached at %s", name, client._rpc_backend.label)
        return client

    def __getstate__(self) -> dict[str, Any]:
        state = self._rpc_life.state
        if state is ServiceState.DIRECT or self.running_unit_tests:
            raise NotPicklableError(service=self.service_name)
        # Restarting is fine: the copy follows the restarted server, as this one does
        # (a dependent server restarted while its dependency restarts gets its client).
        if state not in (ServiceState.RUNNING, ServiceState.RESTARTING):
            raise ServiceUnavailable(
                service=self.service_name,
                host=self.host,
                port=self.port,
                reason="only a running (or restarting) client can be sent to another process "
                f"(it is {state.value})",
            )
        pickled = {k: v for k, v in self.__dict__.items() if k not in _TRANSIENT}
        pickled["_rpc_health_monitor"] = False
        pickled["_rpc_handoff"] = self._rpc_backend.handoff()
        return pickled

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A client of the existing server, which it never owns; it follows restarts.
        handoff = state.pop("_rpc_handoff")
        self.__dict__.update(state)
        self._rpc_init_transient()
        self._rpc_life.owner_pid = -1
        self._rpc_backend.follow(handoff)
        self._rpc_life.state = ServiceState.RUNNING

    def _shutdown_if_owner(self) -> None:
        """At exit (or when collected): stop the server if this process owns it.

        A forked child inherits this object: it must never stop its parent's server.
        """
        if self.is_owner:
            self.shutdown()
        else:
            self._rpc_backend.close()

    def __del__(self) -> None:
        try:
            life = getattr(self, "_rpc_life", None)
            if life is not None and life.state not in (ServiceState.NEW, ServiceState.STOPPED):
                self._shutdown_if_owner()
        except Exception:
            pass

    def _rpc_after_fork(self) -> None:
        """In a forked child: this copy no longer owns the server; it follows it and
        must never stop it."""
        self._rpc_backend.after_fork()
        if self._rpc_keeper_obj is not None:
            self._rpc_keeper_obj.after_fork()
